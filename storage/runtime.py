"""Open what a pipeline writes to: the artifact store, the catalog and the local cache.

One `Runtime` per (home, storage) in a process. With `storage.uri: embedded` a local S3-compatible
server is started on 127.0.0.1 with its data under FLYWHEEL_HOME/s3, so the demo stores through the
same S3 API as production; it is stopped when the process exits (or by `close_runtimes()`), and
with its owner however the owner dies (see storage/s3server.py). Scratch space lives under
FLYWHEEL_HOME/tmp, one directory per process, and what a crashed process left there is removed by the
next one (storage/scratch.py).

The catalog is the home's DuckDB file, or DuckLake (`storage.catalog: ducklake`: storage/catalog_lake.py)
with its data under the store's catalog/lake/. The home's catalog.json then says where the lake is, so
that `flywheel rounds` and `flywheel lineage` find it from the home alone. A catalog that is new while the
store already holds rounds (a DuckLake catalog replacing a DuckDB file, a new machine, a lost file) is
rebuilt from the store's manifests first: that is the migration (storage/rebuild.py).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import duckdb

from storage.artifacts import ArtifactStore
from storage.catalog import Catalog
from storage.catalog_lake import LakeSpec
from storage.catalog_lock import WAIT_S
from storage.rebuild import rebuild_catalog
from storage.s3server import LocalS3Server
from storage.scratch import process_scratch
from storage.store import RETRY_WINDOW_S, Store, open_store, write_atomic

EMBEDDED_BUCKET = "flywheel"
CATALOG_FILE, LAKE_FILE, LAKE_POINTER = "catalog.duckdb", "catalog.sqlite", "catalog.json"
LAKE_PREFIX = "catalog/lake"
log = logging.getLogger("flywheel.storage")


@dataclass
class Runtime:
    home: Path
    store: Store
    artifacts: ArtifactStore
    catalog: Catalog
    server: LocalS3Server | None = None

    @property
    def scratch(self) -> Path:
        """This process's scratch directory in the home; a crash leaves it to the next run to remove."""
        return process_scratch(self.home / "tmp")

    def close(self) -> None:
        self.catalog.close()
        if self.server is not None:
            self.server.stop()
            self.server = None


_RUNTIMES: dict[tuple[str, str], Runtime] = {}
# Flows of one process may start together (two triggers, threads): one of them opens the runtime, the
# other waits and shares it, instead of both creating the catalog schema in conflicting transactions.
_OPENING = threading.Lock()


def open_runtime(
    home: Path,
    uri: str,
    endpoint_url: str | None = None,
    region: str | None = None,
    retry_window_s: float = RETRY_WINDOW_S,
    catalog_wait_s: float = WAIT_S,
    catalog: str = "duckdb",
    catalog_metadata: str | None = None,
) -> Runtime:
    """The runtime of a home and store, opened once per process; checks the store is reachable (fast fail).

    `uri` is `embedded`, `s3://bucket/prefix` or `file://path` (a config's `storage` section); the two
    waits are storage.retry_window_s and storage.catalog_wait_s; `catalog` and `catalog_metadata` are
    storage.catalog and storage.catalog_metadata. Opening sweeps the scratch directories that crashed
    processes left in the home and in its cache.
    """
    home = Path(home)
    key = (str(home), repr((uri, endpoint_url, region, catalog, catalog_metadata)))
    with _OPENING:
        if key not in _RUNTIMES:
            store, server = open_home_store(home, uri, endpoint_url, region, retry_window_s)
            artifacts = ArtifactStore(store, home / "cache")
            lake = None
            if catalog == "ducklake":
                lake = lake_spec(home, store, server.endpoint_url if server else endpoint_url, region, catalog_metadata)
            cat = open_catalog(home, store, artifacts, lake, catalog_wait_s, embedded=server is not None)
            _RUNTIMES[key] = rt = Runtime(home, store, artifacts, cat, server)
            rt.scratch  # noqa: B018 (sweeps what crashed runs left, before this run adds its own)
        return _RUNTIMES[key]


def lake_spec(home: Path, store: Store, endpoint_url: str | None, region: str | None, metadata: str | None) -> LakeSpec:
    """Where a home's DuckLake catalog lives: its metadata (SQLite in the home by default), data in the store."""
    if store.uri.startswith("file://"):
        data_path = f"{store.root}/{LAKE_PREFIX}/"  # type: ignore[attr-defined]
    else:
        data_path = f"{store.url(LAKE_PREFIX)}/"
    return LakeSpec(metadata or f"sqlite:{home / LAKE_FILE}", data_path, endpoint_url, region)


