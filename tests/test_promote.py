"""The promotion gate, table-driven: promote unless the candidate regresses beyond the tolerance."""
import doctest

import pytest

import tasks.promote
from configs.schema import PromotionConfig
from tasks.promote import Decision, decide

CASES = [
    # (tolerance, policy accuracy, candidate accuracy, promoted, reason)
    pytest.param(0.0, 0.50, 0.60, True, "promoted: accuracy on heldout 60.00 % >= policy 50.00 % - tolerance 0.00",
                 id="improve"),
    pytest.param(0.0, 0.50, 0.50, True, "promoted: accuracy on heldout 50.00 % >= policy 50.00 % - tolerance 0.00",
                 id="equal"),
    pytest.param(0.02, 0.50, 0.49, True, "promoted: accuracy on heldout 49.00 % >= policy 50.00 % - tolerance 2.00",
                 id="within-tolerance"),
    pytest.param(0.01, 0.50, 0.49, True, "promoted: accuracy on heldout 49.00 % >= policy 50.00 % - tolerance 1.00",
                 id="at-tolerance"),
    pytest.param(0.0, 0.50, 0.4975, False,
                 "kept policy: accuracy on heldout 49.75 % < policy 50.00 % - tolerance 0.00", id="tiny-regress"),
    pytest.param(0.01, 0.50, 0.45, False,
                 "kept policy: accuracy on heldout 45.00 % < policy 50.00 % - tolerance 1.00", id="regress-beyond"),
    pytest.param(0.0, 0.0, 0.0, True, "promoted: accuracy on heldout 0.00 % >= policy 0.00 % - tolerance 0.00",
                 id="both-zero"),
]


@pytest.mark.parametrize("tolerance,policy_acc,candidate_acc,promoted,reason", CASES)
def test_decide(tolerance, policy_acc, candidate_acc, promoted, reason):
    gate = PromotionConfig(metric="eval/accuracy", tolerance=tolerance)
    d = decide(gate, "heldout", {"accuracy/heldout": policy_acc}, {"accuracy/heldout": candidate_acc}, "pol", "cand")
    assert d == Decision(promoted=promoted, policy_out="cand" if promoted else "pol", reason=reason)


@pytest.mark.parametrize("candidate_acc", [0.40, 0.50, 0.90])
def test_same_model_is_never_promoted(candidate_acc):
    d = decide(PromotionConfig(), "heldout", {"accuracy": 0.5}, {"accuracy": candidate_acc}, "m1", "m1")
    assert d == Decision(False, "m1", "kept policy: training produced no new model")


def test_metric_key_of_the_gate_set():
    # evaluate writes "accuracy/<set>" per eval set: the gate reads the configured set's value
    policy = {"accuracy/heldout": 0.9, "accuracy/gsm": 0.30}
    candidate = {"accuracy/heldout": 0.1, "accuracy/gsm": 0.35}
    d = decide(PromotionConfig(), "gsm", policy, candidate, "p", "c")
    assert (d.promoted, d.reason) == (True, "promoted: accuracy on gsm 35.00 % >= policy 30.00 % - tolerance 0.00")
    d = decide(PromotionConfig(), "heldout", policy, candidate, "p", "c")
    assert (d.promoted, d.policy_out) == (False, "p")


def test_plain_metric_key_wins_and_prefix_is_optional():
    # the plain "accuracy" key (evaluate sets it to the gate set's value) is used when present
    policy = {"accuracy": 0.5, "accuracy/other": 0.9}
    candidate = {"accuracy": 0.6, "accuracy/other": 0.1}
    assert decide(PromotionConfig(metric="accuracy"), "other", policy, candidate, "p", "c").promoted is True
    assert decide(PromotionConfig(metric="eval/accuracy"), "other", policy, candidate, "p", "c").promoted is True


def test_missing_metric_is_an_error():
    with pytest.raises(KeyError):
        decide(PromotionConfig(metric="eval/f1"), "heldout", {"accuracy": 0.5}, {"accuracy": 0.6}, "p", "c")


def test_doctests():
    result = doctest.testmod(tasks.promote)
    assert result.attempted >= 2
    assert result.failed == 0
