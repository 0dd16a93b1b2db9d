"""`flywheel promote`: make an earlier round's model the pipeline's policy by hand, never under a running round.

Run:  flywheel promote --pipeline demo --round 2 --reason "round 3 fails the safety suite" [--wait]

A round that is running when the promotion is recorded would finish with its own gate's decision and
silently override it. So the promotion takes the pipeline's round lock (flows/lock.py): it is refused
while a round runs, or with `wait` recorded as soon as that round has finished, before another starts.
The record goes to the store (`runs/<pipeline>/promotions/`, which `flywheel catalog-rebuild` reads) and
to the catalog (tasks/promote.py, promote_by_hand).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from flows.lock import PipelineBusy, lock_holder, pipeline_lock
from storage.catalog import Catalog
from storage.runtime import open_home_store
from tasks.promote import promote_by_hand


class RoundRunning(Exception):
    """A round of the pipeline is running, and the caller chose not to wait for it."""


def promote_manually(
    catalog: Catalog,
    home: Path,
    pipeline: str,
    from_round: int,
    which: str,
    who: str,
    why: str,
    *,
    wait: bool = False,
    log: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Record the promotion under the pipeline's lock; its promotions row.

    Raises RoundRunning (without `wait`) while a round of the pipeline runs, and ValueError when the
    round does not exist or has no such model.
    """
    catalog.round_model(pipeline, from_round, which)  # a bad round number fails before any wait
    try:
        with pipeline_lock(home, pipeline, log=log, timeout_s=None if wait else 0):
            storage = (catalog.pipeline_config(pipeline) or {}).get("storage") or {"uri": "embedded"}
            store, server = open_home_store(home, storage["uri"], storage.get("endpoint_url"), storage.get("region"))
            try:
                return promote_by_hand(catalog, store, pipeline, from_round, which, who, why)
            finally:
                if server is not None:
                    server.stop()
    except PipelineBusy:
        raise RoundRunning(
            f"a round of pipeline {pipeline!r} is running ({lock_holder(home, pipeline)}): its gate would "
            "override this promotion when it finishes; promote after it, or pass --wait to wait for it"
        ) from None
