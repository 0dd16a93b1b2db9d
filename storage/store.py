"""Byte storage behind one interface: `file://` directories and `s3://` buckets (docs/design.md, "Storage layout").

    store = open_store("s3://flywheel/demo", endpoint_url="http://127.0.0.1:8334")
    store.check()  # one clear line if the endpoint, bucket or credentials are wrong; then heavy work

Keys are relative '/'-separated paths in canonical form (no leading or trailing '/', no '//', '.' or '..'
segments): S3 servers that map keys to files (rclone, MinIO) reject anything else, and it keeps a FileStore
key inside its root. S3 credentials come only from the standard AWS chain (environment, ~/.aws, instance
roles), never from parameters, so no secret ever sits in a config file.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

ACCEPTED_URIS = "s3://bucket[/prefix] or file:///absolute/path"
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_TMP_MARK = ".tmp-"  # FileStore temp files start with this; list() never shows them
_BAD_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"}
_NO_CREDENTIALS = "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
# Server-side codes that mean "try again": the server is restarting, overloaded or throttling.
_TRANSIENT_CODES = {"500", "502", "503", "504", "InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout"}
RETRY_WINDOW_S = 120.0
log = logging.getLogger("flywheel.storage")
T = TypeVar("T")


class StoreError(Exception):
    """A storage failure explained in one line: what failed, where, and how to fix it."""


class StoreUnavailable(StoreError):
    """The endpoint did not answer, or answered "try again": an outage, retried before it is raised."""


class Store(Protocol):
    """Flat key -> bytes storage. Every write is atomic for readers: a key holds old or new content."""

    uri: str  # "s3://bucket/prefix" or "file:///abs/path"

    def put_bytes(self, key: str, data: bytes) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...  # KeyError(key) when missing
    def put_file(self, key: str, path: Path) -> None: ...
    def get_file(self, key: str, path: Path) -> None: ...  # KeyError(key) when missing; atomic write
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str) -> list[str]: ...  # sorted keys, relative to the store root
    def url(self, key: str) -> str: ...  # full s3://... or file://... URL
    def check(self) -> None: ...  # cheap reachability check before heavy work; raises StoreError


def check_key(key: str, prefix: bool = False) -> str:
    """Return `key` if it is a canonical relative key, else raise ValueError.
    With prefix=True, "" and a trailing '/' are allowed too (list() prefixes such as "runs/demo/")."""
    parts = key.split("/")
    if prefix:
        parts = parts[:-1] if parts[-1] == "" else parts
    bad = key.startswith("/") or "\\" in key or (not prefix and not key)
    if bad or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid store key {key!r}: use a relative path like 'runs/demo/round-0001/x.json'")
    return key


def write_atomic(path: Path, fill: Callable[[Path], object]) -> None:
    """Create parents, let `fill(tmp)` write a temp sibling of `path`, fsync it, then rename it over `path`.
    A same-directory rename is atomic and a failure removes the temp file, so readers see the old file
    or the complete new one, never a partial one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{_TMP_MARK}{path.name}.{uuid.uuid4().hex[:12]}")
    try:
        fill(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())  # the rename must not reach the disk before the data does
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class FileStore:
    """A directory as a store (the laptop default). Parents are created on write."""

    def __init__(self, root: Path | str):
        self.root = Path(root).expanduser().resolve()
        self.uri = self.root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put_bytes(self, key: str, data: bytes) -> None:
        write_atomic(self._path(key), lambda tmp: tmp.write_bytes(data))

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise KeyError(key) from None

    def put_file(self, key: str, path: Path) -> None:
        write_atomic(self._path(key), lambda tmp: shutil.copyfile(path, tmp))

    def get_file(self, key: str, path: Path) -> None:
        src = self._path(key)
        if not src.is_file():
            raise KeyError(key)
        write_atomic(Path(path), lambda tmp: shutil.copyfile(src, tmp))

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        check_key(prefix, prefix=True)
        # Walk only the deepest directory the prefix names; the rest is a string-prefix match, as on S3.
        base = self.root / prefix.rpartition("/")[0]
        keys = []
        for dirpath, _, files in os.walk(base):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in files:
                key = name if rel == "." else f"{rel}/{name}"
                if not name.startswith(_TMP_MARK) and key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def url(self, key: str) -> str:
        return self._path(key).as_uri()

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create file store root {self.root} ({e.strerror}): fix storage.uri") from e
        if not os.access(self.root, os.W_OK):
            raise StoreError(f"file store root {self.root} is not writable: fix its permissions or storage.uri")


