"""Best-of-N SFT rows and DPO pairs from a hand-built set of 3 prompts x 4 scored completions."""

import hashlib

import pyarrow as pa
import pytest

from configs.scoring import MathScorerConfig, ScoringConfig
from tasks.score import score_completions
from tasks.scoring.verifiable import MathAnswerScorer
from tasks.select import (
    PAIR_SCHEMA,
    SFT_SCHEMA,
    combined_rewards,
    select_pairs,
    select_sft,
    selection_summary,
    tie_breakers,
)

PROMPTS = {
    "p1": ("What is 2+3?", "pool", "cc0"),
    "p2": ("What is 7+8?", "pool", "cc0"),
    "p3": ("What is 9+9?", "extra", "mit"),
}


def c(cid: str, pid: str, text: str) -> dict:
    prompt, source, license_ = PROMPTS[pid]
    return {
        "completion_id": cid,
        "prompt_id": pid,
        "prompt": prompt,
        "completion": text,
        "source": source,
        "license": license_,
    }


# p1: three right answers, "The answer is 5" twice -> the most frequent beats the shorter "5".
# p2: one right answer; the wrong "14" appears twice, "13" once.
# p3: nothing right.
COMPLETIONS = [
    c("c1a", "p1", "The answer is 5"),
    c("c1b", "p1", " 5 "),
    c("c1c", "p1", "The answer is 5"),
    c("c1d", "p1", "6"),
    c("c2a", "p2", "15"),
    c("c2b", "p2", "13"),
    c("c2c", "p2", "14"),
    c("c2d", "p2", "14 "),
    c("c3a", "p3", "17"),
    c("c3b", "p3", "17"),
    c("c3c", "p3", "19"),
    c("c3d", "p3", "no idea"),
]
REWARDS = {
    "c1a": 1.0,
    "c1b": 1.0,
    "c1c": 1.0,
    "c1d": 0.0,
    "c2a": 1.0,
    "c2b": 0.0,
    "c2c": 0.0,
    "c2d": 0.0,
    "c3a": 0.0,
    "c3b": 0.0,
    "c3c": 0.0,
    "c3d": 0.0,
}


def row_id(*parts: str) -> str:
    return hashlib.sha256(("[" + ",".join(f'"{p}"' for p in parts) + "]").encode()).hexdigest()[:20]


# --- combined_rewards ---------------------------------------------------------------------------


def test_combined_rewards_are_the_rewards_the_score_stage_stored():
    # Every score row of a completion carries its combined reward: select reads it, never recombines (a gated
    # combination is no weighted sum: y's reward is 0 although its `len` value is not).
    score_rows = [
        {"completion_id": "x", "scorer": "math", "value": 1.0, "weight": 1.0, "reward": 1.1},
        {"completion_id": "y", "scorer": "math", "value": 0.0, "weight": 1.0, "reward": 0.0},
        {"completion_id": "x", "scorer": "len", "value": 0.5, "weight": 0.2, "reward": 1.1},
        {"completion_id": "y", "scorer": "len", "value": 1.0, "weight": 0.2, "reward": 0.0},
    ]
    assert combined_rewards(score_rows) == pytest.approx({"x": 1.1, "y": 0.0})
    assert combined_rewards([]) == {}


def test_combined_rewards_match_score_completions():
    # select reads the long-format rows that score writes: both must agree on the combined reward
    rows = [{**comp, "answer": "5"} for comp in COMPLETIONS[:4]]
    score_rows, rewards, _ = score_completions(rows, [(MathAnswerScorer(MathScorerConfig()), 2.0)], ScoringConfig())
    assert combined_rewards(score_rows) == {"c1a": 2.0, "c1b": 2.0, "c1c": 2.0, "c1d": 0.0}
    assert rewards == [2.0, 2.0, 2.0, 0.0]


# --- select_sft ---------------------------------------------------------------------------------


