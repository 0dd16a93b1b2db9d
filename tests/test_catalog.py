"""The catalog over real files in tmp_path, on both backends (a DuckDB file; DuckLake with SQLite metadata and
Parquet data): rounds, steps, transactions, lineage, two writers."""

import duckdb
import pytest

from storage.artifacts import ArtifactRef
from storage.catalog import Catalog, StepRecord
from storage.catalog_lake import LakeSpec

P = "demo"

# Readable artifact ids, chosen so that their sort order is known: base-0 < prompts-1 < sft-1 ...
SOURCE, BASE, PROMPTS, COMPLETIONS, SFT, MODEL = "source-0", "base-0", "prompts-1", "completions-1", "sft-1", "model-1"


def art(id_: str, kind: str, rows: int | None = 10) -> ArtifactRef:
    return ArtifactRef(
        id=id_,
        kind=kind,
        format="parquet" if rows is not None else "dir",
        uri=f"file:///store/{id_}",
        bytes=100,
        rows=rows,
    )


def step(
    step_name: str, inputs: dict, outputs: dict, *, round_num: int = 1, identity: str | None = None, **kw
) -> StepRecord:
    return StepRecord(
        pipeline=P,
        round=round_num,
        step=step_name,
        identity=identity or f"id-{step_name}-{round_num}",
        inputs=inputs,
        outputs=outputs,
        **kw,
    )


def generated(*row_ids: str, **kw) -> StepRecord:
    """A generate step from PROMPTS to COMPLETIONS whose completions `row_ids` all come from prompt p1."""
    edges = [(r, "p1", COMPLETIONS) for r in row_ids]
    return step(
        "generate", {"prompts": PROMPTS}, {"completions": art(COMPLETIONS, "completions")}, row_edges=edges, **kw
    )


def lake_spec(root) -> LakeSpec:
    """DuckLake with its metadata in SQLite and its Parquet under `root` (the store's place in a real home)."""
    return LakeSpec(metadata=f"sqlite:{root / 'catalog.sqlite'}", data_path=f"{root / 'lake'}/")


def open_catalog(root, backend: str) -> Catalog:
    if backend == "ducklake":
        return Catalog(root / "catalog.sqlite", lake=lake_spec(root))
    return Catalog(root / "catalog.duckdb")


@pytest.fixture(params=["duckdb", "ducklake"])
def cat(tmp_path, request):
    c = open_catalog(tmp_path / "sub", request.param)
    # While one connection stays open, DuckDB hands every new connection to the same file the open
    # database instead of reopening and checkpointing the file: each catalog call gets ~3x cheaper.
    # Transactions are per connection either way; reopening is covered by test_reopening_keeps_data
    # and the two-process test.
    held = duckdb.connect(str(c.path)) if request.param == "duckdb" else None
    yield c
    if held is not None:
        held.close()
    c.close()


@pytest.fixture(scope="module", params=["duckdb", "ducklake"])
def chained(tmp_path_factory, request):
    """One catalog holding the hand-built chain, shared by the read-only lineage tests."""
    c = open_catalog(tmp_path_factory.mktemp("chain"), request.param)
    chain(c)
    yield c
    c.close()


def _sql(cat: Catalog, sql: str, params=None) -> list[tuple]:
    """A query through the catalog's own connection (a DuckLake table is read through its attachment)."""
    with cat._tx() as con:
        return con.execute(sql, params or []).fetchall()


def _snapshot(cat: Catalog) -> dict[str, list[tuple]]:
    """Every row of every table, read in one transaction."""
    with cat._tx() as con:
        return {
            t: con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall()
            for t in ("pipelines", "rounds", "steps", "artifacts", "edges", "metrics", "row_edges")
        }


def chain(cat: Catalog) -> None:
    """source -curate-> prompts -generate(base)-> completions -select-> sft -train(base)-> model, with row lineage."""
    cat.register_artifact(art(SOURCE, "source"), P, 0, "source")
    cat.register_artifact(art(BASE, "model", rows=None), P, 0, "base-model")
    cat.record_step(
        step(
            "curate",
            {"source": SOURCE},
            {"prompts": art(PROMPTS, "prompts", 2)},
            row_edges=[("p1", "source-0:line3", PROMPTS), ("p2", "source-0:line7", PROMPTS)],
        )
    )
    cat.record_step(
        step(
            "generate",
            {"prompts": PROMPTS, "policy": BASE},
            {"completions": art(COMPLETIONS, "completions", 3)},
            row_edges=[("c1", "p1", COMPLETIONS), ("c2", "p1", COMPLETIONS), ("c3", "p2", COMPLETIONS)],
        )
    )
    cat.record_step(
        step("select", {"completions": COMPLETIONS}, {"sft": art(SFT, "sft", 1)}, row_edges=[("r1", "c2", SFT)])
    )
    cat.record_step(step("train", {"sft": SFT, "policy": BASE}, {"model": art(MODEL, "model", rows=None)}))


# --- pipelines and rounds -----------------------------------------------------------------------


def test_reopening_keeps_data(tmp_path):
    cat = Catalog(tmp_path / "sub" / "catalog.duckdb")  # parent directories are created
    cat.ensure_pipeline(P, "base", {"a": 1})
    cat.ensure_pipeline(P, "base", {"a": 2})  # a second call updates the config, no duplicate
    again = Catalog(cat.path)
    assert _sql(again, "SELECT name, base_model, config FROM pipelines") == [(P, "base", '{"a": 2}')]


