"""Open what a pipeline writes to: the artifact store, the DuckDB catalog and the local cache.

One `Runtime` per (home, storage) in a process. With `storage.uri: embedded` a local S3-compatible
server is started on 127.0.0.1 with its data under FLYWHEEL_HOME/s3, so the demo stores through the
same S3 API as production; it is stopped when the process exits (or by `close_runtimes()`).
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

from configs.schema import FlywheelConfig
from storage.artifacts import ArtifactStore
from storage.catalog import Catalog
from storage.s3server import LocalS3Server
from storage.store import Store, open_store

EMBEDDED_BUCKET = "flywheel"


@dataclass
class Runtime:
    home: Path
    store: Store
    artifacts: ArtifactStore
    catalog: Catalog
    server: LocalS3Server | None = None

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


_RUNTIMES: dict[tuple[str, str], Runtime] = {}
# Flows of one process may start together (two triggers, threads): one of them opens the runtime, the
# other waits and shares it, instead of both creating the catalog schema in conflicting transactions.
_OPENING = threading.Lock()


def open_runtime(cfg: FlywheelConfig) -> Runtime:
    """The runtime of a config, opened once per process; checks the store is reachable (fast fail)."""
    home = cfg.resolve_home()
    key = (str(home), cfg.storage.model_dump_json())
    with _OPENING:
        if key not in _RUNTIMES:
            store, server = open_config_store(cfg)
            catalog = Catalog(home / "catalog.duckdb")
            _RUNTIMES[key] = Runtime(home, store, ArtifactStore(store, home / "cache"), catalog, server)
        return _RUNTIMES[key]


def open_config_store(cfg: FlywheelConfig) -> tuple[Store, LocalS3Server | None]:
    """The config's store, checked reachable; with `embedded`, also the local server it started."""
    home = cfg.resolve_home()
    home.mkdir(parents=True, exist_ok=True)
    server = None
    if cfg.storage.uri == "embedded":
        server = LocalS3Server(home / "s3").start()
        # boto3 reads credentials from the environment only; these are the embedded server's own.
        os.environ.update(server.env())
        store = open_store(f"s3://{EMBEDDED_BUCKET}", endpoint_url=server.endpoint_url, create_bucket=True)
    else:
        store = open_store(cfg.storage.uri, endpoint_url=cfg.storage.endpoint_url, region=cfg.storage.region)
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
