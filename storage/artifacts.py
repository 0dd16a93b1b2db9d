"""Content-addressed, immutable artifacts over a Store (docs/design.md, "Identities" and "Storage layout").

    arts = ArtifactStore(open_store("file:///tmp/flywheel"), cache_dir=Path("/tmp/flywheel-cache"))
    ref = arts.put_table(table, kind="prompts")     # ArtifactRef(id=<sha256 of the parquet bytes>, ...)
    arts.link("runs/demo/round-0001/curate/prompts.json", ref)
    table = arts.get_table(ref.id)

Layout under the store root:
    artifacts/<id[:2]>/<id>/data.parquet | data.json | files/<relpath>
    artifacts/<id[:2]>/<id>/MANIFEST.json     kind, format, bytes, rows, files (size, sha256), created_at

MANIFEST.json is written last, so an artifact exists exactly when its manifest does: a crash or a failed
upload leaves files that nothing considers finished, and the next put of the same content completes it.
Ids are content hashes, so equal content is stored once and a put of an existing id only returns its ref.

The local cache (cache_dir) holds only committed artifacts: tables/<id>.parquet and models/<id>/, each
moved into place by one rename, so a reader never sees half of one.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from storage.ids import sha256_bytes, sha256_file, stable_json
from storage.scratch import process_scratch
from storage.store import Store, StoreError, check_key

MANIFEST = "MANIFEST.json"


@dataclass(frozen=True)
class ArtifactRef:
    """What other steps and the catalog need to know about a stored artifact."""

    id: str  # sha256 hex of the content
    kind: str  # e.g. "prompts", "completions", "model", "report"
    uri: str  # store.url() of the artifact's folder
    bytes: int
    rows: int | None
    format: str  # "parquet" | "model" | "json"


def artifact_folder(artifact_id: str) -> str:
    """Store key of an artifact's folder; ValueError unless the id is 64 lowercase hex digits."""
    if len(artifact_id) != 64 or any(c not in "0123456789abcdef" for c in artifact_id):
        raise ValueError(f"invalid artifact id {artifact_id!r}: expected 64 lowercase hex digits (a sha256)")
    return f"artifacts/{artifact_id[:2]}/{artifact_id}"


def dir_id(files: list[tuple[str, str]]) -> str:
    """ids.sha256_dir computed from (relpath, sha256) pairs already at hand, so each byte is hashed once.

    It must stay equal to ids.sha256_dir (tests pin the two together).
    """
    return sha256_bytes("\n".join(f"{rel}\t{digest}" for rel, digest in sorted(files)).encode())


