"""Scoring inside real rounds: a generation committee of two models, a reward model trained on round 1's
pairs that scores round 2 (gated by the verifier, breaking its ties), and the reliability metrics."""

from __future__ import annotations

import json
import math

import pytest

from flows.pipeline import pipeline_flow
from tasks.stage import runtime


@pytest.fixture(autouse=True)
def _harness(prefect_harness):
    yield


def test_committee_and_trained_reward_model_over_two_rounds(make_config, tiny_model):
    cfg = make_config(
        pipeline="committee",
        generation__committee=[{"name": "tiny", "model": str(tiny_model), "sampling": {"n": 2, "max_tokens": 8}}],
        training__reward_model={"enabled": True, "learning_rate": 1e-3, "epochs": 2, "batch_size": 8, "max_length": 64},
        scoring={
            "scorers": [
                {"kind": "math_answer"},
                {"kind": "reward_model", "name": "rm", "model": "trained", "weight": 0.1, "max_length": 64},
            ],
            "combine": "gated",
            "gate": "math_answer",
            "tie_break": ["rm"],
        },
    )
    r1, r2 = pipeline_flow(cfg, 2)
    rt = runtime(cfg)
    rounds = {r["round"]: r for r in rt.catalog.rounds(cfg.pipeline)}
    steps = {r: rt.catalog.steps_of(cfg.pipeline, r) for r in (1, 2)}
    out = {r: {name: json.loads(s["outputs"]) for name, s in steps[r].items()} for r in (1, 2)}

    # Committee: the same 48 prompts answered by the policy (n=4) and the tiny model (its own n=2).
    completions = rt.artifacts.get_table(out[1]["generate"]["completions"]).to_pylist()
    by_model = {m: sum(c["model"] == m for c in completions) for m in ("policy", "tiny")}
    assert by_model == {"policy": 48 * 4, "tiny": 48 * 2}
    assert {c["model_id"] for c in completions if c["model"] == "policy"} == {r1.policy_in}
    tiny_ids = {c["model_id"] for c in completions if c["model"] == "tiny"}
    assert len(tiny_ids) == 1 and rt.catalog.artifact(tiny_ids.pop())["kind"] == "committee-model"
    assert rounds[1]["metrics"]["generate/tiny/completions"] == 96
    sft = rt.artifacts.get_table(out[1]["select"]["sft"]).to_pylist()
    assert {r["model"] for r in sft} <= {"policy", "tiny"}

    # Round 1 has no reward model yet: the rm scorer is skipped, visibly; then one is trained on the pairs.
    m1, m2 = rounds[1]["metrics"], rounds[2]["metrics"]
    assert m1["score/rm/no_reference_rate"] == 1.0
    rm_id = out[1]["train-reward"]["reward_model"]
    assert rt.catalog.artifact(rm_id)["kind"] == "reward-model"
    assert m1["reward_model/pairs"] == m1["select/pairs"] and 0.0 <= m1["reward_model/accuracy_after"] <= 1.0
    assert out[1]["select"]["pairs"] in {e["src"] for e in rt.catalog.lineage(rm_id)}

    # Round 2 is scored with round 1's reward model: it is an input of the score step, and its scores count.
    assert json.loads(steps[2]["score"]["inputs"])["reward_model"] == rm_id
    scores = rt.artifacts.get_table(out[2]["score"]["scores"]).to_pylist()
    rm_rows = [s for s in scores if s["scorer"] == "rm"]
    assert rm_rows and all(s["status"] == "ok" for s in rm_rows)
    assert "score/rm/no_reference_rate" not in m2 and "score/agreement/math_answer~rm" in m2
    # Gated: a completion the verifier fails gets no reward-model term; one it passes gets the logit bounded by
    # a sigmoid, so every pass scores above every fail.
    math_value = {s["completion_id"]: s["value"] for s in scores if s["scorer"] == "math_answer"}
    for s in rm_rows:
        passed = math_value[s["completion_id"]] >= 1
        expected = math_value[s["completion_id"]] + (0.1 / (1 + math.exp(-s["value"])) if passed else 0)
        assert s["reward"] == pytest.approx(expected)
    assert m2["score/reward/excluded_scorer_error"] == 0 and m2["select/excluded_scorer_error"] == 0
    assert r2.policy_in == r1.policy_out
