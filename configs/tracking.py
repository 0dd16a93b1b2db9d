"""Tracking section: where a round reports what it runs, beside the catalog (which stays the record).

tracking:
  openlineage:
    enabled: true
    transport: http            # or `file` (one JSON line per event) or `console` (the log)
    url: http://localhost:5000 # Marquez; the key, if any, comes from $OPENLINEAGE_API_KEY
  mlflow:
    enabled: true              # one run per round; tracking_uri None: $MLFLOW_TRACKING_URI or {home}/mlflow
  training_curves:
    report_to: [mlflow, tensorboard]   # per-step loss curves of every training step (default []: none)
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class OpenLineageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        False,
        description="Emit an OpenLineage START and COMPLETE (or FAIL) run event for every step of every round. "
        "Off: nothing is sent anywhere.",
    )
    transport: Literal["http", "file", "console"] = Field(
        "http",
        description="http: POST each event to `url` (Marquez or any OpenLineage receiver); file: append one JSON "
        "line per event to `file_path`; console: write each event to the log.",
    )
    url: str | None = Field(
        None,
        description="http: base URL of the receiver, e.g. http://localhost:5000 (None: the OPENLINEAGE_URL "
        "environment variable; the config wins when both are set).",
    )
    endpoint: str = Field("api/v1/lineage", description="http: path of the receiver's lineage endpoint.")
    api_key_env: str = Field(
        "OPENLINEAGE_API_KEY",
        description="http: name of the environment variable holding the receiver's API key, sent as a bearer "
        "token when the variable is set. The key itself never belongs in a config file.",
    )
    timeout_s: float = Field(
        5.0,
        gt=0,
        description="http: seconds one POST may take. An event that fails is dropped (no retries: a receiver "
        "that is down must not slow the round), with one warning per round.",
    )
    file_path: str | None = Field(
        None, description="file: the JSON-lines file, `{home}` allowed (None: {home}/openlineage/events.jsonl)."
    )
    namespace: str = Field(
        "flywheel",
        min_length=1,
        description="OpenLineage job namespace of the steps; their job names are `<pipeline>.<step>`.",
    )

    def transport_config(self, home: Path) -> dict[str, Any]:
        """The openlineage-python transport config (a dict its transport factory takes), resolved against
        the environment now: the URL from OPENLINEAGE_URL if the config has none, the API key from `api_key_env`.

        ValueError when the http transport has no URL from either.
        """
        if self.transport == "console":
            return {"type": "console"}
        if self.transport == "file":
            path = Path(self.file_path) if self.file_path else home / "openlineage" / "events.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            # append: without it the transport writes one timestamped file per event.
            return {"type": "file", "log_file_path": str(path), "append": True}
        url = self.url or os.environ.get("OPENLINEAGE_URL")
        if not url:
            raise ValueError(
                "tracking.openlineage.url is not set and neither is OPENLINEAGE_URL: give the receiver's URL"
            )
        config: dict[str, Any] = {
            "type": "http",
            "url": url,
            "endpoint": self.endpoint,
            "timeout": self.timeout_s,
            "retry": {"total": 0},  # urllib3 also logs every retry as a warning
        }
        if key := os.environ.get(self.api_key_env):
            config["auth"] = {"type": "api_key", "apiKey": key}
        return config


class MLflowConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        False,
        description="Log every round as one MLflow run: its metrics, the config as parameters, the report and "
        "plots as artifacts, tagged with the Prefect flow run and the catalog round. Off: nothing is logged.",
    )
    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking URI, e.g. http://mlflow:5000 or sqlite:///path/mlflow.db (None: the "
        "MLFLOW_TRACKING_URI environment variable, else sqlite:///{home}/mlflow/mlflow.db). Credentials come "
        "from MLflow's own environment variables (MLFLOW_TRACKING_TOKEN, ...), never from here.",
    )
    experiment: str | None = Field(None, description="Experiment name (None: flywheel-<pipeline>).")

    def experiment_name(self, pipeline: str) -> str:
        return self.experiment or f"flywheel-{pipeline}"

    def resolved_uri(self, home: Path) -> str:
        """The tracking URI to use now: the config's, the environment's, or a SQLite file in the home."""
        return (
            self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
        )


# What each integration needs importable (transformers' TensorBoardCallback takes either package), and the
# pip line that installs it.
_PACKAGES = {
    "mlflow": (("mlflow",), "pip install mlflow-skinny"),
    "wandb": (("wandb",), "pip install wandb"),
    "tensorboard": (("tensorboard", "tensorboardX"), "pip install tensorboard"),
}


class TrainingCurvesConfig(BaseModel):
    """Per-step training curves (loss, learning rate, grad norm, ...) of every training step, through the
    trainers' own `report_to` integrations. Reporting is not part of what a step computes: it never enters a
    step's identity, so turning it on or off reuses finished steps as before."""

    model_config = ConfigDict(extra="forbid")

    report_to: list[Literal["mlflow", "wandb", "tensorboard"]] = Field(
        default_factory=list,
        description="Where the trainers report their logged steps. mlflow: one run per training step, in the "
        "tracking.mlflow URI and experiment, tagged with the pipeline, round and step (and nested under the "
        "round's run once tracking.mlflow logs it); wandb: offline runs under `log_dir` unless WANDB_MODE says "
        "otherwise (its key, if any, only from WANDB_API_KEY); tensorboard: event files under `log_dir`. "
        "Empty (the default): nothing is reported anywhere.",
    )
    log_dir: str | None = Field(
        None,
        description="wandb and tensorboard: the root of their files, `{home}` allowed (None: "
        "{home}/training-curves). Each step writes to <log_dir>/<pipeline>/round-NNNN/<step>/, which outlives "
        "the step's scratch directory.",
    )

    @model_validator(mode="after")
    def _check_installed(self) -> TrainingCurvesConfig:
        for name in self.report_to:
            modules, install = _PACKAGES[name]
            if not any(importlib.util.find_spec(m) for m in modules):
                raise ValueError(
                    f"tracking.training_curves.report_to includes {name!r}, but {' or '.join(modules)} is not "
                    f"installed: {install}, or remove {name!r} from report_to"
                )
        return self

    def step_dir(self, home: Path, pipeline: str, round_num: int, step: str) -> Path:
        """Where a step's wandb and tensorboard files go: browsable, zero-padded like the run paths."""
        root = Path(self.log_dir) if self.log_dir else home / "training-curves"
        return root / pipeline / f"round-{round_num:04d}" / step


class TrackingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    openlineage: OpenLineageConfig = Field(
        default_factory=OpenLineageConfig,
        description="OpenLineage run events of every step (Marquez, DataHub, any OpenLineage receiver).",
    )
    mlflow: MLflowConfig = Field(
        default_factory=MLflowConfig, description="Experiment tracking: one MLflow run per round (off by default)."
    )
    training_curves: TrainingCurvesConfig = Field(
        default_factory=TrainingCurvesConfig,
        description="Per-step training curves through the trainers' report_to (MLflow, wandb offline, "
        "TensorBoard); off by default.",
    )
