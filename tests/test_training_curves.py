"""Training curves (tracking.training_curves, trainers/curves.py): a tiny SFT run for real, its per-step loss in a
real MLflow store (SQLite in tmp_path), in-process and as a launched job; by default nothing is written anywhere;
a requested integration that is not installed fails at config load; reporting never enters a step's identity."""

from __future__ import annotations

import importlib.util
import logging
import math
import os

import pyarrow as pa
import pytest
from pydantic import ValidationError

from configs import ConfigError, parse_config
from configs.launcher import LauncherConfig
from configs.schema import SFTConfig
from configs.tracking import TrackingConfig, TrainingCurvesConfig
from trainers.curves import CurveReport, curve_report
from trainers.sft import build_sft_trainer, train_sft

LOG = logging.getLogger("test")
BASE = "b" * 64
# 32 rows in batches of 2: 16 steps, logged every 5 and at the last (trainers/common.py): steps 5, 10, 15, 16.
ROWS = [
    {"messages": [{"role": "user", "content": f"What is {a} plus 5?"}, {"role": "assistant", "content": str(a + 5)}]}
    for a in range(10, 42)
]
SFT = SFTConfig(learning_rate=1e-3, batch_size=2, max_length=64)
HAS_TENSORBOARD = any(importlib.util.find_spec(m) for m in ("tensorboard", "tensorboardX"))
HAS_WANDB = importlib.util.find_spec("wandb") is not None


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
    # The user's own settings would decide where runs go; a store fixture's AWS keys are not MLflow's business.
    for key in [k for k in os.environ if k.startswith(("MLFLOW_", "WANDB_", "TENSORBOARD_", "AWS_"))]:
        monkeypatch.delenv(key)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # MLflow's and transformers' defaults would write here


def _tracking(tmp_path, report_to: list[str]) -> TrackingConfig:
    return TrackingConfig.model_validate(
        {
            "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
            "training_curves": {"report_to": report_to},
        }
    )


def _loss_history(uri: str, experiment: str, step: str) -> tuple:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    (run,) = client.search_runs([exp.experiment_id], filter_string=f"tags.`flywheel.step` = '{step}'")
    return client, run, client.get_metric_history(run.info.run_id, "loss")


def test_sft_reports_its_loss_curve_to_mlflow(tiny_model, tmp_path):
    home = tmp_path / "home"
    tracking = _tracking(tmp_path, ["mlflow"])
    report = curve_report(tracking, home, "curves", 3, "train-sft")
    assert report.report_to == ["mlflow"] and report.run_name == "curves-round-0003-train-sft"

    _, summary = train_sft(
        str(tiny_model), ROWS, SFT, tmp_path / "work", base_id=BASE, seed=0, use_cpu=True, bf16=False, logger=LOG,
        report=report,
    )  # fmt: skip

    client, run, history = _loss_history(tracking.mlflow.resolved_uri(home), "flywheel-curves", "train-sft")
    assert [m.step for m in history] == [5, 10, 15, 16] == [h["step"] for h in summary["history"]]
    assert all(math.isfinite(m.value) for m in history)
    assert [m.value for m in history] == pytest.approx([h["loss"] for h in summary["history"]])
    assert run.info.run_name == "curves-round-0003-train-sft" and run.info.status == "FINISHED"
    assert (run.data.tags["flywheel.pipeline"], run.data.tags["flywheel.round"]) == ("curves", "3")
    # The experiment keeps its artifacts in the home, as tracking.mlflow's round runs do, not in ./mlruns.
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.artifact_location == (home / "mlflow" / "artifacts").as_uri()
    assert not list((tmp_path / "cwd").iterdir())
    assert not [k for k in os.environ if k.startswith("MLFLOW_")]  # the trainer's environment is put back


def test_by_default_nothing_is_reported_or_written(tiny_model, tmp_path):
    home = tmp_path / "home"
    report = curve_report(TrackingConfig(), home, "curves", 1, "train-sft")
    assert report == CurveReport() and report.report_to == [] and report.env == {}

    trainer, _ = build_sft_trainer(
        str(tiny_model), ROWS[:8], SFT, tmp_path / "work", seed=0, use_cpu=True, bf16=False, callbacks=[],
        report=report,
    )  # fmt: skip
    assert trainer.args.report_to == []
    names = {type(c).__name__ for c in trainer.callback_handler.callbacks}
    assert not names & {"MLflowCallback", "WandbCallback", "TensorBoardCallback"}
    trainer.train()
    assert not home.exists() and not list((tmp_path / "cwd").iterdir())
    assert not (tmp_path / "work" / "trainer" / "runs").exists()  # no TensorBoard default directory either


