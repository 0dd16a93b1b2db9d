"""Two machines on one box: two `flywheel worker`s, each in its own network namespace with its own
FLYWHEEL_HOME, share one Prefect server, one S3 store and one DuckLake catalog on Postgres, all reached
only at the host's bridge address. Each machine triggers the same pipeline on its own work queue: the
rounds run one after the other (the second waits for the pipeline's slot, visibly), the second dedups
against the prompts the first machine drew, and lineage asked from either machine is the same.

Generation runs on the transformers engine: the subject is the coordination, and two vLLM engine starts
would double the test's time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path

import yaml

from storage.s3server import LocalS3Server, free_port
from storage.store import open_store
from tests.conftest import HF_GENERATION
from tests.netns import Machines
from tests.pg import PASSWORD, postgres_server

ROOT = Path(__file__).resolve().parents[1]
POOL, PIPELINE, STORE = "two-machines", "shared", "s3://fleet/flywheel"
TRIGGER = (
    "import sys\n"
    "from prefect.deployments import run_deployment\n"
    "run = run_deployment('flywheel-pipeline/flywheel-round', timeout=0, work_queue_name=sys.argv[1])\n"
    "print(run.id)\n"
)


def _api(url: str, path: str, body: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"{url}{path}", data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def _wait(what: str, probe, timeout: float, logs: list[Path]):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if found := probe():
                return found
        except OSError:
            pass
        time.sleep(1)
    tails = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in logs if p.exists())
    raise AssertionError(f"{what} within {timeout:.0f} s; logs:\n{tails}")


def _config(make_config, tmp_path: Path, s3: LocalS3Server, metadata: str) -> Path:
    cfg = make_config(pipeline=PIPELINE, generation=HF_GENERATION).model_dump(mode="json")
    cfg["home"] = None  # each worker's runs use its own machine's FLYWHEEL_HOME
    cfg["storage"] = {
        "uri": STORE,
        "endpoint_url": s3.endpoint_url,
        "catalog": "ducklake",
        "catalog_metadata": metadata,
    }
    path = tmp_path / "shared.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _shared_catalog(tmp_path: Path, s3: LocalS3Server, metadata: str):
    """The fleet's catalog, opened from the host as a third machine would (read for the assertions)."""
    from storage.catalog import Catalog
    from storage.runtime import lake_spec

    store = open_store(STORE, s3.endpoint_url)
    return Catalog(tmp_path / "host.sqlite", lake=lake_spec(tmp_path, store, s3.endpoint_url, None, metadata))


