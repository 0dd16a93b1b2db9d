"""Scorers, combination rules and reliability metrics: literal completions, hand-computed values."""

import doctest
import json
from dataclasses import dataclass

import pytest

import tasks.score
import tasks.scoring.verifiable
from configs.scoring import MathScorerConfig, ScoringConfig
from tasks.score import (
    agreement,
    combine,
    failed_scorers,
    reliability_metrics,
    score_completions,
    scorer_error_metrics,
)
from tasks.scoring import ScoreResult, SkippedScorer, build_scorer
from tasks.scoring.verifiable import CodeScorer, IFEvalScorer, MathAnswerScorer

MATH = [
    # (completion, reference, expected ScoreResult)
    ("so it is 45", "45", ScoreResult(1.0, "45", "ok")),
    ("I think 35", "45", ScoreResult(0.0, "35", "ok")),
    ("The answer is 1,234.", "1234", ScoreResult(1.0, "1,234", "ok")),
    (r"first 3 then \boxed{0.5}", "1/2", ScoreResult(1.0, "0.5", "ok")),
    ("The answer is 45 apples. Then 12 more", "45", ScoreResult(1.0, "45", "ok")),
    ("no idea", "45", ScoreResult(0.0, "", "no_answer")),
    ("", "45", ScoreResult(0.0, "", "no_answer")),
    ("it is 7", None, ScoreResult(0.0, "7", "no_reference")),  # raw answer kept even without a reference
    (r"so \boxed{\frac{1}{20}}", "0.05", ScoreResult(1.0, r"\frac{1}{20}", "ok")),
    ("The answer is 5%", "0.05", ScoreResult(0.0, "5%", "ok")),  # percent only when the config allows it
]


def math(**kw):
    return MathAnswerScorer(MathScorerConfig(**kw))


@pytest.mark.parametrize("text,ref,expected", MATH)
def test_math_answer_scorer(text, ref, expected):
    assert math()([{"completion": text, "answer": ref}]) == [expected]


def test_math_answer_scorer_percent_is_opt_in():
    row = {"completion": "The answer is 5%", "answer": "0.05"}
    assert math(allow_percent=True)([row]) == [ScoreResult(1.0, "5%", "ok")]


def test_ifeval_scorer_reads_instructions_from_the_source_fields():
    from configs.scoring import IFEvalScorerConfig

    ids = ["length_constraints:number_words", "startend:quotation"]
    kwargs = [{"num_words": 5, "relation": "less than", "keywords": None}, {}]  # None: an unused key

    def row(completion, **provenance):
        return {"completion": completion, "prompt": "Answer.", "provenance": json.dumps(provenance)}

    rows = [
        row('"short and quoted"', instruction_id_list=ids, kwargs=kwargs),
        row('Sure:\n"short and quoted"', instruction_id_list=ids, kwargs=kwargs),  # quotation met only loose
        row("Not quoted and far too many words", instruction_id_list=ids, kwargs=kwargs),
        row("anything"),
        row("x", instruction_id_list=["keywords:rhyming"], kwargs=[{}]),
        row("x", instruction_id_list=ids, kwargs=[{"num_words": 5}, {}]),  # `relation` missing
    ]

    def values(**cfg):
        return [(r.value, r.status) for r in IFEvalScorer(IFEvalScorerConfig(**cfg))(rows)]

    assert values() == [
        (1.0, "ok"),
        (1.0, "ok"),
        (0.0, "ok"),
        (0.0, "no_reference"),
        (0.0, "parse_error"),
        (0.0, "parse_error"),
    ]
    assert values(mode="strict")[:3] == [(1.0, "ok"), (0.5, "ok"), (0.0, "ok")]
    assert values(value="all", mode="strict")[:3] == [(1.0, "ok"), (0.0, "ok"), (0.0, "ok")]
    res = IFEvalScorer(IFEvalScorerConfig())(rows)
    assert json.loads(res[1].raw) == {
        "checks": [
            {"id": "length_constraints:number_words", "strict": True, "loose": True},
            {"id": "startend:quotation", "strict": False, "loose": True},
        ],
        "errors": [],
    }
    assert json.loads(res[4].raw)["errors"] == ["instruction 0 (keywords:rhyming): unknown id"]
    assert "missing arguments ['relation']" in json.loads(res[5].raw)["errors"][0]
    # other field names; kwargs absent: no arguments, fine for instructions that take none
    other = {"completion": "no commas", "provenance": json.dumps({"ifeval_ids": '["punctuation:no_comma"]'})}
    cfg = IFEvalScorerConfig(instructions_field="ifeval_ids", kwargs_field="ifeval_kwargs")
    assert IFEvalScorer(cfg)([other])[0].value == 1.0


