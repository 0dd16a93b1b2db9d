"""One DuckLake catalog shared by two homes (two machines' worth of processes) through a real Postgres:
Debian's postgresql, started here in tmp_path on a free port. Two writers at once, from two homes, lose
nothing; either home reads the same rounds, lineage and history; the password never leaves the environment."""

from __future__ import annotations

import glob
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from storage.catalog import Catalog
from storage.catalog_lake import LakeSpec
from tests.test_catalog import _sql
from tests.test_catalog_lineage import write_steps

P = "shared"


def _pg_bin(name: str) -> str:
    """Debian keeps the server programs in /usr/lib/postgresql/<version>/bin, off PATH."""
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        raise RuntimeError(f"{name} not found: install Debian's postgresql (make postgresql)")
    return found


def _as_postgres(args: list[str]) -> list[str]:
    # initdb and the server refuse to run as root; CI and this machine run the tests as root.
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


@pytest.fixture(scope="module")
def postgres():
    """A running Postgres with database `flywheel`, password-protected; yields its libpq keywords (no password)."""
    # Not under pytest's tmp_path: its root is private to root, and the server runs as user postgres.
    root = Path(tempfile.mkdtemp(prefix="flywheel-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    pwfile = root / "pw"
    pwfile.write_text("s3cret-pg\n")
    if os.geteuid() == 0:
        shutil.chown(pwfile, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = root / "data"
    run = dict(check=True, capture_output=True, text=True, timeout=120)
    subprocess.run(
        _as_postgres([_pg_bin("initdb"), "-D", str(data), "-U", "fw", f"--pwfile={pwfile}", "-A", "md5"]), **run
    )
    opts = f"-k {root} -p {port} -h 127.0.0.1"
    start = [_pg_bin("pg_ctl"), "-D", str(data), "-o", opts, "-l", str(root / "log"), "-w", "start"]
    subprocess.run(_as_postgres(start), **run)
    env = {**os.environ, "PGPASSWORD": "s3cret-pg"}
    psql = [_pg_bin("psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "fw", "-d", "postgres", "-c"]

    def database(name: str) -> str:
        subprocess.run([*psql, f"CREATE DATABASE {name}"], env=env, **run)
        return f"postgres:host=127.0.0.1 port={port} dbname={name} user=fw"

    yield database
    subprocess.run(_as_postgres([_pg_bin("pg_ctl"), "-D", str(data), "-m", "fast", "stop"]), **run)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def lake(postgres, tmp_path, request, monkeypatch):
    """A new shared lake per test: metadata in a database of its own, data in one directory both homes reach
    (the store's place)."""
    monkeypatch.setenv("PGPASSWORD", "s3cret-pg")
    name = "flywheel_" + "".join(c if c.isalnum() else "_" for c in request.node.name).lower()[:40]
    return LakeSpec(metadata=postgres(name), data_path=f"{tmp_path / 'store' / 'catalog' / 'lake'}/")


def _home_catalog(home: Path, spec: LakeSpec) -> Catalog:
    return Catalog(home / "catalog.sqlite", lake=spec)  # the local path is a marker: nothing is written there


def _writer(home: str, spec: LakeSpec, tag: str, n: int, barrier) -> None:
    os.environ["PGPASSWORD"] = "s3cret-pg"
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
    assert "s3cret-pg" not in a.where and "s3cret-pg" not in str(lake)
    a.close()
    b.close()
