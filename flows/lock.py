"""One round of a pipeline at a time: an exclusive lock per pipeline, held for the whole round.

A second trigger of the same pipeline (the UI's Run while the nightly round runs, two `flywheel run`)
waits its turn and says so in its logs; different pipelines run side by side. The lock is an flock on
a file under FLYWHEEL_HOME, so the kernel releases it when a holder dies: a killed round never blocks
the next one. It serialises rounds on one machine, which is where the DuckDB catalog lives. A round is
`running` in the catalog only while its owner holds this lock, so a running round whose lock is free has
no owner left (flows/crashes.py marks it crashed).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

POLL_S = 1.0
LOG_EVERY_S = 30.0


class PipelineBusy(Exception):
    pass


@contextmanager
def pipeline_lock(
    home: Path, pipeline: str, log: Callable[[str], None] = print, timeout_s: float | None = None
) -> Iterator[None]:
    """Hold the pipeline's lock for the body; wait for it (up to `timeout_s`, None: forever)."""
    path = Path(home) / "locks" / f"{pipeline}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        start = last_log = time.monotonic()
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                now = time.monotonic()
                if timeout_s is not None and now - start > timeout_s:
                    raise PipelineBusy(
                        f"pipeline {pipeline!r} is busy: another round holds {path} ({_holder(path)}); "
                        f"gave up after {timeout_s:.0f} s"
                    ) from None
                if now - start < POLL_S or now - last_log > LOG_EVERY_S:
                    log(f"waiting for the running round of pipeline {pipeline!r} to finish ({_holder(path)})")
                    last_log = now
                time.sleep(POLL_S)
        # Who holds it, for the next waiter's message (the lock itself is the flock, not this text).
        os.ftruncate(fd, 0)
        since = datetime.now(timezone.utc).isoformat()
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": since}).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def lock_holder(home: Path, pipeline: str) -> str:
    """Who took the pipeline's lock last, for messages: "pid N since T on host H" (or "holder unknown")."""
    return _holder(Path(home) / "locks" / f"{pipeline}.lock")


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
        host = f" on host {info['host']}" if info.get("host") else ""
        return f"pid {info['pid']} since {info['since']}{host}"
    except (OSError, ValueError, KeyError):
        return "holder unknown"
