"""Nothing a command started outlives it: vLLM engines, the temporary Prefect server, trainers.

A `kill -9` (the OOM killer, a lost node), or a SIGTERM from systemd or Kubernetes that the children
do not all get, used to leave vLLM's EngineCore and worker, Prefect's temporary API server and a
resource tracker running with nobody to stop them: gigabytes of memory and a core each, per crash.

`start()` marks this process's environment with a fresh token, which every process it starts from then
on inherits, and starts a watchdog (this file, run by path, standard library only) in its own session.
When the owner exits, however it exits, the watchdog is re-parented, sees it within POLL_S, and sends
SIGTERM, then SIGKILL after GRACE_S, to every process that carries the token. A random token rather
than a pid, so a reused pid can never make it stop someone else's process; the parent check rather than
a pipe, because a child forked without exec would hold a pipe's write end open after the owner died.

A child forked without exec (vLLM's EngineCore and its worker on CPU) shows the token in its
`/proc/<pid>/environ` only if the owner had it at exec: that file is the environment the process was
exec'd with, and a token set later lives elsewhere in memory. So the watchdog also keeps, each poll,
the owner's descendants with their start times, and reaps those too (a pid whose start time changed
was reused by someone else, and is left alone).
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

TOKEN_VAR = "FLYWHEEL_RUN_TOKEN"
GRACE_S = 5.0
POLL_S = 0.5
_started: list[str] = []


def start() -> None:
    """Tie every process this one starts from now on to this one's life (see the module doc). Once."""
    if _started or not Path("/proc/self/environ").exists():  # Linux only: it finds processes through /proc
        return
    token = secrets.token_hex(8)
    os.environ[TOKEN_VAR] = token
    watchdog = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), str(os.getpid()), token],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a signal to the owner's process group must not stop the watchdog too
    )
    # Wait for its first look at our children (tens of ms; seconds on loaded cores): a child forked before it
    # looks, and killed with us before its next poll, would outlive us. Closed here, so no child inherits it.
    watchdog.stdout.readline()
    watchdog.stdout.close()
    _started.append(token)


def carrying(token: str) -> list[int]:
    """Live processes (not zombies, not this one) whose environment has the token."""
    marker, found = f"{TOKEN_VAR}={token}".encode(), []
    for proc in Path("/proc").glob("[0-9]*"):
        if int(proc.name) == os.getpid():
            continue
        try:
            if marker in (proc / "environ").read_bytes().split(b"\0") and _live(int(proc.name)):
                found.append(int(proc.name))
        except (OSError, ValueError):  # exited meanwhile, or another user's
            continue
    return found


def _live(pid: int, started: int | None = None) -> bool:
    """The process runs (is not a zombie) and, when `started` is given, is the one that started then."""
    st = _stat(pid)
    return st is not None and st[2] != "Z" and started in (None, st[1])


def _stat(pid: int) -> tuple[int, int, str] | None:
    """(parent pid, start time in clock ticks, state) of a live process, or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the name, in parentheses, may hold spaces
    return int(fields[1]), int(fields[19]), fields[0]


def descendants(root: int) -> dict[int, int]:
    """{pid: start time} of every live process below `root` (children, their children, ...)."""
    children: dict[int, list[tuple[int, int]]] = {}
    for proc in Path("/proc").glob("[0-9]*"):
        if (st := _stat(int(proc.name))) is not None:
            children.setdefault(st[0], []).append((int(proc.name), st[1]))
    found, todo = {}, [root]
    while todo:
        for pid, started in children.get(todo.pop(), []):
            if pid not in found:
                found[pid] = started
                todo.append(pid)
    return found


def _targets(token: str, known: dict[int, int]) -> list[int]:
    """Live processes that carry the token, or that `known` recorded with the same start time."""
    alive = {pid for pid, started in known.items() if _live(pid, started)}
    return sorted((alive | set(carrying(token))) - {os.getpid()})


def reap(token: str, grace_s: float = GRACE_S, known: dict[int, int] | None = None) -> int:
    """SIGTERM, then SIGKILL after `grace_s`, to every process carrying the token or in `known` ({pid: start
    time}, from `descendants`); how many there were."""
    known = known or {}
    pids = _targets(token, known)
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while (left := _targets(token, known)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in left:
        _signal(pid, signal.SIGKILL)
    return len(pids)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def main(argv: list[str]) -> int:
    owner, token = int(argv[0]), argv[1]
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the owner's to handle; its exit is ours
    known = descendants(owner)  # kept after they exit: _targets skips the dead and the reused
    try:
        print("watching", flush=True)
        sys.stdout.close()
    except OSError:  # the owner is gone already: reap below
        pass
    while os.getppid() == owner:  # once the owner is gone this process has a new parent
        time.sleep(POLL_S)
        known |= descendants(owner)
    reap(token, known=known)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