def test_two_workers_run_one_pipeline_in_turn_and_see_the_same_lineage(make_config, tmp_path, monkeypatch):
    procs: list[subprocess.Popen] = []
    logs = [tmp_path / f"{name}.log" for name in ("server", "worker-a", "worker-b")]
    with (
        Machines(["a", "b"]) as net,
        postgres_server(listen=net.host if net.isolated else None, network=net.network) as database,
        LocalS3Server(tmp_path / "s3", host=net.host) as s3,
    ):
        if not net.isolated:  # the same test, without the network separation
            warnings.warn(
                f"no network namespaces here ({net.why_not.strip()}): both workers on 127.0.0.1", stacklevel=1
            )
        port = free_port()
        api = f"http://{net.host}:{port}/api"
        env = {
            **os.environ,
            **s3.env(),
            "PGPASSWORD": PASSWORD,
            "PREFECT_API_URL": api,
            "PREFECT_HOME": str(tmp_path / "prefect"),
            "PREFECT_WORKER_QUERY_SECONDS": "1",
        }
        env.pop("FLYWHEEL_HOME", None)
        for name, value in {**s3.env(), "PGPASSWORD": PASSWORD}.items():  # this process: a third machine
            monkeypatch.setenv(name, value)
        flywheel = [sys.executable, "-m", "flows.cli"]
        try:
            with open(logs[0], "w") as log:
                procs.append(
                    subprocess.Popen(
                        [*flywheel, "server", "--host", net.host, "--port", str(port)],
                        cwd=ROOT,
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
            open_store(STORE, s3.endpoint_url, create_bucket=True).check()
            config = _config(make_config, tmp_path, s3, database("fleet"))
            _wait("no Prefect server", lambda: _api(api, "/health"), 120, logs)

            on = {m: {**env, "FLYWHEEL_HOME": str(tmp_path / f"home-{m}")} for m in net.names}
            subprocess.run(
                [*net.run_prefix("a"), *flywheel, "deploy", "--config", str(config), "--pool", POOL],
                cwd=ROOT,
                env=on["a"],
                check=True,
                capture_output=True,
                timeout=180,
            )
            for m, log_path in zip(net.names, logs[1:]):
                with open(log_path, "w") as log:
                    procs.append(
                        subprocess.Popen(
                            [*net.run_prefix(m), *flywheel, "worker", "--pool", POOL, "--work-queue", m],
                            cwd=ROOT,
                            env=on[m],
                            stdout=log,
                            stderr=subprocess.STDOUT,
                            start_new_session=True,
                        )
                    )
            _wait(
                "the workers did not come up",
                lambda: len(_api(api, f"/work_pools/{POOL}/workers/filter", {})) == 2,
                180,
                logs,
            )

            # The same pipeline, triggered on each machine onto its own queue, at the same moment.
            triggers = [
                subprocess.Popen(
                    [*net.run_prefix(m), sys.executable, "-c", TRIGGER, m],
                    cwd=ROOT,
                    env=on[m],
                    stdout=subprocess.PIPE,
                    text=True,
                )
                for m in net.names
            ]
            run_ids = [t.communicate(timeout=120)[0].strip().splitlines()[-1] for t in triggers]

            def finished():
                runs = [_api(api, f"/flow_runs/{i}") for i in run_ids]
                return runs if all(r["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED") for r in runs) else None

            runs = _wait("the two rounds did not finish", finished, 600, logs)
            assert [r["state"]["type"] for r in runs] == ["COMPLETED", "COMPLETED"], runs
            assert [r["work_queue_name"] for r in runs] == ["a", "b"]  # each machine ran one
            every = _api(api, "/flow_runs/filter", {})  # the two triggered runs and their round subflows
            names = [{s["name"] for s in _api(api, f"/flow_run_states/?flow_run_id={r['id']}")} for r in every]
            assert sum("AwaitingPipeline" in n for n in names) == 1, names  # the second waited, visibly

            def cli(m: str, *args: str):
                out = subprocess.run(
                    [*net.run_prefix(m), *flywheel, "--home", on[m]["FLYWHEEL_HOME"], *args, "--json"],
                    cwd=ROOT,
                    env=on[m],
                    check=True,
                    capture_output=True,
                    text=True,
                    timeout=180,
                )
                return json.loads(out.stdout)

            rounds = {m: cli(m, "rounds", "--pipeline", PIPELINE) for m in net.names}
            assert rounds["a"] == rounds["b"]
            first, second = sorted(rounds["a"], key=lambda r: r["round"])
            assert (first["round"], second["round"]) == (1, 2)
            assert first["status"] == second["status"] == "completed"
            assert second["started_at"] >= first["finished_at"]
            assert second["policy_in"] == first["policy"]

            # Round 2's curation saw round 1's prompts, drawn on the other machine, and drew none of them.
            catalog = _shared_catalog(tmp_path, s3, yaml.safe_load(config.read_text())["storage"]["catalog_metadata"])
            removed = {
                r["name"]: r["value"]
                for r in catalog._query("SELECT name, value FROM metrics WHERE round = 2 AND name LIKE 'curate/%'")
            }
            assert removed["curate/removed/seen_in_earlier_round"] == 48, removed
            prompts = [catalog.step_outputs(PIPELINE, r, "curate")["prompts"] for r in (1, 2)]
            assert prompts[0] != prompts[1]
            sft = catalog.step_outputs(PIPELINE, 2, "select")["sft"]
            catalog.close()
            lineage = {m: cli(m, "lineage", sft) for m in net.names}
            assert lineage["a"] == lineage["b"]
            assert {e["src_kind"] for e in lineage["a"]["edges"]} >= {"prompts", "completions"}, lineage["a"]
        finally:
            for proc in reversed(procs):
                if proc.poll() is None:
                    os.killpg(proc.pid, 15)
            for proc in procs:
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, 9)
                    proc.wait()
