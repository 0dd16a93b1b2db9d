"""Evaluate a model on the held-out eval sets: greedy answers from the vLLM engine, then each set's metric.

Per eval set (evaluation.eval_sets[].metric): `accuracy` checks the answers with the math verifier,
`reward` averages a reward model's scores, `win_rate` only stores the answers: tasks/compare.py has a
judge compare candidate and policy answers once both exist.
The candidate and the current policy are evaluated by the same step; its identity does not depend
on the role, so a policy that was last round's candidate is not evaluated twice. The eval-set files and
local reward models are external inputs.

Run alone:  python -m tasks.evaluate --config configs/demo.yaml --round 1 [--role policy|candidate] [--force]
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from configs.schema import EvalSetConfig, FlywheelConfig, SamplingConfig
from configs.scoring import MathScorerConfig, RewardModelScorerConfig
from tasks.curation.sources import read_eval_set
from tasks.generation import Engine, get_engine
from tasks.scoring import Scorer
from tasks.scoring.verifiable import MathAnswerScorer
from tasks.stage import External, StageContext, StageOutput, Step, Table, stage

RESULT_SCHEMA = pa.schema(
    [
        ("eval_set", pa.string()),
        ("index", pa.int64()),
        ("prompt", pa.string()),
        ("answer", pa.string()),
        ("completion", pa.string()),
        ("extracted", pa.string()),
        ("score", pa.float64()),
        ("status", pa.string()),
    ]
)


def evaluate_model(
    engine: Engine,
    eval_sets: dict[str, tuple[EvalSetConfig, list[dict]]],
    max_tokens: int,
    scorers: dict[str, Scorer] | None = None,
) -> tuple[list[dict], dict[str, float]]:
    """Greedy answers to every eval prompt; returns result rows (RESULT_SCHEMA) and metrics per eval set.

    Args:
        eval_sets: {name: (its config, its rows from read_eval_set)}.
        scorers: {name: scorer} for `reward` sets (the math verifier is used for `accuracy` sets).
    Returns:
        rows, and {"accuracy/<set>" | "reward/<set>": value} (win_rate sets have no metric here).
    """
    greedy = SamplingConfig(n=1, temperature=0.0, max_tokens=max_tokens, seed=0)
    verifier = MathAnswerScorer(MathScorerConfig())
    scorers = scorers or {}
    rows, metrics = [], {}
    for name, (cfg, items) in eval_sets.items():
        gens = engine.generate([it["prompt"] for it in items], greedy, [0] * len(items))
        texts = [g[0].text for g in gens]
        scored = [
            {"prompt": it["prompt"], "completion": t, "answer": it["answer"], "system": None}
            for it, t in zip(items, texts)
        ]
        if cfg.metric == "accuracy":
            results = verifier(scored)
            metrics[f"accuracy/{name}"] = sum(r.value > 0 for r in results) / max(len(items), 1)
        elif cfg.metric == "reward":
            results = scorers[name](scored)
            ok = [r.value for r in results if r.status == "ok"]
            metrics[f"reward/{name}"] = sum(ok) / len(ok) if ok else float("nan")
        else:
            results = [None] * len(items)
        for i, (it, text, res) in enumerate(zip(items, texts, results)):
            rows.append(
                {
                    "eval_set": name,
                    "index": i,
                    "prompt": it["prompt"],
                    "answer": it["answer"],
                    "completion": text,
                    "extracted": res.raw if res else None,
                    "score": res.value if res else None,
                    "status": res.status if res else None,
                }
            )
    return rows, metrics


def gate_metric_name(cfg: FlywheelConfig) -> str:
    """`<metric>/<eval set>` the promotion gate compares, e.g. accuracy/heldout."""
    e = next(x for x in cfg.evaluation.eval_sets if x.name == cfg.gate_eval_set)
    return f"{e.metric}/{e.name}"


@stage("evaluate-model")
def evaluate_task(
    cfg: FlywheelConfig, round_num: int, model_id: str, role: str, reward_model_id: str | None = None
) -> Step:
    """Evaluate `model_id` as `role` ("policy" or "candidate"); the StepResult: metrics per eval set, and
    the per-prompt `results` table. `reward_model_id`: the trained reward model, for `reward_model: trained`."""
    inputs = {"model": model_id, **eval_set_inputs(cfg.evaluation.eval_sets)}
    if reward_model_id:
        inputs["reward_model"] = reward_model_id
    config = {
        "evaluation": cfg.evaluation.model_dump(mode="json"),
        "gate_set": cfg.gate_eval_set,
        "engine": cfg.generation.engine.backend,
    }
    return Step(
        f"evaluate-{role}",
        config=config,
        inputs=inputs,
        run=lambda ctx: evaluate(ctx, cfg, role),
        same_work_as="evaluate",
        metric_name=lambda n: f"eval/{n}/{role}",
    )


def eval_set_inputs(eval_sets: list[EvalSetConfig]) -> dict[str, External]:
    """The eval-set files, and the local reward models of `reward` sets given by path."""
    out = {f"eval:{e.name}": External.file(e.path, "eval-set") for e in eval_sets}
    for i, e in enumerate(eval_sets):
        if e.metric == "reward" and e.reward_model != "trained" and Path(e.reward_model).expanduser().is_dir():
            what = f"evaluation.eval_sets[{i}] ({e.name}) reward_model"
            out[f"reward_model:{e.name}"] = External.model_dir(e.reward_model, "reward-model", what)
    return out


def evaluate(ctx: StageContext, cfg: FlywheelConfig, role: str) -> StageOutput:
    from tasks.scoring.reward_model import RewardModelScorer

    context = {}
    if "reward_model" in ctx.inputs:
        context = {"reward_model_dir": str(ctx.model("reward_model")), "reward_model_id": ctx.id("reward_model")}
    sets = {e.name: (e, read_eval_set(e)) for e in cfg.evaluation.eval_sets}
    scorers = {
        e.name: RewardModelScorer(RewardModelScorerConfig(model=e.reward_model), context)
        for e in cfg.evaluation.eval_sets
        if e.metric == "reward"
    }
    engine = get_engine(cfg.generation.engine, str(ctx.model("model")))
    rows, metrics = evaluate_model(engine, sets, cfg.evaluation.max_tokens, scorers)
    for name, value in metrics.items():
        ctx.log.info("eval %s: %s %.4f", role, name, value)
    gate = gate_metric_name(cfg)
    if gate in metrics:  # the short name plots and tables show, e.g. eval/accuracy/policy
        metrics[gate.split("/")[0]] = metrics[gate]
    results = Table(pa.Table.from_pylist(rows, schema=RESULT_SCHEMA), "eval-results")
    return StageOutput({"results": results}, metrics=metrics, rows_in=len(rows), rows_out=len(rows))


if __name__ == "__main__":
    from tasks.run_alone import run_alone
    from tasks.train_reward import reward_model_for

    run_alone(
        evaluate_task,
        lambda rnd: {
            "model_id": rnd.policy if rnd.options.role == "policy" else rnd.candidate,
            "role": rnd.options.role,
            "reward_model_id": reward_model_for(rnd.catalog, rnd.cfg, rnd.round + 1, "evaluate"),
        },
        {
            "--role": {
                "choices": ["policy", "candidate"],
                "default": "candidate",
                "help": "which model (default candidate)",
            }
        },
    )
