"""Score every completion with the configured scorers and combine their values into one reward.

Scorers (tasks/scorers: verifiers, reward models, LLM judges) are plain callables over completion rows.
Score rows are long-format, one per completion and scorer, keeping the scorer's value, raw output,
status and version, plus the completion's combined reward, so a surprising reward can be explained.
Per round the stage records how reliable the scorers were: the share of rows each could not score,
the judges' own figures (position-swap agreement), and how often two scorers rank a prompt's
completions the same way (judge vs reward model, judge or reward model vs verifier).

Tests: python -m pytest tests/test_score.py -q
"""
from __future__ import annotations

import json
from collections import defaultdict
from itertools import combinations

import pyarrow as pa
from prefect import task

from configs.scoring import ScoringConfig
from configs.schema import FlywheelConfig
from storage.runtime import open_runtime
from tasks import common
from tasks.scorers import STATUSES, Scorer, ScoreResult, SkippedScorer, build_scorer

SCORE_SCHEMA = pa.schema([
    ("completion_id", pa.string()), ("prompt_id", pa.string()), ("scorer", pa.string()),
    ("scorer_version", pa.string()), ("value", pa.float64()), ("raw", pa.string()), ("status", pa.string()),
    ("weight", pa.float64()), ("reward", pa.float64()),
])


def score_completions(rows: list[dict], scorers: list[tuple[Scorer, float]], cfg: ScoringConfig
                      ) -> tuple[list[dict], list[float], dict[str, list[ScoreResult]]]:
    """Score rows (SCORE_SCHEMA), the combined reward per completion, and each scorer's results.

    The combined reward is the weighted sum of the scorers' values; with `combine: gated`, a completion
    that does not pass the gate scorer gets only the gate's own term (the others do not count).
    """
    results = {scorer.id: scorer(rows) for scorer, _ in scorers}
    for scorer, _ in scorers:
        if len(results[scorer.id]) != len(rows):
            raise RuntimeError(f"scorer {scorer.id!r} returned {len(results[scorer.id])} results for {len(rows)} rows")
    weights = {scorer.id: w for scorer, w in scorers}
    rewards = [combine({sid: res[i].value for sid, res in results.items()}, weights, cfg) for i in range(len(rows))]
    score_rows = [
        {"completion_id": row["completion_id"], "prompt_id": row["prompt_id"], "scorer": scorer.id,
         "scorer_version": scorer.version, "value": res.value, "raw": res.raw, "status": res.status,
         "weight": weights[scorer.id], "reward": reward}
        for scorer, _ in scorers
        for row, res, reward in zip(rows, results[scorer.id], rewards)
    ]
    return score_rows, rewards, results


def combine(values: dict[str, float], weights: dict[str, float], cfg: ScoringConfig) -> float:
    """One completion's reward from its scorers' values.

    >>> from configs.scoring import ScoringConfig
    >>> cfg = ScoringConfig(scorers=[{"kind": "math_answer"}, {"kind": "reward_model", "model": "rm"}],
    ...                     combine="gated", gate="math_answer")
    >>> combine({"math_answer": 1.0, "reward_model": 0.3}, {"math_answer": 1.0, "reward_model": 0.5}, cfg)
    1.15
    >>> combine({"math_answer": 0.0, "reward_model": 2.0}, {"math_answer": 1.0, "reward_model": 0.5}, cfg)
    0.0
    """
    if cfg.combine == "gated" and values[cfg.gate] < cfg.gate_threshold:
        return weights[cfg.gate] * values[cfg.gate]
    return sum(weights[s] * v for s, v in values.items())


def agreement(a: list[float], b: list[float], groups: list[str]) -> tuple[float, int]:
    """How often scorer b ranks two completions of the same prompt the way scorer a does.

    Over every pair of completions of one prompt that a tells apart: 1 when b orders them the same way,
    0.5 when b ties them, 0 when b disagrees. Returns (mean, number of pairs); (nan, 0) without pairs.

    >>> agreement([1, 0, 0, 1], [0.9, 0.2, 0.5, 0.5], ["p", "p", "q", "q"])
    (0.75, 2)
    """
    by_group: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        by_group[g].append(i)
    total, n = 0.0, 0
    for idx in by_group.values():
        for i, j in combinations(idx, 2):
            if a[i] == a[j]:
                continue
            n += 1
            db = b[i] - b[j]
            total += 0.5 if db == 0 else float((db > 0) == (a[i] > a[j]))
    return (total / n if n else float("nan")), n


