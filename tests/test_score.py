"""Scorers and long-format score rows: literal completions, hand-computed values and combined rewards."""
import doctest
from dataclasses import dataclass

import pytest

import tasks.score
from configs.schema import ScorerConfig
from tasks.score import MathAnswerScorer, ScoreResult, build_scorer, score_completions

MATH = [
    # (completion, reference, expected ScoreResult)
    ("so it is 45", "45", ScoreResult(1.0, "45", "ok")),
    ("I think 35", "45", ScoreResult(0.0, "35", "ok")),
    ("The answer is 1,234.", "1234", ScoreResult(1.0, "1,234", "ok")),
    (r"first 3 then \boxed{0.5}", "1/2", ScoreResult(1.0, "0.5", "ok")),
    ("The answer is 45 apples. Then 12 more", "45", ScoreResult(1.0, "45", "ok")),
    ("The answer is blue.", "45", ScoreResult(0.0, "blue", "ok")),  # an answer, just not a number
    ("no idea", "45", ScoreResult(0.0, "", "no_answer")),
    ("", "45", ScoreResult(0.0, "", "no_answer")),
    (r"\boxed{}", "45", ScoreResult(0.0, "", "no_answer")),
    ("it is 7", None, ScoreResult(0.0, "7", "no_reference")),  # raw answer kept even without a reference
    ("no idea", None, ScoreResult(0.0, "", "no_reference")),
]


@pytest.mark.parametrize("text,ref,expected", MATH)
def test_math_answer_scorer(text, ref, expected):
    assert MathAnswerScorer()([text], [ref]) == [expected]



@pytest.mark.parametrize(
    "text,ref,expected",
    [
        pytest.param(r"so \boxed{\frac{1}{20}}", "1/20", ScoreResult(1.0, r"\frac{1}{20}", "ok")),
        pytest.param(r"\boxed{\dfrac{3}{4}}", "0.75", ScoreResult(1.0, r"\dfrac{3}{4}", "ok")),
        pytest.param("The answer is blue.", "Blue", ScoreResult(1.0, "blue", "ok")),
    ],
)
def test_math_answer_scorer_agrees_with_math_equal(text, ref, expected):
    # the verifier itself gets these right: the scorer must give the same verdict
    from tasks.verifiers import math_equal

    assert math_equal(text, ref)
    assert MathAnswerScorer()([text], [ref]) == [expected]


def test_math_answer_scorer_batch_keeps_order():
    texts = [t for t, _, _ in MATH]
    refs = [r for _, r, _ in MATH]
    assert MathAnswerScorer()(texts, refs) == [e for _, _, e in MATH]
    assert MathAnswerScorer()([], []) == []


def test_math_answer_scorer_satisfies_the_protocol():
    s = build_scorer(ScorerConfig(kind="math_answer", weight=3.0))
    assert isinstance(s, MathAnswerScorer)
    assert (s.id, s.version) == ("math_answer", "1")


@dataclass
class ConstScorer:
    """A second scorer: the same value for every completion."""

    value: float
    id: str = "const"
    version: str = "7"

    def __call__(self, completions, answers):
        return [ScoreResult(self.value, f"const={self.value}", "ok") for _ in completions]


ROWS = [
    {"completion_id": "c1", "prompt_id": "p1", "completion": "The answer is 5", "answer": "5"},
    {"completion_id": "c2", "prompt_id": "p1", "completion": "6", "answer": "5"},
    {"completion_id": "c3", "prompt_id": "p2", "completion": "no idea", "answer": "15"},
    {"completion_id": "c4", "prompt_id": "p3", "completion": "It is 9"},  # no answer column: no reference
]


def test_score_completions_one_scorer():
    score_rows, rewards = score_completions(ROWS, [(MathAnswerScorer(), 1.0)])
    assert rewards == [1.0, 0.0, 0.0, 0.0]
    assert score_rows == [
        {"completion_id": "c1", "prompt_id": "p1", "scorer": "math_answer", "scorer_version": "1", "value": 1.0,
         "raw": "5", "status": "ok", "weight": 1.0},
        {"completion_id": "c2", "prompt_id": "p1", "scorer": "math_answer", "scorer_version": "1", "value": 0.0,
         "raw": "6", "status": "ok", "weight": 1.0},
        {"completion_id": "c3", "prompt_id": "p2", "scorer": "math_answer", "scorer_version": "1", "value": 0.0,
         "raw": "", "status": "no_answer", "weight": 1.0},
        {"completion_id": "c4", "prompt_id": "p3", "scorer": "math_answer", "scorer_version": "1", "value": 0.0,
         "raw": "9", "status": "no_reference", "weight": 1.0},
    ]


def test_score_completions_two_scorers_long_format_and_weighted_sum():
    score_rows, rewards = score_completions(ROWS, [(MathAnswerScorer(), 2.0), (ConstScorer(0.5), 0.2)])
    # one row per completion x scorer
    assert len(score_rows) == 8
    assert sorted((r["completion_id"], r["scorer"]) for r in score_rows) == sorted(
        (c, s) for c in ("c1", "c2", "c3", "c4") for s in ("math_answer", "const"))
    const = [r for r in score_rows if r["scorer"] == "const"]
    assert [(r["completion_id"], r["value"], r["raw"], r["weight"], r["scorer_version"]) for r in const] == [
        ("c1", 0.5, "const=0.5", 0.2, "7"), ("c2", 0.5, "const=0.5", 0.2, "7"),
        ("c3", 0.5, "const=0.5", 0.2, "7"), ("c4", 0.5, "const=0.5", 0.2, "7")]
    # 2.0 * math + 0.2 * 0.5
    assert rewards == pytest.approx([2.1, 0.1, 0.1, 0.1])


def test_score_completions_negative_weight_penalises():
    _, rewards = score_completions(ROWS[:2], [(MathAnswerScorer(), 1.0), (ConstScorer(1.0), -0.25)])
    assert rewards == pytest.approx([0.75, -0.25])


def test_score_completions_no_rows():
    assert score_completions([], [(MathAnswerScorer(), 1.0)]) == ([], [])


def test_build_scorer_rejects_unknown_kind():
    cfg = ScorerConfig.model_construct(kind="llm_judge", weight=1.0)
    with pytest.raises(ValueError, match="unknown scorer kind 'llm_judge'"):
        build_scorer(cfg)


def test_doctests():
    result = doctest.testmod(tasks.score)
    assert result.attempted >= 1
    assert result.failed == 0
