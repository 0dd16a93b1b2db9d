"""Experiment tracking: each round as one MLflow run, beside the catalog (which stays the record).

The run holds the round's metrics (the catalog's names, step = the round number, so MLflow's charts
plot them over rounds), the config flattened into parameters, the report and plots as artifacts, and
tags that link it back: the pipeline and round, the decision, the candidate and policy ids, the manifest
in the store and the Prefect flow run. Publishing a round again (a retried report) logs into the same
run instead of adding a second one. Turned on by `tracking.mlflow` (configs/tracking.py).

The round's training steps, when `tracking.training_curves` reports to MLflow, log runs of their own while
they train (trainers/curves.py), before the round's run exists; it then adopts them as its nested runs.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from configs.schema import FlywheelConfig
from storage.runtime import Runtime
from trainers.curves import mlflow_experiment

# MLflow's allowed characters in metric and parameter names; IFEval's and pass@k's names need the rest mapped.
_NOT_ALLOWED = re.compile(r"[^A-Za-z0-9_\-. /:]")
_PARAM_CHARS = 6000  # MLflow's limit on a parameter value


def mlflow_name(name: str) -> str:
    """A catalog metric name as MLflow accepts it.

    >>> mlflow_name("eval/pass@4/heldout/candidate")
    'eval/pass_at_4/heldout/candidate'
    """
    return _NOT_ALLOWED.sub("_", name.replace("@", "_at_"))


def flat_params(obj: Any, prefix: str = "") -> dict[str, str]:
    """A config as MLflow parameters: dotted keys, values as text (lists as JSON-like text).

    >>> flat_params({"generation": {"sampling": {"n": 8}}, "curation": {"sources": [{"name": "a"}]}})
    {'generation.sampling.n': '8', 'curation.sources': "[{'name': 'a'}]"}
    """
    if isinstance(obj, dict):
        out: dict[str, str] = {}
        for k, v in obj.items():
            out.update(flat_params(v, f"{prefix}{k}."))
        return out
    return {mlflow_name(prefix.rstrip(".")): str(obj)[:_PARAM_CHARS]}


def log_round(rt: Runtime, cfg: FlywheelConfig, rnd: dict, report: str, files: dict[str, bytes | None]) -> str | None:
    """Log round `rnd` (a catalog.rounds row) as an MLflow run; returns its run id, None when tracking is off.

    Args:
        report: the round's markdown report (logged as report.md).
        files: artifact file name -> bytes (plots); None entries are skipped.
    """
    ml = cfg.tracking.mlflow
    if not ml.enabled:
        return None
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    # MLflow retries a request 7 times with growing waits (minutes in all) by default: a server that is down
    # would hold the round's end that long. The user's own settings of these win.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    uri = ml.resolved_uri(rt.home)
    experiment_id = mlflow_experiment(uri, ml.experiment_name(cfg.pipeline), rt.home)
    client = MlflowClient(tracking_uri=uri)
    r = rnd["round"]
    of_round = client.search_runs(
        [experiment_id], filter_string=f"tags.`flywheel.pipeline` = '{cfg.pipeline}' AND tags.`flywheel.round` = '{r}'"
    )
    # Training-curve runs carry the same tags and a `flywheel.step` one (trainers/curves.py).
    found = [run for run in of_round if "flywheel.step" not in run.data.tags]
    training = [run for run in of_round if "flywheel.step" in run.data.tags]
    tags = {
        "flywheel.pipeline": cfg.pipeline,
        "flywheel.round": str(r),
        "flywheel.promoted": str(bool(rnd["promoted"])).lower(),
        "flywheel.policy_in": rnd["policy_in"] or "",
        "flywheel.candidate": rnd["candidate"] or "",
        "flywheel.policy_out": rnd["policy_out"] or "",
        "flywheel.manifest": rnd["manifest_uri"] or "",
        "prefect.flow_run_id": rnd["flow_run_id"] or "",
        "mlflow.note.content": rnd["reason"] or "",  # shown as the run's description in MLflow's UI
    }
    if found:
        run_id = found[0].info.run_id
        params = []  # logged when the run was made; MLflow refuses to change a parameter
    else:
        run_id = client.create_run(experiment_id, run_name=f"{cfg.pipeline}-round-{r:04d}").info.run_id
        params = [Param(k, v) for k, v in flat_params(cfg.model_dump(mode="json")).items()]
    now = int(time.time() * 1000)
    metrics = [Metric(mlflow_name(k), float(v), now, r) for k, v in sorted(rnd["metrics"].items())]
    # MLflow takes at most 100 parameters and 1,000 metrics per batch call.
    for i in range(0, max(len(params), len(metrics), 1), 100):
        client.log_batch(
            run_id,
            metrics=metrics[i : i + 100],
            params=params[i : i + 100],
            tags=[RunTag(k, v) for k, v in tags.items()] if i == 0 else [],
        )
    client.log_text(run_id, report, "report.md")
    with tempfile.TemporaryDirectory() as tmp:
        for file_name, data in files.items():
            if data is not None:
                (Path(tmp) / file_name).write_bytes(data)
                client.log_artifact(run_id, str(Path(tmp) / file_name))
    for run in training:  # MLflow's UI shows a run with this tag under its parent
        client.set_tag(run.info.run_id, "mlflow.parentRunId", run_id)
    client.set_terminated(run_id)
    return run_id
