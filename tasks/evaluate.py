"""Evaluate a model on the held-out eval sets: greedy answers from the vLLM engine, then each set's metric.

Per eval set (evaluation.eval_sets[].metric): `accuracy` checks the answers with the math verifier,
`reward` averages a reward model's scores, `win_rate` only stores the answers: tasks/compare.py has a
judge compare candidate and policy answers once both exist.
The candidate and the current policy are evaluated by the same step; its identity does not depend
on the role, so a policy that was last round's candidate is not evaluated twice.
"""
from __future__ import annotations

import pyarrow as pa
from prefect import task

from configs.schema import EvalSetConfig, FlywheelConfig, SamplingConfig
from configs.scoring import MathScorerConfig, RewardModelScorerConfig
from storage.runtime import open_runtime
from tasks import common
from tasks.engines import Engine, get_engine
from tasks.scorers import Scorer
from tasks.scorers.verifiable import MathAnswerScorer
from tasks.sources import read_eval_set

RESULT_SCHEMA = pa.schema([
    ("eval_set", pa.string()), ("index", pa.int64()), ("prompt", pa.string()), ("answer", pa.string()),
    ("completion", pa.string()), ("extracted", pa.string()), ("score", pa.float64()), ("status", pa.string()),
])


def evaluate_model(engine: Engine, eval_sets: dict[str, tuple[EvalSetConfig, list[dict]]], max_tokens: int,
                   scorers: dict[str, Scorer] | None = None) -> tuple[list[dict], dict[str, float]]:
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
        scored = [{"prompt": it["prompt"], "completion": t, "answer": it["answer"], "system": None}
                  for it, t in zip(items, texts)]
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
            rows.append({"eval_set": name, "index": i, "prompt": it["prompt"], "answer": it["answer"],
                         "completion": text, "extracted": res.raw if res else None,
                         "score": res.value if res else None, "status": res.status if res else None})
    return rows, metrics


def gate_metric_name(cfg: FlywheelConfig) -> str:
    """`<metric>/<eval set>` the promotion gate compares, e.g. accuracy/heldout."""
    e = next(x for x in cfg.evaluation.eval_sets if x.name == cfg.gate_eval_set)
    return f"{e.metric}/{e.name}"


@task(name="evaluate-model")
def evaluate_task(cfg: FlywheelConfig, round_num: int, model_id: str, role: str) -> dict[str, float]:
    """Evaluate `model_id` as `role` ("policy" or "candidate"); returns its metrics per eval set."""
    from tasks.train_reward import reward_model_context

    rt = open_runtime(cfg)
    log = common.get_logger()
    reward_sets = [e for e in cfg.evaluation.eval_sets if e.metric == "reward"]
    # This round's reward model counts too; fetched only when an eval set reads it.
    trained = any(e.reward_model == "trained" for e in reward_sets)
    context = reward_model_context(rt, cfg.pipeline, round_num + 1) if trained else {}

    def compute() -> common.StepOutput:
        from tasks.scorers.reward_model import RewardModelScorer

        sets = {e.name: (e, read_eval_set(e)) for e in cfg.evaluation.eval_sets}
        scorers = {e.name: RewardModelScorer(RewardModelScorerConfig(model=e.reward_model), context)
                   for e in reward_sets}
        engine = get_engine(cfg.generation.engine, str(rt.artifacts.get_model(model_id)))
        rows, metrics = evaluate_model(engine, sets, cfg.evaluation.max_tokens, scorers)
        for name, value in metrics.items():
            log.info("eval %s: %s %.4f", role, name, value)
        ref = rt.artifacts.put_table(pa.Table.from_pylist(rows, schema=RESULT_SCHEMA), kind="eval-results")
        gate = gate_metric_name(cfg)
        if gate in metrics:  # the short name plots and tables show, e.g. eval/accuracy/policy
            metrics[gate.split("/")[0]] = metrics[gate]
        return common.StepOutput({"results": ref}, {"rows_in": len(rows), "rows_out": len(rows), "metrics": metrics})

    inputs = {"model": model_id}
    if context.get("reward_model_id"):
        inputs["reward_model"] = context["reward_model_id"]
    result = common.run_step(
        rt, pipeline=cfg.pipeline, round_num=round_num, step=f"evaluate-{role}", identity_step="evaluate",
        config={"evaluation": cfg.evaluation.model_dump(mode="json"), "gate_set": cfg.gate_eval_set,
                "engine": cfg.generation.engine.backend},
        inputs=inputs, compute=compute,
        code=common.code_version(__name__, "tasks.scorers.verifiable", "tasks.verifiers", "tasks.scorers.reward_model"),
        metric_name=lambda n: f"eval/{n}/{role}",
    )
    return {k: float(v) for k, v in result.summary["metrics"].items()}
