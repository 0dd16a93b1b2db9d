"""One round per pipeline across machines: a Prefect global concurrency limit per pipeline, with a lease.

`flywheel-pipeline-<pipeline>` (limit 1, created if missing) is taken for the whole round by
flows/lock.py's `pipeline_lock` whenever a Prefect API is configured. See it, and its one active slot,
in the UI under Concurrency, or with `prefect gcl inspect flywheel-pipeline-<pipeline>`.

The slot is a lease of LEASE_S seconds that a thread renews every LEASE_S / 3 s. A holder that dies stops
renewing: the server's repossessor frees the slot at most LEASE_S (+ its 15 s loop) later, so a killed
round never blocks its pipeline for good. A holder on the same FLYWHEEL_HOME is freed at once instead:
flows/lock.py records the lease next to its flock and revokes a dead holder's lease (the flock cannot
outlive its holder, the lease can).

While a round waits, its flow run is Running under the state name WAITING_STATE (the UI shows that name),
and it logs who holds the slot every LOG_EVERY_S; it is set back to Running once the slot is taken.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID

LIMIT_PREFIX = "flywheel-pipeline-"
# Long enough to ride out a server restart; short enough that a lost machine frees its pipeline within
# minutes. The server refuses leases under 60 s.
LEASE_S = 120.0
POLL_S = 2.0
LOG_EVERY_S = 30.0
WAITING_STATE = "AwaitingPipeline"


def limit_name(pipeline: str) -> str:
    return f"{LIMIT_PREFIX}{pipeline}"


def holder_variable(pipeline: str) -> str:
    """The Prefect variable naming the slot's last holder (pid, host, since, flow run), for messages."""
    return f"{LIMIT_PREFIX}{pipeline}-holder"


class LimitBusy(Exception):
    """The pipeline's slot stayed taken until the deadline."""


def api_url() -> str | None:
    """The Prefect API this process talks to (PREFECT_API_URL, from the environment or a profile), or None."""
    from prefect.settings import get_current_settings

    return get_current_settings().api.url or None


def ensure_limit(client, pipeline: str, log: Callable[[str], Any]) -> None:
    """Create the pipeline's limit (1 slot) if missing; put it back to 1 active slot if someone changed it,
    since a larger or inactive limit would let two rounds of the pipeline overlap."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    name = limit_name(pipeline)
    try:
        limit = client.read_global_concurrency_limit_by_name(name)
    except ObjectNotFound:
        try:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1, active=True))
        except ObjectAlreadyExists:  # another machine created it first
            pass
        return
    if limit.limit != 1 or not limit.active:
        log(
            f"global concurrency limit {name} had limit {limit.limit} (active: {limit.active}); "
            "set back to 1 active slot: rounds of one pipeline must not overlap"
        )
        client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=1, active=True))


def release_lease(lease_id: str) -> None:
    """Free a slot by its lease id (a no-op for a lease that expired or was already released)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.release_concurrency_slots_with_lease(UUID(lease_id))


def slot_holder(pipeline: str) -> str:
    """Who took the pipeline's slot last: "pid N since T on host H (flow run F)", or "holder unknown"."""
    from prefect.variables import Variable

    try:
        info = Variable.get(holder_variable(pipeline))
        info = json.loads(info) if isinstance(info, str) else info
        run = f" (flow run {info['flow_run_id']})" if info.get("flow_run_id") else ""
        return f"pid {info['pid']} since {info['since']} on host {info['host']}{run}"
    except Exception:  # a message detail: never worth failing the caller for
        return "holder unknown"


@contextmanager
def hold_limit(
    pipeline: str,
    holder: dict[str, Any],
    log: Callable[[str], Any],
    deadline: float | None,
    on_release: Callable[[], Any] = lambda: None,
) -> Iterator[str]:
    """Take the pipeline's slot (waiting until `deadline`, a time.monotonic(); None: forever), keep its lease
    renewed for the body, release it after (then call `on_release`). Yields the lease id.

    Raises LimitBusy at the deadline.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import ConcurrencyLeaseHolder
    from prefect.variables import Variable

    name = limit_name(pipeline)
    run_id = holder.get("flow_run_id")
    lease_holder = ConcurrencyLeaseHolder(type="flow_run", id=UUID(run_id)) if run_id else None
    with get_client(sync_client=True) as client:
        ensure_limit(client, pipeline, log)
        lease_id = _acquire(client, pipeline, lease_holder, log, deadline)
    try:
        Variable.set(holder_variable(pipeline), json.dumps(holder), overwrite=True)
    except Exception as e:  # only messages read it: the slot itself is held
        log(f"could not record the holder of {name} ({type(e).__name__}: {e})")
    stop = threading.Event()
    renewer = threading.Thread(target=_renew, args=(lease_id, name, stop, log), daemon=True, name=f"lease-{name}")
    renewer.start()
    try:
        yield lease_id
    finally:
        stop.set()
        renewer.join(timeout=10)
        release_lease(lease_id)
        on_release()


def _acquire(client, pipeline: str, lease_holder, log: Callable[[str], Any], deadline: float | None) -> str:
    from httpx import HTTPStatusError

    name = limit_name(pipeline)
    start, last_log, waiting = time.monotonic(), None, False
    try:
        while True:
            try:
                response = client.increment_concurrency_slots_with_lease(
                    names=[name], slots=1, mode="concurrency", lease_duration=LEASE_S, holder=lease_holder
                )
                return str(response.json()["lease_id"])
            except HTTPStatusError as e:
                if e.response.status_code != 423:  # 423 Locked: the slot is taken
                    raise
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise LimitBusy(
                    f"pipeline {pipeline!r} is busy: another round holds the Prefect global concurrency limit "
                    f"{name} ({slot_holder(pipeline)}); gave up after {now - start:.0f} s"
                )
            if last_log is None or now - last_log > LOG_EVERY_S:
                log(
                    f"waiting for the running round of pipeline {pipeline!r} to finish: it holds the Prefect "
                    f"global concurrency limit {name} ({slot_holder(pipeline)})"
                )
                last_log = now
            if not waiting and lease_holder is not None:
                waiting = _set_waiting(client, lease_holder.id, True)
            time.sleep(POLL_S if deadline is None else max(0.0, min(POLL_S, deadline - now)))
    finally:
        if waiting:
            _set_waiting(client, lease_holder.id, False)


def _set_waiting(client, flow_run_id: UUID, waiting: bool) -> bool:
    """Name the waiting flow run's state (still Running) so the UI shows it waits; True if it was set."""
    from prefect.states import Running

    try:
        state = Running(name=WAITING_STATE if waiting else "Running")
        client.set_flow_run_state(flow_run_id, state, force=True)
        return True
    except Exception:  # the name is a display detail; the log lines say the same
        return False


def _renew(lease_id: str, name: str, stop: threading.Event, log: Callable[[str], Any]) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        while not stop.wait(LEASE_S / 3):
            try:
                client.renew_concurrency_lease(UUID(lease_id), LEASE_S)
            except Exception as e:
                # Retried at the next beat; only LEASE_S without a renewal loses the slot.
                log(
                    f"could not renew the lease of {name} ({type(e).__name__}: {e}); if the Prefect API stays "
                    f"unreachable for {LEASE_S:.0f} s, the slot is freed and another round of the pipeline may start"
                )
