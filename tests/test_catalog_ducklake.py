"""What only the DuckLake catalog does, and the ways into it: time travel to a finished round, the schema
migration of an older DuckDB file, a file a newer DuckDB wrote, and the config's checks. Real DuckLake
(SQLite metadata, Parquet data in tmp_path); the two backends' shared behaviour is tests/test_catalog.py."""

from __future__ import annotations

import gzip
from pathlib import Path

import duckdb
import pytest

from configs import ConfigError, parse_config
from storage.artifacts import ArtifactStore
from storage.catalog import Catalog
from storage.catalog_lake import LakeSpec
from storage.runtime import open_catalog
from storage.store import FileStore
from tests.test_catalog import _sql, art, step

P = "demo"
V2_FILE = Path(__file__).parent / "data" / "catalog-duckdb-2.0.1.duckdb.gz"


def lake(root: Path) -> Catalog:
    spec = LakeSpec(metadata=f"sqlite:{root / 'catalog.sqlite'}", data_path=f"{root / 'lake'}/")
    return Catalog(root / "catalog.sqlite", lake=spec)


def finish(cat: Catalog, r: int, candidate: str, promoted: bool) -> None:
    cat.start_round(P, r, "cfg", "base-0", None)
    cat.record_step(step("train-sft", {"model": "base-0"}, {"model": art(candidate, "model", None)}, round_num=r))
    cat.record_metrics(P, r, "eval", {"heldout/accuracy": 0.1 * r})
    out = candidate if promoted else "base-0"
    cat.finish_round(P, r, candidate=candidate, policy_out=out, promoted=promoted, reason="", manifest_uri=None)


def test_as_of_round_shows_the_catalog_when_that_round_finished(tmp_path):
    cat = lake(tmp_path)
    finish(cat, 1, "model-1", promoted=True)
    finish(cat, 2, "model-2", promoted=False)
    cat.start_round(P, 3, "cfg", "model-1", None)  # running now: after both snapshots

    at1 = cat.as_of_round(P, 1)
    assert [(r["round"], r["status"]) for r in at1.rounds(P)] == [(1, "completed")]
    assert at1.current_policy(P) == "model-1"
    assert at1.artifact("model-2") is None and at1.artifact("model-1")["round"] == 1
    assert _sql(at1, "SELECT name, value FROM metrics") == [("heldout/accuracy", pytest.approx(0.1))]
    at2 = cat.as_of_round(P, 2)
    assert [(r["round"], r["promoted"]) for r in at2.rounds(P)] == [(1, True), (2, False)]
    # Now: three rounds, the third running; the views did not move.
    assert [(r["round"], r["status"]) for r in cat.rounds(P)] == [(1, "completed"), (2, "completed"), (3, "running")]
    assert len(at1.rounds(P)) == 1

    with pytest.raises(duckdb.Error, match="read-only|read only"):  # a past is read, never rewritten
        at1.record_metrics(P, 1, "eval", {"heldout/accuracy": 0.9})
    assert _sql(cat, "SELECT value FROM metrics WHERE round = 1") == [(pytest.approx(0.1),)]
    with pytest.raises(LookupError, match="no finished round 3 of pipeline 'demo'"):
        cat.as_of_round(P, 3)
    cat.close()


