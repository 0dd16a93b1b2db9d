"""A process holding the catalog file (a read-only DuckDB session, as a notebook or the CLI keeps open)
makes writers wait, with the holder named, instead of failing them; past the wait, one clear line."""

from __future__ import annotations

import logging
import subprocess
import sys
import time

import pytest

from storage.catalog import Catalog
from storage.catalog_lock import CatalogLocked


def _reader(path, seconds):
    """A separate process holding a read-only connection, like `duckdb -readonly catalog.duckdb`."""
    code = (
        "import duckdb, sys, time\n"
        f"con = duckdb.connect({str(path)!r}, read_only=True)\n"
        "con.execute('select count(*) from rounds').fetchall()\n"
        "print('holding', flush=True)\n"
        f"time.sleep({seconds})\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "holding"
    return proc


def test_a_writer_waits_for_a_reader_and_names_it(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr("storage.catalog_lock.LOG_EVERY_S", 2.0)
    path = tmp_path / "catalog.duckdb"
    catalog = Catalog(path)
    reader = _reader(path, 8)
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="flywheel.storage"):
        catalog.ensure_pipeline("p", "base", {"a": 1})
    waited = time.monotonic() - t0
    reader.wait()
    assert 5 < waited < 30
    assert catalog.rounds("p") == [] and Catalog(path)._query("select name from pipelines") == [{"name": "p"}]
    lines = [r.getMessage() for r in caplog.records if "is locked by" in r.getMessage()]
    assert lines and f"PID {reader.pid} (" in lines[0] and "waiting" in lines[0]


def test_past_the_wait_it_fails_with_one_line_not_an_ioexception(tmp_path):
    path = tmp_path / "catalog.duckdb"
    Catalog(path)
    reader = _reader(path, 30)
    try:
        catalog = Catalog.__new__(Catalog)
        catalog.path, catalog.lock_wait_s = path, 1.5
        with pytest.raises(CatalogLocked) as err:
            catalog.rounds()
        message = str(err.value)
        assert f"stayed locked by PID {reader.pid} (" in message and "storage.catalog_wait_s" in message
        assert "\n" not in message and "IOException" not in message
    finally:
        reader.kill()
        reader.wait()


def test_threads_of_one_process_take_turns_on_the_file(tmp_path):
    """Two rounds triggered from two threads open and close the file at once. DuckDB 1.5 fails the open
    that races the other thread's close ("Unique file handle conflict"); the catalog must not."""
    import threading

    path = tmp_path / "catalog.duckdb"
    catalog = Catalog(path)
    catalog.ensure_pipeline("p", "base", {"a": 1})
    errors: list[BaseException] = []

    def write(step: str) -> None:
        try:
            for i in range(600):
                catalog.record_metrics("p", 1, step, {f"m_{step}": float(i)})
                catalog.rounds("p")
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=write, args=(s,)) for s in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:1]
    rows = Catalog(path)._query("select name, value from metrics order by name")
    assert rows == [{"name": "m_a", "value": 599.0}, {"name": "m_b", "value": 599.0}]  # each upsert landed
