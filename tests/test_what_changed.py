"""The report's "what changed" section: hand-computed cases for its pure parts, then two real rounds."""

from __future__ import annotations

import json
import re

import pytest

from flows.what_changed import (
    comparison_markdown,
    data_figures,
    data_markdown,
    flips_markdown,
    metric_deltas,
    prompt_flips,
    what_changed_markdown,
)


def _rows(scores: list[float], tag: str) -> list[dict]:
    return [
        {
            "eval_set": "h",
            "index": i,
            "prompt": f"q{i}",
            "answer": str(i),
            "completion": f"{tag} says {i if s else -1}",
            "extracted": str(i if s else -1),
            "score": s,
            "status": "ok",
        }
        for i, s in enumerate(scores)
    ]


def test_flipped_prompts_hand_computed():
    # Prompts 0 and 3 go right -> wrong, 2 wrong -> right; 1 and 5 stay right, 4 stays wrong.
    policy = _rows([1.0, 1.0, 0.0, 1.0, 0.0, 1.0], "pol")
    candidate = _rows([0.0, 1.0, 1.0, 0.0, 0.0, 1.0], "cand")
    flips = prompt_flips(list(reversed(policy)), candidate, "accuracy")  # index order, whatever the rows' order
    assert flips == {
        "right_to_wrong": [
            {"index": 0, "prompt": "q0", "answer": "0", "policy": "pol says 0", "candidate": "cand says -1"},
            {"index": 3, "prompt": "q3", "answer": "3", "policy": "pol says 3", "candidate": "cand says -1"},
        ],
        "wrong_to_right": [
            {"index": 2, "prompt": "q2", "answer": "2", "policy": "pol says -1", "candidate": "cand says 2"},
        ],
        "both_right": 2,
        "both_wrong": 1,
    }
    lines = flips_markdown("h", "accuracy", flips, limit=1)
    assert (
        lines[0] == "- h (accuracy): 2 right → wrong, 1 wrong → right, 2 right in both, 1 wrong in both (of 6 prompts)."
    )
    assert "h, right → wrong (first 1 of 2):" in lines and "h, wrong → right (1):" in lines
    table = [x for x in lines if x.startswith("| ") and not x.startswith("| #")]
    assert table == ["| 0 | q0 | 0 | pol says 0 | cand says -1 |", "| 2 | q2 | 2 | pol says -1 | cand says 2 |"]
    assert flips_markdown("chat", "reward", None) == [
        "- chat (reward): scored on a scale, no per-prompt right or wrong."
    ]


def test_ifeval_flips_use_the_headline_strictness():
    def row(i: int, checks: list, errors: list | None = None) -> dict:
        extracted = json.dumps({"checks": checks, "errors": errors or []})
        return {"index": i, "prompt": f"p{i}", "answer": "", "completion": f"c{i}", "extracted": extracted}

    # Prompt 0: loose-only pass for the policy, strict pass for the candidate; prompt 1: the candidate errs.
    policy = [row(0, [["a", False, True]]), row(1, [["a", True, True]])]
    candidate = [row(0, [["a", True, True]]), row(1, [], ["unknown id"])]
    loose = prompt_flips(policy, candidate, "ifeval", "prompt_loose")
    strict = prompt_flips(policy, candidate, "ifeval", "instruction_strict")
    assert [f["index"] for f in loose["right_to_wrong"]] == [1] and loose["both_right"] == 1
    assert [f["index"] for f in strict["wrong_to_right"]] == [0] and [f["index"] for f in strict["right_to_wrong"]] == [
        1
    ]


