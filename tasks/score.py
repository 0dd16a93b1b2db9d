"""Score every completion with the configured scorers (here: verifiable math answers).

A scorer is a plain callable `fn(completions, answers) -> list[ScoreResult]` with an id and a version;
later scorers (reward models, LLM judges) plug in behind the same interface. Score rows keep each
scorer's value, raw output and parse status, so a surprising reward can be explained.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import pyarrow as pa
from prefect import task

from configs.schema import FlywheelConfig, ScorerConfig
from storage.runtime import open_runtime
from tasks import common
from tasks.verifiers import extract_answer, math_equal


@dataclass(frozen=True)
class ScoreResult:
    value: float
    raw: str
    status: Literal["ok", "no_answer", "no_reference"]


class Scorer(Protocol):
    id: str
    version: str

    def __call__(self, completions: list[str], answers: list[str | None]) -> list[ScoreResult]: ...


class MathAnswerScorer:
    """1.0 when the final number in the completion equals the reference answer, else 0.0.

    >>> MathAnswerScorer()(["so it is 45", "I think 35", "no idea"], ["45", "45", "45"])[0]
    ScoreResult(value=1.0, raw='45', status='ok')
    """

    id = "math_answer"
    version = "1"

    def __call__(self, completions: list[str], answers: list[str | None]) -> list[ScoreResult]:
        out = []
        for text, ref in zip(completions, answers):
            extracted = extract_answer(text)
            if ref is None:
                out.append(ScoreResult(0.0, extracted or "", "no_reference"))
            elif extracted is None:
                out.append(ScoreResult(0.0, "", "no_answer"))
            else:
                out.append(ScoreResult(1.0 if math_equal(text, ref) else 0.0, extracted, "ok"))
        return out


def build_scorer(cfg: ScorerConfig) -> Scorer:
    if cfg.kind == "math_answer":
        return MathAnswerScorer()
    raise ValueError(f"unknown scorer kind {cfg.kind!r}")


def score_completions(rows: list[dict], scorers: list[tuple[Scorer, float]]) -> tuple[list[dict], list[float]]:
    """Long-format score rows (one per completion and scorer) and each completion's combined reward.

    The combined reward is the weighted sum of the scorers' values.
    """
    texts = [r["completion"] for r in rows]
    answers = [r.get("answer") for r in rows]
    score_rows: list[dict] = []
    rewards = [0.0] * len(rows)
    for scorer, weight in scorers:
        for i, (row, res) in enumerate(zip(rows, scorer(texts, answers))):
            rewards[i] += weight * res.value
            score_rows.append({
                "completion_id": row["completion_id"], "prompt_id": row["prompt_id"], "scorer": scorer.id,
                "scorer_version": scorer.version, "value": res.value, "raw": res.raw, "status": res.status,
                "weight": weight,
            })
    return score_rows, rewards


@task(name="score-completions")
def score_task(cfg: FlywheelConfig, round_num: int, completions_id: str) -> str:
    rt = open_runtime(cfg)

    def compute() -> common.StepOutput:
        rows = rt.artifacts.get_table(completions_id).to_pylist()
        scorers = [(build_scorer(s), s.weight) for s in cfg.scoring.scorers]
        score_rows, rewards = score_completions(rows, scorers)
        ref = rt.artifacts.put_table(pa.Table.from_pylist(score_rows), kind="scores")
        n = max(len(rows), 1)
        statuses = [r["status"] for r in score_rows]
        by_prompt: dict[str, float] = {}
        for row, reward in zip(rows, rewards):
            by_prompt[row["prompt_id"]] = max(by_prompt.get(row["prompt_id"], 0.0), reward)
        return common.StepOutput(
            artifacts={"scores": ref},
            summary={"rows_in": len(rows), "rows_out": len(score_rows), "metrics": {
                "score/mean_reward": sum(rewards) / n,
                "score/pass_at_n": sum(v > 0 for v in by_prompt.values()) / max(len(by_prompt), 1),
                "score/parse_failures": statuses.count("no_answer"),
            }},
        )

    result = common.run_step(
        rt, pipeline=cfg.pipeline, round_num=round_num, step="score", config=cfg.scoring,
        inputs={"completions": completions_id}, compute=compute,
        code=common.code_version(__name__, "tasks.verifiers"),
    )
    return result.outputs["scores"]
