"""The promotion gate, table-driven (primary metric with improvement or tolerance, guards on other eval
sets, win rates against the 0.5 baseline), and the manual promotion recorded in the catalog."""

import doctest

import pytest

import tasks.promote
from configs.schema import PromotionConfig
from tasks.promote import Decision, decide

METRIC_OF = {"heldout": "accuracy", "gsm": "accuracy", "chat": "reward", "arena": "win_rate"}

CASES = [
    # (gate settings, policy metrics, candidate metrics, promoted, reason)
    pytest.param(
        {},
        {"accuracy/heldout": 0.50},
        {"accuracy/heldout": 0.60},
        True,
        "promoted: accuracy/heldout 60.00 % >= 50.00 % + 0.00 (ok)",
        id="improve",
    ),
    pytest.param(
        {},
        {"accuracy/heldout": 0.50},
        {"accuracy/heldout": 0.50},
        True,
        "promoted: accuracy/heldout 50.00 % >= 50.00 % + 0.00 (ok)",
        id="equal-passes",
    ),
    pytest.param(
        {"tolerance": 0.02},
        {"accuracy/heldout": 0.50},
        {"accuracy/heldout": 0.49},
        True,
        "promoted: accuracy/heldout 49.00 % >= 50.00 % - 2.00 (ok)",
        id="within-tolerance",
    ),
    pytest.param(
        {},
        {"accuracy/heldout": 0.50},
        {"accuracy/heldout": 0.4975},
        False,
        "kept policy: accuracy/heldout 49.75 % < 50.00 % + 0.00 (not enough)",
        id="tiny-regress",
    ),
    pytest.param(
        {"min_improvement": 0.02},
        {"accuracy/heldout": 0.50},
        {"accuracy/heldout": 0.51},
        False,
        "kept policy: accuracy/heldout 51.00 % < 50.00 % + 2.00 (not enough)",
        id="improvement-too-small",
    ),
    pytest.param(
        {"min_improvement": 0.02},
        {"accuracy/heldout": 0.50},
        {"accuracy/heldout": 0.53},
        True,
        "promoted: accuracy/heldout 53.00 % >= 50.00 % + 2.00 (ok)",
        id="improvement-enough",
    ),
    pytest.param(
        {"guards": [{"eval_set": "chat", "max_drop": 0.1}]},
        {"accuracy/heldout": 0.5, "reward/chat": 1.0},
        {"accuracy/heldout": 0.6, "reward/chat": 0.95},
        True,
        "promoted: accuracy/heldout 60.00 % >= 50.00 % + 0.00 (ok); reward/chat 0.9500 >= 1.0000 - 0.1000 (ok)",
        id="guard-holds",
    ),
    pytest.param(
        {"guards": [{"eval_set": "chat", "max_drop": 0.1}, {"eval_set": "gsm"}]},
        {"accuracy/heldout": 0.5, "reward/chat": 1.0, "accuracy/gsm": 0.3},
        {"accuracy/heldout": 0.6, "reward/chat": 1.2, "accuracy/gsm": 0.29},
        False,
        "kept policy: accuracy/heldout 60.00 % >= 50.00 % + 0.00 (ok); reward/chat 1.2000 >= 1.0000 - "
        "0.1000 (ok); accuracy/gsm 29.00 % < 30.00 % - 0.0000 (regressed)",
        id="one-guard-regresses",
    ),
    pytest.param(
        {"eval_set": "arena", "min_improvement": 0.05},
        {},
        {"win_rate/arena": 0.58},
        True,
        "promoted: win_rate/arena 58.00 % >= 50.00 % + 5.00 (ok)",
        id="win-rate-against-0.5",
    ),
    pytest.param(
        {"eval_set": "arena", "min_improvement": 0.05},
        {},
        {"win_rate/arena": 0.54},
        False,
        "kept policy: win_rate/arena 54.00 % < 50.00 % + 5.00 (not enough)",
        id="win-rate-too-low",
    ),
]


@pytest.mark.parametrize("gate,policy,candidate,promoted,reason", CASES)
def test_decide(gate, policy, candidate, promoted, reason):
    g = PromotionConfig(**gate)
    d = decide(g, METRIC_OF, g.eval_set or "heldout", policy, candidate, "pol", "cand")
    assert d == Decision(promoted=promoted, policy_out="cand" if promoted else "pol", reason=reason)


def test_same_model_is_never_promoted():
    d = decide(PromotionConfig(), METRIC_OF, "heldout", {"accuracy/heldout": 0.5}, {"accuracy/heldout": 0.9}, "m", "m")
    assert d == Decision(False, "m", "kept policy: training produced no new model")


def test_gate_settings_are_checked():
    with pytest.raises(ValueError, match=r"min_improvement \(0.01\) and promotion.tolerance \(0.02\) are both set"):
        PromotionConfig(min_improvement=0.01, tolerance=0.02)


def test_manual_promotion_changes_the_next_policy(tmp_path):
    from storage.catalog import Catalog

    cat = Catalog(tmp_path / "c.duckdb")
    for r, (cand, out) in enumerate([("c1", "c1"), ("c2", "c1"), ("c3", "c3")], start=1):
        cat.start_round("p", r, "h", "in", "flow")
        cat.finish_round("p", r, candidate=cand, policy_out=out, promoted=cand == out, reason="x", manifest_uri="u")
    assert cat.current_policy("p") == "c3"
    row = cat.record_promotion("p", 2, "candidate", "alice", "c3 fails the safety suite")
    assert (row["policy"], row["after_round"], row["who"], row["why"]) == (
        "c2",
        3,
        "alice",
        "c3 fails the safety suite",
    )
    assert cat.current_policy("p") == "c2"
    assert cat.record_promotion("p", 1, "policy", "bob", "back to round 1")["policy"] == "c1"
    assert cat.current_policy("p") == "c1" and [x["who"] for x in cat.promotions("p")] == ["alice", "bob"]
    # A round completed after the manual promotion takes over again.
    cat.start_round("p", 4, "h", "c1", "flow")
    cat.finish_round("p", 4, candidate="c4", policy_out="c4", promoted=True, reason="x", manifest_uri="u")
    assert cat.current_policy("p") == "c4"
    with pytest.raises(ValueError, match=r"pipeline 'p' has no round 9 \(rounds: \[1, 2, 3, 4\]\)"):
        cat.record_promotion("p", 9, "candidate", "alice", "?")


def test_doctests():
    result = doctest.testmod(tasks.promote)
    assert result.attempted >= 2 and result.failed == 0