def test_metric_deltas_with_intervals_hand_computed():
    m = {
        "eval/accuracy/h/policy": 0.5,
        "eval/accuracy/h/ci_low/policy": 0.4,
        "eval/accuracy/h/ci_high/policy": 0.6,
        "eval/accuracy/h/candidate": 0.6,
        "eval/accuracy/h/ci_low/candidate": 0.5,
        "eval/accuracy/h/ci_high/candidate": 0.69,
        "eval/reward/chat/policy": 1.0,
        "eval/reward/chat/candidate": 0.8,
        "eval/win_rate/arena/policy": 0.5,
        "eval/win_rate/arena/candidate": 0.625,
    }
    sets = [
        {"name": "h", "metric": "accuracy", "level": "prompt_loose"},
        {"name": "chat", "metric": "reward", "level": "prompt_loose"},
        {"name": "arena", "metric": "win_rate", "level": "prompt_loose"},
    ]
    deltas = metric_deltas(m, sets)
    assert [(d["eval_set"], d["figure"]) for d in deltas] == [
        ("h", "accuracy/h"),
        ("chat", "reward/chat"),
        ("arena", "win_rate/arena"),
    ]
    # Newcombe: 0.1 - sqrt(0.1² + 0.1²) and 0.1 + sqrt(0.09² + 0.1²).
    assert deltas[0]["delta"] == pytest.approx(0.1)
    assert deltas[0]["ci"] == pytest.approx((-0.041421, 0.234536), abs=1e-6)
    assert deltas[1]["delta"] == pytest.approx(-0.2) and deltas[1]["ci"] is None
    reason = "kept policy: accuracy/h 60.00 % >= 50.00 % + 0.00 (ok); reward/chat 0.8000 < 1.0000 - 0.1000 (regressed)"
    lines = comparison_markdown(deltas, False, reason)
    assert "| h | accuracy/h | 50.0 % | 60.0 % | +10.0 pts | [-4.1 pts, +23.5 pts] |" in lines
    assert "| chat | reward/chat | 1.0000 | 0.8000 | -0.2000 |  |" in lines
    assert "| arena | win_rate/arena | 50.0 % | 62.5 % | +12.5 pts |  |" in lines
    assert lines[-3:] == [
        "Gate: **policy kept**",
        "- accuracy/h 60.00 % >= 50.00 % + 0.00 (ok)",
        "- reward/chat 0.8000 < 1.0000 - 0.1000 (regressed)",
    ]


def test_data_against_the_previous_round_hand_computed():
    def step(rows_in, rows_out):
        return {"rows_in": rows_in, "rows_out": rows_out}

    prev = data_figures(
        {"curate/drawn/pool": 40, "curate/drawn/extra": 8, "curate/prompts": 48, "generate/completions": 192},
        {"curate": step(100, 48), "generate": step(48, 192), "promote": step(None, None)},
    )
    now = data_figures(
        {
            "curate/drawn/pool": 48,
            "curate/prompts": 48,
            "generate/completions": 192,
            "select/sft_rows": 12,
            "select/replayed_sft_rows": 3,
        },
        {"curate": step(80, 48), "generate": step(48, 192), "select": step(48, 20)},
    )
    assert now["yield of curate"] == 0.6 and now["yield of select"] == pytest.approx(20 / 48)
    lines = data_markdown(2, now, 1, prev)
    assert lines[2:] == [
        "| figure | round 1 | round 2 | change |",
        "|---|---|---|---|",
        "| prompts from pool | 40 | 48 | +8 |",
        "| prompts | 48 | 48 | +0 |",
        "| completions | 192 | 192 | +0 |",
        "| SFT rows |  | 12 |  |",
        "| pairs |  |  |  |",
        "| replayed SFT rows |  | 3 |  |",
        "| replayed pairs |  |  |  |",
        "| prompts from extra | 8 |  |  |",
        "| yield of curate | 48.0 % | 60.0 % | +12.0 pts |",
        "| yield of generate | 400.0 % | 400.0 % | +0.0 pts |",
        "| yield of select |  | 41.7 % |  |",
    ]
    assert data_markdown(1, now, None, None)[2] == "Round 1 has no earlier completed round to compare with."


def test_two_real_rounds(make_config, prefect_harness):
    from flows.round import round_flow
    from tasks.stage import runtime

    cfg = make_config(pipeline="what-changed", curation__prompts_per_round=24)
    round_flow(cfg)
    round_flow(cfg)
    rt = runtime(cfg)
    lines = what_changed_markdown(rt, cfg, 2)
    steps = rt.catalog.steps_of(cfg.pipeline, 2)
    policy, candidate = (
        {
            r["index"]: r["score"] > 0
            for r in rt.artifacts.get_table(json.loads(steps[s]["outputs"])["results"]).to_pylist()
        }
        for s in ("evaluate-policy", "evaluate-candidate")
    )
    down = sum(policy[i] and not candidate[i] for i in policy)
    up = sum(candidate[i] and not policy[i] for i in policy)
    (counts,) = [x for x in lines if x.startswith("- heldout (accuracy):")]
    assert re.match(rf"- heldout \(accuracy\): {down} right → wrong, {up} wrong → right, ", counts)
    assert counts.endswith(f"(of {len(policy)} prompts).")
    assert "| figure | round 1 | round 2 | change |" in lines
    rnd = rt.catalog.round(cfg.pipeline, 2)
    assert f"Gate: **{'promoted' if rnd['promoted'] else 'policy kept'}**" in lines
    assert any(x.startswith("| heldout | accuracy/heldout | ") for x in lines)
