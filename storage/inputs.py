"""Files a round reads from outside its steps: fetched from s3:// URIs, and snapshotted into the store by content.

    local = fetch_s3("s3://data/pool.jsonl", "curation.sources[0].path (pool)", home / "cache", endpoint_url=...)
    uri = snapshot(store, local, sha256_file(local))   # the store's URL of inputs/sha256/<digest>/pool.jsonl

Layout under the store root:
    inputs/sha256/<sha256 of the file>/<file name>                  a snapshotted file
    inputs/sha256/<sha256_dir of the directory>/<dir name>/<relpath>  a snapshotted save_to_disk directory
    inputs/sha256/<sha256_dir of the directory>/MANIFEST.json        written last: the directory is complete

A file is one atomic put, so its key existing means the copy is whole; a directory is many puts, so as
for artifacts its manifest is written last and is what "already stored" checks. The digest is the same
one the step identity uses, so a snapshot URI names exactly the bytes a round read, on any machine, and
is itself a valid s3:// input path for a later config.

s3:// inputs are read with the store's own credential chain (boto3's default: environment, ~/.aws,
instance roles) and endpoint settings. Downloads are cached under <cache>/inputs/, keyed by the URI,
endpoint, ETag and size, so declaring a step and running it (and later rounds) download an unchanged
object once; the copy's sha256 is kept beside it, so it is hashed once too.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from storage.ids import hash_obj, sha256_file
from storage.store import RETRY_WINDOW_S, S3Store, Store, StoreError, check_key, write_atomic

INPUTS = "inputs/sha256"
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_MISSING = ("404", "NoSuchKey", "NotFound")


class InputError(StoreError):
    """An s3:// input cannot be read (one line: the config field, the URI, what to fix)."""


def is_s3(path: str | None) -> bool:
    return isinstance(path, str) and path.startswith("s3://")


def split_s3(uri: str, what: str) -> tuple[str, str]:
    """(bucket, key) of `s3://bucket/key`; InputError naming `what` for a malformed URI."""
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not _BUCKET_RE.match(bucket):
        raise InputError(f"{what}: {uri!r} has an invalid bucket name {bucket!r} (3-63 of a-z 0-9 . -): fix the URI")
    try:
        check_key(key)
    except ValueError:
        raise InputError(
            f"{what}: {uri!r} does not name an object (expected s3://bucket/path/file.jsonl): fix the URI"
        ) from None
    return bucket, key


def fetch_s3(
    uri: str,
    what: str,
    cache_dir: Path,
    endpoint_url: str | None = None,
    region: str | None = None,
    retry_window_s: float = RETRY_WINDOW_S,
) -> tuple[Path, str]:
    """(local copy, its sha256) of the object at `uri`, downloaded once per ETag into cache_dir/inputs/.

    Args:
        what: the config field, for errors, e.g. "curation.sources[0].path (pool)".
        endpoint_url, region, retry_window_s: the store's settings (storage.endpoint_url and so on).
    Raises InputError for a missing object or bucket, a "folder", missing or rejected credentials.
    """
    bucket, key = split_s3(uri, what)
    store = S3Store(bucket, "", endpoint_url, region, retry_window_s=retry_window_s)
    try:
        # Through the store's retry loop, so an outage is ridden out as for every other store call.
        head = store._retry(key, lambda: store.client.head_object(Bucket=bucket, Key=key))
    except KeyError:
        raise InputError(f"{what}: cannot read {uri}: {_why_missing(store, key)}") from None
    except StoreError as e:
        raise InputError(f"{what}: cannot read {uri}: {e}") from None
    etag = re.sub(r"[^A-Za-z0-9-]", "", str(head.get("ETag", ""))) or "none"
    slot = cache_dir / "inputs" / hash_obj([store.endpoint, uri], 16) / f"{etag}-{head.get('ContentLength', 0)}"
    local, digest_file = slot / Path(key).name, slot.with_name(slot.name + ".sha256")
    if local.is_file() and digest_file.is_file():
        return local, digest_file.read_text().strip()
    try:
        store.get_file(key, local)  # an atomic rename into place: the cache never holds half an object
    except KeyError:
        raise InputError(f"{what}: cannot read {uri}: the object was deleted while being read") from None
    except StoreError as e:
        raise InputError(f"{what}: cannot read {uri}: {e}") from None
    digest = sha256_file(local)
    write_atomic(digest_file, lambda tmp: tmp.write_text(digest + "\n"))
    return local, digest


def _why_missing(store: S3Store, key: str) -> str:
    """A HEAD answers a bare 404 for a missing bucket and a missing key alike: one listing tells them apart."""
    from botocore.exceptions import BotoCoreError, ClientError

    fix = "upload it, or fix the URI"
    try:
        page = store.client.list_objects_v2(Bucket=store.bucket, Prefix=f"{key}/", MaxKeys=1)
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") == "NoSuchBucket":
            return (
                f"bucket {store.bucket!r} does not exist at {store.endpoint} "
                "(fix the bucket in the URI, or storage.endpoint_url if the bucket lives elsewhere)"
            )
        return f"no such object at {store.endpoint} ({fix})"
    except BotoCoreError:
        return f"no such object at {store.endpoint} ({fix})"
    if page.get("KeyCount") or page.get("Contents"):
        return "it is a folder, not an object (name one .jsonl, .parquet or .csv file in it)"
    return f"no such object at {store.endpoint} ({fix})"


def snapshot(store: Store, path: Path, digest: str) -> str:
    """Store the file or directory at `path` under inputs/sha256/<digest>/ unless it is there; its URL.

    `digest` is the caller's content hash of `path` (sha256_file, or sha256_dir for a directory), the id
    the step identity uses: equal content is stored once, whatever machine or home it comes from.
    """
    base = f"{INPUTS}/{digest}"
    key = f"{base}/{check_key(path.name)}"
    if path.is_file():
        if not store.exists(key):
            store.put_file(key, path)
        return store.url(key)
    manifest = f"{base}/MANIFEST.json"
    if not store.exists(manifest):
        files = sorted(p for p in path.rglob("*") if p.is_file())
        for p in files:
            store.put_file(f"{key}/{check_key(p.relative_to(path).as_posix())}", p)
        listing = [{"path": p.relative_to(path).as_posix(), "bytes": p.stat().st_size} for p in files]
        store.put_bytes(manifest, (json.dumps({"id": digest, "files": listing}, indent=2) + "\n").encode())
    return store.url(key)


def snapshot_complete(store: Store, key: str) -> bool:
    """Whether the snapshot at `key` (inputs/sha256/<digest>/<name>, as `snapshot` names it) is whole in the
    store: the file itself, or the manifest of a directory's snapshot, written last."""
    digest_dir = key.rsplit("/", 1)[0]
    return store.exists(key) or store.exists(f"{digest_dir}/MANIFEST.json")
