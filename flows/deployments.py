"""Deployments of a pipeline: run a round now, and a nightly round; served here, or on a work pool.

  flywheel server                     # a local Prefect server + UI; prints the PREFECT_API_URL to export
  flywheel serve --config configs/demo.yaml [--cron "0 2 * * *"] [--timezone Europe/Paris]
  flywheel deploy --config configs/demo.yaml --pool gpu [--cron ...] [--timezone ...]
  flywheel worker --pool gpu          # on each machine that runs rounds (docs/work-pools.md)

`flywheel-round` runs the pipeline now (the UI's Quick run uses the deployed config; Custom run shows the
config as a typed form). `flywheel-nightly` is the same on a cron schedule, pausable from the UI.
Both run `flywheel-pipeline`, whose rounds of one pipeline never overlap, across machines too
(flows/lock.py). `serve` runs them in its own process; `deploy` registers them on a work pool, with this
code directory as their source, and any worker of the pool runs them.
"""

from __future__ import annotations

import os
from pathlib import Path

from configs.schema import FlywheelConfig

ROUND_DEPLOYMENT = "flywheel-round"
NIGHTLY_DEPLOYMENT = "flywheel-nightly"
CODE_DIR = Path(__file__).resolve().parents[1]
ENTRYPOINT = "flows/pipeline.py:pipeline_flow"  # relative to CODE_DIR


def absolute_config(cfg: FlywheelConfig, pin_home: bool = True) -> FlywheelConfig:
    """Paths made absolute (from the caller's directory): served runs start in the code directory.

    Without `pin_home` an unset `home` stays unset, so each worker's run uses its own FLYWHEEL_HOME.
    """

    def absolute(path: str) -> str:
        return str(Path(path).expanduser().resolve())

    data = cfg.model_dump(mode="json")
    if pin_home or cfg.home is not None:
        data["home"] = str(cfg.resolve_home())
    if Path(cfg.base_model).expanduser().exists():  # otherwise a hub id ("org/name"): left as it is
        data["base_model"] = absolute(cfg.base_model)
    # s3:// inputs name the same object from any directory; only local paths depend on the caller's.
    for s in [*data["curation"]["sources"], *data["evaluation"]["eval_sets"]]:
        if s.get("path") and not s["path"].startswith("s3://"):
            s["path"] = absolute(s["path"])
    if cfg.storage.uri.startswith("file://"):
        data["storage"]["uri"] = "file://" + str(Path(cfg.storage.uri.removeprefix("file://")).resolve())
    return FlywheelConfig.model_validate(data)


def build_deployments(cfg: FlywheelConfig, cron: str = "0 2 * * *", timezone: str = "UTC", flow=None) -> list:
    """The two runner deployments of a pipeline (not yet registered: `prefect.serve` or `prefect.deploy` does).

    `flow` is `pipeline_flow` by default; then call it from CODE_DIR with an `absolute_config`: entrypoints
    are paths relative to the working directory. `deploy_pipeline` passes the flow loaded from its source.
    """
    from prefect.schedules import Cron

    from flows.pipeline import pipeline_flow

    flow = flow or pipeline_flow

    params = {"cfg": cfg.model_dump(mode="json"), "rounds": 1}
    tags = ["flywheel", f"pipeline:{cfg.pipeline}"]
    now = flow.to_deployment(
        name=ROUND_DEPLOYMENT,
        parameters=params,
        tags=tags,
        description=f"Run one round of pipeline {cfg.pipeline!r} now (the next round after the last completed one).",
    )
    nightly = flow.to_deployment(
        name=NIGHTLY_DEPLOYMENT,
        parameters=params,
        tags=tags,
        schedules=[Cron(cron, timezone=timezone)],
        description=f"One round of pipeline {cfg.pipeline!r} on the schedule {cron} ({timezone}).",
    )
    return [now, nightly]


def serve_pipeline(cfg: FlywheelConfig, cron: str, timezone: str) -> None:
    """Register both deployments with the server in PREFECT_API_URL and run their flows until stopped."""
    from prefect import serve

    cfg = absolute_config(cfg)
    # The runner starts each flow run from its entrypoint path, which is relative to the code directory.
    os.chdir(CODE_DIR)
    serve(*build_deployments(cfg, cron, timezone), print_starting_message=True)


def ensure_pool(pool: str) -> str:
    """The type of work pool `pool`, created as a `process` pool if missing."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            return client.read_work_pool(pool).type
        except ObjectNotFound:
            try:
                client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
            except ObjectAlreadyExists:  # created meanwhile (another `flywheel deploy`)
                return client.read_work_pool(pool).type
            return "process"


def deploy_pipeline(cfg: FlywheelConfig, pool: str, cron: str, timezone: str) -> list:
    """Register both deployments on work pool `pool` (a process pool, created if missing) with the server in
    PREFECT_API_URL; returns their ids. Nothing is built or pushed: a worker runs the flow from CODE_DIR,
    which must hold this code on the worker's machine too (the same checkout path, or the image's
    /opt/flywheel for Docker and Kubernetes pools: docs/work-pools.md)."""
    from prefect import deploy
    from prefect.flows import Flow

    ensure_pool(pool)
    source_flow = Flow.from_source(source=str(CODE_DIR), entrypoint=ENTRYPOINT)
    # Each machine keeps its catalog and caches in its own FLYWHEEL_HOME unless the config names one.
    deployments = build_deployments(absolute_config(cfg, pin_home=False), cron, timezone, flow=source_flow)
    return deploy(*deployments, work_pool_name=pool, build=False, push=False, print_next_steps_message=False)