def test_code_scorer_runs_the_tests_in_the_sandbox():
    from configs.scoring import CodeScorerConfig

    tests = "assert add(2, 3) == 5"
    rows = [
        {"completion": "```python\ndef add(a, b):\n    return a + b\n```", "provenance": json.dumps({"tests": tests})},
        {"completion": "def add(a, b):\n    return a - b", "provenance": json.dumps({"tests": tests})},
        {"completion": "def add(a, b):\n    while True: pass", "provenance": json.dumps({"tests": tests})},
        {"completion": "def add(a, b): return 0", "provenance": "{}"},
    ]
    res = CodeScorer(CodeScorerConfig(timeout_s=1.0))(rows)
    assert [(r.value, r.status) for r in res] == [(1.0, "ok"), (0.0, "ok"), (0.0, "timeout"), (0.0, "no_reference")]


@dataclass
class ConstScorer:
    """A second scorer: the same value for every completion."""

    value: float
    id: str = "const"
    version: str = "7"

    def __call__(self, rows):
        return [ScoreResult(self.value, f"const={self.value}", "ok") for _ in rows]


ROWS = [
    {"completion_id": "c1", "prompt_id": "p1", "completion": "The answer is 5", "answer": "5"},
    {"completion_id": "c2", "prompt_id": "p1", "completion": "6", "answer": "5"},
    {"completion_id": "c3", "prompt_id": "p2", "completion": "no idea", "answer": "15"},
    {"completion_id": "c4", "prompt_id": "p3", "completion": "It is 9"},  # no answer column: no reference
]
SUM = ScoringConfig(scorers=[{"kind": "math_answer"}, {"kind": "math_answer", "name": "const"}])


def test_score_completions_long_format_and_weighted_sum():
    score_rows, rewards, _ = score_completions(ROWS, [(math(), 2.0), (ConstScorer(0.5), 0.2)], SUM)
    assert rewards == pytest.approx([2.1, 0.1, 0.1, 0.1])  # 2.0 * math + 0.2 * 0.5
    assert len(score_rows) == 8  # one row per completion x scorer, each with the completion's reward
    assert score_rows[0] == {
        "completion_id": "c1",
        "prompt_id": "p1",
        "scorer": "math_answer",
        "scorer_version": "3",
        "value": 1.0,
        "raw": "5",
        "status": "ok",
        "weight": 2.0,
        "reward": pytest.approx(2.1),
    }
    const = [r for r in score_rows if r["scorer"] == "const"]
    assert [(r["completion_id"], r["value"], r["raw"], r["weight"], r["scorer_version"]) for r in const] == [
        ("c1", 0.5, "const=0.5", 0.2, "7"),
        ("c2", 0.5, "const=0.5", 0.2, "7"),
        ("c3", 0.5, "const=0.5", 0.2, "7"),
        ("c4", 0.5, "const=0.5", 0.2, "7"),
    ]


def test_gated_combination_counts_the_others_only_past_the_gate():
    cfg = ScoringConfig(
        scorers=[{"kind": "math_answer"}, {"kind": "math_answer", "name": "const"}], combine="gated", gate="math_answer"
    )
    _, rewards, _ = score_completions(ROWS, [(math(), 1.0), (ConstScorer(0.5), 0.2)], cfg)
    assert rewards == pytest.approx([1.1, 0.0, 0.0, 0.0])
    assert combine(
        {"g": 0.4, "x": 1.0},
        {"g": 2.0, "x": 1.0},
        ScoringConfig(
            scorers=[{"kind": "math_answer", "name": "g"}, {"kind": "math_answer", "name": "x"}],
            combine="gated",
            gate="g",
            gate_threshold=0.5,
        ),
    ) == pytest.approx(0.8)


def test_scoring_config_checks_names():
    with pytest.raises(ValueError, match="distinct names"):
        ScoringConfig(scorers=[{"kind": "math_answer"}, {"kind": "math_answer"}])
    with pytest.raises(ValueError, match="scoring.gate \\('rm'\\) must name one of the scorers"):
        ScoringConfig(scorers=[{"kind": "math_answer"}], combine="gated", gate="rm")
    with pytest.raises(ValueError, match="tie_break names unknown scorers \\['judge'\\]"):
        ScoringConfig(scorers=[{"kind": "math_answer"}], tie_break=["judge"])


