"""The embedded S3 server dies with its owner, however the owner dies, and a server that outlived its
owner anyway is stopped by the next start over the same data."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from storage.s3server import LocalS3Server

ROOT = Path(__file__).resolve().parents[1]


def _servers_over(data_dir: Path) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:  # exited meanwhile
            continue
        if argv and argv[0].endswith("rclone") and str(data_dir) in argv:
            found.append(" ".join(argv))
    return found


def _owner(data_dir: Path) -> subprocess.Popen:
    code = (
        "import time\nfrom pathlib import Path\nfrom storage.s3server import LocalS3Server\n"
        f"LocalS3Server(Path({str(data_dir)!r})).start()\nprint('up', flush=True)\ntime.sleep(600)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert proc.stdout.readline().strip() == "up"
    assert _servers_over(data_dir), "the server is running while its owner lives"
    return proc


def _gone_within(data_dir: Path, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _servers_over(data_dir):
            return True
        time.sleep(0.2)
    return False


def test_kill_9_of_the_owner_stops_the_server(tmp_path):
    data = (tmp_path / "s3").resolve()
    owner = _owner(data)
    owner.kill()
    owner.wait()
    assert _gone_within(data, 15)


def test_sigterm_to_the_owners_process_group_stops_the_server(tmp_path):
    data = (tmp_path / "s3").resolve()
    owner = _owner(data)
    os.killpg(owner.pid, signal.SIGTERM)  # what systemd and Kubernetes send on stop
    owner.wait()
    assert _gone_within(data, 15)


def test_the_next_start_stops_a_server_whose_owner_is_gone(tmp_path):
    data = (tmp_path / "s3").resolve()
    data.mkdir()
    # A stand-in for a server that survived its owner: its command line names the data directory.
    stand_in = [sys.executable, "-c", "import time; time.sleep(600)", str(data)]
    orphan = subprocess.Popen(stand_in, start_new_session=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    (data / f".s3-server-{dead.pid}.json").write_text(f'{{"owner": {dead.pid}, "server": {orphan.pid}}}')
    live = subprocess.Popen(stand_in, start_new_session=True)
    (data / ".s3-server-1.json").write_text(f'{{"owner": 1, "server": {live.pid}}}')  # pid 1 is alive
    try:
        with LocalS3Server(data):
            assert orphan.wait(timeout=10) == -signal.SIGKILL
            assert live.poll() is None, "a live owner's server is left alone"
            assert not (data / f".s3-server-{dead.pid}.json").exists()
    finally:
        for p in (orphan, live):
            p.kill()
            p.wait()
