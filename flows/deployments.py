"""Deployments of a pipeline, served from this machine: run a round now, and a nightly round.

  flywheel server                     # a local Prefect server + UI; prints the PREFECT_API_URL to export
  flywheel serve --config configs/demo.yaml [--cron "0 2 * * *"] [--timezone Europe/Paris]

`flywheel-round` runs the pipeline now (the UI's Quick run uses the served config; Custom run shows the
config as a typed form). `flywheel-nightly` is the same on a cron schedule, pausable from the UI.
Both run `flywheel-pipeline`, whose rounds of one pipeline never overlap (flows/lock.py).
"""

from __future__ import annotations

import os
from pathlib import Path

from configs.schema import FlywheelConfig

ROUND_DEPLOYMENT = "flywheel-round"
NIGHTLY_DEPLOYMENT = "flywheel-nightly"
CODE_DIR = Path(__file__).resolve().parents[1]


def absolute_config(cfg: FlywheelConfig) -> FlywheelConfig:
    """Paths made absolute (from the caller's directory): served runs start in the code directory."""

    def absolute(path: str) -> str:
        return str(Path(path).expanduser().resolve())

    data = cfg.model_dump(mode="json")
    data["home"] = str(cfg.resolve_home())
    if Path(cfg.base_model).expanduser().exists():  # otherwise a hub id ("org/name"): left as it is
        data["base_model"] = absolute(cfg.base_model)
    for s in data["curation"]["sources"]:
        s["path"] = absolute(s["path"])
    for e in data["evaluation"]["eval_sets"]:
        e["path"] = absolute(e["path"])
    if cfg.storage.uri.startswith("file://"):
        data["storage"]["uri"] = "file://" + str(Path(cfg.storage.uri.removeprefix("file://")).resolve())
    return FlywheelConfig.model_validate(data)


def build_deployments(cfg: FlywheelConfig, cron: str = "0 2 * * *", timezone: str = "UTC") -> list:
    """The two runner deployments of a pipeline (not yet registered: `prefect.serve` does that).

    Call it from CODE_DIR with an `absolute_config`: entrypoints are paths relative to the working directory.
    """
    from prefect.schedules import Cron

    from flows.pipeline import pipeline_flow

    params = {"cfg": cfg.model_dump(mode="json"), "rounds": 1}
    tags = ["flywheel", f"pipeline:{cfg.pipeline}"]
    now = pipeline_flow.to_deployment(
        name=ROUND_DEPLOYMENT,
        parameters=params,
        tags=tags,
        description=f"Run one round of pipeline {cfg.pipeline!r} now (the next round after the last completed one).",
    )
    nightly = pipeline_flow.to_deployment(
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
