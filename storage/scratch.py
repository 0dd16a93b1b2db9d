"""Per-process scratch directories that a crash cannot leak.

A stage's work directory or a model being downloaded into the cache can be gigabytes (tens at 8 B
scale). `tempfile` removes them on a normal exit, but a `kill -9`, an OOM kill or a power cut leaves
them behind, one per crash. So every process keeps its scratch in `<root>/<pid>-<random>/` and holds an
exclusive `flock` on `<that>.lock` for as long as it lives. The kernel drops the lock when the process
dies however it dies, so the next process to open the same root removes every directory whose lock it
can take: those owners are gone. A live owner's lock is held, so its work is never touched, and pid
reuse cannot fool it.

    work = process_scratch(home / "tmp")          # this process's directory, created once
    with tempfile.TemporaryDirectory(dir=work):   # as before; a crash leaves it to the next sweep
        ...
"""

from __future__ import annotations

import atexit
import fcntl
import logging
import os
import shutil
import threading
import uuid
from pathlib import Path

log = logging.getLogger("flywheel.storage")
_MINE: dict[Path, Path] = {}
_HELD: list[int] = []  # the lock descriptors, open until the process exits
_GUARD = threading.Lock()


def process_scratch(root: Path) -> Path:
    """This process's scratch directory under `root`: created, locked and, the first time, with the
    directories of dead owners swept away."""
    root = Path(root).resolve()
    with _GUARD:
        if root in _MINE and _MINE[root].is_dir():
            return _MINE[root]
        root.mkdir(parents=True, exist_ok=True)
        sweep(root)
        mine = root / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        # Locked under a name sweep() ignores, then renamed: a sweeper never sees an unlocked lock file
        # of a live process (flock follows the inode through the rename).
        fd = os.open(f"{mine}.new", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(f"{mine}.new", f"{mine}.lock")
        _HELD.append(fd)
        mine.mkdir()
        _MINE[root] = mine
        atexit.register(_remove, mine)  # a clean exit leaves nothing; a crash leaves it to sweep()
        return mine


def _remove(mine: Path) -> None:
    shutil.rmtree(mine, ignore_errors=True)
    Path(f"{mine}.lock").unlink(missing_ok=True)


def sweep(root: Path) -> int:
    """Remove the scratch directories under `root` whose owner process is gone; how many bytes that freed."""
    freed, removed = 0, 0
    for lock in sorted(Path(root).glob("*.lock")):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CLOEXEC)
        except FileNotFoundError:  # another sweeper got there first
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # its owner is alive
            os.close(fd)
            continue
        try:
            stale = lock.with_suffix("")
            freed += _size(stale)
            shutil.rmtree(stale, ignore_errors=True)
            lock.unlink(missing_ok=True)  # last, so a half-finished sweep is finished by the next one
            removed += 1
        finally:
            os.close(fd)
    if removed:
        log.warning("removed %d scratch directories of crashed runs under %s (%.1f MB)", removed, root, freed / 1e6)
    return freed


def _size(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total