def reliability_metrics(rows: list[dict], scorers: list[tuple[Scorer, float]],
                        results: dict[str, list[ScoreResult]]) -> dict[str, float]:
    """Per scorer: mean value of the rows it scored and the share of rows per non-ok status; the scorer's
    own metrics() (e.g. a judge's swap agreement); agreement of every pair of scorers on rows both scored."""
    out: dict[str, float] = {}
    n = max(len(rows), 1)
    groups = [r["prompt_id"] for r in rows]
    for scorer, _ in scorers:
        res = results[scorer.id]
        ok = [r.value for r in res if r.status == "ok"]
        out[f"score/{scorer.id}/mean"] = sum(ok) / len(ok) if ok else float("nan")
        for status in STATUSES[1:]:
            count = sum(r.status == status for r in res)
            if count:
                out[f"score/{scorer.id}/{status}_rate"] = count / n
        extra = getattr(scorer, "metrics", None)
        for name, value in (extra() if callable(extra) else {}).items():
            out[f"score/{scorer.id}/{name}"] = float(value)
    for (sa, _), (sb, _) in combinations(scorers, 2):
        both = [i for i in range(len(rows))
                if results[sa.id][i].status == "ok" and results[sb.id][i].status == "ok"]
        value, pairs = agreement([results[sa.id][i].value for i in both], [results[sb.id][i].value for i in both],
                                 [groups[i] for i in both])
        if pairs:
            out[f"score/agreement/{sa.id}~{sb.id}"] = value
            out[f"score/agreement/{sa.id}~{sb.id}/pairs"] = pairs
    return out


@task(name="score-completions")
def score_task(cfg: FlywheelConfig, round_num: int, completions_id: str, context: dict | None = None) -> str:
    """Score round `round_num`'s completions. `context` carries what some scorers need from the run (the
    pipeline's latest trained reward model: its directory and artifact id, which is a step input)."""
    rt = open_runtime(cfg)
    log = common.get_logger()
    context = context or {}

    def compute() -> common.StepOutput:
        rows = rt.artifacts.get_table(completions_id).to_pylist()
        # A local judge shares the generation engine: its weights are loaded into it in place.
        run_context = {**context, "engine": cfg.generation.engine}
        scorers = [(build_scorer(s, run_context), s.weight) for s in cfg.scoring.scorers]
        for scorer, _ in scorers:
            if isinstance(scorer, SkippedScorer):
                log.warning("scorer %s skipped this round: %s", scorer.id, scorer.reason)
        score_rows, rewards, results = score_completions(rows, scorers, cfg.scoring)
        ref = rt.artifacts.put_table(pa.Table.from_pylist(score_rows, schema=SCORE_SCHEMA), kind="scores")
        by_prompt: dict[str, float] = {}
        for row, reward in zip(rows, rewards):
            by_prompt[row["prompt_id"]] = max(by_prompt.get(row["prompt_id"], float("-inf")), reward)
        metrics = {
            "score/mean_reward": sum(rewards) / max(len(rows), 1),
            "score/pass_at_n": sum(v > 0 for v in by_prompt.values()) / max(len(by_prompt), 1),
            "score/parse_failures": sum(r["status"] not in ("ok", "no_reference") for r in score_rows),
            **reliability_metrics(rows, scorers, results),
        }
        log.info("scored %d completions with %s: %s", len(rows), [s.id for s, _ in scorers],
                 json.dumps({k: round(v, 4) for k, v in metrics.items() if v == v}))
        return common.StepOutput(
            artifacts={"scores": ref},
            summary={"rows_in": len(rows), "rows_out": len(score_rows), "metrics": metrics},
        )

    inputs = {"completions": completions_id}
    if context.get("reward_model_id"):
        inputs["reward_model"] = context["reward_model_id"]  # a newly trained model must not reuse old scores
    result = common.run_step(
        rt, pipeline=cfg.pipeline, round_num=round_num, step="score", config=cfg.scoring,
        inputs=inputs, compute=compute,
        code=common.code_version(__name__, "tasks.verifiers", "tasks.scorers", "tasks.scorers.verifiable",
                                 "tasks.scorers.reward_model", "tasks.scorers.judge", "tasks.scorers.judge_backends",
                                 "tasks.engines.openai", "tasks.ifeval", "tasks.sandbox"),
    )
    return result.outputs["scores"]
