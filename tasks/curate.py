"""Curate: this round's prompts, drawn from the configured sources (the first stage of a round).

Reads every source (malformed rows are quarantined with their reasons), then runs the pure core,
tasks/curation/prompts.py:curate_prompts: normalise, filter, dedup within the round and against earlier
rounds, decontaminate against the eval sets, draw the mixture. Stores the prompt table, the quarantine,
the curation report and the decontamination report. Sources, eval sets and the tokenizer (for token
filters) are external inputs: their content hashes are part of the step's identity.

Run alone:  python -m tasks.curate --config configs/demo.yaml --round 1 [--home DIR] [--force]
"""

from __future__ import annotations

import pyarrow as pa

from configs.schema import FlywheelConfig
from tasks.curation.inputs import (
    context_budget,
    earlier_prompt_tables,
    eval_index,
    load_earlier_prompts,
    prompt_filters,
    read_sources,
    source_input,
    tokenizer_input,
)
from tasks.curation.prompts import (
    QUARANTINE_SCHEMA,
    CurationError,
    curate_prompts,
    quarantine_problem,
    quarantine_rows,
    to_table,
)
from tasks.curation.store_inputs import eval_set_inputs
from tasks.stage import Json, StageContext, StageOutput, Step, Table, stage


@stage("curate-prompts", returns="prompts")
def curate_task(cfg: FlywheelConfig, round_num: int, earlier: list[str] = ()) -> Step:
    """Curate round `round_num`; `earlier` are the prompt tables of earlier rounds it may not draw from."""
    c = cfg.curation
    inputs = {
        **{f"source:{s.name}": source_input(cfg, i) for i, s in enumerate(c.sources)},
        **eval_set_inputs(cfg),
        **{f"earlier:{i}": a for i, a in enumerate(earlier)},
    }
    inputs["tokenizer"] = tokenizer_input(cfg.base_model)  # prompts must fit the model's context
    return Step(
        "curate",
        config={"curation": c.model_dump(mode="json"), "round": round_num, "context": context_budget(cfg)},
        inputs=inputs,
        run=lambda ctx: curate(ctx, cfg, round_num),
    )


def curate(ctx: StageContext, cfg: FlywheelConfig, round_num: int) -> StageOutput:
    rows = read_sources(cfg)
    # Stored before the check below, so the error can point at every malformed row.
    quarantine = ctx.store(Table(pa.Table.from_pylist(quarantine_rows(rows), QUARANTINE_SCHEMA), "quarantine"))
    problem = quarantine_problem(rows, cfg.curation)
    if problem:
        raise CurationError(
            f"round {round_num}: {problem}. Every malformed row, with its reason: "
            f"{quarantine.uri} (fix the files, or raise curation.max_quarantine_fraction)"
        )
    earlier = load_earlier_prompts(
        [ctx.table(k, columns=["text_hash", "prompt"]) for k in ctx.inputs if k.startswith("earlier:")]
    )
    result = curate_prompts(rows, cfg.curation, round_num, earlier, eval_index(cfg), **prompt_filters(cfg))
    rep = result.report
    ctx.log.info(
        "curated %d of %d rows; removed %s; quarantined %s",
        rep["rows_out"],
        rep["rows_in"],
        {k: v for k, v in rep["removed"].items() if v},
        rep["quarantine"] or "none",
    )
    source_ids = {s.name: ctx.id(f"source:{s.name}") for s in cfg.curation.sources}
    metrics = {
        "curate/prompts": rep["rows_out"],
        "curate/rows_in": rep["rows_in"],
        **{f"curate/removed/{k}": v for k, v in rep["removed"].items()},
        **{f"curate/quarantine/{k}": v for k, v in rep["quarantine"].items()},
        **{f"curate/drawn/{k}": m["drawn"] for k, m in rep["mixture"].items()},
    }
    prompts = Table(
        to_table(result.prompts), "prompts", rows=[(r["prompt_id"], source_ids[r["source"]]) for r in result.prompts]
    )
    return StageOutput(
        {
            "prompts": prompts,
            "report": Json(rep, "curation-report"),
            "quarantine": quarantine,
            "decontamination": Json(result.decontamination, "decontamination-report"),
        },
        metrics=metrics,
        rows_in=rep["rows_in"],
        rows_out=rep["rows_out"],
    )


if __name__ == "__main__":
    from tasks.run_alone import run_alone

    run_alone(curate_task, lambda rnd: {"earlier": earlier_prompt_tables(rnd.catalog, rnd.cfg, rnd.round)})
