"""Open the catalog's DuckDB file, waiting while another process holds it.

DuckDB lets one process hold a database file at a time; a read-only connection (the DuckDB CLI, a
notebook, a dashboard) locks out writers too. A round must outlast such a reader rather than fail on it,
so a locked file is waited for, with a log line every LOG_EVERY_S naming the holder, for up to `wait_s`.
Only then does it fail, with one line that says who holds the lock and how to release it.

Within one process, threads open and close a file in turn (`held_connection`): DuckDB 1.5 races when one thread
closes the file's last connection while another opens it ("Unique file handle conflict"), seen with two
rounds of one pipeline triggered from two threads.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

WAIT_S = 3600.0  # long enough for a dashboard refresh or a notebook session; a nightly round still ends
LOG_EVERY_S = 30.0
log = logging.getLogger("flywheel.storage")
_PID_RE = re.compile(r"\(PID (\d+)\)")
_IN_PROCESS: dict[str, threading.Lock] = {}  # one per file
_REGISTRY = threading.Lock()


class CatalogLocked(Exception):
    """The catalog stayed locked by another process for longer than the configured wait."""


@contextmanager
def held_connection(path: Path, wait_s: float = WAIT_S) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection to `path`, opened and closed in turn with the process's other threads (module doc).

    Only the open and the close take turns: threads whose transactions overlap share one database, which
    is DuckDB's own concurrency, and are not made to reopen the file for each transaction.
    """
    key = str(Path(path).resolve())
    with _REGISTRY:
        turn = _IN_PROCESS.setdefault(key, threading.Lock())
    with turn:
        con = connect_waiting(path, wait_s)
    try:
        yield con
    finally:
        with turn:
            con.close()


def connect_waiting(path: Path, wait_s: float = WAIT_S) -> duckdb.DuckDBPyConnection:
    """A read-write connection to `path`; waits while another process holds the file (see module doc)."""
    start = time.monotonic()
    next_log, delay = start + 5.0, 0.05  # a lock held for a moment is normal: say nothing for 5 s
    while True:
        try:
            return duckdb.connect(str(path))
        except duckdb.IOException as e:
            if "lock" not in str(e).lower():
                raise
            waited, holder = time.monotonic() - start, lock_holder(str(e))
            if waited >= wait_s:
                raise CatalogLocked(
                    f"catalog {path} stayed locked by {holder} for {waited:.0f} s: close that connection "
                    "(query a copy, or use `flywheel rounds` / `flywheel lineage`), or raise "
                    "storage.catalog_wait_s"
                ) from None
            if time.monotonic() >= next_log:
                log.warning(
                    "catalog %s is locked by %s: waiting (%.0f s so far, up to %.0f s)", path, holder, waited, wait_s
                )
                next_log += LOG_EVERY_S
            time.sleep(min(delay, max(wait_s - waited, 0.0)))
            delay = min(delay * 2, 1.0)


def lock_holder(message: str) -> str:
    """'PID n (its command line)' from DuckDB's lock error, where the process can be looked up."""
    found = _PID_RE.search(message)
    if found is None:
        return "another process"
    pid = found.group(1)
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:  # not Linux, or the holder has just exited
        return f"PID {pid}"
    command = " ".join(b" ".join(argv).decode(errors="replace").split())[:120]  # one line, even for `python -c`
    return f"PID {pid} ({command})" if command else f"PID {pid}"
