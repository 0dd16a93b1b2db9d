"""What every stage shares: run a step once per identity, record it in the catalog, log progress.

A step's identity is the hash of (step name, code version, config section, input artifact ids). If the
catalog already holds a completed step with that identity whose outputs are still in the store, its
outputs are reused instead of recomputed: this is how a failed round resumes where it stopped.
"""
from __future__ import annotations

import importlib
import inspect
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from pydantic import BaseModel

from storage.artifacts import ArtifactRef
from storage.catalog import ArtifactRecord, StepRecord
from storage.ids import hash_obj, step_identity
from storage.runtime import Runtime

PACKAGE_VERSION = "0.1.0"


def get_logger() -> logging.Logger | logging.LoggerAdapter:
    """Prefect's run logger inside a flow or task (logs reach the UI), a plain logger elsewhere."""
    try:
        from prefect import get_run_logger

        return get_run_logger()
    except Exception:  # outside a Prefect run context
        return logging.getLogger("flywheel")


def step_outputs(step_row: dict) -> dict[str, str]:
    """{output name: artifact id} of a catalog steps row."""
    import json

    return json.loads(step_row.get("outputs") or "{}")


def code_version(*modules: str) -> str:
    """Version of the code a step runs: package version + hash of the named modules' source."""
    sources = [inspect.getsource(importlib.import_module(m)) for m in modules]
    return PACKAGE_VERSION + "+" + hash_obj(sources, 12)


@dataclass
class StepOutput:
    """What a stage's compute function hands back: stored artifacts, a JSON-able summary, row lineage."""

    artifacts: dict[str, ArtifactRef]
    summary: dict[str, Any] = field(default_factory=dict)
    row_edges: list[tuple[str, str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class StepResult:
    outputs: dict[str, str]  # name -> artifact id
    summary: dict[str, Any]
    reused: bool


def _prefect_ids() -> tuple[str | None, str | None]:
    try:
        from prefect.runtime import flow_run, task_run

        return (str(flow_run.id) if flow_run.id else None, str(task_run.id) if task_run.id else None)
    except Exception:
        return None, None


def _record(ref: ArtifactRef) -> ArtifactRecord:
    return ArtifactRecord(ref.id, ref.kind, ref.format, ref.uri, ref.bytes, ref.rows)


def run_step(
    rt: Runtime,
    *,
    pipeline: str,
    round_num: int,
    step: str,
    config: BaseModel | dict | None,
    inputs: dict[str, str],
    compute: Callable[[], StepOutput],
    code: str,
    identity_step: str | None = None,
    metric_name: Callable[[str], str] = lambda name: name,
) -> StepResult:
    """Run `compute` unless an identical step already completed; record the step either way.

    Args:
        step: the catalog's name for the step in this round (e.g. "evaluate-policy").
        config: the config section the step depends on (part of its identity).
        inputs: input name -> artifact id (part of its identity; become lineage edges).
        compute: does the work, stores its artifacts, returns them with a summary; its summary must be
            JSON-able and may hold "metrics" (name -> float), "rows_in" and "rows_out".
        identity_step: name used in the identity when it differs from `step`, so that equal work under
            two names (the candidate of round r is the policy of round r+1) is done once.
        metric_name: maps the summary's metric names to the names recorded for this round.
    """
    log = get_logger()
    cfg_obj = config.model_dump(mode="json") if isinstance(config, BaseModel) else config
    identity = step_identity(identity_step or step, code, cfg_obj, inputs)
    flow_run_id, task_run_id = _prefect_ids()
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()

    prior = rt.catalog.find_completed_step(identity)
    if prior is not None and "summary" in prior and all(rt.artifacts.exists(a) for a in prior.values()):
        summary = rt.artifacts.get_json(prior["summary"])
        refs = {name: rt.artifacts.ref(a) for name, a in prior.items()}
        reused = True
        edges: list[tuple[str, str, str]] = []
        log.info("%s: reusing the outputs of an identical earlier step (%s)", step, identity[:12])
    else:
        try:
            out = compute()
        except Exception as e:
            rt.catalog.record_step_failure(pipeline, round_num, step, identity, f"{type(e).__name__}: {e}")
            raise
        summary = out.summary
        refs = dict(out.artifacts)
        refs["summary"] = rt.artifacts.put_json(summary, kind=f"{step}-summary")
        reused, edges = False, out.row_edges

    metrics = {metric_name(k): float(v) for k, v in summary.get("metrics", {}).items()}
    rt.catalog.record_step(
        StepRecord(
            pipeline=pipeline, round=round_num, step=step, identity=identity, inputs=inputs,
            outputs={k: _record(r) for k, r in refs.items()}, metrics=metrics, row_edges=edges,
            rows_in=summary.get("rows_in"), rows_out=summary.get("rows_out"), started_at=started,
            duration_s=time.perf_counter() - t0, flow_run_id=flow_run_id, task_run_id=task_run_id, reused=reused,
        )
    )
    for name, ref in refs.items():
        rt.artifacts.link(f"runs/{pipeline}/round-{round_num:04d}/{step}/{name}.json", ref)
    return StepResult({k: r.id for k, r in refs.items()}, summary, reused)
