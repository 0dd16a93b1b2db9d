"""One round of a pipeline at a time: an exclusive lock per pipeline, held for the whole round.

A second trigger of the same pipeline (the UI's Run while the nightly round runs, two `flywheel run`,
two machines) waits its turn and says so in its logs; different pipelines run side by side.

Two layers, taken in this order:
- An flock on a file under FLYWHEEL_HOME, always. The kernel releases it when a holder dies, so on one
  home a killed round never blocks the next one, and a round is `running` in this home's catalog only
  while its owner holds this flock (flows/crashes.py marks a running round whose lock is free crashed).
- With a Prefect API configured (PREFECT_API_URL, from the environment or a profile): the Prefect global
  concurrency limit `flywheel-pipeline-<pipeline>` (flows/pipeline_limit.py), which serialises the rounds
  of a pipeline across machines. Without one, the flock alone decides, as on one machine it must.

The flock file records its holder, and the lease of its Prefect slot until that slot is released. So the
next holder of the flock knows that a lease still recorded there belongs to a dead process (which held
the flock), and frees the slot at once instead of waiting for the lease to expire.
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
from functools import partial
from pathlib import Path

POLL_S = 1.0
LOG_EVERY_S = 30.0


class PipelineBusy(Exception):
    pass


@contextmanager
def pipeline_lock(
    home: Path, pipeline: str, log: Callable[[str], None] = print, timeout_s: float | None = None
) -> Iterator[None]:
    """Hold the pipeline's lock for the body; wait for it (up to `timeout_s`, None: forever).

    Raises PipelineBusy, naming the holder, when `timeout_s` passes first.
    """
    from flows.pipeline_limit import LimitBusy, api_url, hold_limit, release_lease

    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    path = Path(home) / "locks" / f"{pipeline}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _flock(fd, path, pipeline, log, deadline)
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": datetime.now(timezone.utc).isoformat()}
        if not api_url():
            _record(fd, holder)
            yield
            return
        stale = _read(path).get("lease_id")
        if stale:  # its holder held this flock, so it is dead: its slot is free to take back
            release_lease(stale)
            log(f"released the Prefect slot of pipeline {pipeline!r} left by a dead round ({_holder(path)})")
            _record(fd, {})
        holder["flow_run_id"] = _flow_run_id()
        # Once released, no lease is left for the next holder to free (a failed release stays recorded).
        try:
            with hold_limit(pipeline, holder, log, deadline, on_release=partial(_record, fd, holder)) as lease_id:
                _record(fd, {**holder, "lease_id": lease_id})
                yield
        except LimitBusy as e:
            raise PipelineBusy(str(e)) from None
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def _flock(fd: int, path: Path, pipeline: str, log: Callable[[str], None], deadline: float | None) -> None:
    start = last_log = time.monotonic()
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise PipelineBusy(
                    f"pipeline {pipeline!r} is busy: another round holds {path} ({_holder(path)}); "
                    f"gave up after {now - start:.0f} s"
                ) from None
            if now - start < POLL_S or now - last_log > LOG_EVERY_S:
                log(f"waiting for the running round of pipeline {pipeline!r} to finish ({_holder(path)})")
                last_log = now
            time.sleep(POLL_S if deadline is None else max(0.0, min(POLL_S, deadline - now)))


def _record(fd: int, info: dict) -> None:
    """Who holds it, for the next waiter's message (the lock itself is the flock, not this text)."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)


def _flow_run_id() -> str | None:
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    return str(ctx.flow_run.id) if ctx and ctx.flow_run else None


def lock_holder(home: Path, pipeline: str) -> str:
    """Who took the pipeline's lock last, for messages: "pid N since T on host H" (or "holder unknown")."""
    from flows.pipeline_limit import api_url, slot_holder

    path = Path(home) / "locks" / f"{pipeline}.lock"
    # A held flock names its holder in its file; otherwise the slot, if taken, is held from another machine
    # (or home), whose holder only the Prefect variable knows.
    if api_url() and not _flock_held(path):
        return slot_holder(pipeline)
    return _holder(path)


def _flock_held(path: Path) -> bool:
    """Whether a process holds the flock of `path` now (probed without waiting, released at once)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _holder(path: Path) -> str:
    info = _read(path)
    try:
        host = f" on host {info['host']}" if info.get("host") else ""
        return f"pid {info['pid']} since {info['since']}{host}"
    except KeyError:
        return "holder unknown"
