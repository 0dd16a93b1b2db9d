"""Score every completion with the configured scorers and combine their values into one reward.

Scorers (tasks/scoring: verifiers, reward models, LLM judges) are plain callables over completion rows.
Score rows are long-format, one per completion and scorer, keeping the scorer's value, raw output,
status and version, plus the completion's combined reward, so a surprising reward can be explained.
A scorer that fails on a completion (a judge timeout, an unparsable verdict) leaves a placeholder, never a
score: the completion is excluded from selection (a null reward) or scores that scorer as 0, as
scoring.on_scorer_error says, and counted either way.
Per round the stage records how reliable the scorers were: the share of rows each could not score,
the judges' own figures (position-swap agreement), and how often two scorers rank a prompt's
completions the same way (judge vs reward model, judge or reward model vs verifier).
Local reward-model and judge directories are external inputs, and so is the pipeline's trained reward
model: new weights give the step a new identity instead of reusing old scores.

Run alone:  python -m tasks.score --config configs/demo.yaml --round 1 [--home DIR] [--force]
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Collection
from itertools import combinations
from pathlib import Path

import pyarrow as pa

from configs.schema import FlywheelConfig
from configs.scoring import ScoringConfig
from tasks.scoring import SCORER_ERRORS, STATUSES, Scorer, ScoreResult, SkippedScorer, build_scorer
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
) -> tuple[list[dict], list[float | None], dict[str, list[ScoreResult]]]:
    """Score rows (SCORE_SCHEMA), the combined reward per completion (see `combine`; None: excluded because a
    scorer it reads failed), and each scorer's results."""
    results = {scorer.id: scorer(rows) for scorer, _ in scorers}
    for scorer, _ in scorers:
        if len(results[scorer.id]) != len(rows):
            raise RuntimeError(f"scorer {scorer.id!r} returned {len(results[scorer.id])} results for {len(rows)} rows")
    weights = {scorer.id: w for scorer, w in scorers}
    failed = failed_scorers(scorers, results, len(rows))
    rewards = [combine(_values(results, i), weights, cfg, failed[i]) for i in range(len(rows))]
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


def failed_scorers(
    scorers: list[tuple[Scorer, float]], results: dict[str, list[ScoreResult]], n: int
) -> list[set[str]]:
    """Per completion, the scorers that failed to judge it: its status is one of the scorer's `errors`."""
    errors = {scorer.id: set(getattr(scorer, "errors", SCORER_ERRORS)) for scorer, _ in scorers}
    return [{sid for sid, res in results.items() if res[i].status in errors[sid]} for i in range(n)]


def _values(results: dict[str, list[ScoreResult]], i: int) -> dict[str, float]:
    return {sid: res[i].value for sid, res in results.items()}


def reads_failure(
    values: dict[str, float], weights: dict[str, float], cfg: ScoringConfig, errored: Collection[str]
) -> bool:
    """Whether the reward reads a scorer in `errored`: one with a weight; under gated, the gate itself, or
    another scorer of a completion that passes the gate (a fail's reward is the gate's term alone)."""
    if not errored:
        return False
    if cfg.combine == "gated":
        if cfg.gate in errored:
            return True
        if values[cfg.gate] < cfg.gate_threshold:
            return False
    return any(weights[s] != 0 for s in errored)


