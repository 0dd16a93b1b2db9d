"""Rounds whose owner died are closed: `crashed` in the catalog, Crashed in Prefect.

A kill -9 of `flywheel run` (or the OOM killer, or a lost machine) records nothing: the round stays
`running` in the catalog, and Prefect keeps its flow runs (the pipeline's and the round's) and the task
run it was in RUNNING forever. A round is `running` only while its owner holds the pipeline's lock
(flows/lock.py), so a running round whose lock is free has no owner. The next trigger of the pipeline
(the round flow, which holds the lock) and `flywheel rounds` (which takes it for a moment) close such a
round: `crashed`, with the time, the owner's pid and host, and the same for its Prefect runs. So
`running` always means that something is running. The lock decides, not the pid: after a reboot a pid
can name another process, while an flock cannot outlive its holder.

With a Prefect API configured the lock also takes the pipeline's Prefect concurrency slot; a dead owner's
slot is freed by whoever next takes the flock of its home, so a round killed here is closed at once. A slot
held from another machine makes the pipeline busy: its rounds are left alone until it is free.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

from flows.lock import PipelineBusy, pipeline_lock
from storage.catalog import Catalog


def close_dead_rounds(
    catalog: Catalog,
    home: Path,
    pipeline: str | None = None,
    *,
    lock_held: bool = False,
    log: Callable[[str], Any] = print,
) -> list[dict[str, Any]]:
    """Mark every `running` round (of `pipeline`, or of all) that has no owner crashed; their attempts.

    With `lock_held` the caller holds `pipeline`'s lock (the round flow), so each of its running rounds is
    dead. Otherwise each pipeline's lock is tried without waiting: a pipeline whose lock is taken has a
    live round, and is left alone.
    """
    closed: list[dict[str, Any]] = []
    for p in sorted({r["pipeline"] for r in catalog.running_rounds(pipeline)}):
        if lock_held and p == pipeline:
            closed += _close(catalog, p, log)
            continue
        try:
            with pipeline_lock(home, p, log=log, timeout_s=0):
                closed += _close(catalog, p, log)  # read again under the lock: a round may have ended since
        except PipelineBusy:
            continue
        except httpx.HTTPError as e:  # the configured Prefect API is down: whether the round lives is unknown
            log(f"could not check pipeline {p!r}'s running rounds: no answer from the Prefect API ({e})")
    return closed


def _close(catalog: Catalog, pipeline: str, log: Callable[[str], Any]) -> list[dict[str, Any]]:
    closed = []
    for r in catalog.running_rounds(pipeline):
        found = datetime.now(timezone.utc).isoformat(timespec="seconds")
        owner = f"pid {r['pid']} on host {r['host']}" if r["pid"] else "not recorded"
        reason = (
            f"crashed: its owner ({owner}) stopped without closing the round; found with the round lock free at {found}"
        )
        attempt = catalog.crash_round(pipeline, r["round"], reason)
        if attempt is None:
            continue
        log(f"round {r['round']} of pipeline {pipeline!r} (attempt {attempt['attempt'] or '?'}) {reason}")
        if attempt["flow_run_id"]:
            crash_prefect_runs(attempt["flow_run_id"], reason, log)
        closed.append(attempt)
    return closed


def crash_prefect_runs(flow_run_id: str, message: str, log: Callable[[str], Any] = print) -> int:
    """Set a dead flow run, its unfinished task runs and its parents (the pipeline flow a round ran in, with
    its task run of that subflow) to Crashed; returns how many runs were marked. Best effort: if no Prefect
    API answers, say so and leave them (the catalog is what rounds are read from)."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.states import Crashed

    marked = 0
    try:
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(UUID(flow_run_id))
            while run is not None:
                if run.state is None or not run.state.is_final():
                    client.set_flow_run_state(run.id, Crashed(message=message), force=True)
                    marked += 1
                for t in client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id]))):
                    if t.state is None or not t.state.is_final():
                        client.set_task_run_state(t.id, Crashed(message=message), force=True)
                        marked += 1
                # A subflow's parent is a task run of the parent flow: the pipeline flow died with the round.
                parent = client.read_task_run(run.parent_task_run_id) if run.parent_task_run_id else None
                run = client.read_flow_run(parent.flow_run_id) if parent and parent.flow_run_id else None
    except Exception as e:
        log(f"could not mark Prefect flow run {flow_run_id} Crashed ({type(e).__name__}: {e}); mark it in the UI")
    return marked
