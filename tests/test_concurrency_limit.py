"""One round per pipeline across machines, through a real Prefect server: the pipeline's global concurrency
limit holds one slot while a round runs, a second trigger waits (visibly) or is refused at its timeout,
and proceeds once the slot is released. A holder killed on the same home frees the slot at once.

Holders run in spawned processes with their own FLYWHEEL_HOME, as a second machine would.
"""

from __future__ import annotations

import contextvars
import multiprocessing as mp
import threading
import time
from pathlib import Path

import pytest

from flows.lock import PipelineBusy, pipeline_lock
from flows.pipeline_limit import WAITING_STATE, limit_name


def _hold(home, pipeline, ready, release):
    with pipeline_lock(Path(home), pipeline, log=lambda m: None):
        ready.set()
        release.wait(120)


@pytest.fixture
def holder(prefect_harness, monkeypatch):
    """Start a process holding a pipeline's lock under its own home; yields (start, release)."""
    from prefect.settings import PREFECT_API_URL

    # Spawned children read the API from the environment, as `flywheel run` on another machine would.
    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())
    ctx = mp.get_context("spawn")
    procs = []

    def start(home: Path, pipeline: str):
        ready, release = ctx.Event(), ctx.Event()
        proc = ctx.Process(target=_hold, args=(str(home), pipeline, ready, release))
        proc.start()
        procs.append(proc)
        assert ready.wait(120), "the holder never took the lock"
        return proc, release

    yield start
    for proc in procs:
        proc.kill()
        proc.join()


def _limit(name: str):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(name)


def _flow_run_state(flow_name: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])))
    return runs[0].state if runs else None


def test_second_round_waits_for_the_slot_then_proceeds(holder, tmp_path):
    from prefect import flow, get_run_logger

    pipeline = "gcl-wait"
    proc, release = holder(tmp_path / "machine-a", pipeline)
    limit = _limit(limit_name(pipeline))
    assert (limit.limit, limit.active, limit.active_slots) == (1, True, 1)

    # With a timeout: refused, naming the limit and the holder (its pid, from the holder variable).
    t0 = time.monotonic()
    with pytest.raises(
        PipelineBusy,
        match=rf"holds the Prefect global concurrency limit flywheel-pipeline-gcl-wait \(pid {proc.pid} since ",
    ):
        with pipeline_lock(tmp_path / "machine-b", pipeline, log=lambda m: None, timeout_s=3):
            pass
    assert 3 <= time.monotonic() - t0 < 20

    # Without one, inside a flow run: it waits, shown as such in its state name and its logs.
    messages: list[str] = []

    @flow(name="gcl-waiting-round")
    def waiting_round(home: str) -> float:
        log = get_run_logger()
        with pipeline_lock(Path(home), pipeline, log=lambda m: (messages.append(m), log.info(m))):
            return time.monotonic()  # when it got the slot

    got_at: list[float] = []
    # A copy of this context: Prefect's settings (the harness's API URL) live in context variables.
    run = contextvars.copy_context().run
    waiter = threading.Thread(target=run, args=(lambda: got_at.append(waiting_round(str(tmp_path / "machine-b"))),))
    waiter.start()
    deadline = time.monotonic() + 60
    while (state := _flow_run_state("gcl-waiting-round")) is None or state.name != WAITING_STATE:
        assert time.monotonic() < deadline, f"the waiting round never showed as waiting: {state}"
        time.sleep(0.5)
    assert state.type.value == "RUNNING" and not got_at
    assert any("waiting for the running round of pipeline 'gcl-wait'" in m and f"pid {proc.pid}" in m for m in messages)
    assert _limit(limit_name(pipeline)).active_slots == 1

    released_at = time.monotonic()
    release.set()
    proc.join(60)
    waiter.join(120)
    assert got_at and released_at <= got_at[0], "the second round took the slot before it was released"
    assert got_at[0] - released_at < 30  # it polls every few seconds, not at the server's back-off
    assert _flow_run_state("gcl-waiting-round").type.value == "COMPLETED"
    assert _limit(limit_name(pipeline)).active_slots == 0


def test_a_killed_holder_on_the_same_home_frees_the_slot_at_once(holder, tmp_path):
    pipeline = "gcl-killed"
    proc, _ = holder(tmp_path / "home", pipeline)
    proc.kill()  # kill -9: no release; its lease would hold the slot for LEASE_S more
    proc.join()
    assert _limit(limit_name(pipeline)).active_slots == 1
    messages: list[str] = []
    t0 = time.monotonic()
    with pipeline_lock(tmp_path / "home", pipeline, log=messages.append, timeout_s=10):
        assert _limit(limit_name(pipeline)).active_slots == 1  # ours now
    assert time.monotonic() - t0 < 10
    assert any(
        f"released the Prefect slot of pipeline 'gcl-killed' left by a dead round (pid {proc.pid}" in m
        for m in messages
    )
    assert _limit(limit_name(pipeline)).active_slots == 0


def test_a_limit_changed_by_hand_is_set_back_to_one_slot(prefect_harness, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    name = limit_name("gcl-edited")
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=3, active=False))
    messages: list[str] = []
    with pipeline_lock(tmp_path, "gcl-edited", log=messages.append, timeout_s=5):
        limit = _limit(name)
        assert (limit.limit, limit.active, limit.active_slots) == (1, True, 1)
    assert any("had limit 3 (active: False); set back to 1 active slot" in m for m in messages)
