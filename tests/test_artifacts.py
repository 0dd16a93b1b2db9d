"""Content-addressed artifacts over both store backends (a directory and a real local S3 server).

Run:  .venv/bin/python -m pytest tests/test_artifacts.py -q
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pyarrow as pa
import pytest

from storage.artifacts import MANIFEST, ArtifactStore, artifact_folder, dir_id
from storage.ids import sha256_bytes, sha256_dir, sha256_file, stable_json
from storage.scratch import process_scratch
from storage.store import FileStore, StoreError, open_store


@pytest.fixture(params=["file", "s3"])
def store(request, tmp_path):
    if request.param == "file":
        return FileStore(tmp_path / "store")
    srv = request.getfixturevalue("server")
    s = open_store(f"s3://arts/{uuid.uuid4().hex[:8]}", endpoint_url=srv.endpoint_url, create_bucket=True)
    s.check()
    return s


@pytest.fixture
def arts(store, tmp_path):
    return ArtifactStore(store, tmp_path / "cache")


def fresh(arts: ArtifactStore, tmp_path: Path) -> ArtifactStore:
    """Same store, empty cache: reads must go to the store (another machine, in effect)."""
    return ArtifactStore(arts.store, tmp_path / f"cache-{uuid.uuid4().hex[:6]}")


def sample_table(n: int = 50) -> pa.Table:
    return pa.table(
        {
            "prompt_id": [f"p{i:03d}" for i in range(n)],
            "score": [i / 7 if i % 5 else None for i in range(n)],
            "messages": [
                [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}] for i in range(n)
            ],
        }
    )


def make_model_dir(root: Path, seed: bytes = b"w") -> Path:
    (root / "tokenizer").mkdir(parents=True)
    (root / "config.json").write_text('{"hidden_size": 128}')
    (root / "model.safetensors").write_bytes(seed * 1000)
    (root / "tokenizer" / "tokenizer.json").write_text('{"vocab": {}}')
    return root


def test_table_round_trip(arts, tmp_path):
    table = sample_table()
    ref = arts.put_table(table, kind="completions")
    assert (ref.kind, ref.format, ref.rows) == ("completions", "parquet", 50)
    assert ref.uri == arts.store.url(artifact_folder(ref.id))
    assert ref.bytes == len(arts.store.get_bytes(f"{artifact_folder(ref.id)}/data.parquet"))
    assert sha256_bytes(arts.store.get_bytes(f"{artifact_folder(ref.id)}/data.parquet")) == ref.id
    back = fresh(arts, tmp_path).get_table(ref.id)  # downloaded, verified
    assert back.schema.equals(table.schema) and back.equals(table)
    assert arts.get_table(ref.id).equals(table)  # from the local cache
    manifest = json.loads(arts.store.get_bytes(f"{artifact_folder(ref.id)}/{MANIFEST}"))
    assert manifest["files"] == [{"path": "data.parquet", "bytes": ref.bytes, "sha256": ref.id}]
    assert [f["name"] for f in manifest["schema"]] == ["prompt_id", "score", "messages"]


def test_same_content_same_id_stored_once(arts):
    table = sample_table()
    first = arts.put_table(table, kind="prompts")
    manifest = arts.store.get_bytes(f"{artifact_folder(first.id)}/{MANIFEST}")
    rechunked = pa.concat_tables([table.slice(0, 17), table.slice(17)])  # same rows, other chunking
    assert arts.put_table(rechunked, kind="prompts") == first
    assert arts.store.list("artifacts/") == [f"{artifact_folder(first.id)}/{n}" for n in (MANIFEST, "data.parquet")]
    assert arts.store.get_bytes(f"{artifact_folder(first.id)}/{MANIFEST}") == manifest  # not rewritten


def test_different_content_different_id(arts):
    a = arts.put_table(sample_table(50), kind="prompts")
    b = arts.put_table(sample_table(51), kind="prompts")
    c = arts.put_table(sample_table(50).rename_columns(["id", "score", "messages"]), kind="prompts")
    assert len({a.id, b.id, c.id}) == 3


def test_json_round_trip(arts, tmp_path):
    ref = arts.put_json({"b": [1, 2], "a": "x"}, kind="report")
    assert ref.id == sha256_bytes(stable_json({"a": "x", "b": [1, 2]}).encode())
    assert arts.put_json({"a": "x", "b": [1, 2]}, kind="report") == ref  # key order does not matter
    assert (ref.format, ref.rows) == ("json", None)
    assert fresh(arts, tmp_path).get_json(ref.id) == {"a": "x", "b": [1, 2]}
    assert arts.put_json([1, 2, 3], kind="report").rows == 3
    with pytest.raises(ValueError, match="is 'json', not 'parquet'"):
        arts.get_table(ref.id)


def test_model_round_trip_with_hash_verification(arts, tmp_path):
    src = make_model_dir(tmp_path / "trained")
    ref = arts.put_model(src)
    assert ref.id == sha256_dir(src) and (ref.kind, ref.format, ref.rows) == ("model", "model", None)
    assert ref.bytes == sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
    cached = arts.get_model(ref.id)  # put_model left a cache copy: no download
    assert cached == arts.cache_dir / "models" / ref.id and sha256_dir(cached) == ref.id

    other = fresh(arts, tmp_path)
    downloaded = other.get_model(ref.id)
    assert sha256_dir(downloaded) == ref.id
    assert (downloaded / "tokenizer" / "tokenizer.json").read_text() == '{"vocab": {}}'
    assert sorted(p.name for p in (other.cache_dir / "models").iterdir()) == [ref.id]

    # A corrupted stored file is caught, and nothing half-verified lands in the cache.
    arts.store.put_bytes(f"{artifact_folder(ref.id)}/files/config.json", b'{"hidden_size": 999}')
    third = fresh(arts, tmp_path)
    with pytest.raises(StoreError, match="config.json hashes to .* corrupt"):
        third.get_model(ref.id)
    assert not (third.cache_dir / "models" / ref.id).exists()
    assert list(process_scratch(third.cache_dir / "tmp").iterdir()) == []


def test_dir_id_matches_ids_sha256_dir(tmp_path):
    d = make_model_dir(tmp_path / "m", seed=b"z")
    files = [(p.relative_to(d).as_posix(), sha256_file(p)) for p in d.rglob("*") if p.is_file()]
    assert dir_id(files) == sha256_dir(d)


def test_incomplete_artifact_is_invisible(arts, tmp_path):
    table = sample_table(10)
    probe = ArtifactStore(FileStore(tmp_path / "probe"), tmp_path / "probe-cache").put_table(table, "x")
    folder = artifact_folder(probe.id)  # same bytes, so same id, in the store under test
    arts.store.put_bytes(f"{folder}/data.parquet", (tmp_path / "probe" / folder / "data.parquet").read_bytes())
    assert not arts.exists(probe.id)
    with pytest.raises(KeyError):
        arts.ref(probe.id)
    with pytest.raises(KeyError):
        arts.get_table(probe.id)
    assert arts.put_table(table, "x").id == probe.id  # a later put completes it
    assert arts.exists(probe.id)


class FailingStore:
    """Wraps a store; the Nth put_file fails, as an upload cut off by a network error would."""

    def __init__(self, inner, fail_at: int):
        self.inner, self.fail_at, self.calls = inner, fail_at, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def put_file(self, key, path):
        self.calls += 1
        if self.calls == self.fail_at:
            raise StoreError("simulated upload failure")
        self.inner.put_file(key, path)


def test_failed_upload_leaves_no_manifest(arts, tmp_path):
    src = make_model_dir(tmp_path / "trained")
    broken = ArtifactStore(FailingStore(arts.store, fail_at=2), tmp_path / "cache-broken")
    with pytest.raises(StoreError, match="simulated"):
        broken.put_model(src)
    model_id = sha256_dir(src)
    assert not arts.exists(model_id)
    assert not any(k.endswith(MANIFEST) for k in arts.store.list("artifacts/"))
    assert not (tmp_path / "cache-broken" / "models" / model_id).exists()  # the cache holds only finished ones
    assert arts.put_model(src).id == model_id and arts.exists(model_id)


def test_link_writes_pointer(arts):
    ref = arts.put_json({"accuracy": 0.5}, kind="report")
    key = "runs/demo/round-0003/evaluate/report.json"
    arts.link(key, ref, extra={"step": "evaluate", "round": 3})
    pointer = json.loads(arts.store.get_bytes(key))
    assert pointer["id"] == ref.id and pointer["uri"] == ref.uri and pointer["kind"] == "report"
    assert pointer["manifest"] == arts.store.url(f"{artifact_folder(ref.id)}/{MANIFEST}")
    assert pointer["extra"] == {"step": "evaluate", "round": 3}
    assert arts.read_link(key) == ref


def test_bad_ids(arts):
    for bad in ["", "abc", "A" * 64, "../" + "a" * 61]:
        with pytest.raises(ValueError, match="invalid artifact id"):
            arts.exists(bad)
    with pytest.raises(KeyError):
        arts.ref("0" * 64)