def combine(
    values: dict[str, float], weights: dict[str, float], cfg: ScoringConfig, errored: Collection[str] = ()
) -> float | None:
    """One completion's reward from its scorers' values (scoring.combine, scoring.on_scorer_error).

    weighted_sum: sum of weight x value, raw: an unbounded reward-model logit can outweigh a verifier.
    gated: a fail (gate value below gate_threshold) gets the gate's weight x value; a pass also gets
    weight x `bounded` value of every other scorer. So a pass scores at least gate weight x threshold
    and every fail less: a verified answer ranks above any unverified one whatever a reward model says,
    and DPO margins keep their meaning (a pass over a fail: at least the gate's term; the others add
    less than the sum of their weights).

    Args:
        errored: scorers that failed on this completion (their value is a placeholder). Where the
            reward reads one (weight not 0; under gated, the others only past the gate): with
            on_scorer_error exclude the reward is None, with zero that scorer's term is 0.

    >>> from configs.scoring import ScoringConfig
    >>> cfg = ScoringConfig(scorers=[{"kind": "math_answer"}, {"kind": "reward_model", "name": "rm", "model": "m"}],
    ...                     combine="gated", gate="math_answer")
    >>> w = {"math_answer": 1.0, "rm": 0.5}
    >>> round(combine({"math_answer": 1.0, "rm": 0.0}, w, cfg), 4)  # 1 + 0.5 * sigmoid(0)
    1.25
    >>> right, wrong = combine({"math_answer": 1.0, "rm": -5.0}, w, cfg), combine({"math_answer": 0.0, "rm": 5.0}, w, cfg)
    >>> round(right, 4), wrong  # 1 + 0.5 * sigmoid(-5): the verified answer still ranks first
    (1.0033, 0.0)
    >>> print(combine({"math_answer": 1.0, "rm": 0.0}, w, cfg, errored={"rm"}))  # exclude: no reward
    None
    >>> combine({"math_answer": 0.0, "rm": 0.0}, w, cfg, errored={"rm"})  # a fail does not read rm
    0.0
    """
    if cfg.on_scorer_error == "exclude" and reads_failure(values, weights, cfg, errored):
        return None
    value = {s: 0.0 if s in errored else v for s, v in values.items()}  # zero: a failed scorer counts as 0
    gate = cfg.gate if cfg.combine == "gated" else None
    if gate is not None and value[gate] < cfg.gate_threshold:
        return weights[gate] * value[gate]
    if gate is None:
        return sum(weights[s] * v for s, v in value.items())
    kinds = {s.id: s.kind for s in cfg.scorers}
    return sum(weights[s] * (v if s == gate or s in errored else bounded(kinds.get(s), v)) for s, v in value.items())


def bounded(kind: str | None, value: float) -> float:
    """A value in [0, 1] for the gated sum: a reward model's logit through a sigmoid (the order of logits is
    kept, 0 -> 0.5), any other value clamped (verifiers and judges give [0, 1] already).

    >>> bounded("reward_model", 0.0), round(bounded("reward_model", -800.0), 6), bounded("judge", 1.5)
    (0.5, 0.0, 1.0)
    """
    if kind == "reward_model":
        # Written both ways so that exp never overflows for a large logit of either sign.
        return 1 / (1 + math.exp(-value)) if value >= 0 else math.exp(value) / (1 + math.exp(value))
    return min(max(value, 0.0), 1.0)


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


def scorer_error_metrics(
    n: int, scorers: list[tuple[Scorer, float]], results: dict[str, list[ScoreResult]], cfg: ScoringConfig
) -> dict[str, float]:
    """How many completions' rewards read a scorer that failed on them (see `reads_failure`): excluded from
    selection (reward None) or scored with that scorer as 0, per scoring.on_scorer_error. Listed under the
    pseudo-scorer `reward` in the round report's Scoring table, so a failing judge is never a silent 0."""
    weights = {scorer.id: w for scorer, w in scorers}
    failed = failed_scorers(scorers, results, n)
    count = sum(reads_failure(_values(results, i), weights, cfg, failed[i]) for i in range(n))
    treated = "excluded" if cfg.on_scorer_error == "exclude" else "zeroed"
    return {f"score/reward/{treated}_scorer_error": count}


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
        if reward is not None:
            by_prompt[row["prompt_id"]] = max(by_prompt.get(row["prompt_id"], float("-inf")), reward)
    scored = [r for r in rewards if r is not None]
    metrics = {
        "score/mean_reward": sum(scored) / max(len(scored), 1),
        "score/pass_at_n": sum(v > 0 for v in by_prompt.values()) / max(len(by_prompt), 1),
        "score/parse_failures": sum(r["status"] not in ("ok", "no_reference") for r in score_rows),
        **scorer_error_metrics(len(rows), scorers, results, cfg.scoring),
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
