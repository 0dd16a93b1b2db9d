"""flows/reaper.py: what a command starts dies with it, even a child forked without exec (vLLM's EngineCore
on CPU), whose /proc environ cannot show the token."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from flows import reaper

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="the reaper reads /proc (Linux)")

# The owner: starts the reaper, then a forked child (no exec, like vLLM's EngineCore) and an exec'd one.
OWNER = textwrap.dedent(
    """
    import multiprocessing as mp, subprocess, sys, time
    sys.path.insert(0, {root!r})
    from flows import reaper

    def idle():
        time.sleep(120)

    if __name__ == "__main__":
        reaper.start()
        forked = mp.get_context("fork").Process(target=idle)
        forked.start()
        execd = subprocess.Popen(["sleep", "120"])
        print(forked.pid, execd.pid, flush=True)
        time.sleep(120)
    """
)


def test_forked_and_execd_children_die_with_a_killed_owner(tmp_path):
    script = tmp_path / "owner.py"
    script.write_text(OWNER.format(root=str(Path(__file__).resolve().parents[1])))
    owner = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    forked, execd = (int(x) for x in owner.stdout.readline().split())
    try:
        marker = f"{reaper.TOKEN_VAR}=".encode()
        assert marker not in Path(f"/proc/{forked}/environ").read_bytes()  # why the token alone misses it
        assert marker in Path(f"/proc/{execd}/environ").read_bytes()
        time.sleep(5 * reaper.POLL_S)  # the watchdog has polled since both children started
        owner.kill()  # SIGKILL: no handler, no atexit runs
        owner.wait()
        deadline = time.monotonic() + reaper.GRACE_S + 5
        while (reaper._live(forked) or reaper._live(execd)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not reaper._live(forked), "the forked child outlived its owner"
        assert not reaper._live(execd), "the exec'd child outlived its owner"
    finally:
        owner.kill()  # when an assertion above failed first
        for pid in (forked, execd):
            if reaper._live(pid):
                os.kill(pid, 9)


def test_a_known_pid_is_reaped_only_while_its_start_time_matches():
    child = subprocess.Popen(["sleep", "30"])
    try:
        started = reaper.descendants(os.getpid())[child.pid]
        assert reaper._targets("no-such-token", {child.pid: started}) == [child.pid]
        # the same pid with another start time is someone else's process now
        assert reaper._targets("no-such-token", {child.pid: started + 1}) == []
        assert reaper.reap("no-such-token", grace_s=2, known={child.pid: started}) == 1
        assert child.wait(timeout=5) == -15  # SIGTERM was enough
    finally:
        child.kill()
