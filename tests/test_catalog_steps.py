"""The catalog's steps on both backends: what a recorded step writes, in one transaction, and how reused,
recomputed, failed and retried steps keep their artifacts and row edges."""

import pytest
from test_catalog import (  # noqa: F401  (cat: the two-backend fixture)
    BASE,
    COMPLETIONS,
    MODEL,
    PROMPTS,
    SFT,
    SOURCE,
    P,
    _snapshot,
    _sql,
    art,
    cat,
    generated,
    step,
)


def test_record_step_writes_artifacts_edges_metrics_and_row_edges(cat):
    cat.record_step(
        step(
            "select",
            {"completions": "c-art", "scores": "s-art"},
            {"sft": art("sft-art", "sft", 2), "pairs": art("pairs-art", "pairs", 1)},
            metrics={"select/sft_rows": 2, "select/pairs": 1},
            row_edges=[("r1", "c1", "sft-art"), ("r2", "c2", "sft-art"), ("q1", "c1", "pairs-art")],
        )
    )
    assert _sql(cat, "SELECT id, kind, rows, pipeline, round, step FROM artifacts ORDER BY id") == [
        ("pairs-art", "pairs", 1, P, 1, "select"),
        ("sft-art", "sft", 2, P, 1, "select"),
    ]
    assert _sql(cat, "SELECT src, dst, step FROM edges ORDER BY src, dst") == [
        ("c-art", "pairs-art", "select"),
        ("c-art", "sft-art", "select"),
        ("s-art", "pairs-art", "select"),
        ("s-art", "sft-art", "select"),
    ]
    assert _sql(cat, "SELECT step, name, value FROM metrics ORDER BY name") == [
        ("select", "select/pairs", 1.0),
        ("select", "select/sft_rows", 2.0),
    ]
    assert _sql(cat, "SELECT * FROM row_edges ORDER BY child_id") == [
        ("q1", "c1", "pairs-art"),
        ("r1", "c1", "sft-art"),
        ("r2", "c2", "sft-art"),
    ]
    s = cat.steps_of(P, 1)["select"]
    assert s["status"] == "completed" and s["error"] is None
    assert sorted(a["id"] for a in cat.artifacts_of_round(P, 1)) == ["pairs-art", "sft-art"]
    assert cat.artifacts_of_round(P, 2) == []


def test_record_step_has_no_self_edge(cat):
    # training that produced no new model outputs its input policy
    cat.record_step(step("train", {"sft": SFT, "policy": BASE}, {"model": art(BASE, "model", None)}))
    assert _sql(cat, "SELECT src, dst FROM edges") == [(SFT, BASE)]


def test_record_step_is_one_transaction(cat):
    cat.record_step(step("curate", {"source": SOURCE}, {"prompts": art(PROMPTS, "prompts")}, metrics={"curate/n": 2}))
    before = _snapshot(cat)
    assert len(before["steps"]) == len(before["artifacts"]) == len(before["edges"]) == len(before["metrics"]) == 1

    bad = step(
        "generate",
        {"prompts": PROMPTS},
        {"completions": art(COMPLETIONS, "completions")},
        metrics={"generate/n": 8, "generate/tokens": "n/a"},  # the second one cannot be a float
        row_edges=[("c1", "p1", COMPLETIONS)],
    )
    with pytest.raises(ValueError):
        cat.record_step(bad)

    assert _snapshot(cat) == before
    assert cat.artifact(COMPLETIONS) is None
    assert cat.find_completed_step("id-generate-1") is None
    assert list(cat.steps_of(P, 1)) == ["curate"]
    # and the catalog is still usable afterwards
    cat.record_step(generated())
    assert list(cat.steps_of(P, 1)) == ["curate", "generate"]


def test_reused_step_keeps_existing_row_edges(cat):
    cat.record_step(generated("c1", "c2"))
    # recorded again (a retried round reusing the output): row edges neither duplicated nor rewritten
    cat.record_step(
        step(
            "generate",
            {"prompts": PROMPTS},
            {"completions": art(COMPLETIONS, "completions")},
            reused=True,
            row_edges=[("zzz", "p9", COMPLETIONS)],
        )
    )
    assert _sql(cat, "SELECT child_id, parent_id FROM row_edges ORDER BY child_id") == [("c1", "p1"), ("c2", "p1")]
    assert cat.steps_of(P, 1)["generate"]["reused"] is True


def test_recomputed_step_replaces_its_row_edges(cat):
    cat.record_step(generated("c1", "c2"))
    cat.record_step(generated("c1", "c2"))
    assert _sql(cat, "SELECT count(*) FROM row_edges") == [(2,)]
    assert _sql(cat, "SELECT count(*) FROM steps") == [(1,)]


def test_find_completed_step(cat):
    outputs = {"sft": art("sft-art", "sft"), "pairs": art("pairs-art", "pairs")}
    cat.record_step(step("select", {"completions": "c"}, outputs, identity="ident-ok"))
    assert cat.find_completed_step("ident-ok") == {"sft": "sft-art", "pairs": "pairs-art"}
    assert cat.find_completed_step("ident-unknown") is None

    cat.record_step_failure(P, 1, "train", "ident-failed", "OOM")
    assert cat.find_completed_step("ident-failed") is None
    failed = cat.steps_of(P, 1)["train"]
    assert (failed["status"], failed["error"], failed["identity"]) == ("failed", "OOM", "ident-failed")

    # the same identity in a later round (a pipeline rerun) finds the completed output
    cat.record_step_failure(P, 2, "select", "ident-ok", "crash")
    assert cat.find_completed_step("ident-ok") == {"sft": "sft-art", "pairs": "pairs-art"}


def test_failed_step_then_completed_retry(cat):
    cat.record_step_failure(P, 1, "train", "ident-t", "OOM")
    cat.record_step(step("train", {"sft": SFT}, {"model": art(MODEL, "model", None)}, identity="ident-t"))
    assert cat.find_completed_step("ident-t") == {"model": MODEL}
    s = cat.steps_of(P, 1)["train"]
    assert (s["status"], s["error"]) == ("completed", None)


def test_prompt_tables_before(cat):
    for r in (1, 2, 3):
        cat.record_step(step("curate", {"source": SOURCE}, {"prompts": art(f"prompts-{r}", "prompts")}, round_num=r))
    cat.record_step_failure(P, 4, "curate", "x", "boom")
    assert cat.prompt_tables_before(P, 3) == [(1, "prompts-1"), (2, "prompts-2")]
    assert cat.prompt_tables_before(P, 5) == [(1, "prompts-1"), (2, "prompts-2"), (3, "prompts-3")]
    assert cat.prompt_tables_before("other", 5) == []