def open_catalog(
    home: Path,
    store: Store,
    artifacts: ArtifactStore,
    lake: LakeSpec | None,
    wait_s: float = WAIT_S,
    embedded: bool = False,
) -> Catalog:
    """The home's catalog; a new one over a store that holds rounds is rebuilt from it first (the module doc)."""
    path = home / CATALOG_FILE if lake is None else lake.sqlite_path or home / LAKE_FILE  # Postgres: a marker
    if lake is not None:
        write_lake_pointer(home, lake, embedded)
    local = lake is None or lake.sqlite_path is not None
    if local and not path.exists() and store.list("runs/"):
        rebuild_into(path, store, artifacts, lake, wait_s)
    try:
        cat = Catalog(path, wait_s, lake=lake)
    except duckdb.IOException as e:
        if lake is not None or "newer version" not in str(e):
            raise
        # A file a newer DuckDB wrote (DuckDB 2, before the pin to the release with extension packages):
        # set aside, never deleted, and the catalog rebuilt from the store.
        aside = path.with_name(path.name + ".newer-duckdb")
        log.warning("catalog %s was written by a newer DuckDB: kept as %s, rebuilding from the store", path, aside)
        os.replace(path, aside)
        rebuild_into(path, store, artifacts, lake, wait_s)
        cat = Catalog(path, wait_s)
    if not local and not cat.rounds() and store.list("runs/"):  # a new Postgres database: filled in place
        _rebuild(store, artifacts, cat)
    return cat


def write_lake_pointer(home: Path, lake: LakeSpec, embedded: bool) -> None:
    """The home's catalog.json: where its DuckLake catalog is, for the CLI (home_catalog); holds no keys."""
    pointer = json.dumps(asdict(lake) | {"embedded": embedded}, indent=2) + "\n"
    write_atomic(home / LAKE_POINTER, lambda tmp: tmp.write_text(pointer))


def rebuild_into(
    path: Path, store: Store, artifacts: ArtifactStore, lake: LakeSpec | None, wait_s: float = WAIT_S
) -> None:
    """Rebuild a catalog file (DuckDB, or DuckLake's SQLite metadata) from the store, built aside and moved to
    `path` when complete, so that a failed rebuild never leaves half a catalog where the next run looks."""
    aside = path.with_name(path.name + ".rebuilding")
    for stale in path.parent.glob(aside.name + "*"):
        stale.unlink()
    spec = None if lake is None else replace(lake, metadata=f"sqlite:{aside}")
    cat = Catalog(aside, wait_s, lake=spec)
    try:
        n = _rebuild(store, artifacts, cat)
    finally:
        cat.close()
    if spec is not None:  # all of it in the one file that is moved: nothing left in SQLite's write-ahead log
        con = sqlite3.connect(aside)
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        con.close()
    os.replace(aside, path)
    for leftover in path.parent.glob(aside.name + "*"):
        leftover.unlink()
    return n


def _rebuild(store: Store, artifacts: ArtifactStore, cat: Catalog) -> int:
    rounds = rebuild_catalog(store, artifacts, cat)
    log.warning("catalog %s: rebuilt %d rounds from %s", cat.where, len(rounds), store.uri)
    return len(rounds)


def home_catalog(home: Path) -> Catalog | None:
    """The catalog of a home for the CLI (None if it has none): the DuckDB file, or the DuckLake of catalog.json.

    A lake whose data is in the home's embedded store needs that store's server: it is started here and
    stopped when the process exits.
    """
    pointer = home / LAKE_POINTER
    if pointer.exists():
        fields = json.loads(pointer.read_text())
        embedded = fields.pop("embedded", False)
        lake = LakeSpec(**fields)
        if embedded:
            server = LocalS3Server(home / "s3").start()
            os.environ.update(server.env())
            lake = LakeSpec(lake.metadata, lake.data_path, server.endpoint_url, lake.s3_region)
        return Catalog(lake.sqlite_path or home / LAKE_FILE, lake=lake)
    path = home / CATALOG_FILE
    return Catalog(path) if path.exists() else None


def open_home_store(
    home: Path,
    uri: str,
    endpoint_url: str | None = None,
    region: str | None = None,
    retry_window_s: float = RETRY_WINDOW_S,
) -> tuple[Store, LocalS3Server | None]:
    """The store, checked reachable; with `embedded`, also the local server it started under `home`."""
    home.mkdir(parents=True, exist_ok=True)
    server = None
    if uri == "embedded":
        server = LocalS3Server(home / "s3").start()
        # boto3 reads credentials from the environment only; these are the embedded server's own.
        os.environ.update(server.env())
        store = open_store(
            f"s3://{EMBEDDED_BUCKET}", server.endpoint_url, create_bucket=True, retry_window_s=retry_window_s
        )
    else:
        store = open_store(uri, endpoint_url, region, retry_window_s=retry_window_s)
    try:
        store.check()
    except Exception:
        if server is not None:
            server.stop()
        raise
    return store, server


def close_runtimes() -> None:
    while _RUNTIMES:
        _, rt = _RUNTIMES.popitem()
        rt.close()
