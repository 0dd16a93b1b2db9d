"""Before a round resumes: every artifact the catalog records for it must resolve in the store.

A resumed round reuses the steps the catalog says it finished. Writes go store first, catalog second, so
a kill between the two leaves an object nothing points at (harmless: the rerun stores the same content
again). The other way round, a catalog record whose object the store no longer has, comes from outside a
round: an object deleted or expired in the bucket, a catalog restored from its backup next to an older
store, a write the store acknowledged and then lost. Reusing such a step would hand the next step an id
that cannot be read, so the round flow calls `repair_round` first: each completed step's outputs are
checked (`ArtifactStore.exists`: the artifact's manifest is in the store), and a step with any output
missing is forgotten (`Catalog.forget_steps`), so it runs again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from storage.artifacts import ArtifactStore
from storage.catalog import Catalog


@dataclass(frozen=True)
class Repair:
    checked: int  # artifact ids looked up in the store
    missing: list[str]  # ids the catalog records for the round that the store does not hold
    steps: list[str]  # steps forgotten, so that they run again


def repair_round(catalog: Catalog, artifacts: ArtifactStore, pipeline: str, round_num: int) -> Repair:
    """Check every output of the round's completed steps in the store; forget the steps with one missing."""
    outputs = {
        name: json.loads(s["outputs"] or "{}")
        for name, s in catalog.steps_of(pipeline, round_num).items()
        if s["status"] == "completed"
    }
    ids = sorted({a for outs in outputs.values() for a in outs.values()})
    missing = [a for a in ids if not artifacts.exists(a)]
    steps = sorted(name for name, outs in outputs.items() if set(outs.values()) & set(missing))
    catalog.forget_steps(pipeline, round_num, steps, missing)
    return Repair(len(ids), missing, steps)