class ArtifactStore:
    """Put and get tables, JSON values and model directories by content id."""

    def __init__(self, store: Store, cache_dir: Path):
        self.store, self.cache_dir = store, Path(cache_dir)

    # -- tables ---------------------------------------------------------------------------------------
    def put_table(self, table: pa.Table, kind: str) -> ArtifactRef:
        """Store `table` as zstd Parquet; id = sha256 of the Parquet bytes.

        The writer adds no timestamps, so the same table (whatever its chunking) gives the same bytes
        with the same pyarrow version (its version string is part of the file footer).
        """
        tmp = self._tmp_path(".parquet")
        try:
            pq.write_table(table, tmp, compression="zstd")
            artifact_id, size = sha256_file(tmp), tmp.stat().st_size
            if not self.exists(artifact_id):
                self.store.put_file(f"{artifact_folder(artifact_id)}/data.parquet", tmp)
                schema = [{"name": f.name, "type": str(f.type)} for f in table.schema]
                self._commit(
                    artifact_id,
                    kind,
                    "parquet",
                    [("data.parquet", size, artifact_id)],
                    rows=table.num_rows,
                    schema=schema,
                )
            self._install(tmp, self._table_cache(artifact_id))
        finally:
            tmp.unlink(missing_ok=True)
        return self.ref(artifact_id)

    def get_table(self, artifact_id: str, columns: list[str] | None = None) -> pa.Table:
        """Read a Parquet artifact (all columns, or `columns`); downloads once into the cache and verifies
        its hash. KeyError if absent."""
        cached = self._table_cache(artifact_id)
        if not cached.exists():
            manifest = self._manifest(artifact_id, "parquet")
            tmp = self._tmp_path(".parquet")
            try:
                self.store.get_file(f"{artifact_folder(artifact_id)}/data.parquet", tmp)
                _verify(artifact_id, "data.parquet", sha256_file(tmp), manifest["files"][0]["sha256"])
                self._install(tmp, cached)
            finally:
                tmp.unlink(missing_ok=True)
        return pq.read_table(cached, columns=columns)

    # -- JSON -----------------------------------------------------------------------------------------
    def put_json(self, obj: Any, kind: str) -> ArtifactRef:
        """Store a JSON value in canonical form (ids.stable_json); id = sha256 of that text."""
        data = stable_json(obj).encode()
        artifact_id = sha256_bytes(data)
        if not self.exists(artifact_id):
            self.store.put_bytes(f"{artifact_folder(artifact_id)}/data.json", data)
            rows = len(obj) if isinstance(obj, list) else None
            self._commit(artifact_id, kind, "json", [("data.json", len(data), artifact_id)], rows=rows)
        return self.ref(artifact_id)

    def get_json(self, artifact_id: str) -> Any:
        """The stored value, hash-verified. KeyError if the artifact is absent or incomplete."""
        self._manifest(artifact_id, "json")
        data = self.store.get_bytes(f"{artifact_folder(artifact_id)}/data.json")
        _verify(artifact_id, "data.json", sha256_bytes(data), artifact_id)
        return json.loads(data)

    # -- models ---------------------------------------------------------------------------------------
    def put_model(self, local_dir: Path, kind: str = "model") -> ArtifactRef:
        """Store every file under `local_dir`; id = ids.sha256_dir(local_dir).

        The files are first copied into the cache and hashed and uploaded from that copy, so a trainer
        still writing into `local_dir` cannot make the upload disagree with the id; the copy then becomes
        the cache entry, and get_model() right after needs no download.
        """
        local_dir = Path(local_dir)
        rels = sorted(p.relative_to(local_dir).as_posix() for p in local_dir.rglob("*") if p.is_file())
        if not rels:
            raise ValueError(f"model directory {local_dir} has no files: pass the directory save_pretrained wrote")
        tmp = self._tmp_path("")
        try:
            files = []
            for rel in rels:
                dst = tmp / check_key(rel)
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(local_dir / rel, dst)  # follows symlinks (HF snapshots): store the content
                files.append((rel, dst.stat().st_size, sha256_file(dst)))
            artifact_id = dir_id([(rel, digest) for rel, _, digest in files])
            if not self.exists(artifact_id):
                for rel, _, _ in files:
                    self.store.put_file(f"{artifact_folder(artifact_id)}/files/{rel}", tmp / rel)
                self._commit(artifact_id, kind, "model", files, rows=None)
            self._install(tmp, self._model_cache(artifact_id))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return self.ref(artifact_id)

    def get_model(self, artifact_id: str) -> Path:
        """Local directory of a model artifact (cache_dir/models/<id>/), downloaded and verified once.

        The download goes to a temp directory renamed into place, so the cache never holds half a model.
        Raises KeyError if the artifact is absent or incomplete, StoreError if a file fails its hash.
        """
        target = self._model_cache(artifact_id)
        if target.is_dir():
            return target
        manifest = self._manifest(artifact_id, "model")
        tmp = self._tmp_path("")
        try:
            digests = []
            for entry in manifest["files"]:
                rel = check_key(entry["path"])  # a manifest must not write outside the cache
                self.store.get_file(f"{artifact_folder(artifact_id)}/files/{rel}", tmp / rel)
                digest = sha256_file(tmp / rel)
                _verify(artifact_id, rel, digest, entry["sha256"])
                digests.append((rel, digest))
            _verify(artifact_id, "the directory", dir_id(digests), artifact_id)
            self._install(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target

    # -- manifests and pointers -----------------------------------------------------------------------
    def exists(self, artifact_id: str) -> bool:
        """True only for a complete artifact, i.e. one whose manifest was written."""
        return self.store.exists(f"{artifact_folder(artifact_id)}/{MANIFEST}")

    def ref(self, artifact_id: str) -> ArtifactRef:
        """The artifact's ref, read from its manifest. KeyError if it is absent or incomplete."""
        m = self._manifest(artifact_id)
        return ArtifactRef(
            id=artifact_id,
            kind=m["kind"],
            uri=self.store.url(artifact_folder(artifact_id)),
            bytes=m["bytes"],
            rows=m["rows"],
            format=m["format"],
        )

    def link(self, key: str, ref: ArtifactRef, extra: dict | None = None) -> None:
        """Write a small JSON pointer to `ref` at a browsable key (e.g. runs/<pipeline>/round-0003/...).

        Pointers are the mutable, human-facing side of the layout; the artifacts they name never change.
        """
        pointer = {**asdict(ref), "manifest": self.store.url(f"{artifact_folder(ref.id)}/{MANIFEST}")}
        if extra:
            pointer["extra"] = extra
        self.store.put_bytes(key, (json.dumps(pointer, indent=2, sort_keys=True, default=str) + "\n").encode())

    def read_link(self, key: str) -> ArtifactRef:
        """The ref a pointer written by link() names. KeyError if there is no pointer at `key`."""
        pointer = json.loads(self.store.get_bytes(key))
        return ArtifactRef(**{name: pointer[name] for name in ArtifactRef.__dataclass_fields__})

    def _manifest(self, artifact_id: str, fmt: str | None = None) -> dict:
        try:
            manifest = json.loads(self.store.get_bytes(f"{artifact_folder(artifact_id)}/{MANIFEST}"))
        except KeyError:
            raise KeyError(artifact_id) from None
        if fmt and manifest["format"] != fmt:
            raise ValueError(f"artifact {artifact_id} is {manifest['format']!r}, not {fmt!r}")
        return manifest

    def _commit(
        self, artifact_id: str, kind: str, fmt: str, files: list[tuple[str, int, str]], rows: int | None, **extra: Any
    ) -> None:
        """Write MANIFEST.json, the last write of a put: from now on the artifact exists."""
        manifest = {
            "id": artifact_id,
            "kind": kind,
            "format": fmt,
            "bytes": sum(size for _, size, _ in files),
            "rows": rows,
            "files": [{"path": rel, "bytes": size, "sha256": digest} for rel, size, digest in files],
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **extra,
        }
        self.store.put_bytes(
            f"{artifact_folder(artifact_id)}/{MANIFEST}",
            (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode(),
        )

    # -- local cache ----------------------------------------------------------------------------------
    def _tmp_path(self, suffix: str) -> Path:
        # Inside cache_dir, so moving it into the cache is a same-filesystem rename; in this process's
        # scratch, so a download cut short by a crash is removed by the next run.
        return process_scratch(self.cache_dir / "tmp") / f"{uuid.uuid4().hex}{suffix}"

    def _table_cache(self, artifact_id: str) -> Path:
        artifact_folder(artifact_id)  # validates the id before it names a local path
        return self.cache_dir / "tables" / f"{artifact_id}.parquet"

    def _model_cache(self, artifact_id: str) -> Path:
        artifact_folder(artifact_id)
        return self.cache_dir / "models" / artifact_id

    @staticmethod
    def _install(tmp: Path, target: Path) -> None:
        """Rename `tmp` (file or directory) to `target` unless a concurrent writer got there first."""
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            return  # same id, same content: keep the existing entry
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.exists():
                raise


def _verify(artifact_id: str, what: str, got: str, expected: str) -> None:
    if got != expected:
        raise StoreError(
            f"artifact {artifact_id}: {what} hashes to {got[:12]}... but the manifest says "
            f"{expected[:12]}...: the stored copy is corrupt; delete it and put it again"
        )
