"""Rounds on the DuckLake catalog (storage.catalog: ducklake), through the real parts: a home whose first round
used the DuckDB file switches to DuckLake and is migrated from the store; the next round writes Parquet into
the store while a plain DuckDB reader in another process queries the catalog; the CLI reads it, as of any round."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.round import round_flow
from tasks.stage import runtime

ROOT = Path(__file__).resolve().parents[1]
FLYWHEEL = [sys.executable, "-m", "flows.cli"]

# What README's "The catalog" gives a reader: the extensions, a secret from the environment, ATTACH READ_ONLY.
READER = """
import os, sys, time, duckdb
from storage.duckdb_ext import load_extensions
con = duckdb.connect()
load_extensions(con, "ducklake", "sqlite", "httpfs")
con.execute(f\"\"\"CREATE SECRET (TYPE s3, KEY_ID '{os.environ["AWS_ACCESS_KEY_ID"]}',
    SECRET '{os.environ["AWS_SECRET_ACCESS_KEY"]}', ENDPOINT '{sys.argv[2]}', USE_SSL false, URL_STYLE 'path')\"\"\")
con.execute(f"ATTACH 'ducklake:sqlite:{sys.argv[1]}' AS lake (READ_ONLY)")
while not os.path.exists(sys.argv[3]):
    (n,) = con.execute("SELECT count(*) FROM lake.steps WHERE round = 2 AND status = 'completed'").fetchone()
    print(n, flush=True)
    time.sleep(0.5)
"""


def _essentials(cat, pipeline: str) -> list[tuple]:
    keep = ("round", "status", "policy_in", "candidate", "policy_out", "promoted", "manifest_uri")
    return [tuple(r[k] for k in keep) + (r["metrics"],) for r in cat.rounds(pipeline)]


def _cli(args: list[str], home: Path) -> object:
    run = subprocess.run(
        FLYWHEEL + [*args, "--json"], cwd=ROOT, env={**os.environ, "FLYWHEEL_HOME": str(home)},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout)


@pytest.fixture(autouse=True)
def _harness(prefect_harness):
    yield


def test_a_home_moves_to_ducklake_and_keeps_its_history(make_config, tmp_path):
    home = tmp_path / "home"
    on_file = make_config(home=home)
    first = round_flow(on_file)
    rt = runtime(on_file)
    before = _essentials(rt.catalog, "t")
    candidate_lineage = sorted((e["src"], e["dst"], e["step"]) for e in rt.catalog.lineage(first.candidate))
    pair = rt.artifacts.get_table(rt.catalog.step_outputs("t", 1, "select")["pairs"]).to_pylist()[0]
    row_chain = rt.catalog.row_lineage(pair["row_id"])
    backup = rt.store.get_bytes("catalog/catalog.duckdb")

    # Same home and store, catalog: ducklake. Opening it rebuilds the catalog from the store's manifests.
    on_lake = make_config(home=home, storage__catalog="ducklake")
    lake = runtime(on_lake)
    assert lake.catalog.lake is not None and (home / "catalog.sqlite").is_file()
    assert _essentials(lake.catalog, "t") == before
    assert sorted((e["src"], e["dst"], e["step"]) for e in lake.catalog.lineage(first.candidate)) == candidate_lineage
    assert lake.catalog.row_lineage(pair["row_id"]) == row_chain
    pointer = json.loads((home / "catalog.json").read_text())
    assert pointer["metadata"] == f"sqlite:{home / 'catalog.sqlite'}"
    assert pointer["data_path"].endswith("/catalog/lake/")
    text = json.dumps(pointer)
    assert "secret" not in text.lower() and os.environ["AWS_SECRET_ACCESS_KEY"] not in text  # keys stay in the env

    # Round 2 on the lake, while another process reads the catalog the whole time.
    stop = tmp_path / "stop-reader"
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(home / "catalog.sqlite"), lake.catalog.lake.spec.s3_endpoint, str(stop)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(3)  # the reader is attached before the round writes
    second = round_flow(on_lake)
    time.sleep(1.5)
    stop.touch()
    out, err = reader.communicate(timeout=60)
    assert reader.returncode == 0, err[-3000:]
    seen = [int(n) for n in out.split()]
    steps_now = len(lake.catalog.steps_of("t", 2))
    # It read all through the round, saw steps land one by one, and ended on what the writer has.
    assert seen[0] < seen[-1] == steps_now and len(set(seen)) > 2, seen

    assert second.round == 2 and second.policy_in == first.policy_out
    assert [r["round"] for r in lake.catalog.rounds("t")] == [1, 2]
    keys = lake.store.list("catalog/lake/")
    assert any(k.endswith(".parquet") for k in keys)
    # The lake holds the catalog in the store itself: the DuckDB file's copy is neither needed nor rewritten.
    assert lake.store.get_bytes("catalog/catalog.duckdb") == backup

    # The CLI finds the lake from the home alone, now and as of round 1.
    now = _cli(["rounds"], home)
    assert [r["round"] for r in now] == [1, 2] and now[1]["policy_in"] == first.policy_out
    then = _cli(["rounds", "--pipeline", "t", "--as-of-round", "1"], home)
    assert [(r["round"], r["candidate"]) for r in then] == [(1, first.candidate)]
    chain = _cli(["lineage", pair["row_id"]], home)
    assert {(c["row_id"], c["parent_id"]) for c in chain["rows"]} == {(c["row_id"], c["parent_id"]) for c in row_chain}
