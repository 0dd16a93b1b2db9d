"""Scorers: plain callables behind one interface, built from the scoring config.

A scorer takes completion rows (dicts with at least `completion_id`, `prompt_id`, `prompt`, `system`,
`completion`, `answer` and `provenance`, the source's keep_fields as a dict) and returns one ScoreResult per
row, in order. It never raises for a bad completion: a completion it cannot score gets a status other than
"ok" (counted in the round's metrics), never a silent 0.

A scorer may also expose `metrics() -> dict[str, float]`: reliability figures of its last call (e.g. a
judge's parse-failure rate and position-swap agreement), recorded as `score/<scorer>/<name>` metrics, and
`errors`: the statuses that mean it failed to judge (default SCORER_ERRORS). A result with one of those
holds a placeholder value, which scoring.on_scorer_error keeps out of the combined reward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

# Why a completion did not get a normal score. "ok" is the only status whose value is a real judgement.
STATUSES = ("ok", "no_answer", "no_reference", "parse_error", "error", "timeout", "memory", "blocked")
# The statuses of a scorer that failed to judge (a judge that timed out or answered unparsably, a reward model
# that errored), as opposed to a judgement of the completion (`no_answer`: it gave none, a wrong answer).
SCORER_ERRORS = ("parse_error", "error", "timeout")


@dataclass(frozen=True)
class ScoreResult:
    value: float
    raw: str  # what the scorer saw or said: the extracted answer, the judge's text, the test output
    status: str  # one of STATUSES


class Scorer(Protocol):
    id: str  # the configured name (default: the kind)
    version: str  # bumped whenever the same input could score differently

    def __call__(self, rows: list[dict]) -> list[ScoreResult]: ...


def build_scorer(cfg, context: dict | None = None) -> Scorer:
    """The scorer for one entry of scoring.scorers.

    Args:
        cfg: a scorer config (configs.scoring).
        context: what some scorers need from the run, e.g. {"reward_model_dir": path of the pipeline's
            latest trained reward model}.
    """
    context = context or {}
    if cfg.kind == "math_answer":
        from tasks.scoring.verifiable import MathAnswerScorer

        return MathAnswerScorer(cfg)
    if cfg.kind == "ifeval":
        from tasks.scoring.verifiable import IFEvalScorer

        return IFEvalScorer(cfg)
    if cfg.kind == "python_tests":
        from tasks.scoring.verifiable import CodeScorer

        return CodeScorer(cfg)
    if cfg.kind == "reward_model":
        from tasks.scoring.reward_model import RewardModelScorer

        if cfg.model == "trained" and not context.get("reward_model_dir"):
            return SkippedScorer(
                cfg.id, "no reward model trained yet: it scores from the round after the first one that trains it"
            )
        return RewardModelScorer(cfg, context)
    if cfg.kind == "judge":
        from tasks.scoring.judge import JudgeScorer

        return JudgeScorer(cfg, context)
    raise ValueError(f"unknown scorer kind {cfg.kind!r}")


class SkippedScorer:
    """Stands in for a scorer that cannot run yet (a `trained` reward model before the first one exists):
    every row gets status "no_reference", so the gap is counted and visible, never a silent 0."""

    version = "skipped"

    def __init__(self, scorer_id: str, reason: str):
        self.id, self.reason = scorer_id, reason

    def __call__(self, rows: list[dict]) -> list[ScoreResult]:
        return [ScoreResult(0.0, self.reason, "no_reference") for _ in rows]