def test_agreement_hand_computed():
    # p: a says c0 > c1 and c0 > c2 (c1 = c2 is not told apart); b agrees on (0,1), ties (0,2). q: a ties.
    a, b = [1, 0, 0, 5, 5], [0.9, 0.1, 0.9, 1, 2]
    assert agreement(a, b, ["p", "p", "p", "q", "q"]) == (0.75, 2)
    assert agreement([1, 1], [0, 1], ["p", "p"]) == (pytest.approx(float("nan"), nan_ok=True), 0)


def test_reliability_metrics_per_scorer_and_pair():
    scorers = [(math(), 1.0), (ConstScorer(0.5), 1.0)]
    _, _, results = score_completions(ROWS, scorers, SUM)
    m = reliability_metrics(ROWS, scorers, results)
    assert m["score/math_answer/mean"] == 0.5  # c1 right, c2 wrong; c3, c4 not scored
    assert m["score/math_answer/no_answer_rate"] == 0.25 and m["score/math_answer/no_reference_rate"] == 0.25
    assert m["score/agreement/math_answer~const"] == 0.5 and m["score/agreement/math_answer~const/pairs"] == 1


def test_trained_reward_model_is_skipped_visibly_before_one_exists():
    from configs.scoring import RewardModelScorerConfig

    scorer = build_scorer(RewardModelScorerConfig(model="trained"), {})
    assert isinstance(scorer, SkippedScorer)
    assert [r.status for r in scorer(ROWS)] == ["no_reference"] * 4


def test_doctests():
    for module in (tasks.score, tasks.scoring.verifiable):
        result = doctest.testmod(module)
        assert result.attempted >= 1 and result.failed == 0, module.__name__


# --- rewards that cannot invert, failed scorers that never read as 0 --------------------------------------


@dataclass
class Given:
    """A scorer whose results are given per completion id: a reward model's logits, a judge's failures."""

    id: str
    results: dict[str, ScoreResult]
    version: str = "1"

    def __call__(self, rows):
        return [self.results[r["completion_id"]] for r in rows]


GATED_RM = ScoringConfig(
    scorers=[{"kind": "math_answer"}, {"kind": "reward_model", "name": "rm", "model": "m", "weight": 0.5}],
    combine="gated",
    gate="math_answer",
)


@pytest.mark.parametrize("logit", [-800.0, -5.0, -2.5, 0.0, 3.0, 800.0])
def test_gated_pass_always_outranks_a_fail_whatever_the_reward_model_says(logit):
    w = {"math_answer": 1.0, "rm": 0.5}
    right = combine({"math_answer": 1.0, "rm": logit}, w, GATED_RM)
    wrong = [combine({"math_answer": 0.0, "rm": x}, w, GATED_RM) for x in (-800.0, 0.0, 5.0, 800.0)]
    assert 1.0 <= right <= 1.5 and wrong == [0.0] * 4
    # 1 + 0.5 * sigmoid(logit), by hand for the logits of the issue: a raw logit gave 1 - 2.5 = -1.5 at -5
    expected = {-5.0: 1.0 + 0.5 * 0.0066929, -2.5: 1.0 + 0.5 * 0.0758582, 0.0: 1.25, 3.0: 1.0 + 0.5 * 0.9525741}
    if logit in expected:
        assert right == pytest.approx(expected[logit], abs=1e-6)


def test_gated_keeps_the_reward_model_order_among_passes():
    w = {"math_answer": 1.0, "rm": 0.5}
    passes = [combine({"math_answer": 1.0, "rm": x}, w, GATED_RM) for x in (-5.0, -1.0, 0.0, 2.0, 9.0)]
    assert passes == sorted(passes) and len(set(passes)) == 5
    assert max(passes) - min(passes) < 0.5  # two passes differ by less than rm's weight


def test_weighted_sum_stays_raw_and_guarantees_no_order():
    cfg = ScoringConfig(scorers=GATED_RM.scorers)  # weighted_sum
    w = {"math_answer": 1.0, "rm": 0.5}
    assert combine({"math_answer": 1.0, "rm": -5.0}, w, cfg) == -1.5  # below a wrong answer with rm 5 (2.5)
    assert combine({"math_answer": 0.0, "rm": 5.0}, w, cfg) == 2.5


def test_gated_needs_weights_that_keep_passes_above_fails():
    for weights in ((0.0, 0.5), (-1.0, 0.5), (1.0, -0.5)):
        with pytest.raises(ValueError, match="positive gate weight and no negative other weight"):
            ScoringConfig(
                scorers=[
                    {"kind": "math_answer", "weight": weights[0]},
                    {"kind": "reward_model", "name": "rm", "model": "m", "weight": weights[1]},
                ],
                combine="gated",
                gate="math_answer",
            )
    # weighted_sum promises no order: a negative weight (a penalty) stays allowed there
    ScoringConfig(scorers=[{"kind": "math_answer"}, {"kind": "math_answer", "name": "p", "weight": -1.0}])