def test_a_reopened_lake_keeps_its_history_and_reads_in_another_process(tmp_path):
    import subprocess
    import sys

    cat = lake(tmp_path)
    finish(cat, 1, "model-1", promoted=True)
    finish(cat, 2, "model-2", promoted=True)
    cat.close()
    again = lake(tmp_path)
    assert again.as_of_round(P, 1).current_policy(P) == "model-1"
    assert again.current_policy(P) == "model-2"
    # What the README tells a reader to type: a plain DuckDB with the extension, read-only, while the writer is open.
    reader = (
        "import duckdb\n"
        "from storage.duckdb_ext import load_extensions\n"
        "con = duckdb.connect()\n"
        "load_extensions(con, 'ducklake', 'sqlite')\n"
        f"con.execute(\"ATTACH 'ducklake:sqlite:{tmp_path / 'catalog.sqlite'}' AS lake (READ_ONLY)\")\n"
        "print(con.execute('SELECT round, policy_out FROM lake.rounds ORDER BY round').fetchall())\n"
        "print(con.execute(\"SELECT count(*) FROM lake.snapshots() WHERE commit_message LIKE '% finished'\")"
        ".fetchone()[0])\n"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", reader], cwd=root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["[(1, 'model-1'), (2, 'model-2')]", "2"]
    again.close()


def test_a_duckdb_file_has_no_history_to_travel_to(tmp_path):
    cat = Catalog(tmp_path / "catalog.duckdb")
    with pytest.raises(ValueError, match="DuckDB file, which keeps no history.*storage.catalog: ducklake"):
        cat.as_of_round(P, 1)


def test_an_older_catalog_file_is_migrated_on_open(tmp_path):
    path = tmp_path / "catalog.duckdb"
    con = duckdb.connect(str(path))  # row_edges as the releases before DuckLake support wrote it
    con.execute("CREATE TABLE row_edges (row_id TEXT, parent_id TEXT, artifact_id TEXT)")
    con.execute("CREATE INDEX row_edges_row ON row_edges (row_id)")
    con.execute("INSERT INTO row_edges VALUES ('sft-a', 'c-1', 'sft-1'), ('c-1', 'p-1', 'completions-1')")
    con.close()
    cat = Catalog(path)
    assert [(r["row_id"], r["parent_id"], r["depth"]) for r in cat.row_lineage("sft-a")] == [
        ("sft-a", "c-1", 1),
        ("c-1", "p-1", 2),
    ]
    indexes = _sql(cat, "SELECT index_name FROM duckdb_indexes() WHERE table_name = 'row_edges'")
    assert indexes == [("row_edges_child",)]  # the lookup index is back, on the renamed column


def test_a_file_from_a_newer_duckdb_is_set_aside_and_rebuilt(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    newer = gzip.decompress(V2_FILE.read_bytes())
    (home / "catalog.duckdb").write_bytes(newer)
    with pytest.raises(duckdb.IOException, match="newer version"):  # why the file cannot simply be opened
        duckdb.connect(str(home / "catalog.duckdb"))
    store = FileStore(tmp_path / "store")
    cat = open_catalog(home, store, ArtifactStore(store, home / "cache"), None)
    assert (home / "catalog.duckdb.newer-duckdb").read_bytes() == newer  # kept as it was, never deleted
    assert cat.rounds() == []
    finish(cat, 1, "model-1", promoted=True)
    assert cat.current_policy(P) == "model-1"


BASE = {
    "base_model": "m",
    "curation": {"sources": [{"name": "pool", "path": "p.jsonl"}]},
    "evaluation": {"eval_sets": [{"name": "heldout", "path": "h.jsonl"}]},
}


@pytest.mark.parametrize(
    ("storage", "message"),
    [
        ({"catalog_metadata": "sqlite:/tmp/c.sqlite"}, "catalog_metadata is for DuckLake: set storage.catalog"),
        ({"catalog": "ducklake", "catalog_metadata": "/tmp/c.sqlite"}, "must be `sqlite:/path/catalog.sqlite`"),
        (
            {"catalog": "ducklake", "catalog_metadata": "postgres:host=db dbname=fw user=fw password=hunter2"},
            "holds a password: set PGPASSWORD",
        ),
        ({"catalog": "iceberg"}, "storage.catalog"),
    ],
)
def test_catalog_settings_are_checked_at_load(storage, message):
    with pytest.raises(ConfigError, match=message) as e:
        parse_config({**BASE, "storage": storage}, "x.yaml")
    assert "hunter2" not in str(e.value)  # a refused secret is not echoed back into a log either


def test_catalog_settings_accepted():
    cfg = parse_config({**BASE, "storage": {"catalog": "ducklake", "catalog_metadata": "postgres:host=db dbname=fw"}})
    assert (cfg.storage.catalog, cfg.storage.catalog_metadata) == ("ducklake", "postgres:host=db dbname=fw")
    assert parse_config(BASE).storage.catalog == "duckdb"
