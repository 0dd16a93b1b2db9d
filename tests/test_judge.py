"""LLM-as-a-judge: answer parsing and win-rate bookkeeping on literal inputs, then real judging through a
`vllm serve` subprocess (OpenAI-compatible API, constrained and free-text answers) and through the
in-process vLLM engine.

The tiny judge is untrained for judging, so its verdicts are arbitrary: the tests check the mechanics
(statuses, ranges, counts, metrics), never the quality of a judgement.
"""

from __future__ import annotations

import doctest

import pytest

from configs.scoring import JudgeScorerConfig
from tasks.generation.openai import ChatReply
from tasks.scoring.judge import (
    JudgeScorer,
    judge_version,
    pairwise_results,
    parse_choice,
    parse_score,
    plan_pairs,
    pointwise_results,
)

KEY_ENV, KEY = "FLYWHEEL_TEST_JUDGE_KEY", "test-key-4242"
SERVED = "tiny-judge"
CONTEXT = 1024  # the judge prompt holds instructions, the request and one or two responses

PROMPTS = {
    "p1": ("What is 37 plus 8?", ["45", "35", "It is 45.", "45"]),  # the last repeats the first
    "p2": ("What is 12 plus 3?", ["15", "15", "15"]),  # nothing to compare
    "p3": ("Name a colour.", ["Blue.", "I like numbers: 7", "Red"]),
}


def make_rows(prompts: dict = PROMPTS) -> list[dict]:
    return [
        {
            "completion_id": f"{pid}-{k}",
            "prompt_id": pid,
            "prompt": q,
            "system": None,
            "completion": c,
            "answer": None,
            "provenance": {},
        }
        for pid, (q, completions) in prompts.items()
        for k, c in enumerate(completions)
    ]


def judge_cfg(base_url: str | None, **judge) -> JudgeScorerConfig:
    mode = judge.pop("mode", "pointwise")
    endpoint = {
        "backend": "openai",
        "model": SERVED,
        "base_url": base_url,
        "api_key_env": KEY_ENV,
        "max_tokens": 8,
        "concurrency": 4,
        "timeout_s": 30,
        **judge,
    }
    return JudgeScorerConfig(mode=mode, judge=endpoint)


# --- parsing and bookkeeping: literal inputs, hand-computed outputs ------------------------------------------


@pytest.mark.parametrize(
    "text, score",
    [
        ("Score: 7", 7),
        ("score of 4", 4),
        ("Rating: 10/10", 10),
        ("7/10", 7),
        ("8 out of 10", 8),
        ("[[6]]", 6),
        ("9", 9),
        (" 3.\n", 3),
        ("7.5", 7.5),
        ('{"score": 3}', 3),
        ('Sure: {"score": "2", "reason": "meh"}', 2),
        ("I'd say 11", None),
        ("Score: 11", None),
        ("Score: 0", None),
        ("11", None),
        ("45", None),
        ("Score: 3 ... Score: 8", None),
        ("What is 3 plus 4?", None),
        ("", None),
        ('{"score": "high"}', None),
    ],
)
def test_parse_score(text, score):
    assert parse_score(text) == score


@pytest.mark.parametrize(
    "text, letter",
    [
        ("A", "A"),
        (" B.", "B"),
        ("[[A]]", "A"),
        ("Response B", "B"),
        ("Winner: A", "A"),
        ("The answer is (B)", "B"),
        ('{"winner": "B"}', "B"),
        ('{"winner": "Response A"}', "A"),
        ("A or B", None),
        ("Response A is better than response B", None),
        ("a", None),
        ("A response", None),
        ('{"winner": "C"}', None),
        ("", None),
    ],
)
def test_parse_choice(text, letter):
    assert parse_choice(text) == letter


def test_docstring_examples():
    from tasks.scoring import judge

    assert doctest.testmod(judge).failed == 0


def test_plan_pairs_covers_distinct_completions_first():
    assert plan_pairs(list("abcdefgh"), 4) == [(0, 1), (2, 3), (4, 5), (6, 7)]
    assert plan_pairs(list("abcdefgh"), 6) == [(0, 1), (2, 3), (4, 5), (6, 7), (1, 2), (3, 4)]
    assert plan_pairs(list("abcde"), 3) == [(0, 1), (2, 3), (3, 4)]  # odd count: still covered by 3
    assert plan_pairs(list("abc"), 9) == [(0, 1), (1, 2), (0, 2)]
    assert plan_pairs(["x", "y", "x", "z"], 9) == [(0, 1), (1, 3), (0, 3)]  # the second "x" is never compared
    assert plan_pairs(["x"], 4) == [] and plan_pairs([], 4) == []


def test_pairwise_win_rates_and_position_bias():
    rows = make_rows({"p": ("q", ["a", "b", "c", "a"]), "solo": ("q2", ["only"])})
    pairs = [(0, 1), (1, 2)]
    answers = [
        (ChatReply("A"), ChatReply("B")),  # a first: a wins; b first: a wins -> consistent
        (ChatReply("A"), ChatReply("A")),  # b first: b wins; c first: c wins -> position bias, 0.5 each
    ]
    results, m = pairwise_results(rows, pairs, answers)
    assert [(r.value, r.status) for r in results] == [
        (1.0, "ok"),
        (0.25, "ok"),
        (0.5, "ok"),
        (1.0, "ok"),
        (0.5, "no_reference"),
    ]
    assert results[3].raw.startswith("same text as p-0")
    assert m["swap_agreement"] == 0.5 and m["first_position_rate"] == 0.75
    assert m["parse_failure_rate"] == 0 and m["calls"] == 4 and m["pairs"] == 2

    unclear = [(ChatReply("A"), ChatReply("no idea")), (ChatReply("???"), ChatReply(None, "timeout", "slow"))]
    results, m = pairwise_results(rows, pairs, unclear)
    assert [(r.value, r.status) for r in results[:3]] == [(1.0, "ok"), (0.0, "ok"), (0.0, "parse_error")]
    assert m["parse_failure_rate"] == 0.5 and m["error_rate"] == 0.25 and "swap_agreement" not in m


def test_pointwise_results_count_failures_and_fallbacks():
    replies = [
        ChatReply("7"),
        ChatReply('{"score": 10}', fell_back=True),
        ChatReply("x"),
        ChatReply(None, "error", "400"),
    ]
    results, m = pointwise_results(replies)
    assert [(r.value, r.status) for r in results] == [(0.7, "ok"), (1.0, "ok"), (0.0, "parse_error"), (0.0, "error")]
    assert m == {
        "calls": 4,
        "parse_failure_rate": 0.25,
        "error_rate": 0.25,
        "structured_fallback_rate": 0.25,
        "mean_score": 8.5,
    }


def test_version_follows_what_changes_judgements():
    base = judge_cfg("http://x/v1")
    same = judge_cfg("http://elsewhere/v1", concurrency=1, timeout_s=5)  # where and how fast: not what
    assert judge_version(base) == judge_version(same)
    changed = [
        judge_cfg("http://x/v1", model="other"),
        judge_cfg("http://x/v1", structured=False),
        judge_cfg("http://x/v1", mode="pairwise"),
        base.model_copy(update={"rubric": "brevity"}),
    ]
    assert len({judge_version(c) for c in changed} | {judge_version(base)}) == 5


def test_openai_backend_needs_a_base_url():
    with pytest.raises(ValueError, match="base_url is required"):
        JudgeScorer(judge_cfg(None))
