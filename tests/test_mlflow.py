"""Experiment tracking (flows/tracking_mlflow.py): a real round logged as one MLflow run, in a real MLflow
store (SQLite in the home), with the catalog's metrics, the config, the report and the plots; published
again it stays one run; a tracking server that is down does not fail the round."""

from __future__ import annotations

import logging

import pytest

from flows.tracking_mlflow import mlflow_name


@pytest.fixture(scope="session")
def small_model(tiny_model):
    """make_config's base model, here the tiny one: tracking needs a round, not one that learns."""
    return tiny_model


def test_a_round_is_one_mlflow_run_with_its_metrics_config_and_report(make_config, prefect_harness, tmp_path):
    from mlflow.tracking import MlflowClient

    from flows.publish import publish_round_report
    from flows.round import round_flow
    from tasks.stage import runtime

    cfg = make_config(pipeline="ml", curation__prompts_per_round=16, tracking__mlflow={"enabled": True})
    round_flow(cfg)
    rt = runtime(cfg)
    rnd = rt.catalog.round("ml", 1)
    client = MlflowClient(tracking_uri=cfg.tracking.mlflow.resolved_uri(rt.home))
    experiment = client.get_experiment_by_name("flywheel-ml")
    (run,) = client.search_runs([experiment.experiment_id])
    tags = run.data.tags
    assert tags["flywheel.round"] == "1" and tags["flywheel.candidate"] == rnd["candidate"]
    assert tags["prefect.flow_run_id"] == rnd["flow_run_id"] and rnd["flow_run_id"]
    assert tags["flywheel.promoted"] == str(bool(rnd["promoted"])).lower()
    assert run.data.metrics == {mlflow_name(k): v for k, v in rnd["metrics"].items()}
    assert "eval/accuracy/heldout/candidate" in run.data.metrics
    assert run.data.params["generation.sampling.n"] == str(cfg.generation.sampling.n)
    assert run.data.params["pipeline"] == "ml"
    files = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"report.md", "metrics.png"} <= files
    report = client.download_artifacts(run.info.run_id, "report.md", str(tmp_path))
    assert open(report).read().startswith("# ml, round 1: ")
    history = client.get_metric_history(run.info.run_id, "eval/accuracy/heldout/candidate")
    assert [m.step for m in history] == [1]  # plotted over rounds

    # Published again (a retried report): the same run, not a second one.
    publish_round_report(rt, cfg, 1)
    (again,) = client.search_runs([experiment.experiment_id])
    assert again.info.run_id == run.info.run_id and again.data.metrics == run.data.metrics

    # A tracking server that is down: one warning, and the report is still published.
    down = cfg.model_copy(deep=True)
    down.tracking.mlflow.tracking_uri = "http://127.0.0.1:9"  # the discard port: nothing listens
    warnings: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warnings.append(record.getMessage())
    logger = logging.getLogger("flywheel")  # tasks.stage.get_logger outside a Prefect run
    logger.addHandler(handler)
    try:
        publish_round_report(rt, down, 1)
    finally:
        logger.removeHandler(handler)
    assert [w for w in warnings if "could not log the round to MLflow" in w]


def test_names_and_params_as_mlflow_takes_them():
    from flows.tracking_mlflow import flat_params

    assert mlflow_name("eval/pass@4/heldout/candidate") == "eval/pass_at_4/heldout/candidate"
    assert mlflow_name("eval/ifeval/set(a)/policy") == "eval/ifeval/set_a_/policy"
    params = flat_params({"a": {"b": 1, "c": [1, 2]}, "d": "x" * 7000})
    assert params == {"a.b": "1", "a.c": "[1, 2]", "d": "x" * 6000}
