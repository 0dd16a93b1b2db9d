"""Evaluate a model on the held-out eval sets: greedy answers from the vLLM engine, verified.

The candidate and the current policy are evaluated by the same step; its identity does not depend
on the role, so a policy that was last round's candidate is not evaluated twice.
"""
from __future__ import annotations

import pyarrow as pa
from prefect import task

from configs.schema import FlywheelConfig, SamplingConfig
from storage.runtime import open_runtime
from tasks import common
from tasks.engines import Engine, get_engine
from configs.scoring import MathScorerConfig
from tasks.scorers.verifiable import MathAnswerScorer
from tasks.sources import read_eval_set


def evaluate_model(engine: Engine, eval_sets: dict[str, list[dict]], max_tokens: int) -> tuple[list[dict], dict[str, float]]:
    """Greedy answers to every eval prompt; returns result rows and accuracy per eval set."""
    greedy = SamplingConfig(n=1, temperature=0.0, max_tokens=max_tokens, seed=0)
    scorer = MathAnswerScorer(MathScorerConfig())
    rows, accuracy = [], {}
    for name, items in eval_sets.items():
        gens = engine.generate([it["prompt"] for it in items], greedy, [0] * len(items))
        texts = [g[0].text for g in gens]
        results = scorer([{"completion": t, "answer": it["answer"]} for t, it in zip(texts, items)])
        for it, text, res in zip(items, texts, results):
            rows.append({"eval_set": name, "prompt": it["prompt"], "answer": it["answer"], "completion": text,
                         "extracted": res.raw, "correct": res.value > 0})
        accuracy[name] = sum(r.value > 0 for r in results) / max(len(items), 1)
    return rows, accuracy


@task(name="evaluate-model")
def evaluate_task(cfg: FlywheelConfig, round_num: int, model_id: str, role: str) -> dict[str, float]:
    """Evaluate `model_id` as `role` ("policy" or "candidate"); returns its accuracy per eval set."""
    rt = open_runtime(cfg)
    log = common.get_logger()

    def compute() -> common.StepOutput:
        sets = {e.name: read_eval_set(e) for e in cfg.evaluation.eval_sets}
        engine = get_engine(cfg.generation.engine, str(rt.artifacts.get_model(model_id)))
        rows, accuracy = evaluate_model(engine, sets, cfg.evaluation.max_tokens)
        for name, acc in accuracy.items():
            log.info("eval %s on %s: accuracy %.1f %% (%d prompts)", role, name, 100 * acc, len(sets[name]))
        ref = rt.artifacts.put_table(pa.Table.from_pylist(rows), kind="eval-results")
        metrics = {f"accuracy/{name}": acc for name, acc in accuracy.items()}
        metrics["accuracy"] = accuracy[cfg.gate_eval_set]
        return common.StepOutput({"results": ref}, {"rows_in": len(rows), "rows_out": len(rows), "metrics": metrics})

    result = common.run_step(
        rt, pipeline=cfg.pipeline, round_num=round_num, step=f"evaluate-{role}", identity_step="evaluate",
        config={"evaluation": cfg.evaluation.model_dump(mode="json"), "gate_set": cfg.gate_eval_set,
                "engine": cfg.generation.engine.backend},
        inputs={"model": model_id}, compute=compute, code=common.code_version(__name__, "tasks.scorers.verifiable", "tasks.verifiers"),
        metric_name=lambda n: f"eval/{n}/{role}",
    )
    return {k: float(v) for k, v in result.summary["metrics"].items()}
