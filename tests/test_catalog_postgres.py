"""One DuckLake catalog shared by two homes (two machines' worth of processes) through a real Postgres:
Debian's postgresql, started here in tmp_path on a free port. Two writers at once, from two homes, lose
nothing; either home reads the same rounds, lineage and history; the password never leaves the environment."""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

import pytest

from storage.catalog import Catalog
from storage.catalog_lake import LakeSpec
from tests.pg import PASSWORD, postgres_server
from tests.test_catalog import _sql
from tests.test_catalog_lineage import write_steps

P = "shared"


@pytest.fixture(scope="module")
def postgres():
    """A running Postgres; yields database(name) -> its DuckLake metadata string (tests/pg.py)."""
    with postgres_server() as database:
        yield database


@pytest.fixture
def lake(postgres, tmp_path, request, monkeypatch):
    """A new shared lake per test: metadata in a database of its own, data in one directory both homes reach
    (the store's place)."""
    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    name = "flywheel_" + "".join(c if c.isalnum() else "_" for c in request.node.name).lower()[:40]
    return LakeSpec(metadata=postgres(name), data_path=f"{tmp_path / 'store' / 'catalog' / 'lake'}/")


def _home_catalog(home: Path, spec: LakeSpec) -> Catalog:
    return Catalog(home / "catalog.sqlite", lake=spec)  # the local path is a marker: nothing is written there


def _writer(home: str, spec: LakeSpec, tag: str, n: int, barrier) -> None:
    os.environ["PGPASSWORD"] = PASSWORD
    cat = _home_catalog(Path(home), spec)
    barrier.wait()
    write_steps(cat, P, tag, n)
    cat.close()


def test_two_homes_write_one_catalog_at_once(lake, tmp_path):
    _home_catalog(tmp_path / "home-a", lake).close()  # the schema, once
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_writer, args=(str(tmp_path / f"home-{tag}"), lake, tag, 25, barrier)) for tag in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    assert [p.exitcode for p in procs] == [0, 0]

    a, b = _home_catalog(tmp_path / "home-a", lake), _home_catalog(tmp_path / "home-b", lake)
    for cat in (a, b):
        assert _sql(cat, "SELECT count(*) FROM steps") == [(50,)]
        assert _sql(cat, "SELECT count(*) FROM artifacts") == [(50,)]
        assert _sql(cat, "SELECT sum(value) FROM metrics") == [(2 * sum(range(25)),)]
        assert _sql(cat, "SELECT count(DISTINCT child_id) FROM row_edges") == [(50,)]
    assert (
        a.row_lineage("b-row-7")
        == b.row_lineage("b-row-7")
        == [
            {"row_id": "b-row-7", "parent_id": "b-parent-7", "artifact_id": "b-out-7", "depth": 1}
            | {"kind": "t", "round": 1, "step": "b-step-007"}
        ]
    )
    assert not list(tmp_path.glob("home-*/catalog.sqlite*"))  # nothing local: the catalog is Postgres + store
    a.close()
    b.close()


def test_either_home_sees_the_other_homes_rounds_and_history(lake, tmp_path):
    a = _home_catalog(tmp_path / "home-a", lake)
    a.start_round(P, 1, "cfg", "base", None)
    a.finish_round(P, 1, candidate="m1", policy_out="m1", promoted=True, reason="better", manifest_uri=None)
    b = _home_catalog(tmp_path / "home-b", lake)
    assert b.current_policy(P) == "m1" and b.next_round(P) == 2  # round 2 is the other home's next one
    b.start_round(P, 2, "cfg", "m1", None)
    b.finish_round(P, 2, candidate="m2", policy_out="m1", promoted=False, reason="worse", manifest_uri=None)
    assert [(r["round"], r["promoted"]) for r in a.rounds(P)] == [(1, True), (2, False)]
    assert [r["round"] for r in a.as_of_round(P, 1).rounds(P)] == [1]  # time travel from the other home
    assert b.as_of_round(P, 2).rounds(P) == a.rounds(P)
    assert PASSWORD not in a.where and PASSWORD not in str(lake)
    a.close()
    b.close()
