"""`kill -9` of a real `flywheel run` at two stage boundaries, then the same command again: the round
completes, reusing what finished; nothing outlives a killed run (no S3 server, no engine), no scratch
is left behind, and every artifact the catalog records resolves in the store."""

from __future__ import annotations

import pytest

from tests.faults.harness import FlywheelRun, audit, stage_done, wait_until_gone, write_config

pytestmark = pytest.mark.faults


def test_kill_9_after_generate_and_after_sft_then_resume(make_config, tmp_path, monkeypatch):
    home = (tmp_path / "home").resolve()
    # The embedded S3 server: started by each run under the home, so a kill must not orphan it.
    cfg = make_config(pipeline="faults", home=home, storage={"uri": "embedded"})
    config = write_config(cfg, tmp_path / "faults.yaml")

    first = FlywheelRun(config, home)
    first.wait_for(*stage_done("generate"))
    first.kill_9()
    assert wait_until_gone(home) == [], "nothing of the killed run outlives it"

    second = FlywheelRun(config, home)
    second.wait_for(*stage_done("train-sft"))
    second.kill_9()
    assert wait_until_gone(home) == []
    assert "generate: reusing the outputs of an identical earlier step" in second.text()

    third = FlywheelRun(config, home)
    assert third.finish() == 0, third.tail()
    out = third.text()
    for step in ("curate", "generate", "score", "select", "train-sft"):
        assert f"{step}: reusing the outputs of an identical earlier step" in out, step
    assert "train-dpo: reusing" not in out
    assert wait_until_gone(home) == []

    from storage.runtime import open_home_store
    from storage.s3server import LocalS3Server

    for name in LocalS3Server(home / "s3").env():  # opening the home's store exports its server's keys
        monkeypatch.delenv(name, raising=False)  # recorded, so the other tests get their own keys back
    store, server = open_home_store(home, "embedded")
    try:
        found = audit(home, store)
    finally:
        server.stop()
    assert found["rounds"] == [(1, "completed")]
    assert found["steps"]["generate"] == ("completed", True)
    assert found["steps"]["train-dpo"] == ("completed", False)
    assert found["artifacts"] > 10 and found["unresolved"] == []
    assert found["scratch"] == [] and found["stray"] == []
