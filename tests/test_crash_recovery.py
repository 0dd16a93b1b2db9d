"""No ghosts after a crash: a round whose owner died is `crashed` (catalog and Prefect), never `running`,
and a resumed round first checks that what the catalog recorded for it is still in the store.

The kill is real: `flywheel run` in a subprocess SIGKILLs itself at a named point (tasks/stage.py,
kill_point), after a step's outputs were stored and before the catalog recorded them.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from uuid import UUID

import pyarrow as pa
import yaml

from flows.cli import main
from flows.lock import pipeline_lock
from storage.artifacts import ArtifactStore, artifact_folder
from storage.audit import repair_round
from storage.catalog import Catalog, StepRecord
from storage.store import open_store

ROOT = Path(__file__).resolve().parents[1]


def test_killed_run_is_crashed_for_rounds_and_prefect_and_resumes(prefect_harness, make_config, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.objects import StateType
    from prefect.settings import PREFECT_API_URL

    from flows.round import round_flow
    from tasks.stage import runtime

    home = tmp_path / "home"
    cfg = make_config(pipeline="killed", home=home)
    config = tmp_path / "killed.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    env = {**os.environ, "FLYWHEEL_HOME": str(home), "PREFECT_API_URL": PREFECT_API_URL.value()}
    cli = [sys.executable, "-m", "flows.cli"]
    run = subprocess.Popen(
        [*cli, "run", "--config", str(config)],
        cwd=ROOT,
        env={**env, "FLYWHEEL_TEST_KILL_AT": "curate:stored"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out, _ = run.communicate(timeout=600)
    assert run.returncode == -signal.SIGKILL, out[-3000:]
    (ghost,) = Catalog(home / "catalog.duckdb").rounds("killed")
    assert ghost["status"] == "running" and not ghost["steps"]  # what the kill left, before anyone looked

    rounds = subprocess.run([*cli, "rounds", "--json"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert rounds.returncode == 0, rounds.stderr[-3000:]
    (row,) = json.loads(rounds.stdout)
    assert (row["status"], row["attempts"]) == ("crashed", 1) and row["finished_at"]
    assert f"crashed: its owner (pid {run.pid} on host " in row["reason"] and "round lock free" in row["reason"]
    assert "round 1 of pipeline 'killed' (attempt 1) crashed" in rounds.stderr

    # Prefect: the round's flow run, the pipeline flow run it ran in, and the task run it died in.
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(UUID(ghost["flow_run_id"]))
        parent = client.read_flow_run(client.read_task_run(flow_run.parent_task_run_id).flow_run_id)
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])))
    assert flow_run.state.type == StateType.CRASHED and "round lock free" in flow_run.state.message
    assert parent.state.type == StateType.CRASHED
    assert {t.state.type for t in task_runs} == {StateType.CRASHED}, [(t.name, t.state.type) for t in task_runs]

    # The next trigger resumes the round as a second attempt; what the catalog records is in the store.
    report = round_flow(cfg)
    rt = runtime(cfg)
    assert report.round == 1
    assert [(a["attempt"], a["status"]) for a in rt.catalog.attempts("killed", 1)] == [(1, "crashed"), (2, "completed")]
    recorded = rt.catalog.artifacts_of_round("killed", 1)
    assert recorded and all(rt.artifacts.exists(a["id"]) for a in recorded)


def _hold(home, pipeline, seconds, ready):
    with pipeline_lock(home, pipeline):
        ready.set()
        time.sleep(seconds)


def test_rounds_closes_a_round_without_owner_and_leaves_a_live_one(tmp_path, capsys):
    home = tmp_path / "home"
    cat = Catalog(home / "catalog.duckdb")
    cat.start_round("p", 1, "h", "base", None)  # as a round flow does, under the lock held below
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    owner = ctx.Process(target=_hold, args=(home, "p", 60.0, ready))
    owner.start()
    assert ready.wait(60)
    try:
        assert main(["--home", str(home), "rounds", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)[0]["status"] == "running"  # its lock is held: it runs
    finally:
        owner.kill()  # kill -9: nothing closes the round
        owner.join()
    assert main(["--home", str(home), "rounds", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["status"] == "crashed" and row["finished_at"] and "round lock free" in row["reason"]
    (attempt,) = cat.attempts("p", 1)
    assert (attempt["status"], attempt["error"]) == ("crashed", row["reason"])
    assert cat.next_round("p") == 1  # a crashed round is retried


def test_resume_audit_forgets_steps_whose_outputs_left_the_store(tmp_path):
    store = open_store((tmp_path / "store").as_uri())
    arts = ArtifactStore(store, tmp_path / "cache")
    cat = Catalog(tmp_path / "catalog.duckdb")
    prompts = arts.put_table(pa.table({"prompt_id": ["p1", "p2"]}), kind="prompts")
    completions = arts.put_table(pa.table({"completion_id": ["c1"], "prompt_id": ["p1"]}), kind="completions")
    cat.start_round("p", 1, "h", "base", None)
    cat.record_step(StepRecord("p", 1, "curate", "id-curate", {"source": "s"}, {"prompts": prompts}, {"curate/n": 2}))
    cat.record_step(
        StepRecord(
            "p",
            1,
            "generate",
            "id-generate",
            {"prompts": prompts.id},
            {"completions": completions},
            row_edges=[("c1", "p1", completions.id)],
        )
    )
    # The store lost the prompts (a bucket lifecycle rule, a catalog restored next to an older store).
    for key in store.list(artifact_folder(prompts.id) + "/"):
        os.remove(tmp_path / "store" / key)

    repair = repair_round(cat, arts, "p", 1)
    assert (repair.checked, repair.missing, repair.steps) == (2, [prompts.id], ["curate"])
    assert list(cat.steps_of("p", 1)) == ["generate"]  # its outputs are still there: kept, reusable
    assert cat.find_completed_step("id-curate") is None  # so curate runs again
    assert cat.artifact(prompts.id) is None and cat.round("p", 1)["metrics"] == {}
    assert {e["src"] for e in cat.lineage(completions.id)} == {prompts.id}  # edges out of it stay, for the rerun
    again = repair_round(cat, arts, "p", 1)
    assert (again.checked, again.missing, again.steps) == (1, [], [])
