"""Open the catalog's DuckDB file, waiting while another process holds it.

DuckDB lets one process hold a database file at a time; a read-only connection (the DuckDB CLI, a
notebook, a dashboard) locks out writers too. A round must outlast such a reader rather than fail on it,
so a locked file is waited for, with a log line every LOG_EVERY_S naming the holder, for up to `wait_s`.
Only then does it fail, with one line that says who holds the lock and how to release it.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import duckdb

WAIT_S = 3600.0  # long enough for a dashboard refresh or a notebook session; a nightly round still ends
LOG_EVERY_S = 30.0
log = logging.getLogger("flywheel.storage")
_PID_RE = re.compile(r"\(PID (\d+)\)")


class CatalogLocked(Exception):
    """The catalog stayed locked by another process for longer than the configured wait."""


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
