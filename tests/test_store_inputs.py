"""Sources and eval sets read from s3:// and snapshotted into the store, against the real local S3 server.

An s3:// source curates the very prompts its local twin does (same ids: identity is content), a local
input's bytes are kept in the store under its hash and the catalog names that copy, `snapshot: false`
keeps the file:// URI, and an unreadable s3:// input is one line naming the config field and the URI.
"""

from __future__ import annotations

import json

import pytest

from flows.preflight import preflight
from storage.inputs import INPUTS, InputError
from storage.store import open_store
from tasks.curate import curate_task
from tasks.curation.store_inputs import eval_set_rows, source_input
from tasks.stage import runtime
from tests.conftest import BUCKET, ENGINE, with_overrides


@pytest.fixture(autouse=True)
def _harness(prefect_harness):
    yield


@pytest.fixture
def make_config(tiny_model, demo_data, s3_server, tmp_path):
    """A config of the demo's sources and eval set on the test bucket; the tiny model is enough to curate
    (curation reads only its tokenizer and context length). Keyword overrides as in conftest's make_config."""
    from configs import parse_config

    def make(pipeline: str, home=None, **overrides):
        data = {
            "pipeline": pipeline,
            "base_model": str(tiny_model),
            "home": str(home or tmp_path / "home"),
            "storage": {"uri": f"s3://{BUCKET}/{tmp_path.name}", "endpoint_url": s3_server.endpoint_url},
            "curation": {
                "sources": _sources({k: str(demo_data[k]) for k in ("pool", "extra")}),
                "prompts_per_round": 48,
            },
            "generation": {"engine": ENGINE, "sampling": {"n": 4, "max_tokens": 8}},
            "evaluation": {"eval_sets": [{"name": "heldout", "path": str(demo_data["heldout"])}], "max_tokens": 8},
        }
        return parse_config(with_overrides(data, overrides))

    return make


@pytest.fixture
def remote(s3_server, demo_data, tmp_path):
    """The demo's files uploaded to the test bucket under a prefix of this test: name -> s3:// URI."""
    bucket = open_store(f"s3://{BUCKET}", endpoint_url=s3_server.endpoint_url)
    uris = {}
    for name in ("pool", "extra", "heldout"):
        key = f"inputs-{tmp_path.name}/{demo_data[name].name}"
        bucket.put_file(key, demo_data[name])
        uris[name] = bucket.url(key)
    return uris


def _sources(paths: dict[str, str], **extra) -> list[dict]:
    """make_config's two demo sources, read from `paths`."""
    return [
        {"name": "pool", "path": paths["pool"], "keep_fields": ["template"], "weight": 9.0, "tags": ["math"], **extra},
        {
            "name": "extra",
            "path": paths["extra"],
            "prompt_field": "question",
            "answer_field": "solution",
            "keep_fields": ["origin"],
            "license": "cc-by-4.0",
            **extra,
        },
    ]


def _curate(cfg) -> tuple[str, dict[str, str], dict[str, dict]]:
    """Run curate for round 1: (prompt table id, its step inputs, the catalog's row of every input)."""
    prompts = curate_task.fn(cfg, 1)
    inputs = json.loads(runtime(cfg).catalog.steps_of(cfg.pipeline, 1)["curate"]["inputs"])
    return prompts, inputs, runtime(cfg).catalog.artifacts_by_id(list(inputs.values()))


