"""What the fault battery needs: a real `flywheel run` subprocess watched line by line, so a fault can be
injected at a stage boundary, and an audit of a home afterwards (catalog against store, leftovers)."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import yaml

ROOT = Path(__file__).resolve().parents[2]


def write_config(cfg, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return path


class FlywheelRun:
    """`flywheel run --config X` in its own process group, its merged output read by a thread."""

    def __init__(self, config: Path, home: Path, extra_env: dict[str, str] | None = None):
        env = {**os.environ, "FLYWHEEL_HOME": str(home), **(extra_env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "run", "--config", str(config), "--rounds", "1"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._new: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            self._new.put(line)
        self._new.put(None)

    def wait_for(self, *needles: str, timeout: float = 600) -> str:
        """Block until a line containing every needle appears; the line. Fails if the run ends first."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._new.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise AssertionError(f"no line with {needles} within {timeout} s; tail:\n{self.tail()}") from None
            if line is None:
                raise AssertionError(f"the run ended (rc {self.proc.wait()}) before {needles}; tail:\n{self.tail()}")
            if all(n in line for n in needles):
                return line

    def kill_9(self) -> None:
        """SIGKILL to the `flywheel run` process only, as the OOM killer or a crashed node would."""
        self.proc.kill()
        self.proc.wait()

    def finish(self, timeout: float = 900) -> int:
        rc = self.proc.wait(timeout=timeout)
        time.sleep(0.2)  # let the reader thread drain the pipe
        return rc

    def tail(self, n: int = 40) -> str:
        return "".join(self.lines[-n:])

    def text(self) -> str:
        return "".join(self.lines)


def stage_done(step: str) -> tuple[str, str]:
    """The needles of the log line Prefect writes when a step's task run completes."""
    return (f"Task run '{step}-", "Finished in state Completed")


def processes_of(home: Path) -> list[str]:
    """Command lines of live processes started for `home` (its FLYWHEEL_HOME is in their environment)."""
    marker = f"FLYWHEEL_HOME={home}".encode()
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if proc.name == str(os.getpid()) or marker not in (proc / "environ").read_bytes().split(b"\0"):
                continue
            status = (proc / "status").read_text()
            if "State:\tZ" in status:
                continue
            found.append(
                f"{proc.name}: " + (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            )
        except OSError:  # exited meanwhile, or not ours
            continue
    return found


def wait_until_gone(home: Path, seconds: float = 20) -> list[str]:
    """Processes of `home` still alive after `seconds` (the empty list when all are gone)."""
    deadline = time.monotonic() + seconds
    while (left := processes_of(home)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def audit(home: Path, store) -> dict[str, object]:
    """The home after a run: round statuses, catalog artifacts the store cannot resolve, leftovers."""
    con = duckdb.connect(str(home / "catalog.duckdb"), read_only=True)
    try:
        rounds = con.execute("select round, status from rounds order by round").fetchall()
        stored = con.execute(
            "select id, uri from artifacts where uri like ? order by id", [f"{store.uri}/%"]
        ).fetchall()
        steps = con.execute("select step, status, reused from steps order by step").fetchall()
    finally:
        con.close()
    from storage.artifacts import MANIFEST, artifact_folder
    from storage.inputs import INPUTS, snapshot_complete

    def resolves(artifact_id: str, uri: str) -> bool:
        key = uri[len(store.uri) + 1 :]
        if key.startswith(f"{INPUTS}/"):  # a source or eval set snapshotted by content (storage/inputs.py)
            return snapshot_complete(store, key)
        return store.exists(f"{artifact_folder(artifact_id)}/{MANIFEST}")

    unresolved = [a for a, uri in stored if not resolves(a, uri)]
    scratch = [p.name for root in (home / "tmp", home / "cache" / "tmp") if root.is_dir() for p in root.iterdir()]
    stray = [p.name for p in home.iterdir() if p.name.startswith("tmp") and p.name != "tmp"]  # tempfile's names
    return {
        "rounds": rounds,
        "steps": {s: (status, reused) for s, status, reused in steps},
        "artifacts": len(stored),
        "unresolved": unresolved,
        "scratch": scratch,
        "stray": stray,
    }