def _judged(on_scorer_error):
    """p1: c1 right, its judge timed out; c2 wrong, judge unparsable. p2: c3 no answer, judge 0.4."""
    from tasks.scoring.judge import ChatReply, pointwise_results

    judged, _ = pointwise_results(
        [ChatReply(None, "timeout", "read timed out after 60 s"), ChatReply("???"), ChatReply("4")]
    )
    assert [r.status for r in judged] == ["timeout", "parse_error", "ok"]
    cfg = ScoringConfig(
        scorers=[{"kind": "math_answer"}, {"kind": "judge", "name": "judge", "weight": 0.5, "judge": {"model": "j"}}],
        on_scorer_error=on_scorer_error,
    )
    scorers = [(math(), 1.0), (Given("judge", dict(zip(["c1", "c2", "c3"], judged))), 0.5)]
    return score_completions(ROWS[:3], scorers, cfg), scorers, cfg


def test_failed_judge_is_excluded_and_counted_by_default():
    assert ScoringConfig().on_scorer_error == "exclude"
    (score_rows, rewards, results), scorers, cfg = _judged("exclude")
    assert rewards == [None, None, pytest.approx(0.2)]  # c3: 0 (no answer is a judgement) + 0.5 * 0.4
    assert {r["completion_id"]: r["reward"] for r in score_rows} == {"c1": None, "c2": None, "c3": pytest.approx(0.2)}
    assert scorer_error_metrics(3, scorers, results, cfg) == {"score/reward/excluded_scorer_error": 2}


def test_failed_judge_scores_zero_when_configured_and_is_counted():
    (_, rewards, results), scorers, cfg = _judged("zero")
    assert rewards == pytest.approx([1.0, 0.0, 0.2])  # the judge's term is 0 where it failed
    assert scorer_error_metrics(3, scorers, results, cfg) == {"score/reward/zeroed_scorer_error": 2}


def test_only_failures_the_reward_reads_count():
    w = {"math_answer": 1.0, "rm": 0.5}
    zero = GATED_RM.model_copy(update={"on_scorer_error": "zero"})
    # under gated a fail's reward is the gate's term alone: its reward model failing changes nothing
    assert combine({"math_answer": 0.0, "rm": 0.0}, w, GATED_RM, {"rm"}) == 0.0
    assert combine({"math_answer": 1.0, "rm": 0.0}, w, GATED_RM, {"rm"}) is None
    assert combine({"math_answer": 1.0, "rm": 0.0}, w, zero, {"rm"}) == 1.0  # 0, not sigmoid(0) = 0.5
    # a failed gate: excluded, or a fail worth 0
    assert combine({"math_answer": 0.0, "rm": 3.0}, w, GATED_RM, {"math_answer"}) is None
    assert combine({"math_answer": 0.0, "rm": 3.0}, w, zero, {"math_answer"}) == 0.0
    # a watched scorer (weight 0) is never read
    assert combine({"math_answer": 1.0, "rm": 0.0}, {"math_answer": 1.0, "rm": 0.0}, GATED_RM, {"rm"}) == 1.0


def test_code_timeouts_are_judgements_not_scorer_failures():
    from configs.scoring import CodeScorerConfig

    # An endless loop fails its tests: it stays rejectable, unlike a judge that timed out (SCORER_ERRORS).
    scorers = [(CodeScorer(CodeScorerConfig()), 1.0), (Given("judge", {}), 1.0)]
    results = {
        "python_tests": [ScoreResult(0.0, "timeout: over 5 s", "timeout")],
        "judge": [ScoreResult(0.0, "read timed out", "timeout")],
    }
    assert failed_scorers(scorers, results, 1) == [{"judge"}]


def test_code_scorer_a_sandbox_that_cannot_start_is_a_scorer_error_not_a_zero(monkeypatch):
    """fork failing (EAGAIN at a process limit) judged no code: status error, which selection excludes."""
    from configs.scoring import CodeScorerConfig
    from tasks.scoring import sandbox

    def no_fork(*args, **kwargs):
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(sandbox.subprocess, "Popen", no_fork)
    row = {
        "completion": "def add(a, b):\n    return a + b",
        "provenance": json.dumps({"tests": "assert add(1, 1) == 2"}),
    }
    scorer = CodeScorer(CodeScorerConfig(timeout_s=1.0))
    [res] = scorer([row])
    assert (res.value, res.status) == (0.0, "error") and res.raw.startswith("unavailable: sandbox failed to start")
    assert res.status in scorer.errors
