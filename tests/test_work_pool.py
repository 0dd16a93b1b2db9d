"""Work pools through a real Prefect server: `flywheel deploy --pool` registers both deployments on a
process pool with the code directory as their source, and a `flywheel worker` process runs the pool's runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from flows.cli import main
from flows.deployments import CODE_DIR, ENTRYPOINT

ROOT = Path(__file__).resolve().parents[1]


def test_deploy_registers_both_deployments_on_a_new_process_pool(prefect_harness, tmp_path, capsys):
    from prefect.client.orchestration import get_client

    argv = ["--home", str(tmp_path / "home"), "deploy", "--config", str(ROOT / "configs" / "demo.yaml")]
    assert main([*argv, "--pool", "wp-deploy", "--cron", "30 3 * * *", "--timezone", "Europe/Paris"]) == 0
    out = capsys.readouterr().out
    assert "on process work pool 'wp-deploy'" in out and "flywheel worker --pool wp-deploy" in out

    with get_client(sync_client=True) as client:
        assert client.read_work_pool("wp-deploy").type == "process"
        now = client.read_deployment_by_name("flywheel-pipeline/flywheel-round")
        nightly = client.read_deployment_by_name("flywheel-pipeline/flywheel-nightly")
    for d in (now, nightly):
        assert (d.work_pool_name, d.entrypoint) == ("wp-deploy", ENTRYPOINT)
        # Pulled from the code directory: no image was built, the worker runs this checkout.
        assert d.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(CODE_DIR)}}], (
            d.pull_steps
        )
        assert d.parameters["cfg"]["pipeline"] == "demo" and d.parameters["rounds"] == 1
        assert d.parameters["cfg"]["home"] == str((tmp_path / "home").resolve())
        assert "pipeline:demo" in d.tags
    assert not now.schedules
    (schedule,) = nightly.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == ("30 3 * * *", "Europe/Paris")

    # Deploying again updates the same two deployments on the existing pool; without --home (or a home in
    # the config) none is pinned: each worker's runs use that machine's FLYWHEEL_HOME.
    config = ["deploy", "--config", str(ROOT / "configs" / "demo.yaml"), "--pool", "wp-deploy"]
    assert main(config) == 0
    with get_client(sync_client=True) as client:
        again = client.read_deployment_by_name("flywheel-pipeline/flywheel-nightly")
    assert again.id == nightly.id and again.schedules[0].schedule.cron == "0 2 * * *"
    assert again.parameters["cfg"]["home"] is None


def test_worker_refuses_a_pool_it_cannot_run(prefect_harness):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="wp-docker", type="docker"))
    with pytest.raises(
        SystemExit, match=r"work pool 'wp-docker' is a docker pool; .*prefect worker start --pool wp-docker"
    ):
        main(["worker", "--pool", "wp-docker"])


def test_worker_runs_a_flow_run_of_its_pool(prefect_harness, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.flows import Flow
    from prefect.settings import PREFECT_API_URL

    # A flow that costs nothing, deployed from its own directory as `flywheel deploy` deploys the pipeline.
    src = tmp_path / "src"
    src.mkdir()
    (src / "hello.py").write_text(
        textwrap.dedent(
            """
            import os
            from pathlib import Path
            from prefect import flow

            @flow(name="wp-hello")
            def hello(out: str) -> None:
                Path(out).write_text(str(os.getpid()))
            """
        )
    )
    flag = tmp_path / "ran"
    hello = Flow.from_source(source=str(src), entrypoint="hello.py:hello")
    deployment_id = hello.deploy(
        "hello", work_pool_name=_pool("wp-worker"), parameters={"out": str(flag)}, build=False, push=False
    )
    with get_client(sync_client=True) as client:
        run = client.create_flow_run_from_deployment(deployment_id)

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_WORKER_QUERY_SECONDS": "1"}
    worker = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "worker", "--pool", "wp-worker"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        with get_client(sync_client=True) as client:
            while not (state := client.read_flow_run(run.id).state).is_final():
                assert worker.poll() is None, worker.stdout.read()[-3000:]
                assert time.monotonic() < deadline, f"the worker never finished the run: {state}"
                time.sleep(1)
            final = client.read_flow_run(run.id)
        assert state.is_completed(), state
        assert final.work_pool_name == "wp-worker"
        assert int(flag.read_text()) not in (os.getpid(), worker.pid)  # run in the worker's own subprocess
    finally:
        worker.send_signal(signal.SIGTERM)  # exec'd: the pid is the worker's
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def _pool(name: str) -> str:
    from flows.deployments import ensure_pool

    assert ensure_pool(name) == "process"
    return name


def test_deployed_configs_keep_s3_inputs_and_anchor_local_ones(tmp_path, monkeypatch):
    from configs import load_config
    from flows.deployments import absolute_config

    monkeypatch.chdir(ROOT)
    cfg = load_config(ROOT / "configs" / "demo.yaml", home=str(tmp_path / "home"))
    data = cfg.model_dump(mode="json")
    data["curation"]["sources"][0]["path"] = "s3://data/pool.jsonl"
    data["evaluation"]["eval_sets"][0]["path"] = "s3://data/heldout.jsonl"
    data["curation"]["sources"][1]["path"] = "rel/extra.jsonl"
    out = absolute_config(type(cfg).model_validate(data))
    assert out.curation.sources[0].path == "s3://data/pool.jsonl"
    assert out.evaluation.eval_sets[0].path == "s3://data/heldout.jsonl"
    assert out.curation.sources[1].path == str(ROOT / "rel" / "extra.jsonl")