def test_an_s3_source_curates_the_same_prompts_as_the_local_file(make_config, demo_data, remote, tmp_path):
    local = make_config(pipeline="local", home=tmp_path / "a")
    s3 = make_config(
        pipeline="s3",
        home=tmp_path / "b",
        curation__sources=_sources(remote),
        evaluation__eval_sets=[{"name": "heldout", "path": remote["heldout"]}],
    )
    preflight(s3, need_base_model=False)  # opens and reads the s3:// objects as a round's first check does
    prompts_local, inputs_local, _ = _curate(local)
    prompts_s3, inputs_s3, registered = _curate(s3)
    # Content ids: the same bytes from S3 are the same inputs, and curate the byte-identical prompt table.
    assert prompts_s3 == prompts_local
    assert {k: v for k, v in inputs_s3.items() if k != "tokenizer"} == {
        k: v for k, v in inputs_local.items() if k != "tokenizer"
    }
    assert runtime(s3).artifacts.get_table(prompts_s3).num_rows == 48
    assert eval_set_rows(s3)["heldout"][1] == eval_set_rows(local)["heldout"][1]
    # Snapshotted by default: the catalog names the copy in the round's own store, not the other bucket.
    pool = registered[inputs_s3["source:pool"]]
    assert pool["uri"] == runtime(s3).store.url(f"{INPUTS}/{inputs_s3['source:pool']}/pool.jsonl")
    # That snapshot is itself a valid input path: a rerun elsewhere reads exactly those bytes.
    again = make_config(
        pipeline="again", home=tmp_path / "c", curation__sources=_sources({**remote, "pool": pool["uri"]})
    )
    assert source_input(again, 0).id == inputs_s3["source:pool"]


def test_a_local_source_is_snapshotted_into_the_store_by_hash(make_config, demo_data):
    cfg = make_config(pipeline="snap")
    _, inputs, registered = _curate(cfg)
    store = runtime(cfg).store
    for name, path in (("source:pool", demo_data["pool"]), ("eval:heldout", demo_data["heldout"])):
        digest = inputs[name]
        key = f"{INPUTS}/{digest}/{path.name}"
        assert store.get_bytes(key) == path.read_bytes()
        assert registered[digest]["uri"] == store.url(key)
        assert registered[digest]["uri"].startswith(f"s3://{BUCKET}/")


def test_snapshot_false_keeps_the_file_uri_and_stores_nothing(make_config, demo_data):
    cfg = make_config(
        pipeline="no-snap",
        curation__sources=_sources({k: str(demo_data[k]) for k in ("pool", "extra")}, snapshot=False),
        evaluation__eval_sets=[{"name": "heldout", "path": str(demo_data["heldout"]), "snapshot": False}],
    )
    _, inputs, registered = _curate(cfg)
    for name, path in (("source:pool", demo_data["pool"]), ("eval:heldout", demo_data["heldout"])):
        assert registered[inputs[name]]["uri"] == path.resolve().as_uri()
    assert runtime(cfg).store.list(f"{INPUTS}/") == []


def test_unreadable_s3_inputs_are_one_line_naming_the_field_and_the_uri(make_config, remote, s3_server, monkeypatch):
    missing = remote["pool"].replace("pool.jsonl", "nope.jsonl")
    cfg = make_config(pipeline="missing", curation__sources=_sources({**remote, "pool": missing}))
    endpoint = s3_server.endpoint_url
    with pytest.raises(InputError) as e:
        source_input(cfg, 0)
    assert str(e.value) == (
        f"curation.sources[0].path (pool): cannot read {missing}: no such object at {endpoint} "
        "(upload it, or fix the URI)"
    )
    with pytest.raises(InputError, match=r"^curation\.sources\[0\]\.path \(pool\): cannot read s3://"):
        preflight(cfg, need_base_model=False)  # the round's first check fails the same way

    folder = remote["pool"].rsplit("/", 1)[0]
    cfg = make_config(pipeline="folder", curation__sources=_sources({**remote, "pool": folder}))
    with pytest.raises(InputError, match=r"it is a folder, not an object \(name one .jsonl, .parquet or .csv"):
        source_input(cfg, 0)

    sets = [{"name": "heldout", "path": "s3://no-such-bucket-here/heldout.jsonl"}]
    cfg = make_config(pipeline="bucket", evaluation__eval_sets=sets)
    with pytest.raises(InputError) as e:
        curate_task.fn(cfg, 1)
    assert str(e.value).startswith(
        "evaluation.eval_sets[0].path (heldout): cannot read s3://no-such-bucket-here/heldout.jsonl: "
        f"bucket 'no-such-bucket-here' does not exist at {endpoint}"
    )

    cfg = make_config(pipeline="no-creds", curation__sources=_sources(remote))
    runtime(cfg)  # the store itself opened with credentials; then they are gone
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(InputError) as e:
        source_input(cfg, 1)
    assert str(e.value) == (
        f"curation.sources[1].path (extra): cannot read {remote['extra']}: "
        "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    )
