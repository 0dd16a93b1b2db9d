"""OpenLineage run events (tasks/lineage_events.py): one real round seen by a real HTTP receiver, every event
valid against the OpenLineage JSON schema, FAIL with its error, a receiver that is down, the file transport."""

from __future__ import annotations

import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jsonschema
import pyarrow as pa
import pytest

from configs import parse_config
from tasks.lineage_events import dataset_name, run_id
from tasks.stage import Json, StageOutput, Step, Table, run_step, runtime

SCHEMA = json.loads((Path(__file__).parent / "data" / "OpenLineage-2-0-2.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


class Receiver:
    """A lineage endpoint on 127.0.0.1: records each POST's path, Authorization header and JSON body."""

    def __init__(self):
        self.posts: list[tuple[str, str | None, dict]] = []
        received = self.posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append((self.path, self.headers.get("Authorization"), json.loads(body)))
                self.send_response(201)
                self.end_headers()

            def log_message(self, *args):  # the test output is not the server's access log
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def events(self) -> list[dict]:
        return [body for _, _, body in self.posts]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="session")
def small_model(tiny_model):
    """make_config's base model, here the tiny one: these events need a round, not one that learns."""
    return tiny_model


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def _valid(events: list[dict]) -> None:
    for event in events:
        errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in VALIDATOR.iter_errors(event)]
        assert not errors, (event["eventType"], event["job"]["name"], errors)


def test_a_round_reports_every_step_to_the_receiver(make_config, prefect_harness, receiver, monkeypatch):
    from flows.round import round_flow

    monkeypatch.setenv("OPENLINEAGE_API_KEY", "key-from-the-environment")
    openlineage = {"enabled": True, "url": receiver.url}
    cfg = make_config(pipeline="ol", curation__prompts_per_round=16, tracking__openlineage=openlineage)
    round_flow(cfg)
    rt = runtime(cfg)
    steps = rt.catalog.steps_of("ol", 1)
    events = receiver.events
    assert {path for path, _, _ in receiver.posts} == {"/api/v1/lineage"}
    assert {auth for _, auth, _ in receiver.posts} == {"Bearer key-from-the-environment"}
    assert "key-from-the-environment" not in json.dumps(events)
    _valid(events)

    by_job: dict[str, list[dict]] = {}
    for e in events:
        by_job.setdefault(e["job"]["name"], []).append(e)
    assert set(by_job) == {f"ol.{step}" for step in steps}
    artifacts = rt.catalog.artifacts_by_id(
        [a for s in steps.values() for col in ("inputs", "outputs") for a in json.loads(s[col]).values()]
    )
    for step, record in steps.items():
        start, complete = by_job[f"ol.{step}"]
        assert (start["eventType"], complete["eventType"]) == ("START", "COMPLETE"), step
        assert start["job"]["namespace"] == "flywheel"
        assert start["run"]["runId"] == complete["run"]["runId"] == run_id("ol", 1, step, record["identity"])
        assert complete["run"]["facets"]["parent"]["run"]["runId"] == record["flow_run_id"]
        facet = complete["run"]["facets"]["flywheel_step"]
        assert (facet["identity"], facet["reused"]) == (record["identity"], record["reused"])
        for col in ("inputs", "outputs"):
            ids = json.loads(record[col])
            assert facet[col] == ids, (step, col)
            expected = {(*dataset_name(artifacts[a]["uri"]), a) for a in ids.values()}
            got = {(d["namespace"], d["name"], d["facets"]["flywheel_artifact"]["artifactId"]) for d in complete[col]}
            assert got == expected, (step, col)
        for d in complete["outputs"]:
            rows = artifacts[d["facets"]["flywheel_artifact"]["artifactId"]]["rows"]
            assert d.get("outputFacets", {}).get("outputStatistics", {}).get("rowCount") == rows, (step, d["name"])
    # The store is S3: datasets live in the bucket, named by their keys.
    prompts = json.loads(steps["curate"]["outputs"])["prompts"]
    curated = next(d for d in by_job["ol.curate"][1]["outputs"] if d["name"].endswith(prompts))
    assert curated["namespace"] == "s3://flywheel-tests" and curated["outputFacets"]["outputStatistics"]["rowCount"]


# --- single steps on a file:// store ----------------------------------------------------------------------


def _toy(tmp_path: Path, pipeline: str, **openlineage):
    cfg = parse_config(
        {
            "pipeline": pipeline,
            "base_model": str(tmp_path / "none"),
            "home": str(tmp_path / "home"),
            "storage": {"uri": (tmp_path / "store").as_uri()},
            "curation": {"sources": [{"name": "pool", "path": str(tmp_path / "pool.jsonl")}]},
            "evaluation": {"eval_sets": [{"name": "heldout", "path": str(tmp_path / "heldout.jsonl")}]},
            "tracking": {"openlineage": {"enabled": True, **openlineage}},
        }
    )
    rt = runtime(cfg)
    numbers = rt.artifacts.put_table(pa.Table.from_pylist([{"row_id": str(i), "x": i} for i in range(4)]), "numbers")
    return cfg, rt, numbers


