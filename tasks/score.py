"""Score every completion with the configured scorers and combine their values into one reward.

Scorers (tasks/scoring: verifiers, reward models, LLM judges) are plain callables over completion rows.
Score rows are long-format, one per completion and scorer, keeping the scorer's value, raw output,
status and version, plus the completion's combined reward, so a surprising reward can be explained.
Per round the stage records how reliable the scorers were: the share of rows each could not score,
the judges' own figures (position-swap agreement), and how often two scorers rank a prompt's
completions the same way (judge vs reward model, judge or reward model vs verifier).
Local reward-model and judge directories are external inputs, and so is the pipeline's trained reward
model: new weights give the step a new identity instead of reusing old scores.

Run alone:  python -m tasks.score --config configs/demo.yaml --round 1 [--home DIR] [--force]
"""

from __future__ import annotations

import json
from collections import defaultdict
from itertools import combinations
from pathlib import Path

import pyarrow as pa

from configs.schema import FlywheelConfig
from configs.scoring import ScoringConfig
from tasks.scoring import STATUSES, Scorer, ScoreResult, SkippedScorer, build_scorer
from tasks.stage import External, StageContext, StageOutput, Step, Table, stage

SCORE_SCHEMA = pa.schema(
    [
        ("completion_id", pa.string()),
        ("prompt_id", pa.string()),
        ("scorer", pa.string()),
        ("scorer_version", pa.string()),
        ("value", pa.float64()),
        ("raw", pa.string()),
        ("status", pa.string()),
        ("weight", pa.float64()),
        ("reward", pa.float64()),
    ]
)


def score_completions(
    rows: list[dict], scorers: list[tuple[Scorer, float]], cfg: ScoringConfig
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
        {
            "completion_id": row["completion_id"],
            "prompt_id": row["prompt_id"],
            "scorer": scorer.id,
            "scorer_version": scorer.version,
            "value": res.value,
            "raw": res.raw,
            "status": res.status,
            "weight": weights[scorer.id],
            "reward": reward,
        }
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


def reliability_metrics(
    rows: list[dict], scorers: list[tuple[Scorer, float]], results: dict[str, list[ScoreResult]]
) -> dict[str, float]:
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
        both = [i for i in range(len(rows)) if results[sa.id][i].status == "ok" and results[sb.id][i].status == "ok"]
        value, pairs = agreement(
            [results[sa.id][i].value for i in both], [results[sb.id][i].value for i in both], [groups[i] for i in both]
        )
        if pairs:
            out[f"score/agreement/{sa.id}~{sb.id}"] = value
            out[f"score/agreement/{sa.id}~{sb.id}/pairs"] = pairs
    return out


@stage("score-completions", returns="scores")
def score_task(cfg: FlywheelConfig, round_num: int, completions_id: str, reward_model_id: str | None = None) -> Step:
    """Score round `round_num`'s completions; `reward_model_id`: the pipeline's latest trained reward model,
    for `model: trained` scorers (None before the first one)."""
    inputs = {"completions": completions_id, **scorer_models(cfg.scoring)}
    if reward_model_id:
        inputs["reward_model"] = reward_model_id
    return Step("score", config=cfg.scoring, inputs=inputs, run=lambda ctx: score(ctx, cfg))


def scorer_models(scoring: ScoringConfig) -> dict[str, External]:
    """The local model directories the scorers read: reward models given by path, and local judges."""
    out = {}
    for i, s in enumerate(scoring.scorers):
        if s.kind == "judge" and s.judge.backend == "vllm":
            path = s.judge.model
        elif s.kind == "reward_model" and s.model != "trained" and Path(s.model).expanduser().is_dir():
            path = s.model  # (a hub id is versioned by its cached commit, in the scorer's version)
        else:
            continue
        out[f"scorer:{s.id}"] = External.model_dir(
            path, "judge-model" if s.kind == "judge" else "reward-model", f"scoring.scorers[{i}] ({s.id})"
        )
    return out


def score(ctx: StageContext, cfg: FlywheelConfig) -> StageOutput:
    rows = ctx.rows("completions")
    context = {"engine": cfg.generation.engine}  # a local judge shares the generation engine: weights reload in place
    if "reward_model" in ctx.inputs:
        context.update(reward_model_dir=str(ctx.model("reward_model")), reward_model_id=ctx.id("reward_model"))
    scorers = [(build_scorer(s, context), s.weight) for s in cfg.scoring.scorers]
    for scorer, _ in scorers:
        if isinstance(scorer, SkippedScorer):
            ctx.log.warning("scorer %s skipped this round: %s", scorer.id, scorer.reason)
    score_rows, rewards, results = score_completions(rows, scorers, cfg.scoring)
    by_prompt: dict[str, float] = {}
    for row, reward in zip(rows, rewards):
        by_prompt[row["prompt_id"]] = max(by_prompt.get(row["prompt_id"], float("-inf")), reward)
    metrics = {
        "score/mean_reward": sum(rewards) / max(len(rows), 1),
        "score/pass_at_n": sum(v > 0 for v in by_prompt.values()) / max(len(by_prompt), 1),
        "score/parse_failures": sum(r["status"] not in ("ok", "no_reference") for r in score_rows),
        **reliability_metrics(rows, scorers, results),
    }
    ctx.log.info(
        "scored %d completions with %s: %s",
        len(rows),
        [s.id for s, _ in scorers],
        json.dumps({k: round(v, 4) for k, v in metrics.items() if v == v}),
    )
    table = Table(pa.Table.from_pylist(score_rows, schema=SCORE_SCHEMA), "scores")
    return StageOutput({"scores": table}, metrics=metrics, rows_in=len(rows), rows_out=len(score_rows))


if __name__ == "__main__":
    from tasks.run_alone import run_alone
    from tasks.train_reward import reward_model_for

    run_alone(
        score_task,
        lambda rnd: {
            "completions_id": rnd.output("generate", "completions"),
            "reward_model_id": reward_model_for(rnd.catalog, rnd.cfg, rnd.round, "score"),
        },
    )