def test_select_sft_best_of_n():
    rows = select_sft(COMPLETIONS, REWARDS, min_reward=1.0)
    assert [(r["prompt_id"], r["completion_id"]) for r in rows] == [("p1", "c1a"), ("p2", "c2a")]  # p3: no reward 1
    first = rows[0]
    assert first["messages"] == [
        {"role": "user", "content": "What is 2+3?"},
        {"role": "assistant", "content": "The answer is 5"},
    ]
    assert first["row_id"] == row_id("sft", "c1a")
    assert (first["reward"], first["source"], first["license"]) == (1.0, "pool", "cc0")
    assert len({r["row_id"] for r in rows}) == 2


@pytest.mark.parametrize(
    "min_reward,expected",
    [
        (0.0, ["c1a", "c2a", "c3a"]),  # p3: every completion is 0.0; the most frequent ("17") wins, then the id
        (1.0, ["c1a", "c2a"]),  # the threshold itself is kept
        (1.01, []),
    ],
)
def test_select_sft_min_reward(min_reward, expected):
    assert [r["completion_id"] for r in select_sft(COMPLETIONS, REWARDS, min_reward)] == expected


def test_select_sft_prefers_higher_reward_over_frequency():
    comps = [c("a", "p1", "6"), c("b", "p1", "6"), c("c", "p1", "6"), c("d", "p1", "5")]
    rows = select_sft(comps, {"a": 0.2, "b": 0.2, "c": 0.2, "d": 0.9}, min_reward=0.5)
    assert [r["completion_id"] for r in rows] == ["d"]


def test_select_sft_tie_goes_to_shorter_text_then_id():
    comps = [c("a", "p1", "It is 5"), c("b", "p1", "5"), c("c", "p1", "The sum is 5")]
    assert select_sft(comps, {"a": 1.0, "b": 1.0, "c": 1.0}, 1.0)[0]["completion_id"] == "b"
    # identical texts: the smaller id
    comps = [c("z9", "p1", "5"), c("a1", "p1", "5"), c("m5", "p1", "5")]
    assert select_sft(comps, {"z9": 1.0, "a1": 1.0, "m5": 1.0}, 1.0)[0]["completion_id"] == "a1"


def test_select_sft_strips_the_answer():
    row = select_sft([c("a", "p1", "  5\n")], {"a": 1.0}, 1.0)[0]
    assert row["messages"][1]["content"] == "5"


def test_select_sft_frequency_counts_stripped_text():
    # " 5 " and "5" are one answer with 2 votes against 1 for "It is 5"; stripped they are equally
    # long, so the completion id decides, and the trained answer is the stripped text
    comps = [c("a", "p1", "It is 5"), c("b", "p1", " 5 "), c("c", "p1", "5")]
    row = select_sft(comps, {"a": 1.0, "b": 1.0, "c": 1.0}, 1.0)[0]
    assert row["completion_id"] == "b"
    assert row["messages"][1]["content"] == "5"


def test_select_sft_rows_fit_the_sft_schema():
    rows = select_sft(COMPLETIONS, REWARDS, 1.0)
    table = pa.Table.from_pylist(rows, schema=SFT_SCHEMA)
    assert table.num_rows == 2
    assert table.column("messages").to_pylist()[1][1] == {"role": "assistant", "content": "15"}
    assert select_sft([], {}, 1.0) == []


# --- select_pairs -------------------------------------------------------------------------------


def test_select_pairs_best_vs_worst():
    pairs = select_pairs(COMPLETIONS, REWARDS, min_margin=0.5, per_prompt=1)
    assert [(p["prompt_id"], p["chosen_id"], p["rejected_id"], p["margin"]) for p in pairs] == [
        ("p1", "c1a", "c1d", 1.0),
        ("p2", "c2a", "c2c", 1.0),  # "14" (twice) is rejected before "13" (once)
    ]
    p = pairs[0]
    assert p["prompt"] == [{"role": "user", "content": "What is 2+3?"}]
    assert p["chosen"] == [{"role": "assistant", "content": "The answer is 5"}]
    assert p["rejected"] == [{"role": "assistant", "content": "6"}]
    assert p["row_id"] == row_id("pair", "c1a", "c1d")
    assert (p["source"], p["license"]) == ("pool", "cc0")