def _step(name: str, numbers: str, fail: bool = False) -> Step:
    def body(ctx) -> StageOutput:
        rows = ctx.rows("numbers")
        if fail:
            raise ValueError(f"{len(rows)} rows, and none of them negative")
        doubled = pa.Table.from_pylist([{"x": r["x"] * 2} for r in rows])
        return StageOutput({"doubled": Table(doubled, "doubled"), "note": Json({"n": len(rows)}, "note")})

    return Step(name, config={"factor": 2}, inputs={"numbers": numbers}, run=body)


def test_a_failing_step_sends_fail_with_its_error(tmp_path, receiver):
    cfg, rt, numbers = _toy(tmp_path, "ol-fail", url=receiver.url)
    with pytest.raises(ValueError, match="none of them negative"):
        run_step(cfg, 1, _step("boom", numbers.id, fail=True), "code")
    start, fail = receiver.events
    _valid(receiver.events)
    assert (start["eventType"], fail["eventType"]) == ("START", "FAIL")
    assert start["run"]["runId"] == fail["run"]["runId"] and "parent" not in fail["run"]["facets"]  # no flow run
    error = fail["run"]["facets"]["errorMessage"]
    assert error["message"] == "ValueError: 4 rows, and none of them negative"
    assert error["programmingLanguage"] == "python" and "raise ValueError" in error["stackTrace"]
    # The step's input is named by its store URI: a file:// store is the `file` namespace and the path.
    (ds,) = fail["inputs"]
    assert (ds["namespace"], ds["name"]) == (
        "file",
        str(tmp_path / "store" / "artifacts" / numbers.id[:2] / numbers.id),
    )
    assert ds["inputFacets"]["inputStatistics"]["rowCount"] == 4
    assert rt.catalog.steps_of("ol-fail", 1)["boom"]["status"] == "failed"


def test_a_receiver_that_is_down_costs_one_warning_per_round(tmp_path, caplog):
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg, rt, numbers = _toy(tmp_path, "ol-down", url=f"http://127.0.0.1:{port}", timeout_s=2)
    with caplog.at_level(logging.WARNING):
        for name in ("first", "second"):
            assert run_step(cfg, 1, _step(name, numbers.id), "code").outputs["doubled"]
        run_step(cfg, 2, _step("first", numbers.id), "code")
    warnings = [r for r in caplog.records if "OpenLineage" in r.getMessage()]
    assert len(warnings) == 2 and all(r.levelno == logging.WARNING and not r.exc_info for r in warnings)
    assert "could not send the START event of first" in warnings[0].getMessage()
    assert {s["status"] for s in rt.catalog.steps_of("ol-down", 1).values()} == {"completed"}


def test_the_file_transport_writes_one_line_per_event_and_marks_a_reused_step(tmp_path):
    path = tmp_path / "events" / "ol.jsonl"
    cfg, rt, numbers = _toy(tmp_path, "ol-file", transport="file", file_path=str(path))
    first = run_step(cfg, 1, _step("double", numbers.id), "code")
    again = run_step(cfg, 2, _step("double", numbers.id), "code")
    assert again.reused and again.outputs == first.outputs
    events = [json.loads(line) for line in path.read_text().splitlines()]
    _valid(events)
    assert [e["eventType"] for e in events] == ["START", "COMPLETE", "START", "COMPLETE"]
    assert events[0]["run"]["runId"] == events[1]["run"]["runId"] != events[2]["run"]["runId"]  # another round
    assert [e["run"]["facets"]["flywheel_step"]["reused"] for e in events[1::2]] == [False, True]
    # A reused step reports the outputs it reused, with their row counts.
    outputs = {d["facets"]["flywheel_artifact"]["role"]: d for d in events[3]["outputs"]}
    assert set(outputs) == {"doubled", "note", "summary"}
    assert outputs["doubled"]["outputFacets"]["outputStatistics"]["rowCount"] == 4
    assert outputs["doubled"]["facets"]["flywheel_artifact"]["artifactId"] == first.outputs["doubled"]


def test_off_by_default_and_the_key_never_in_the_config(tmp_path):
    cfg, _, _ = _toy(tmp_path, "ol-off")
    default = parse_config({**cfg.model_dump(mode="json"), "tracking": {}})
    assert default.tracking.openlineage.enabled is False
    with pytest.raises(Exception, match="api_key"):
        parse_config({**cfg.model_dump(mode="json"), "tracking": {"openlineage": {"api_key": "secret"}}})
