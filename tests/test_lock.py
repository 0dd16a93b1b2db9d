"""The per-pipeline lock: a second holder waits, a dead holder frees it, other pipelines are not blocked."""

from __future__ import annotations

import multiprocessing as mp
import time

import pytest

from flows.lock import PipelineBusy, pipeline_lock


def _hold(home, pipeline, seconds, ready):
    with pipeline_lock(home, pipeline):
        ready.set()
        time.sleep(seconds)


def _start_holder(tmp_path, pipeline="p", seconds=30.0):
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=_hold, args=(tmp_path, pipeline, seconds, ready))
    proc.start()
    assert ready.wait(30)
    return proc


def test_second_holder_is_refused_after_timeout_with_the_holder_named(tmp_path):
    proc = _start_holder(tmp_path)
    try:
        messages: list[str] = []
        t0 = time.monotonic()
        with pytest.raises(PipelineBusy, match=rf"pipeline 'p' is busy: .* \(pid {proc.pid} since "):
            with pipeline_lock(tmp_path, "p", log=messages.append, timeout_s=2):
                pass
        assert 2 <= time.monotonic() - t0 < 10
        assert messages and "waiting for the running round of pipeline 'p'" in messages[0]
    finally:
        proc.kill()
        proc.join()


def test_lock_is_released_when_the_holder_dies(tmp_path):
    proc = _start_holder(tmp_path)
    proc.kill()  # no clean exit: the kernel drops the flock with the process
    proc.join()
    with pipeline_lock(tmp_path, "p", timeout_s=5):
        pass


def test_waiter_gets_the_lock_when_the_holder_finishes(tmp_path):
    proc = _start_holder(tmp_path, seconds=2.0)
    t0 = time.monotonic()
    with pipeline_lock(tmp_path, "p", log=lambda m: None, timeout_s=30):
        waited = time.monotonic() - t0
    proc.join()
    assert 0.5 < waited < 15


def test_other_pipelines_are_not_blocked(tmp_path):
    proc = _start_holder(tmp_path, pipeline="a")
    try:
        with pipeline_lock(tmp_path, "b", timeout_s=1):
            pass
    finally:
        proc.kill()
        proc.join()