def test_select_pairs_per_prompt_limit_and_distinct_rejected_texts():
    pairs = select_pairs(COMPLETIONS, REWARDS, min_margin=0.5, per_prompt=3)
    # p1 has one wrong answer; p2's second "14" (c2d) is a duplicate text and is skipped for "13"
    assert [(p["chosen_id"], p["rejected_id"]) for p in pairs] == [("c1a", "c1d"), ("c2a", "c2c"), ("c2a", "c2b")]
    assert [p["rejected"][0]["content"] for p in pairs if p["prompt_id"] == "p2"] == ["14", "13"]
    assert len({p["row_id"] for p in pairs}) == 3

    assert len(select_pairs(COMPLETIONS, REWARDS, 0.5, per_prompt=2)) == 3
    assert select_pairs(COMPLETIONS, REWARDS, 0.5, per_prompt=0) == []


@pytest.mark.parametrize(
    "worst_reward,expected",
    [
        (0.6, []),  # margin 0.4 < 0.5
        (0.5, [("a", "b", 0.5)]),  # margin == min_margin is enough
        (0.25, [("a", "b", 0.75)]),
    ],
)
def test_select_pairs_margin_threshold(worst_reward, expected):
    comps = [c("a", "p1", "5"), c("b", "p1", "6")]
    pairs = select_pairs(comps, {"a": 1.0, "b": worst_reward}, min_margin=0.5, per_prompt=1)
    assert [(p["chosen_id"], p["rejected_id"], p["margin"]) for p in pairs] == expected


def test_select_pairs_stops_at_the_first_rejection_below_the_margin():
    # worst first: d (0.0) qualifies, then c (0.7, margin 0.3) stops the walk before b
    comps = [c("a", "p1", "5"), c("b", "p1", "4"), c("c", "p1", "3"), c("d", "p1", "2")]
    pairs = select_pairs(comps, {"a": 1.0, "b": 0.8, "c": 0.7, "d": 0.0}, min_margin=0.5, per_prompt=3)
    assert [(p["rejected_id"], p["margin"]) for p in pairs] == [("d", 1.0)]


def test_select_pairs_never_rejects_the_chosen_text():
    # a judge may score the same answer lower elsewhere: the same text is never both chosen and rejected
    comps = [c("a", "p1", "5"), c("b", "p1", " 5"), c("c", "p1", "7")]
    pairs = select_pairs(comps, {"a": 1.0, "b": 0.1, "c": 0.2}, min_margin=0.5, per_prompt=2)
    assert [(p["chosen_id"], p["rejected_id"]) for p in pairs] == [("a", "c")]
    assert all(p["chosen"][0]["content"] != p["rejected"][0]["content"] for p in pairs)


def test_select_pairs_none_without_a_margin():
    # p3: all wrong; margin 0 < any positive min_margin
    p3 = [x for x in COMPLETIONS if x["prompt_id"] == "p3"]
    assert select_pairs(p3, REWARDS, min_margin=0.1, per_prompt=4) == []
    # even with min_margin 0, identical-reward completions only pair when their texts differ
    pairs = select_pairs(p3, REWARDS, min_margin=0.0, per_prompt=4)
    assert [(p["chosen"][0]["content"], p["rejected"][0]["content"], p["margin"]) for p in pairs] == [
        ("17", "19", 0.0),
        ("17", "no idea", 0.0),
    ]


def test_select_pairs_rows_fit_the_pair_schema():
    pairs = select_pairs(COMPLETIONS, REWARDS, 0.5, 3)
    table = pa.Table.from_pylist(pairs, schema=PAIR_SCHEMA)
    assert table.num_rows == 3
    assert table.column("margin").to_pylist() == [1.0, 1.0, 1.0]


# --- selection_summary --------------------------------------------------------------------------


