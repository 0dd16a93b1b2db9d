"""Round history that is not overwritten: every attempt kept with its error and steps, finished steps kept
reusable after a late input error, no manual promotion under a running round, promotions in the store."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import socket
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from flows.cli import main
from flows.lock import pipeline_lock
from storage.artifacts import ArtifactRef, ArtifactStore
from storage.catalog import Catalog, StepRecord
from storage.rebuild import rebuild_catalog
from storage.store import open_store

P = "hist"


def _ref(artifact_id: str, kind: str) -> ArtifactRef:
    return ArtifactRef(artifact_id, kind, f"file:///store/{artifact_id}", 10, 1, "parquet")


def _step(name: str, identity: str, reused: bool = False) -> StepRecord:
    return StepRecord(P, 1, name, identity, {"in": "x"}, {"out": _ref(f"{name}-out", name)}, reused=reused)


def test_every_attempt_is_kept_with_its_times_error_owner_and_steps(tmp_path, capsys):
    home = tmp_path / "home"
    cat = Catalog(home / "catalog.duckdb")
    assert cat.start_round(P, 1, "cfg-a", "base", "run-a") == 1
    cat.record_step(_step("curate", "id-curate"))
    cat.record_step_failure(P, 1, "train-dpo", "id-dpo", "RuntimeError: DPO worker died")
    cat.fail_round(P, 1, "RuntimeError: DPO worker died")

    assert cat.start_round(P, 1, "cfg-b", "base", "run-b") == 2
    cat.record_step(_step("curate", "id-curate", reused=True))
    cat.record_step(_step("train-dpo", "id-dpo"))
    cat.finish_round(P, 1, candidate="m1", policy_out="m1", promoted=True, reason="promoted", manifest_uri="u")

    first, second = cat.attempts(P, 1)
    assert (first["attempt"], first["status"], first["error"], first["flow_run_id"], first["config_hash"]) == (
        1,
        "failed",
        "RuntimeError: DPO worker died",
        "run-a",
        "cfg-a",
    )
    assert (second["attempt"], second["status"], second["error"], second["flow_run_id"]) == (
        2,
        "completed",
        None,
        "run-b",
    )
    assert first["started_at"] <= first["finished_at"] <= second["started_at"] <= second["finished_at"]
    assert (first["pid"], first["host"]) == (os.getpid(), socket.gethostname())
    # Each attempt's steps as they ended in it: the steps table itself keeps only the latest record.
    assert {k: (v["status"], v["reused"]) for k, v in first["steps"].items()} == {
        "curate": ("completed", False),
        "train-dpo": ("failed", False),
    }
    assert first["steps"]["train-dpo"]["error"] == "RuntimeError: DPO worker died"
    assert {k: (v["status"], v["reused"]) for k, v in second["steps"].items()} == {
        "curate": ("completed", True),
        "train-dpo": ("completed", False),
    }
    (rnd,) = cat.rounds(P)
    assert (rnd["status"], rnd["attempts"]) == ("completed", 2)  # `rounds` stays the latest state

    assert main(["--home", str(home), "rounds", "--attempts", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [(a["attempt"], a["status"], a["error"]) for a in shown] == [
        (1, "failed", "RuntimeError: DPO worker died"),
        (2, "completed", None),
    ]
    assert main(["--home", str(home), "rounds", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["attempts"] == 2


def test_late_source_error_keeps_finished_steps_reusable(prefect_harness, make_config, monkeypatch):
    import tasks.select
    from flows.round import round_flow
    from tasks.curation.sources import SourceError
    from tasks.stage import runtime

    cfg = make_config(pipeline="late-error")

    def unreadable(cfg):
        raise SourceError("evaluation.eval_sets[0] (heldout): line 3 is not valid JSON (fix the file)")

    # select reads the eval sets again (decontamination of the training data): an input error after three steps.
    monkeypatch.setattr(tasks.select, "eval_index", unreadable)
    with pytest.raises(SourceError, match="line 3 is not valid JSON"):
        round_flow(cfg)
    rt = runtime(cfg)
    (failed,) = rt.catalog.rounds(cfg.pipeline)
    assert failed["status"] == "failed" and "SourceError: evaluation.eval_sets[0]" in failed["reason"]
    done = {name for name, s in failed["steps"].items() if s["status"] == "completed"}
    assert {"curate", "generate", "score"} <= done

    monkeypatch.undo()
    report = round_flow(cfg)
    assert report.round == 1
    (rnd,) = rt.catalog.rounds(cfg.pipeline)
    assert rnd["status"] == "completed"
    reused = {name for name, s in rnd["steps"].items() if s["reused"]}
    assert {"curate", "generate", "score"} <= reused and "select" not in reused
    first, second = rt.catalog.attempts(cfg.pipeline, 1)
    assert (first["status"], second["status"]) == ("failed", "completed")
    assert first["error"].startswith("SourceError: evaluation.eval_sets[0] (heldout)")
    assert first["steps"]["select"]["status"] == "failed" and second["steps"]["generate"]["reused"]


# --- manual promotion -----------------------------------------------------------------------------


def _hold(home, pipeline, seconds, ready):
    with pipeline_lock(home, pipeline):
        ready.set()
        time.sleep(seconds)


def _holder(home, seconds: float):
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=_hold, args=(home, P, seconds, ready))
    proc.start()
    assert ready.wait(60)
    return proc


def _pipeline_with_rounds(tmp_path, n: int = 2) -> tuple[Catalog, object]:
    """A catalog with n completed rounds (candidate and policy of round r: c<r>) and their manifests in a
    file store, as the round flow leaves them."""
    home, root = tmp_path / "home", tmp_path / "store"
    store = open_store(root.as_uri())
    config = {"base_model": "/models/base", "storage": {"uri": root.as_uri()}}
    cat = Catalog(home / "catalog.duckdb")
    cat.ensure_pipeline(P, "/models/base", config)
    for r in range(1, n + 1):
        cat.start_round(P, r, "h", f"c{r - 1}", None)
        cat.finish_round(P, r, candidate=f"c{r}", policy_out=f"c{r}", promoted=True, reason="ok", manifest_uri="")
        manifest = {
            "pipeline": P,
            "round": r,
            "written_at": datetime.now(timezone.utc).isoformat(),
            "config": config,
            "policy_in": f"c{r - 1}",
            "candidate": f"c{r}",
            "policy_out": f"c{r}",
            "promoted": True,
            "reason": "ok",
            "metrics": {},
            "steps": {},
            "inputs": {},
        }
        store.put_bytes(f"runs/{P}/round-{r:04d}/manifest.json", json.dumps(manifest).encode())
    return cat, store


def _promote(cat: Catalog, *extra: str) -> int:
    home = str(cat.path.parent)
    return main(["--home", home, "promote", "--pipeline", P, "--round", "1", "--reason", "c2 regressed", *extra])


def test_promote_is_refused_while_a_round_of_the_pipeline_runs(tmp_path, capsys):
    cat, _ = _pipeline_with_rounds(tmp_path)
    proc = _holder(cat.path.parent, 60.0)  # what a running round holds
    try:
        assert _promote(cat) == 2
        err = capsys.readouterr().err
        assert f"flywheel: a round of pipeline '{P}' is running (pid {proc.pid} since " in err
        assert "its gate would override this promotion when it finishes" in err and "--wait" in err
        assert cat.promotions(P) == [] and cat.current_policy(P) == "c2"
    finally:
        proc.kill()
        proc.join()
    assert _promote(cat) == 0
    assert cat.current_policy(P) == "c1"


def test_promote_wait_records_after_the_running_round(tmp_path, capsys):
    cat, _ = _pipeline_with_rounds(tmp_path)
    proc = _holder(cat.path.parent, 3.0)
    t0 = time.monotonic()
    assert _promote(cat, "--wait") == 0
    assert time.monotonic() - t0 > 1.0  # it waited for the holder
    proc.join()
    assert "waiting for the running round of pipeline" in capsys.readouterr().err
    assert cat.current_policy(P) == "c1"


def test_manual_promotion_is_restored_by_catalog_rebuild(tmp_path):
    cat, store = _pipeline_with_rounds(tmp_path)
    assert _promote(cat) == 0
    (key,) = store.list(f"runs/{P}/promotions/")
    assert json.loads(store.get_bytes(key))["policy"] == "c1"

    rebuilt = Catalog(tmp_path / "rebuilt.duckdb")
    assert rebuild_catalog(store, ArtifactStore(store, tmp_path / "cache"), rebuilt) == [(P, 1), (P, 2)]
    fields = ("pipeline", "after_round", "policy", "from_round", "which", "who", "promoted_at", "why")
    assert [{k: p[k] for k in fields} for p in rebuilt.promotions(P)] == [
        {k: p[k] for k in fields} for p in cat.promotions(P)
    ]
    assert rebuilt.current_policy(P) == cat.current_policy(P) == "c1"
    rebuild_catalog(store, ArtifactStore(store, tmp_path / "cache"), rebuilt)  # again: not recorded twice
    assert len(rebuilt.promotions(P)) == 1


def test_catalog_rebuild_onto_ducklake_from_the_cli(tmp_path):
    """`flywheel catalog-rebuild` with storage.catalog: ducklake: the home's lake, found by `flywheel rounds`."""
    import subprocess
    import sys

    import yaml

    cat, _ = _pipeline_with_rounds(tmp_path)
    config = tmp_path / "lake.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "base_model": "/models/base",
                "home": str(tmp_path / "home"),
                "storage": {"uri": (tmp_path / "store").as_uri(), "catalog": "ducklake"},
                "curation": {"sources": [{"name": "pool", "path": "p.jsonl"}]},
                "evaluation": {"eval_sets": [{"name": "heldout", "path": "h.jsonl"}]},
            }
        )
    )
    root = Path(__file__).resolve().parents[1]

    def flywheel(*args: str) -> subprocess.CompletedProcess:
        run = [sys.executable, "-m", "flows.cli", *args]
        return subprocess.run(run, cwd=root, capture_output=True, text=True, timeout=300)

    built = flywheel("catalog-rebuild", "--config", str(config))
    assert built.returncode == 0, built.stderr[-2000:]
    assert f"{tmp_path / 'home' / 'catalog.sqlite'}: rebuilt 2 rounds" in built.stdout
    rounds = flywheel("--home", str(tmp_path / "home"), "rounds", "--json")
    assert rounds.returncode == 0, rounds.stderr[-2000:]
    assert [(r["round"], r["policy"]) for r in json.loads(rounds.stdout)] == [(1, "c1"), (2, "c2")]
    then = flywheel("--home", str(tmp_path / "home"), "rounds", "--pipeline", P, "--as-of-round", "1", "--json")
    assert [r["round"] for r in json.loads(then.stdout)] == [1]
    again = flywheel("catalog-rebuild", "--config", str(config))
    assert again.returncode != 0 and "catalog.sqlite exists: pass --force" in again.stderr
