"""Training curves: what a training step reports through the trainers' `report_to`, and where.

`tracking.training_curves` (configs/tracking.py) names the integrations; `curve_report` turns it into a
`CurveReport` for one step: the integrations, the run name, and the environment transformers' callbacks read
(MLflowCallback, WandbCallback, TensorBoardCallback take their settings from the environment only). The
report travels to the trainer as an argument (in a launched job, inside the train spec), and the trainer sets
the environment around `trainer.train()`, so the local and the launched paths behave alike.

Nothing here reports by itself, and an empty `report_to` gives an empty report: no run, no file, no request.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from configs.tracking import TrackingConfig


class CurveReport(BaseModel):
    """What one training step reports; the default reports nothing."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    report_to: list[str] = Field(default_factory=list, description="TrainingArguments.report_to.")
    run_name: str | None = Field(None, description="TrainingArguments.run_name: the run's name in MLflow or wandb.")
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Environment variables the integrations read while training (URIs, directories, tags); "
        "no secrets: those stay in the environment the job inherits.",
    )


def curve_report(
    tracking: TrackingConfig,
    home: Path,
    pipeline: str,
    round_num: int,
    step: str,
    log: logging.Logger | logging.LoggerAdapter | None = None,
) -> CurveReport:
    """The report of step `step` of round `round_num`; for mlflow, creates the experiment if it is missing.

    The experiment is made here, with the artifact location tracking.mlflow gives it, because MLflow's own
    default for a SQLite store is ./mlruns under whatever directory the job runs in. A tracking store that
    cannot be reached costs a warning (`log`) and the MLflow curve, not the step, as for the round's run.
    """
    cfg = tracking.training_curves
    if not cfg.report_to:
        return CurveReport()
    report_to = list(cfg.report_to)
    run_name = f"{pipeline}-round-{round_num:04d}-{step}"
    step_dir = cfg.step_dir(home, pipeline, round_num, step)
    env: dict[str, str] = {}
    if "mlflow" in report_to:
        uri = tracking.mlflow.resolved_uri(home)
        name = tracking.mlflow.experiment_name(pipeline)
        # MLflow retries a request 7 times with growing waits by default (as in flows/tracking_mlflow.py);
        # the user's own settings win. Set only while this step talks to MLflow, not for the whole process.
        retries = {
            k: os.environ.get(k, default)
            for k, default in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2"), ("MLFLOW_HTTP_REQUEST_TIMEOUT", "30"))
        }
        try:
            with reporting(CurveReport(env=retries)):
                mlflow_experiment(uri, name, home)
        except Exception as e:
            (log or logging.getLogger("flywheel")).warning(
                "%s: not reporting training curves to MLflow at %s: %s: %s", step, uri, type(e).__name__, e
            )
            report_to.remove("mlflow")
    if "mlflow" in report_to:
        env |= retries | {
            "MLFLOW_TRACKING_URI": uri,
            "MLFLOW_EXPERIMENT_NAME": name,
            # flows/tracking_mlflow.py finds the round's training runs by these and nests them under its run.
            "MLFLOW_TAGS": json.dumps(
                {"flywheel.pipeline": pipeline, "flywheel.round": str(round_num), "flywheel.step": step}
            ),
        }
    if "wandb" in report_to:
        step_dir.mkdir(parents=True, exist_ok=True)  # wandb writes its own wandb/ folder in WANDB_DIR
        # Offline unless the user chose a mode: nothing leaves the machine without an explicit WANDB_MODE.
        env |= {
            "WANDB_MODE": os.environ.get("WANDB_MODE") or "offline",
            "WANDB_DIR": str(step_dir),
            "WANDB_PROJECT": os.environ.get("WANDB_PROJECT") or f"flywheel-{pipeline}",
        }
    if "tensorboard" in report_to:
        env["TENSORBOARD_LOGGING_DIR"] = str(step_dir / "tensorboard")
    return CurveReport(report_to=report_to, run_name=run_name, env=env)


def mlflow_experiment(uri: str, name: str, home: Path) -> str:
    """The id of experiment `name` at `uri`, created if missing (a SQLite store keeps its artifacts beside it
    in the home; a server decides for itself)."""
    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=uri)
    if found := client.get_experiment_by_name(name):
        return found.experiment_id
    location = (home / "mlflow" / "artifacts").as_uri() if uri.startswith("sqlite:") else None
    return client.create_experiment(name, artifact_location=location)


@contextmanager
def reporting(report: CurveReport | None) -> Iterator[None]:
    """Set the report's environment while the trainer trains, then restore the one before.

    MLflow logs metrics asynchronously: they are flushed before leaving, so the run is complete when the
    step's result is.
    """
    env = report.env if report else {}
    # mlflow.set_experiment and start_run also export these, for subprocesses: put them back too.
    mlflow_own = ("MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID") if report and "mlflow" in report.report_to else ()
    before = {k: os.environ.get(k) for k in [*env, *mlflow_own]}
    os.environ.update(env)
    try:
        yield
    finally:
        if report and "mlflow" in report.report_to:
            import mlflow

            mlflow.flush_async_logging()
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
