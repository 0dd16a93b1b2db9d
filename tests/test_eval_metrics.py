"""Intervals, IFEval's four figures, pass@k / maj@k, and the gate's significance rule, on literal inputs."""

import math

import pytest

from configs.schema import PromotionConfig
from tasks.promote import decide
from tasks.scoring.eval_metrics import ifeval_metrics, proportion, sampled_metrics
from tasks.scoring.ifeval import IFEvalResult, InstructionCheck
from tasks.scoring.stats import difference_lower_bound, pass_at_k, wilson


@pytest.mark.parametrize(
    "k, n, lo, hi",
    [(0, 10, 0.0, 0.2775), (10, 10, 0.7225, 1.0), (45, 50, 0.7864, 0.9565), (1, 2, 0.0945, 0.9055)],
)
def test_wilson_interval_matches_published_values(k, n, lo, hi):
    got = wilson(k, n)
    assert got == pytest.approx((lo, hi), abs=1e-4)


def test_interval_narrows_with_more_prompts():
    assert wilson(80, 100)[1] - wilson(80, 100)[0] > wilson(800, 1000)[1] - wilson(800, 1000)[0]


def test_difference_bound_needs_a_real_gap():
    same = difference_lower_bound(0.5, wilson(50, 100), 0.5, wilson(50, 100))
    assert same < -0.13
    big = difference_lower_bound(0.9, wilson(900, 1000), 0.7, wilson(700, 1000))
    assert 0.15 < big < 0.2


def test_pass_at_k_is_unbiased_on_a_small_case():
    # 4 samples, 1 correct: pass@2 = 1 - C(3,2)/C(4,2) = 1 - 3/6.
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    assert pass_at_k(4, 0, 4) == 0.0 and pass_at_k(4, 1, 4) == 1.0
    with pytest.raises(ValueError, match="pass@8 needs at least 8"):
        pass_at_k(4, 1, 8)


def test_sampled_metrics_pass_and_majority():
    passed = [[True, False, False, False], [True, True, True, False], [False] * 4]
    answers = [["45", "35", "35", "35"], ["45", "45", "45", "1"], ["1", "2", "3", "4"]]
    m = sampled_metrics("h", passed, answers)
    assert m["pass@1/h"] == pytest.approx((0.25 + 0.75 + 0) / 3)
    assert m["pass@4/h"] == pytest.approx(2 / 3)
    assert m["maj@4/h"] == pytest.approx(1 / 3)  # only prompt 2's majority answer is right
    assert m["maj@1/h"] == pytest.approx(2 / 3)
    assert set(m) == {f"{w}@{k}/h" for w in ("pass", "maj") for k in (1, 2, 4)}


def _result(*checks, errors=()):
    return IFEvalResult([InstructionCheck(i, s, lo) for i, s, lo in checks], list(errors))


def test_ifeval_metrics_report_prompt_and_instruction_levels():
    checked = [
        _result(("punctuation:no_comma", True, True), ("startend:quotation", False, True)),
        _result(("punctuation:no_comma", False, False)),
        _result(("startend:quotation", True, True)),
        _result(("keywords:existence", False, False), errors=["instruction 0: missing arguments"]),
    ]
    m = ifeval_metrics("h", checked, "instruction_loose")
    assert m["ifeval/h/prompt_strict"] == 0.25
    assert m["ifeval/h/prompt_loose"] == 0.5
    assert m["ifeval/h/instruction_strict"] == 0.4
    assert m["ifeval/h/instruction_loose"] == 0.6
    assert m["ifeval/h/instruction_loose/n"] == 5 and m["ifeval/h/prompt_loose/n"] == 4
    assert m["ifeval/h"] == 0.6 and m["ifeval/h/ci_low"] == m["ifeval/h/instruction_loose/ci_low"]
    assert m["ifeval/h/type/punctuation:no_comma"] == 0.5 and m["ifeval/h/type/startend:quotation"] == 1.0
    assert m["ifeval/h/errors"] == 1
    assert ifeval_metrics("h", checked, "prompt_strict")["ifeval/h"] == 0.25


def test_gate_requires_the_gain_to_clear_the_noise():
    metric_of = {"h": "accuracy"}
    policy, small, large = (
        proportion("accuracy/h", 50, 100),
        proportion("accuracy/h", 56, 100),
        proportion("accuracy/h", 75, 100),
    )
    plain = PromotionConfig()
    strict = PromotionConfig(require_significant=True)
    assert decide(plain, metric_of, "h", policy, small, "p", "c").promoted
    d = decide(strict, metric_of, "h", policy, small, "p", "c")
    assert not d.promoted and "inside the noise" in d.reason
    d = decide(strict, metric_of, "h", policy, large, "p", "c")
    assert d.promoted and "clears the noise" in d.reason
    no_ci = {"accuracy/h": 0.9}
    d = decide(strict, metric_of, "h", {"accuracy/h": 0.5}, no_ci, "p", "c")
    assert not d.promoted and "no interval recorded" in d.reason
    assert math.isclose(proportion("accuracy/h", 3, 4)["accuracy/h"], 0.75)