def test_round_lifecycle(cat):
    assert cat.next_round(P) == 1
    assert cat.current_policy(P) is None

    cat.start_round(P, 1, "cfg-hash", BASE, "flow-run-1")
    assert cat.next_round(P) == 1  # running, not completed
    assert cat.current_policy(P) is None
    cat.record_step(
        step(
            "curate",
            {"source": SOURCE},
            {"prompts": art(PROMPTS, "prompts")},
            rows_in=5,
            rows_out=2,
            duration_s=1.5,
            metrics={"curate/prompts": 2},
        )
    )
    cat.record_step(
        step(
            "train",
            {"prompts": PROMPTS, "policy": BASE},
            {"model": art(MODEL, "model", None)},
            metrics={"train/loss": 0.25},
        )
    )
    cat.finish_round(
        P, 1, candidate=MODEL, policy_out=MODEL, promoted=True, reason="promoted: better", manifest_uri="s3://m1"
    )

    assert cat.next_round(P) == 2
    assert cat.current_policy(P) == MODEL
    (r1,) = cat.rounds(P)
    assert (r1["round"], r1["status"], r1["policy_in"], r1["candidate"], r1["policy_out"], r1["promoted"]) == (
        1,
        "completed",
        BASE,
        MODEL,
        MODEL,
        True,
    )
    assert (r1["reason"], r1["manifest_uri"], r1["config_hash"], r1["flow_run_id"]) == (
        "promoted: better",
        "s3://m1",
        "cfg-hash",
        "flow-run-1",
    )
    assert r1["finished_at"] >= r1["started_at"]
    assert r1["metrics"] == {"curate/prompts": 2.0, "train/loss": 0.25}
    assert set(r1["steps"]) == {"curate", "train"}
    curate = r1["steps"]["curate"]
    assert (curate["rows_in"], curate["rows_out"], curate["duration_s"], curate["status"], curate["reused"]) == (
        5,
        2,
        1.5,
        "completed",
        False,
    )

    steps = cat.steps_of(P, 1)
    assert list(steps) == ["curate", "train"]  # in start order
    assert steps["train"]["identity"] == "id-train-1"


def test_failed_round_is_retried_as_the_same_number(cat):
    cat.start_round(P, 1, "h", BASE, None)
    cat.finish_round(P, 1, candidate=MODEL, policy_out=MODEL, promoted=True, reason="ok", manifest_uri="m1")

    cat.start_round(P, 2, "h", MODEL, "run-a")
    cat.record_step(step("curate", {"source": SOURCE}, {"prompts": art("prompts-2", "prompts")}, round_num=2))
    cat.fail_round(P, 2, "RuntimeError: " + "x" * 5000)
    assert cat.next_round(P) == 2
    assert cat.current_policy(P) == MODEL  # the failed round did not change the policy
    failed = cat.rounds(P)[1]
    assert failed["status"] == "failed"
    assert len(failed["reason"]) == 2000  # truncated

    cat.start_round(P, 2, "h", MODEL, "run-b")
    retried = cat.rounds(P)[1]
    assert (retried["status"], retried["reason"], retried["finished_at"], retried["flow_run_id"]) == (
        "running",
        None,
        None,
        "run-b",
    )
    assert list(cat.steps_of(P, 2)) == ["curate"]  # finished steps of the failed attempt stay, for reuse

    cat.finish_round(
        P, 2, candidate="model-2", policy_out=MODEL, promoted=False, reason="kept policy", manifest_uri="m2"
    )
    assert cat.next_round(P) == 3
    assert cat.current_policy(P) == MODEL  # not promoted: round 2's policy_out is still model-1
    assert [(r["round"], r["status"]) for r in cat.rounds(P)] == [(1, "completed"), (2, "completed")]


def test_current_policy_is_the_last_completed_round(cat):
    for r, out in [(1, "m1"), (2, "m2"), (3, "m3")]:
        cat.start_round(P, r, "h", "x", None)
        if r < 3:
            cat.finish_round(P, r, candidate=out, policy_out=out, promoted=True, reason="", manifest_uri="")
    cat.fail_round(P, 3, "boom")
    assert cat.current_policy(P) == "m2"
    assert cat.next_round(P) == 3


def test_rounds_are_per_pipeline(cat):
    cat.start_round("a", 1, "h", "x", None)
    cat.finish_round("a", 1, candidate="ma", policy_out="ma", promoted=True, reason="", manifest_uri="")
    cat.start_round("b", 1, "h", "x", None)
    assert (cat.next_round("a"), cat.next_round("b"), cat.next_round("c")) == (2, 1, 1)
    assert (cat.current_policy("a"), cat.current_policy("b")) == ("ma", None)
    assert [r["pipeline"] for r in cat.rounds()] == ["a", "b"]
    assert [r["pipeline"] for r in cat.rounds("b")] == ["b"]


def test_discard_round_removes_round_steps_and_metrics(cat):
    cat.start_round(P, 1, "h", BASE, None)
    cat.record_step(step("curate", {"source": SOURCE}, {"prompts": art(PROMPTS, "prompts")}, metrics={"m1": 1.0}))
    cat.finish_round(P, 1, candidate=MODEL, policy_out=MODEL, promoted=True, reason="", manifest_uri="")
    cat.start_round(P, 2, "h", MODEL, None)
    cat.record_step(
        step(
            "curate",
            {"source": SOURCE},
            {"prompts": art("prompts-2", "prompts")},
            round_num=2,
            identity="id-2",
            metrics={"m2": 2.0},
        )
    )

    cat.discard_round(P, 2)

    assert [r["round"] for r in cat.rounds(P)] == [1]
    assert cat.steps_of(P, 2) == {}
    assert _sql(cat, "SELECT round, name FROM metrics") == [(1, "m1")]
    assert cat.find_completed_step("id-2") is None  # a discarded step is not reused
    assert cat.next_round(P) == 2
    # round 1 is untouched
    assert list(cat.steps_of(P, 1)) == ["curate"]
    assert cat.rounds(P)[0]["metrics"] == {"m1": 1.0}
