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


def open_runtime(home: Path, uri: str, endpoint_url: str | None = None, region: str | None = None) -> Runtime:
    """The runtime of a home and store, opened once per process; checks the store is reachable (fast fail).

    `uri` is `embedded`, `s3://bucket/prefix` or `file://path` (a config's `storage` section).
    """
    home = Path(home)
    key = (str(home), repr((uri, endpoint_url, region)))
    with _OPENING:
        if key not in _RUNTIMES:
            store, server = open_home_store(home, uri, endpoint_url, region)
            catalog = Catalog(home / "catalog.duckdb")
            _RUNTIMES[key] = Runtime(home, store, ArtifactStore(store, home / "cache"), catalog, server)
        return _RUNTIMES[key]


def open_home_store(
    home: Path, uri: str, endpoint_url: str | None = None, region: str | None = None
) -> tuple[Store, LocalS3Server | None]:
    """The store, checked reachable; with `embedded`, also the local server it started under `home`."""
    home.mkdir(parents=True, exist_ok=True)
    server = None
    if uri == "embedded":
        server = LocalS3Server(home / "s3").start()
        # boto3 reads credentials from the environment only; these are the embedded server's own.
        os.environ.update(server.env())
        store = open_store(f"s3://{EMBEDDED_BUCKET}", endpoint_url=server.endpoint_url, create_bucket=True)
    else:
        store = open_store(uri, endpoint_url=endpoint_url, region=region)
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
