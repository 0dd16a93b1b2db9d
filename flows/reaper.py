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
    subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), str(os.getpid()), token],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a signal to the owner's process group must not stop the watchdog too
    )
    _started.append(token)


def carrying(token: str) -> list[int]:
    """Live processes (not zombies, not this one) whose environment has the token."""
    marker, found = f"{TOKEN_VAR}={token}".encode(), []
    for proc in Path("/proc").glob("[0-9]*"):
        if int(proc.name) == os.getpid():
            continue
        try:
            if (
                marker in (proc / "environ").read_bytes().split(b"\0")
                and "\nState:\tZ" not in (proc / "status").read_text()
            ):
                found.append(int(proc.name))
        except (OSError, ValueError):  # exited meanwhile, or another user's
            continue
    return found


def reap(token: str, grace_s: float = GRACE_S) -> int:
    """SIGTERM, then SIGKILL after `grace_s`, to every process carrying the token; how many there were."""
    pids = carrying(token)
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while (left := carrying(token)) and time.monotonic() < deadline:
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
    while os.getppid() == owner:  # once the owner is gone this process has a new parent
        time.sleep(POLL_S)
    reap(token)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