class S3Store:
    """A bucket, optionally under a key prefix, through boto3.

    check() tries once with short timeouts, so a wrong endpoint fails in seconds before any work. Every
    other call rides out an outage (a MinIO restart, a network blip): while the endpoint is unreachable or
    answers 5xx/SlowDown it is retried with backoff for up to `retry_window_s`, logging each wait, and
    only then fails with the one-line StoreError. botocore failures become KeyError(key) for a missing
    object and a one-line StoreError otherwise; messages name the endpoint but never a secret.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        create_bucket: bool = False,
        retry_window_s: float = RETRY_WINDOW_S,
    ):
        import boto3  # imported here so file:// users never pay for boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.region, self.create_bucket, self.retry_window_s = region, create_bucket, retry_window_s
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        config = Config(  # total_max_attempts counts the first try (botocore's max_attempts counts retries)
            connect_timeout=5,
            read_timeout=60,
            retries={"total_max_attempts": 2, "mode": "standard"},
            # Self-hosted servers (rclone, MinIO, SeaweedFS) expect path-style URLs; AWS prefers virtual hosts.
            s3={"addressing_style": "path" if endpoint_url else "auto"},
        )
        session = boto3.session.Session()  # the standard credential chain, nothing passed in
        self.client = session.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)
        # check() gets its own client with a short read timeout: a port that accepts but never answers
        # must fail in seconds, while big transfers keep the long one.
        self._probe = session.client(
            "s3", endpoint_url=endpoint_url, region_name=region, config=config.merge(Config(read_timeout=5))
        )
        self.endpoint = _without_userinfo(self.client.meta.endpoint_url)
        # upload_file goes multipart above 64 MiB; 4 threads suit 2-core machines and still fill a LAN.
        self._transfer = TransferConfig(multipart_threshold=64 << 20, multipart_chunksize=64 << 20, max_concurrency=4)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{check_key(key)}" if self.prefix else check_key(key)

    def put_bytes(self, key: str, data: bytes) -> None:
        self._retry(key, lambda: self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data))

    def get_bytes(self, key: str) -> bytes:
        # The body is read inside the retried call: a connection lost mid-read is retried too.
        return self._retry(key, lambda: self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read())

    def put_file(self, key: str, path: Path) -> None:
        self._retry(key, lambda: self.client.upload_file(str(path), self.bucket, self._key(key), Config=self._transfer))

    def get_file(self, key: str, path: Path) -> None:
        full = self._key(key)
        self._retry(
            key,
            lambda: write_atomic(
                Path(path), lambda tmp: self.client.download_file(self.bucket, full, str(tmp), Config=self._transfer)
            ),
        )

    def exists(self, key: str) -> bool:
        try:
            self._retry(key, lambda: self.client.head_object(Bucket=self.bucket, Key=self._key(key)))
            return True
        except KeyError:
            return False

    def list(self, prefix: str = "") -> list[str]:
        check_key(prefix, prefix=True)
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        strip = len(self.prefix) + 1 if self.prefix else 0

        def keys() -> list[str]:  # the paginator follows continuation tokens past 1000 keys
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full)
            return sorted(obj["Key"][strip:] for page in pages for obj in page.get("Contents", []))

        return self._retry(None, keys)

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def check(self) -> None:
        """One ListObjectsV2: unlike HeadBucket (a bare 403/404 on some servers) its error codes tell a
        missing bucket from rejected credentials. With create_bucket=True a missing bucket is created."""
        from botocore.exceptions import ClientError

        with self._errors(None):
            try:
                self._probe.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)
                return
            except ClientError as e:
                if _code(e) != "NoSuchBucket" or not self.create_bucket:
                    raise
            extra = {}
            if self.region and self.region != "us-east-1":  # AWS rejects an explicit us-east-1 constraint
                extra["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
            self._probe.create_bucket(Bucket=self.bucket, **extra)

    def _retry(self, key: str | None, call: Callable[[], T]) -> T:
        """`call()` with its failures translated; an outage is retried until retry_window_s has passed.

        Every store operation is idempotent (a put rewrites the same key, a get re-reads it), so repeating
        one after a lost connection is safe."""
        deadline, delay = time.monotonic() + self.retry_window_s, 0.5
        while True:
            try:
                with self._errors(key):
                    return call()
            except StoreUnavailable as e:
                left = deadline - time.monotonic()
                if left <= 0:
                    if self.retry_window_s <= 0:
                        raise
                    raise StoreUnavailable(
                        f"{e} (still failing after {self.retry_window_s:.0f} s of retries)"
                    ) from None
                wait = min(delay, left)
                log.warning("%s; retrying in %.1f s (%.0f s left of storage.retry_window_s)", e, wait, left)
                time.sleep(wait)
                delay = min(delay * 2, 10.0)

    @contextmanager
    def _errors(self, key: str | None) -> Iterator[None]:
        """Translate botocore and s3transfer failures; with `key` set, a 404 means a missing object."""
        from boto3.exceptions import S3UploadFailedError
        from botocore import exceptions as bx

        try:
            yield
        except (bx.BotoCoreError, bx.ClientError, S3UploadFailedError) as e:
            # upload_file wraps the ClientError in S3UploadFailedError; implicit chaining keeps the original.
            err = e.__context__ if isinstance(e, S3UploadFailedError) and e.__context__ else e
            if isinstance(err, bx.ClientError):
                if key is not None and _code(err) in ("NoSuchKey", "404", "NotFound"):
                    raise KeyError(key) from None
                if _code(err) in _TRANSIENT_CODES:
                    raise StoreUnavailable(self._explain(err)) from None
                raise StoreError(self._explain(err)) from None
            if isinstance(err, (bx.NoCredentialsError, bx.PartialCredentialsError)):
                raise StoreError(_NO_CREDENTIALS) from None
            if isinstance(err, (bx.ConnectionError, bx.HTTPClientError)):
                raise StoreUnavailable(
                    f"cannot reach S3 endpoint {self.endpoint} ({_reason(err)}): "
                    "start the server or fix storage.endpoint_url"
                ) from None
            raise StoreError(
                f"S3 request to {self.endpoint} for {self.uri} failed "
                f"({type(err).__name__}): check storage settings and the server"
            ) from None

    def _explain(self, err: Exception) -> str:
        code, where = _code(err), self.endpoint
        if code == "NoSuchBucket":
            return f"bucket '{self.bucket}' does not exist at {where}: create it or fix storage.uri"
        if code in _BAD_CREDENTIALS:
            return f"S3 credentials rejected by {where} ({code}): set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
        if code in ("AccessDenied", "403", "Forbidden"):
            return (
                f"access to {self.uri} denied by {where} ({code}): check AWS_ACCESS_KEY_ID/"
                "AWS_SECRET_ACCESS_KEY and the bucket's permissions"
            )
        message = getattr(err, "response", {}).get("Error", {}).get("Message", "")
        return f"S3 request to {where} for {self.uri} failed ({code}: {message}): check storage.uri and server"


def _code(err: Exception) -> str:
    return str(getattr(err, "response", {}).get("Error", {}).get("Code", ""))


def _reason(err: Exception) -> str:
    """Short cause of a connection failure, read from the urllib3 error that botocore wraps."""
    text = str(getattr(err, "kwargs", {}).get("error", err))
    reasons = {
        "Connection refused": "connection refused",
        "Failed to resolve": "host not found",
        "timed out": "timed out",
        "unreachable": "network unreachable",
        "SSL": "TLS error",
    }
    return next((reason for needle, reason in reasons.items() if needle in text), type(err).__name__)


def _without_userinfo(url: str) -> str:
    # Messages name the endpoint, so a user:password@ in it must never reach them.
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2])) if "@" in parts.netloc else url


def open_store(
    uri: str,
    endpoint_url: str | None = None,
    region: str | None = None,
    create_bucket: bool = False,
    retry_window_s: float = RETRY_WINDOW_S,
) -> Store:
    """Open `s3://bucket[/prefix]` (S3Store) or `file:///absolute/path` (FileStore).

    Raises StoreError naming the URI and the accepted forms for anything else. Opening does no I/O: call
    check() before heavy work to learn about an unreachable endpoint, a missing bucket or bad credentials.
    """
    if uri.startswith("file://"):
        path = unquote(uri[len("file://") :])  # as_uri() percent-encodes, so decode on the way in
        if not path.startswith("/"):  # file://host/path is not a local path; refuse rather than guess
            raise StoreError(f"storage URI {uri!r} is not an absolute file URI: use {ACCEPTED_URIS}")
        return FileStore(Path(path))
    if uri.startswith("s3://"):
        bucket, _, prefix = uri[len("s3://") :].partition("/")
        if not _BUCKET_RE.match(bucket):
            raise StoreError(
                f"storage URI {uri!r} has an invalid bucket name {bucket!r} (3-63 of a-z 0-9 . -): use {ACCEPTED_URIS}"
            )
        try:
            check_key(prefix.strip("/"), prefix=True)
        except ValueError:
            raise StoreError(f"storage URI {uri!r} has an invalid prefix: use {ACCEPTED_URIS}") from None
        return S3Store(bucket, prefix, endpoint_url, region, create_bucket, retry_window_s)
    raise StoreError(f"unsupported storage URI {uri!r}: use {ACCEPTED_URIS}")