def test_a_launched_train_step_reports_and_keeps_its_identity(tiny_model, demo_data, tmp_path):
    """train-sft as an `accelerate launch` job: the environment reaches the job, the curve lands in the home's
    MLflow store, turning reporting off reuses the step (same identity), and the round's run adopts it."""
    from flows.tracking_mlflow import log_round
    from tasks.stage import runtime
    from tasks.train import train_sft_task

    def config(report_to: list[str]):
        return parse_config(
            {
                "pipeline": "launched",
                "base_model": str(tiny_model),
                "home": str(tmp_path / "home"),
                "storage": {"uri": f"file://{tmp_path / 'store'}"},
                "curation": {"sources": [{"name": "pool", "path": str(demo_data["pool"])}]},
                "evaluation": {"eval_sets": [{"name": "heldout", "path": str(demo_data["heldout"])}]},
                "training": {
                    "sft": SFT.model_dump(mode="json"),
                    "launcher": LauncherConfig(kind="accelerate", num_processes=1, cpu=True).model_dump(mode="json"),
                },
                "tracking": {"mlflow": {"enabled": True}, "training_curves": {"report_to": report_to}},
            }
        )

    on, off = config(["mlflow"]), config([])
    rt = runtime(on)
    data_id = rt.artifacts.put_table(pa.Table.from_pylist(ROWS), kind="sft").id
    policy_id = rt.artifacts.put_model(tiny_model).id
    trained = train_sft_task.fn(on, 2, policy_id, data_id)
    uri = on.tracking.mlflow.resolved_uri(rt.home)
    assert uri == f"sqlite:///{rt.home / 'mlflow' / 'mlflow.db'}"  # tracking.mlflow's own store
    client, run, history = _loss_history(uri, "flywheel-launched", "train-sft")
    assert [m.step for m in history] == [5, 10, 15, 16] and all(math.isfinite(m.value) for m in history)
    assert train_sft_task.fn(off, 2, policy_id, data_id) == trained  # reused: reporting is not in the identity

    rnd = {"round": 2, "promoted": False, "policy_in": policy_id, "candidate": trained, "policy_out": policy_id}
    round_run = log_round(
        rt, on, {**rnd, "manifest_uri": None, "flow_run_id": None, "reason": "", "metrics": {}}, "", {}
    )
    assert round_run != run.info.run_id  # the round's own run, not the training run that shares its tags
    assert client.get_run(run.info.run_id).data.tags["mlflow.parentRunId"] == round_run


@pytest.mark.skipif(not HAS_TENSORBOARD, reason="tensorboard is not installed")
def test_tensorboard_event_files_outlive_the_scratch_directory(tiny_model, tmp_path):
    home = tmp_path / "home"
    report = curve_report(_tracking(tmp_path, ["tensorboard"]), home, "curves", 1, "train-sft")
    train_sft(
        str(tiny_model), ROWS, SFT, tmp_path / "work", base_id=BASE, seed=0, use_cpu=True, bf16=False, logger=LOG,
        report=report,
    )  # fmt: skip
    events = list((home / "training-curves" / "curves" / "round-0001" / "train-sft" / "tensorboard").glob("events.*"))
    assert events and events[0].stat().st_size > 0


@pytest.mark.parametrize(
    ("name", "installed", "install"),
    [("tensorboard", HAS_TENSORBOARD, "pip install tensorboard"), ("wandb", HAS_WANDB, "pip install wandb")],
)
def test_a_missing_integration_fails_at_config_load(name, installed, install):
    if installed:
        TrainingCurvesConfig(report_to=[name])  # accepted where the package is there
        return
    with pytest.raises(ValidationError, match=f"{name!r}.*{install}"):
        TrainingCurvesConfig(report_to=[name])
    data = {
        "base_model": "m",
        "curation": {"sources": [{"name": "pool", "path": "p.jsonl"}]},
        "evaluation": {"eval_sets": [{"name": "heldout", "path": "h.jsonl"}]},
        "tracking": {"training_curves": {"report_to": [name]}},
    }
    with pytest.raises(ConfigError, match=f"tracking.training_curves.report_to includes {name!r}.*{install}"):
        parse_config(data, "x.yaml")


def test_wandb_runs_offline_under_the_home_unless_the_environment_says_otherwise(tmp_path, monkeypatch):
    # model_construct: the environment it gives wandb, whether or not wandb is installed here.
    curves = TrainingCurvesConfig.model_construct(report_to=["wandb"], log_dir=None)
    tracking = TrackingConfig.model_construct(training_curves=curves)
    env = curve_report(tracking, tmp_path, "curves", 4, "train-dpo").env
    step_dir = tmp_path / "training-curves" / "curves" / "round-0004" / "train-dpo"
    # wandb puts its runs in a wandb/ folder of WANDB_DIR: <step_dir>/wandb/offline-run-*, as README says.
    assert env == {"WANDB_MODE": "offline", "WANDB_DIR": str(step_dir), "WANDB_PROJECT": "flywheel-curves"}
    assert step_dir.is_dir()
    monkeypatch.setenv("WANDB_MODE", "online")
    assert curve_report(tracking, tmp_path, "curves", 4, "train-dpo").env["WANDB_MODE"] == "online"


def test_an_unreachable_tracking_server_costs_a_warning_not_the_step(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the refusal at once, not after backoff
    tracking = TrackingConfig.model_validate(
        {
            "mlflow": {"tracking_uri": "http://127.0.0.1:9"},  # the discard port: nothing listens
            "training_curves": {"report_to": ["mlflow"]},
        }
    )
    with caplog.at_level(logging.WARNING, logger="test"):
        report = curve_report(tracking, tmp_path, "curves", 1, "train-sft", LOG)
    assert report.report_to == [] and "MLFLOW_TRACKING_URI" not in report.env
    assert "train-sft: not reporting training curves to MLflow at http://127.0.0.1:9" in caplog.text
