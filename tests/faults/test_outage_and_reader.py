"""A round rides out an S3 outage (the real server stopped mid-round and restarted on the same port and
data) and a user holding the catalog open for longer than the old 120 s limit: it completes, late, with
each wait logged and the holder named."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from storage.s3server import LocalS3Server, free_port
from storage.store import open_store
from tests.conftest import HF_GENERATION
from tests.faults.harness import FlywheelRun, audit, stage_done, write_config

pytestmark = pytest.mark.faults  # in tests/conftest.py's WAITS: the round waits out the hold beside the rest
HOLD_S = 180  # 3 minutes: rounds used to give up on a locked catalog after 120 s


def test_a_round_rides_out_an_s3_outage_and_a_reader_holding_the_catalog(make_config, tmp_path, monkeypatch):
    home = (tmp_path / "home").resolve()
    server = LocalS3Server(tmp_path / "s3", port=free_port()).start()
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    uri = "s3://outage/round"
    open_store(uri, server.endpoint_url, create_bucket=True).check()
    storage = {"uri": uri, "endpoint_url": server.endpoint_url}
    cfg = make_config(pipeline="outage", home=home, storage=storage, generation=HF_GENERATION)
    run = FlywheelRun(write_config(cfg, tmp_path / "outage.yaml"), home)
    reader = None
    try:
        run.wait_for(*stage_done("generate"))
        server.stop()  # the score step's writes meet a dead endpoint
        time.sleep(8)
        server.start()
        run.wait_for("retrying in", "left of storage.retry_window_s", timeout=300)

        run.wait_for("Task run 'train-sft-", timeout=300)  # running: its catalog writes come next
        code = (
            "import duckdb, time\n"
            "while True:\n"  # the round holds it for a moment at a time: take it between two writes
            "    try:\n"
            f"        con = duckdb.connect({str(home / 'catalog.duckdb')!r}, read_only=True)\n"
            "        break\n"
            "    except duckdb.IOException:\n"
            "        time.sleep(0.05)\n"
            "print('holding', flush=True)\n"
            f"time.sleep({HOLD_S})\n"
        )
        reader = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        assert reader.stdout.readline().strip() == "holding"
        held_at = time.monotonic()
        run.wait_for("is locked by", f"PID {reader.pid}", "waiting", timeout=300)
        assert run.finish() == 0, run.tail()
        assert time.monotonic() - held_at > HOLD_S - 5, "the round waited for the reader instead of failing"
        assert reader.wait() == 0
        found = audit(home, open_store(uri, server.endpoint_url))
        assert found["rounds"] == [(1, "completed")]
        assert found["artifacts"] > 10 and found["unresolved"] == []
        assert "Traceback" not in run.text() and "IOException" not in run.text()
    finally:
        if reader is not None and reader.poll() is None:
            reader.kill()
        if run.proc.poll() is None:
            run.kill_9()
        server.stop()
