"""Generate: N completions per prompt from the current policy, then from each committee model (vLLM by default).

Every row carries its completion id, the model artifact id, the sampling parameters and the seed,
so a training row can be traced back to the exact sample that produced it. Committee models are
external inputs (their directories' content hashes are part of the step's identity).

Run alone:  python -m tasks.generate --config configs/demo.yaml --round 1 [--home DIR] [--force]
"""

from __future__ import annotations

import time

import pyarrow as pa

from configs.schema import FlywheelConfig, SamplingConfig
from storage import ids
from tasks.generation import ENGINE_PLACEMENT, Engine, get_engine
from tasks.stage import External, StageContext, StageOutput, Step, Table, stage

COMPLETION_SCHEMA = pa.schema(
    [
        ("completion_id", pa.string()),
        ("prompt_id", pa.string()),
        ("prompt", pa.string()),
        ("system", pa.string()),
        ("answer", pa.string()),
        ("source", pa.string()),
        ("license", pa.string()),
        ("tags", pa.list_(pa.string())),
        ("completion", pa.string()),
        ("num_tokens", pa.int64()),
        ("finish_reason", pa.string()),
        ("sample_index", pa.int64()),
        ("seed", pa.int64()),
        ("model", pa.string()),
        ("model_id", pa.string()),
        ("sampling", pa.string()),
        ("provenance", pa.string()),  # the source's keep_fields (JSON): constraints or tests some scorers need
    ]
)


def request_seed(base_seed: int, round_num: int, prompt_id: str) -> int:
    """Per-prompt seed: a prompt's samples do not depend on which batch it landed in."""
    return int(ids.hash_obj([base_seed, round_num, prompt_id], 8), 16) & 0x7FFFFFFF


def generate_completions(
    engine: Engine,
    prompts: list[dict],
    params: SamplingConfig,
    model_id: str,
    round_num: int,
    model: str = "policy",
) -> list[dict]:
    """`params.n` completion rows per prompt row, in prompt order then sample order.

    `model` names who answered ("policy", or a committee member's name); `model_id` is its content id.
    """
    seeds = [request_seed(params.seed, round_num, p["prompt_id"]) for p in prompts]
    outputs = engine.generate([conversation(p) for p in prompts], params, seeds)
    sampling = params.model_dump(mode="json")
    sampling_json = ids.stable_json(sampling)
    rows = []
    for p, seed, gens in zip(prompts, seeds, outputs):
        for i, g in enumerate(gens):
            rows.append(
                {
                    "completion_id": ids.completion_id(p["prompt_id"], model_id, sampling, i, seed),
                    "prompt_id": p["prompt_id"],
                    "prompt": p["prompt"],
                    "system": p.get("system"),
                    "answer": p.get("answer"),
                    "source": p["source"],
                    "license": p["license"],
                    "tags": p.get("tags") or [],
                    "completion": g.text,
                    "num_tokens": g.num_tokens,
                    "finish_reason": g.finish_reason,
                    "sample_index": i,
                    "seed": seed,
                    "model": model,
                    "model_id": model_id,
                    "sampling": sampling_json,
                    "provenance": p.get("provenance") or "{}",
                }
            )
    return rows


def conversation(row: dict) -> str | list[dict]:
    """What the policy is asked: the user prompt, after the system prompt when the source had one."""
    if row.get("system"):
        return [{"role": "system", "content": row["system"]}, {"role": "user", "content": row["prompt"]}]
    return row["prompt"]


@stage("generate-completions", returns="completions")
def generate_task(cfg: FlywheelConfig, round_num: int, policy_id: str, prompts_id: str) -> Step:
    """Sample from the policy, then from each committee member, for the same prompts (one table)."""
    committee = {
        f"committee:{m.name}": External.model_dir(m.model, "committee-model", f"generation.committee[{i}] ({m.name})")
        for i, m in enumerate(cfg.generation.committee)
    }
    return Step(
        "generate",
        # Where the engines run is not what they produce: 1 or N replicas give the same rows, so the same step.
        config=cfg.generation.model_dump(mode="json", exclude={"engine": set(ENGINE_PLACEMENT)}),
        inputs={"policy": policy_id, "prompts": prompts_id, **committee},
        run=lambda ctx: generate(ctx, cfg, round_num),
    )


def generate(ctx: StageContext, cfg: FlywheelConfig, round_num: int) -> StageOutput:
    prompts = ctx.rows("prompts")
    who = [("policy", ctx.id("policy"), ctx.model("policy"), cfg.generation.sampling)]
    who += [
        (m.name, ctx.id(f"committee:{m.name}"), ctx.model(f"committee:{m.name}"), m.sampling or cfg.generation.sampling)
        for m in cfg.generation.committee
    ]
    rows, metrics, gen_s = [], {}, 0.0
    for name, model_id, model_dir, params in who:
        t0 = time.perf_counter()
        engine = get_engine(cfg.generation.engine, str(model_dir))  # same architecture: weights reload in place
        t_engine = time.perf_counter() - t0
        t0 = time.perf_counter()
        mine = generate_completions(engine, prompts, params, model_id, round_num, model=name)
        dt = time.perf_counter() - t0
        gen_s += dt
        tokens = sum(r["num_tokens"] for r in mine)
        ctx.log.info(
            "%s: %d completions for %d prompts, %d tokens in %.1f s (%.0f tok/s; engine ready in %.1f s)",
            name,
            len(mine),
            len(prompts),
            tokens,
            dt,
            tokens / max(dt, 1e-9),
            t_engine,
        )
        if name != "policy":
            metrics[f"generate/{name}/completions"] = len(mine)
        rows += mine
    tokens = sum(r["num_tokens"] for r in rows)
    table = Table(
        pa.Table.from_pylist(rows, schema=COMPLETION_SCHEMA),
        "completions",
        rows=[(r["completion_id"], r["prompt_id"]) for r in rows],
    )
    return StageOutput(
        {"completions": table},
        rows_in=len(prompts),
        rows_out=len(rows),
        metrics={
            "generate/completions": len(rows),
            "generate/tokens": tokens,
            "generate/truncated": sum(r["finish_reason"] == "length" for r in rows),
            **metrics,
        },
        timings={"generate/tokens_per_s": tokens / max(gen_s, 1e-9)},
    )


if __name__ == "__main__":
    from tasks.run_alone import run_alone

    run_alone(generate_task, lambda rnd: {"policy_id": rnd.policy, "prompts_id": rnd.output("curate", "prompts")})
