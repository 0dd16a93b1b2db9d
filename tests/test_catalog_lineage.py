"""Catalog lineage (artifact edges, row edges) and two processes writing one catalog at once."""

import multiprocessing as mp
from pathlib import Path

import duckdb
import pytest
from test_catalog import (  # noqa: F401
    BASE,
    COMPLETIONS,
    MODEL,
    PROMPTS,
    SFT,
    SOURCE,
    P,
    _sql,
    art,
    cat,
    chain,
    chained,
    generated,
    open_catalog,
    step,
)

from storage.artifacts import ArtifactRef
from storage.catalog import MAX_ROW_DEPTH, Catalog, StepRecord, level_query, walk_row_edges

# --- lineage ------------------------------------------------------------------------------------


def test_artifact_by_id_or_unambiguous_prefix(cat):
    cat.register_artifact(art("abc123", "prompts"), P, 1, "curate")
    cat.register_artifact(art("abd456", "completions"), P, 1, "generate")
    assert cat.artifact("abc123")["kind"] == "prompts"
    assert cat.artifact("abc")["id"] == "abc123"
    assert cat.artifact("abd4")["id"] == "abd456"
    assert cat.artifact("ab") is None  # ambiguous
    assert cat.artifact("zz") is None  # unknown
    a = cat.artifact("abc")
    assert (a["uri"], a["bytes"], a["rows"], a["format"], a["round"], a["step"]) == (
        "file:///store/abc123",
        100,
        10,
        "parquet",
        1,
        "curate",
    )


def test_register_artifact_keeps_the_first_record(cat):
    cat.register_artifact(art("x1", "model", None), P, 0, "base-model")
    cat.register_artifact(art("x1", "model", None), P, 3, "train")  # same content stored again later
    assert (cat.artifact("x1")["round"], cat.artifact("x1")["step"]) == (0, "base-model")


def test_lineage_walks_up_the_chain(chained):
    cat = chained
    got = [(e["src"], e["dst"], e["step"], e["depth"]) for e in cat.lineage(MODEL)]
    assert got == [
        (BASE, MODEL, "train", 1),
        (SFT, MODEL, "train", 1),
        (COMPLETIONS, SFT, "select", 2),
        (BASE, COMPLETIONS, "generate", 3),
        (PROMPTS, COMPLETIONS, "generate", 3),
        (SOURCE, PROMPTS, "curate", 4),
    ]
    by_src = {e["src"]: e for e in cat.lineage(MODEL)}
    assert (by_src[SOURCE]["src_kind"], by_src[SOURCE]["src_uri"]) == ("source", "file:///store/source-0")
    assert (by_src[COMPLETIONS]["src_kind"], by_src[COMPLETIONS]["src_rows"]) == ("completions", 3)
    assert by_src[SFT]["round"] == 1 and by_src[SFT]["pipeline"] == P


def test_lineage_of_an_intermediate_and_a_root(chained):
    cat = chained
    assert [(e["src"], e["depth"]) for e in cat.lineage(COMPLETIONS)] == [(BASE, 1), (PROMPTS, 1), (SOURCE, 2)]
    assert cat.lineage(SOURCE) == []
    assert cat.lineage("unknown") == []


def test_row_lineage_walks_sft_row_to_source(chained):
    cat = chained
    got = [
        (r["row_id"], r["parent_id"], r["artifact_id"], r["depth"], r["kind"], r["step"]) for r in cat.row_lineage("r1")
    ]
    assert got == [
        ("r1", "c2", SFT, 1, "sft", "select"),
        ("c2", "p1", COMPLETIONS, 2, "completions", "generate"),
        ("p1", "source-0:line3", PROMPTS, 3, "prompts", "curate"),
    ]
    assert [r["parent_id"] for r in cat.row_lineage("c3")] == ["p2", "source-0:line7"]
    assert cat.row_lineage("nope") == []


def test_row_lineage_of_a_pair_has_both_completions(cat):
    cat.record_step(generated("c1", "c2"))
    cat.record_step(
        step(
            "select",
            {"completions": COMPLETIONS},
            {"pairs": art("pairs-1", "pairs")},
            row_edges=[("pair1", "c1", "pairs-1"), ("pair1", "c2", "pairs-1")],
        )
    )
    got = sorted((r["depth"], r["row_id"], r["parent_id"]) for r in cat.row_lineage("pair1"))
    assert got == [(1, "pair1", "c1"), (1, "pair1", "c2"), (2, "c1", "p1"), (2, "c2", "p1")]


def _edges(cat: Catalog, *edges: tuple[str, str, str]) -> None:
    """Row edges written as-is, as a step would (no artifacts row unless the test records one)."""
    for e in edges:
        _sql(cat, "INSERT INTO row_edges VALUES (?, ?, ?)", list(e))


def _walk(cat: Catalog, row_id: str) -> list[tuple]:
    return [(r["depth"], r["row_id"], r["parent_id"]) for r in cat.row_lineage(row_id)]


def test_row_lineage_of_a_pair_lists_the_shared_prompt_once_in_order(cat):
    # pair1 -> c1, c2 -> p1 -> source: p1 is reached twice at depth 2 but expanded once.
    _edges(cat, ("pair1", "c2", "pairs"), ("pair1", "c1", "pairs"), ("c2", "p1", "comp"), ("c1", "p1", "comp"))
    _edges(cat, ("p1", "source-0", "prompts"))
    assert _walk(cat, "pair1") == [
        (1, "pair1", "c1"),
        (1, "pair1", "c2"),
        (2, "c1", "p1"),
        (2, "c2", "p1"),
        (3, "p1", "source-0"),
    ]


