"""The stage mechanism (tasks/stage.py) and code identity (storage/code_identity.py): identity from the import
closure, reuse, the catalog record, lineage and links, and which modules may write the catalog."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from configs import parse_config
from storage.code_identity import PACKAGES, REPO_ROOT, code_identity, import_closure
from tasks.stage import External, Json, StageOutput, Step, Table, stage

CALLS: list[str] = []  # bodies of the toy stage that really ran


@pytest.fixture
def repo_copy(tmp_path) -> Path:
    root = tmp_path / "repo"
    for package in PACKAGES:
        shutil.copytree(REPO_ROOT / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def _edit(path: Path) -> None:
    path.write_text(path.read_text() + "\n# edited\n")


def test_editing_a_module_the_stage_imports_changes_its_identity(repo_copy):
    before = code_identity("tasks.curate", repo_copy)
    assert before == code_identity("tasks.curate")  # a copy of the same code: the same identity, wherever it lives
    _edit(repo_copy / "storage" / "ids.py")  # normalize_text and prompt_id_of: imported by curate's core
    after_ids = code_identity("tasks.curate", repo_copy)
    _edit(repo_copy / "tasks" / "curation" / "neardup.py")  # imported inside a function only
    after_neardup = code_identity("tasks.curate", repo_copy)
    assert len({before, after_ids, after_neardup}) == 3


def test_editing_a_module_the_stage_does_not_import_leaves_its_identity(repo_copy):
    before = code_identity("tasks.curate", repo_copy)
    _edit(repo_copy / "tasks" / "scoring" / "judge.py")  # scoring: not curate's business
    _edit(repo_copy / "flows" / "round.py")  # the flow imports curate, not the other way round
    _edit(repo_copy / "tasks" / "run_alone.py")  # imported under `if __name__ == "__main__":` only
    assert code_identity("tasks.curate", repo_copy) == before
    # ... while the stage that does import them changes
    judge_before = code_identity("tasks.score")
    assert code_identity("tasks.score", repo_copy) != judge_before


def test_import_closures_hold_what_hand_kept_lists_missed():
    curate = import_closure("tasks.curate")
    assert {"storage.ids", "tasks.curation.source_files", "tasks.curation.sources", "tasks.stage"} <= set(curate)
    assert not any(m.startswith(("flows", "tasks.scoring", "trainers")) for m in curate)
    # The launched training job is code the train step runs: it is in the closure.
    assert {"trainers.run", "trainers.sft", "trainers.dpo", "trainers.launch"} <= set(import_closure("tasks.train"))
    with pytest.raises(ValueError, match="not a module"):
        code_identity("tasks.nonexistent")


# --- a toy stage through the real mechanism: file store, DuckDB catalog, Prefect task ----------------------


@stage("toy-stage", returns="doubled")
def toy_task(cfg, round_num: int, numbers_id: str, notes: Path, factor: int = 2, off: bool = False):
    if off:
        return numbers_id  # nothing to run: the task returns this, nothing is recorded
    return Step(
        "toy",
        config={"factor": factor},
        inputs={"numbers": numbers_id, "notes": External.file(notes, "notes")},
        run=lambda ctx: _double(ctx, factor),
        metric_name=lambda n: f"toy/{n}",
    )


def _double(ctx, factor: int) -> StageOutput:
    CALLS.append(ctx.id("numbers"))
    rows = ctx.rows("numbers")
    if any(r["x"] < 0 for r in rows):
        raise ValueError("negative input")
    out = [{"row_id": f"d{r['row_id']}", "x": r["x"] * factor} for r in rows]
    return StageOutput(
        {
            "doubled": Table(
                pa.Table.from_pylist(out), "doubled", rows=[(o["row_id"], r["row_id"]) for o, r in zip(out, rows)]
            ),
            "note": Json({"notes": ctx.path("notes").read_text()}, "note"),
        },
        metrics={"sum": sum(o["x"] for o in out)},
        rows_in=len(rows),
        rows_out=len(out),
    )


@pytest.fixture
def toy(tmp_path):
    from tasks.stage import runtime

    cfg = parse_config(
        {
            "pipeline": "toy",
            "base_model": str(tmp_path / "none"),
            "home": str(tmp_path / "home"),
            "storage": {"uri": f"file://{tmp_path / 'store'}"},
            "curation": {"sources": [{"name": "pool", "path": str(tmp_path / "pool.jsonl")}]},
            "evaluation": {"eval_sets": [{"name": "heldout", "path": str(tmp_path / "heldout.jsonl")}]},
        }
    )
    rt = runtime(cfg)
    numbers = rt.artifacts.put_table(pa.Table.from_pylist([{"row_id": str(i), "x": i} for i in range(4)]), "numbers")
    notes = tmp_path / "notes.txt"
    notes.write_text("first notes")
    CALLS.clear()
    return cfg, rt, numbers.id, notes


def test_a_step_runs_once_per_identity_and_is_recorded_with_its_lineage(toy):
    cfg, rt, numbers, notes = toy
    doubled = toy_task.fn(cfg, 1, numbers, notes)
    assert rt.artifacts.get_table(doubled).column("x").to_pylist() == [0, 2, 4, 6] and CALLS == [numbers]
    step = rt.catalog.steps_of("toy", 1)["toy"]
    notes_id = External.file(notes, "notes").id
    assert step["status"] == "completed" and (step["rows_in"], step["rows_out"], step["reused"]) == (4, 4, False)
    assert json.loads(step["inputs"]) == {"numbers": numbers, "notes": notes_id}
    assert set(json.loads(step["outputs"])) == {"doubled", "note", "summary"}
    # The external input is registered, with its kind and where it lives, and lineage reaches it.
    assert rt.catalog.artifact(notes_id)["kind"] == "notes" and rt.catalog.artifact(notes_id)["uri"] == notes.as_uri()
    assert {e["src"] for e in rt.catalog.lineage(doubled)} == {numbers, notes_id}
    assert [(r["row_id"], r["parent_id"]) for r in rt.catalog.row_lineage("d3")] == [("d3", "3")]
    assert rt.artifacts.read_link("runs/toy/round-0001/toy/doubled.json").id == doubled
    summary = rt.artifacts.get_json(json.loads(step["outputs"])["summary"])
    assert summary == {"metrics": {"sum": 12}, "rows_in": 4, "rows_out": 4}

    # Same code, config, inputs and external content: reused, the body does not run again.
    assert toy_task.fn(cfg, 2, numbers, notes) == doubled and CALLS == [numbers]
    assert rt.catalog.steps_of("toy", 2)["toy"]["reused"] is True
    # A renamed external with the same content is the same input; edited content is a new one.
    moved = notes.rename(notes.with_name("renamed.txt"))
    assert toy_task.fn(cfg, 3, numbers, moved) == doubled and len(CALLS) == 1
    moved.write_text("second notes")
    assert toy_task.fn(cfg, 4, numbers, moved) == doubled and len(CALLS) == 2
    assert toy_task.fn(cfg, 5, numbers, moved, factor=3) != doubled and len(CALLS) == 3  # config is identity
    assert toy_task.fn(cfg, 6, numbers, moved, off=True) == numbers and "toy" not in rt.catalog.steps_of("toy", 6)


def test_metrics_are_recorded_under_the_steps_names(toy, prefect_harness):
    cfg, rt, numbers, notes = toy
    rt.catalog.start_round("toy", 1, "h", numbers, None)
    toy_task(cfg, 1, numbers, notes)  # as a Prefect task: its task run id is recorded
    assert rt.catalog.round("toy", 1)["metrics"] == {"toy/sum": 12.0}
    assert rt.catalog.steps_of("toy", 1)["toy"]["task_run_id"]


def test_a_failing_body_records_a_failed_step_and_stores_nothing_under_its_name(toy):
    cfg, rt, _, notes = toy
    bad = rt.artifacts.put_table(pa.Table.from_pylist([{"row_id": "0", "x": -1}]), "numbers").id
    with pytest.raises(ValueError, match="negative input"):
        toy_task.fn(cfg, 1, bad, notes)
    step = rt.catalog.steps_of("toy", 1)["toy"]
    assert step["status"] == "failed" and step["error"] == "ValueError: negative input"
    assert not rt.store.list("runs/toy/round-0001/")  # no links to half a step
    assert not list((rt.home).glob("toy-*"))  # the scratch directory is gone


# --- who may write the catalog ----------------------------------------------------------------------------

WRITES = re.compile(
    r"\.(record_step|record_step_failure|record_metrics|register_artifact|start_round|finish_round|"
    r"fail_round|crash_round|reject_round|discard_round|forget_steps|ensure_pipeline|record_promotion|"
    r"add_promotion)\("
)
# The round flow; rounds left running by a dead owner (crashes); the resume audit; `flywheel promote`
# (tasks/promote.py) and `flywheel catalog-rebuild` (storage/rebuild.py).
WRITERS = {
    "tasks/stage.py",
    "flows/round.py",
    "flows/crashes.py",
    "storage/audit.py",
    "tasks/promote.py",
    "storage/rebuild.py",
}


def test_only_the_stage_mechanism_the_round_flow_and_the_explicit_commands_write_the_catalog():
    found = {
        p.relative_to(REPO_ROOT).as_posix()
        for package in PACKAGES
        for p in (REPO_ROOT / package).rglob("*.py")
        if WRITES.search(p.read_text()) and not p.name.startswith("catalog")  # the catalog itself
    }
    assert found == WRITERS
    cli = (REPO_ROOT / "flows" / "cli.py").read_text()
    assert not WRITES.findall(cli)  # its commands write through the modules above


def test_every_stage_runs_alone_and_says_how_at_the_top():
    stages = [
        "curate",
        "generate",
        "score",
        "select",
        "train_reward",
        "train",
        "train_rl",
        "average",
        "evaluate",
        "compare",
        "promote",
    ]
    for name in stages:
        source = (REPO_ROOT / "tasks" / f"{name}.py").read_text()
        doc = source.split('"""')[1]
        assert f"python -m tasks.{name} --config" in doc, name
        assert 'if __name__ == "__main__":' in source and "run_alone(" in source, name
    help_text = subprocess.run(
        [sys.executable, "-m", "tasks.select", "--help"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert help_text.returncode == 0 and "--round" in help_text.stdout and "--force" in help_text.stdout


def _alone(module: str, config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, "--config", str(config), "--round", "1", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_stages_run_alone_from_the_round_they_belong_to(small_model, demo_data, tmp_path):
    import yaml

    config = tmp_path / "alone.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "pipeline": "alone",
                "base_model": str(small_model),
                "home": str(tmp_path / "home"),
                "storage": {"uri": f"file://{tmp_path / 'store'}"},
                "curation": {"sources": [{"name": "pool", "path": str(demo_data["pool"])}], "prompts_per_round": 24},
                "generation": {"engine": {"backend": "hf"}, "sampling": {"n": 2, "max_tokens": 8}},
                "evaluation": {"eval_sets": [{"name": "heldout", "path": str(demo_data["heldout"])}]},
            }
        )
    )
    early = _alone("tasks.select", config)
    assert early.returncode != 0 and "Traceback" not in early.stderr
    assert "round 1 of pipeline 'alone' has no completed `generate` step" in early.stderr

    first = json.loads(_alone("tasks.curate", config).stdout)
    assert (first["step"], first["reused"], first["outputs"]["prompts"]["rows"]) == ("curate", False, 24)
    again = json.loads(_alone("tasks.curate", config).stdout)
    assert again["reused"] and again["outputs"]["prompts"]["id"] == first["outputs"]["prompts"]["id"]
    forced = json.loads(_alone("tasks.curate", config, "--force").stdout)
    assert not forced["reused"] and forced["identity"] == first["identity"]  # recomputed, same step
    # The same step as in a round: a round's curate reuses what the stage run alone stored.
    from configs import load_config
    from tasks.curate import curate_task
    from tasks.stage import runtime

    cfg = load_config(config)
    assert curate_task.fn(cfg, 1) == first["outputs"]["prompts"]["id"]
    assert runtime(cfg).catalog.steps_of("alone", 1)["curate"]["reused"] is True

    # generate takes round 1's prompts from the catalog, and the base model as round 1's policy
    gen = json.loads(_alone("tasks.generate", config).stdout)
    assert gen["outputs"]["completions"]["rows"] == 48 and gen["metrics"]["generate/completions"] == 48


def test_subclasses_of_input_errors_are_input_errors():
    from storage.catalog_lock import CatalogLocked
    from storage.store import StoreError, StoreUnavailable
    from tasks.stage import is_input_error

    assert is_input_error(StoreUnavailable("down")) and is_input_error(StoreError("x"))
    assert is_input_error(CatalogLocked("held")) and not is_input_error(RuntimeError("bug"))
    assert is_input_error(type("EngineError", (Exception,), {})("e"), frozenset({"EngineError"}))