def test_truncated_completions_are_never_trained_toward_unless_allowed():
    # p1: both right answers ran into max_tokens; p2: its only right answer did, and so did a wrong one.
    cut = {"c1a", "c1c", "c1b", "c2a", "c2b"}
    rows = [{**x, "finish_reason": "length" if x["completion_id"] in cut else "stop"} for x in COMPLETIONS]
    assert [r["completion_id"] for r in select_sft(rows, REWARDS, min_reward=1.0)] == []
    assert [r["completion_id"] for r in select_sft(rows, REWARDS, min_reward=0.0)] == ["c1d", "c2c", "c3a"]
    assert [r["completion_id"] for r in select_sft(rows, REWARDS, 1.0, allow_truncated=True)] == ["c1a", "c2a"]
    # A truncated answer can still be rejected: with c2b scored -1, p2's best finished answer ("14") beats it.
    pairs = select_pairs(rows, {**REWARDS, "c2b": -1.0}, min_margin=0.5, per_prompt=1)
    assert [(p["chosen_id"], p["rejected_id"]) for p in pairs] == [("c2c", "c2b")]
    allowed = select_pairs(rows, REWARDS, min_margin=0.5, per_prompt=1, allow_truncated=True)
    assert [(p["chosen_id"], p["rejected_id"]) for p in allowed] == [("c1a", "c1d"), ("c2a", "c2c")]


def test_selection_summary():
    sft = select_sft(COMPLETIONS, REWARDS, 1.0)  # 2 rows
    pairs = select_pairs(COMPLETIONS, REWARDS, 0.5, 3)  # 3 pairs from 2 prompts
    assert selection_summary(3, sft, pairs) == {
        "rows_in": 3,
        "rows_out": 5,
        "metrics": {
            "select/sft_rows": 2,
            "select/pairs": 3,
            "select/sft_yield": 2 / 3,
            "select/pair_yield": 2 / 3,
            "select/sft_from/policy": 2,
        },
    }


def test_committee_best_answer_wins_and_tie_break_scorers_decide_ties():
    group = [
        {
            "completion_id": "a",
            "prompt_id": "p",
            "prompt": "q",
            "completion": "41",
            "model": "policy",
            "source": "s",
            "license": "l",
        },
        {
            "completion_id": "b",
            "prompt_id": "p",
            "prompt": "q",
            "completion": "42",
            "model": "teacher",
            "source": "s",
            "license": "l",
        },
        {
            "completion_id": "c",
            "prompt_id": "p",
            "prompt": "q",
            "completion": "The answer is 42",
            "model": "policy",
            "source": "s",
            "license": "l",
        },
    ]
    rewards = {"a": 0.0, "b": 1.0, "c": 1.0}
    (row,) = select_sft(group, rewards, 1.0)
    assert (row["completion_id"], row["model"]) == ("b", "teacher")  # tie on reward: the shorter answer
    ties = tie_breakers(
        [{"completion_id": "b", "scorer": "rm", "value": 0.1}, {"completion_id": "c", "scorer": "rm", "value": 0.7}],
        ["rm"],
    )
    (row,) = select_sft(group, rewards, 1.0, ties)
    assert (row["completion_id"], row["model"]) == ("c", "policy")  # the reward model breaks the tie
    (pair,) = select_pairs(group, rewards, 0.5, 1, ties)
    assert (pair["chosen_model"], pair["rejected_model"]) == ("policy", "policy")
    assert selection_summary(1, [row], [pair])["metrics"]["select/sft_from/policy"] == 1


def test_selection_summary_of_nothing():
    assert selection_summary(0, [], []) == {
        "rows_in": 0,
        "rows_out": 0,
        "metrics": {"select/sft_rows": 0, "select/pairs": 0, "select/sft_yield": 0.0, "select/pair_yield": 0.0},
    }


def test_pair_chosen_is_the_sft_answer_on_ties():
    # Two correct answers with one vote each: SFT and DPO must agree on the shorter one.
    comps = [c("a", "p1", "It is 15"), c("b", "p1", "15"), c("x", "p1", "14")]
    rewards = {"a": 1.0, "b": 1.0, "x": 0.0}
    sft = select_sft(comps, rewards, 1.0)[0]
    (pair,) = select_pairs(comps, rewards, 0.5, 1)
    assert sft["completion_id"] == pair["chosen_id"] == "b"


# --- rewards that cannot invert; completions a scorer failed on -------------------------------------------
