"""A store rides out a short S3 outage: the real local server is stopped mid-write and restarted on the
same port and data, and the write completes; a longer outage fails with the one clear line."""

from __future__ import annotations

import logging
import threading
import time
import uuid

import pytest

from storage.s3server import LocalS3Server, free_port
from storage.store import StoreError, StoreUnavailable, open_store


@pytest.fixture
def restartable(tmp_path, monkeypatch):
    """A server on a fixed port, so a restart brings the same endpoint back."""
    server = LocalS3Server(tmp_path / "s3", port=free_port()).start()
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    yield server
    server.stop()


def _store(server, window):
    s = open_store(
        f"s3://outage/{uuid.uuid4().hex[:8]}", server.endpoint_url, create_bucket=True, retry_window_s=window
    )
    s.check()
    return s


def test_a_five_second_outage_is_ridden_out_by_writes_reads_and_lists(restartable, caplog):
    store = _store(restartable, window=60)
    store.put_bytes("before.json", b"1")
    restartable.stop()
    restarter = threading.Timer(5.0, restartable.start)
    restarter.start()
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="flywheel.storage"):
        store.put_bytes("during.json", b"2")  # the server is down when this starts
    waited = time.monotonic() - t0
    restarter.join()
    assert 4.5 < waited < 30
    assert store.get_bytes("during.json") == b"2"
    assert store.list("") == ["before.json", "during.json"]
    waits = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
    assert waits, "each wait is logged"
    assert "cannot reach S3 endpoint" in waits[0] and "left of storage.retry_window_s" in waits[0]


def test_an_outage_longer_than_the_window_fails_with_the_clear_line(restartable):
    store = _store(restartable, window=2)
    restartable.stop()
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailable, match=r"cannot reach S3 endpoint .* \(still failing after 2 s of retries\)"):
        store.get_bytes("x.json")
    assert 1.5 < time.monotonic() - t0 < 15


def test_check_still_fails_fast_and_a_missing_key_is_not_retried(restartable):
    store = _store(restartable, window=60)
    t0 = time.monotonic()
    with pytest.raises(KeyError):
        store.get_bytes("missing.json")
    assert not store.exists("missing.json")
    assert time.monotonic() - t0 < 3
    restartable.stop()
    t0 = time.monotonic()
    with pytest.raises(StoreError, match="cannot reach S3 endpoint"):
        store.check()  # a wrong endpoint at the start of a round fails in seconds, not after the window
    assert time.monotonic() - t0 < 15


def test_rejected_credentials_are_not_retried(restartable, monkeypatch):
    store = _store(restartable, window=60)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong" * 8)
    wrong = open_store(store.uri, restartable.endpoint_url, retry_window_s=60)
    t0 = time.monotonic()
    with pytest.raises(StoreError, match="credentials rejected") as err:
        wrong.put_bytes("x.json", b"1")
    assert not isinstance(err.value, StoreUnavailable)
    assert time.monotonic() - t0 < 5