def test_row_lineage_ends_on_a_cycle(cat):
    _edges(cat, ("a", "b", "x"), ("b", "c", "x"), ("c", "a", "x"), ("s", "s", "x"))
    assert _walk(cat, "a") == [(1, "a", "b"), (2, "b", "c"), (3, "c", "a")]
    assert _walk(cat, "s") == [(1, "s", "s")]


def test_row_lineage_lists_a_row_at_its_nearest_depth(cat):
    # r replays r0 and also points at c1 directly; r0 points at c1 too, so c1 is at depth 2, not 3.
    _edges(cat, ("r", "r0", "sft-2"), ("r", "c1", "sft-2"), ("r0", "c1", "sft-1"), ("c1", "p1", "comp"))
    assert _walk(cat, "r") == [(1, "r", "c1"), (1, "r", "r0"), (2, "c1", "p1"), (2, "r0", "c1")]


def test_row_lineage_of_a_replayed_row_reaches_the_source(cat):
    _edges(cat, ("r3", "r2", "sft-3"), ("r2", "r1", "sft-2"), ("r1", "c1", "sft-1"), ("c1", "p1", "comp"))
    _edges(cat, ("p1", "source-0", "prompts"), ("p1", "source-0", "prompts"))  # a duplicate edge is listed once
    assert [d for d, _, _ in _walk(cat, "r3")] == [1, 2, 3, 4, 5]
    assert _walk(cat, "r3")[-1] == (5, "p1", "source-0")


def test_row_lineage_stops_at_the_depth_cap(cat):
    _edges(cat, *[(f"n{i}", f"n{i + 1}", "x") for i in range(MAX_ROW_DEPTH + 5)])
    got = _walk(cat, "n0")
    assert len(got) == MAX_ROW_DEPTH == 50
    assert got[-1] == (50, "n49", "n50")
    with cat._tx() as con:
        assert walk_row_edges(con, "n0", max_depth=2) == [("n0", "n1", "x", 1), ("n1", "n2", "x", 2)]


def test_row_lineage_of_an_unknown_artifact_has_no_kind(cat):
    cat.register_artifact(art("prompts-9", "prompts"), P, 4, "curate")
    _edges(cat, ("c9", "p9", "gone"), ("p9", "source-0", "prompts-9"))
    got = [(r["row_id"], r["kind"], r["round"], r["step"]) for r in cat.row_lineage("c9")]
    assert got == [("c9", None, None, None), ("p9", "prompts", 4, "curate")]


def test_level_query_reads_the_row_id_index(tmp_path):
    # Point reads in the ART index, not a scan of the table: what keeps a lookup flat at 10 M edges.
    # (The DuckDB file only: DuckLake has no indexes; its lookups are measured in bench/lineage_lake.py.)
    cat = Catalog(tmp_path / "catalog.duckdb")
    con = duckdb.connect(str(cat.path))
    try:
        con.execute("INSERT INTO row_edges SELECT 'r' || i, 'p' || i, 'a' FROM range(3000) t(i)")
        con.execute("CHECKPOINT")
        plan = con.execute("EXPLAIN ANALYZE " + level_query(2), ["r7", "r2999"]).fetchall()[0][1]
        assert "Index Scan" in plan
        assert walk_row_edges(con, "r7") == [("r7", "p7", "a", 1)]
    finally:
        con.close()


# --- two writers --------------------------------------------------------------------------------


def write_steps(cat: Catalog, pipeline: str, tag: str, n: int) -> None:
    """`n` one-step records of writer `tag`, each with an artifact, an edge, a metric and a row edge."""
    for i in range(n):
        cat.record_step(
            StepRecord(
                pipeline=pipeline,
                round=1,
                step=f"{tag}-step-{i:03d}",
                identity=f"{tag}-{i}",
                inputs={"in": f"{tag}-in-{i}"},
                outputs={"out": ArtifactRef(f"{tag}-out-{i}", "t", "u", 1, 1, "parquet")},
                metrics={f"{tag}/m{i}": i},
                row_edges=[(f"{tag}-row-{i}", f"{tag}-parent-{i}", f"{tag}-out-{i}")],
            )
        )


def _writer(root: str, backend: str, tag: str, n: int, barrier) -> None:
    cat = open_catalog(Path(root), backend)
    barrier.wait()
    write_steps(cat, tag, tag, n)


@pytest.mark.parametrize("backend", ["duckdb", "ducklake"])
def test_two_processes_write_concurrently(tmp_path, backend):
    open_catalog(tmp_path, backend).close()
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), backend, tag, 50, barrier)) for tag in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]

    cat = open_catalog(tmp_path, backend)
    assert _sql(cat, "SELECT pipeline, count(*) FROM steps GROUP BY ALL ORDER BY ALL") == [("a", 50), ("b", 50)]
    assert _sql(cat, "SELECT count(*) FROM artifacts") == [(100,)]
    assert _sql(cat, "SELECT count(*) FROM edges") == [(100,)]
    assert _sql(cat, "SELECT sum(value) FROM metrics") == [(2 * sum(range(50)),)]
    assert cat.find_completed_step("b-49") == {"out": "b-out-49"}
