"""The curate task against the real store and catalog: earlier rounds' prompts come from the store,
reuse after K rounds, malformed rows quarantined or stopping the round, messages sources."""

from __future__ import annotations

import json

import pytest

from tasks.curate import curate_task
from tasks.curation.inputs import earlier_prompt_tables
from tasks.curation.prompts import CurationError
from tasks.stage import runtime


@pytest.fixture(autouse=True)
def _harness(prefect_harness):
    yield


def drawn(cfg, rounds):
    """Text hashes of the prompts each round drew, read back from the stored prompt tables."""
    rt = runtime(cfg)
    out = []
    for r in rounds:
        prompts_id = curate_task.fn(cfg, r, earlier_prompt_tables(rt.catalog, cfg, r))
        out.append(set(rt.artifacts.get_table(prompts_id).column("text_hash").to_pylist()))
    return out


@pytest.mark.parametrize("reuse_after", [None, 2])
def test_prompts_of_earlier_rounds_are_not_drawn_again_until_k_rounds_passed(make_config, reuse_after):
    cfg = make_config(
        pipeline=f"reuse-{reuse_after or 'never'}",
        curation__prompts_per_round=480,
        curation__reuse_after_rounds=reuse_after,
        curation__near_dup_threshold=None,
    )
    r1, r2, r3, r4 = drawn(cfg, [1, 2, 3, 4])
    assert len(r1) == len(r2) == len(r3) == 480
    assert not r1 & r2 and not r2 & r3 and not r3 & r4  # the previous round is always blocked
    if reuse_after is None:  # 1,470 distinct prompts: 3 x 480 drawn, the last 30 are all round 4 gets
        assert not r1 & r3 and not (r1 | r2) & r4 and len(r4) == 1470 - 3 * 480
    else:  # round 1's prompts are allowed again in round 3 = 1 + K, round 2's in round 4
        assert len(r1 & r3) > 100 and len(r2 & r4) > 100 and len(r4) == 480


def test_too_many_malformed_rows_stop_with_the_quarantine_location(make_config, tmp_path):
    path = tmp_path / "broken.jsonl"
    good = [json.dumps({"prompt": f"What is {i} plus 3?", "answer": str(i + 3)}) for i in range(10)]
    path.write_text("\n".join(good + ['{"prompt": "cut', '{"prompt": 5}', "[1, 2]"]) + "\n")
    cfg = make_config(pipeline="broken", curation__sources=[{"name": "broken", "path": str(path)}])
    with pytest.raises(CurationError) as e:
        curate_task.fn(cfg, 1)
    msg = str(e.value)
    assert (
        "source 'broken': 3 of 13 rows malformed (23.1% > curation.max_quarantine_fraction 5.0%; "
        "invalid_json 1, wrong_type 1, not_an_object 1; first: line 11:"
    ) in msg
    uri = msg.split("Every malformed row, with its reason: ")[1].split(" ")[0]
    rt = runtime(cfg)
    artifact_id = uri.rstrip("/").rsplit("/", 1)[1]
    rows = rt.artifacts.get_table(artifact_id).to_pylist()
    assert [(q["location"], q["reason"]) for q in rows] == [
        ("line 11", "invalid_json"),
        ("line 12", "wrong_type"),
        ("line 13", "not_an_object"),
    ]
    # Allowed share: the same file curates, the 3 rows counted as quarantined.
    ok = make_config(
        pipeline="tolerant",
        curation__sources=[{"name": "broken", "path": str(path)}],
        curation__max_quarantine_fraction=0.25,
        curation__prompts_per_round=5,
    )
    prompts_id = curate_task.fn(ok, 1)
    metrics = runtime(ok).catalog.steps_of("tolerant", 1)["curate"]
    assert json.loads(metrics["outputs"])["prompts"] == prompts_id
    assert runtime(ok).artifacts.get_table(prompts_id).num_rows == 5


def test_messages_source_keeps_the_system_prompt(make_config, tmp_path):
    path = tmp_path / "chats.jsonl"
    chats = [
        {
            "messages": [
                {"role": "system", "content": "Answer with a number."},
                {"role": "user", "content": f"What is {i} plus 4?"},
            ],
            "answer": str(i + 4),
        }
        for i in range(6)
    ]
    path.write_text("".join(json.dumps(c) + "\n" for c in chats))
    cfg = make_config(
        pipeline="chats",
        curation__prompts_per_round=6,
        curation__sources=[{"name": "chats", "path": str(path), "messages_field": "messages", "tags": ["chat"]}],
    )
    rows = runtime(cfg).artifacts.get_table(curate_task.fn(cfg, 1)).to_pylist()
    assert sorted(r["prompt"] for r in rows) == [f"What is {i} plus 4?" for i in range(6)]
    assert {(r["system"], tuple(r["tags"])) for r in rows} == {("Answer with a number.", ("chat",))}


def test_a_prompt_longer_than_the_context_is_counted_out_and_never_reaches_the_engine(make_config, tmp_path):
    from tasks.generate import generate_task

    path = tmp_path / "mixed.jsonl"
    long_one = "What is " + " plus ".join(str(i % 10) for i in range(120)) + "?"  # about 240 tokens: over 128
    lines = [{"prompt": f"What is {i} plus 4?", "answer": str(i + 4)} for i in range(7)] + [
        {"prompt": long_one, "answer": "540"}
    ]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    cfg = make_config(
        pipeline="context", curation__sources=[{"name": "mixed", "path": str(path)}], curation__prompts_per_round=8
    )
    rt = runtime(cfg)
    prompts_id = curate_task.fn(cfg, 1)
    assert rt.artifacts.get_table(prompts_id).num_rows == 7
    step = rt.catalog.steps_of("context", 1)["curate"]
    report = rt.artifacts.get_json(json.loads(step["outputs"])["report"])
    assert report["removed"]["too_long_for_context"] == 1 and report["per_source"]["mixed"]["too_long_for_context"] == 1
    # The engine (max_model_len 128) gets only prompts it can answer: the stage completes.
    completions = rt.artifacts.get_table(
        generate_task.fn(cfg, 1, rt.artifacts.put_model(cfg.base_model).id, prompts_id)
    )
    assert completions.num_rows == 7 * 4
