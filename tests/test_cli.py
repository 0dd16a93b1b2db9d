"""The `flywheel` command as a user runs it: a subprocess, real config file, real catalog and store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from flows.cli import main
from tests.conftest import HF_GENERATION

FLYWHEEL = [sys.executable, "-m", "flows.cli"]
ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], home: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "FLYWHEEL_HOME": str(home)}
    return subprocess.run(FLYWHEEL + args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _write(cfg, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return path


def test_run_then_rounds_and_lineage(make_config, tmp_path):
    home = tmp_path / "home"
    config = _write(make_config(pipeline="cli", home=home, generation=HF_GENERATION), tmp_path / "cli.yaml")

    run = _run(["run", "--config", str(config), "--rounds", "1"], home)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "rounds: yields, held-out accuracy, promotion" in run.stdout

    rounds = _run(["rounds", "--json"], home)
    assert rounds.returncode == 0, rounds.stderr[-2000:]
    (r,) = json.loads(rounds.stdout)
    assert r["round"] == 1 and r["status"] == "completed" and isinstance(r["promoted"], bool)
    assert {"eval/accuracy/policy", "eval/accuracy/candidate"} <= set(r["metrics"])
    assert {"generate", "train-sft", "train-dpo", "evaluate-candidate"} <= set(r["timings_s"])
    assert (home / "reports" / "cli-rounds.png").stat().st_size > 10_000

    lineage = _run(["lineage", r["candidate"][:12], "--json"], home)
    assert lineage.returncode == 0, lineage.stderr[-2000:]
    out = json.loads(lineage.stdout)
    assert out["artifact"]["id"] == r["candidate"]
    assert "source" in {e["src_kind"] for e in out["edges"]}

    # flywheel export: the model files exactly as stored, with the lineage beside them.
    from storage.ids import sha256_dir

    exported = tmp_path / "exported"
    ran = _run(["export", "--config", str(config), "--round", "1", str(exported)], home)
    assert ran.returncode == 0, ran.stderr[-2000:]
    summary = json.loads((exported / "flywheel_lineage.json").read_text())
    assert (summary["artifact_id"], summary["round"], summary["which"]) == (r["candidate"], 1, "candidate")
    assert "source" in {e["src_kind"] for e in summary["lineage"]}
    (exported / "flywheel_lineage.json").rename(tmp_path / "lineage.json")
    assert sha256_dir(exported) == r["candidate"]  # byte for byte the stored candidate
    policy = _run(["export", "--config", str(config), str(tmp_path / "policy")], home)
    assert policy.returncode == 0, policy.stderr[-2000:]
    from storage.catalog import Catalog

    current = Catalog(home / "catalog.duckdb").current_policy("cli")
    assert json.loads((tmp_path / "policy" / "flywheel_lineage.json").read_text())["artifact_id"] == current
    kept = _run(["export", "--config", str(config), "--round", "1", "--which", "policy", str(tmp_path / "kept")], home)
    assert kept.returncode == 0, kept.stderr[-2000:]
    assert json.loads((tmp_path / "kept" / "flywheel_lineage.json").read_text())["artifact_id"] == current
    taken = _run(["export", "--config", str(config), str(exported)], home)
    assert taken.returncode == 2 and "is not empty: export into a new directory" in taken.stderr
    missing = _run(["export", "--config", str(config), "--round", "9", str(tmp_path / "nine")], home)
    assert missing.returncode == 2 and "no round 9 (rounds: [1])" in missing.stderr
    assert not (tmp_path / "nine").exists() and "Traceback" not in missing.stderr


def test_bad_config_is_one_clear_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"base_model": "/x", "curation": {"sources": []}, "training": {"sft": {"lr": 1}}}))
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "curation.sources: List should have at least 1 item" in err
    assert "training.sft.lr: Extra inputs are not permitted" in err
    assert "evaluation: Field required" in err
    assert "Traceback" not in err


def test_missing_source_file_exit_code_and_message(make_config, tmp_path):
    home = tmp_path / "home"
    cfg = make_config(home=home, curation__sources=[{"name": "pool", "path": str(tmp_path / "nope.jsonl")}])
    run = _run(["run", "--config", str(_write(cfg, tmp_path / "c.yaml"))], home, timeout=300)
    assert run.returncode == 2
    assert f"flywheel: curation.sources[0] (pool): file not found: {tmp_path / 'nope.jsonl'}" in run.stderr
    assert "Traceback" not in run.stderr


def test_rounds_without_catalog(tmp_path):
    run = _run(["rounds"], tmp_path / "empty")
    assert run.returncode != 0 and f"no catalog in {tmp_path / 'empty'}: run `flywheel demo`" in run.stderr
    assert "Traceback" not in run.stderr


def test_every_shipped_config_validates(capsys):
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        assert main(["validate", str(path)]) == 0, path
    assert "ok (pipeline 'demo'" in capsys.readouterr().out
