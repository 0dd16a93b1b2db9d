"""Open what a pipeline writes to: the artifact store, the DuckDB catalog and the local cache.

One `Runtime` per (home, storage) in a process. With `storage.uri: embedded` a local S3-compatible
server is started on 127.0.0.1 with its data under FLYWHEEL_HOME/s3, so the demo stores through the
same S3 API as production; it is stopped when the process exits (or by `close_runtimes()`), and
with its owner however the owner dies (see storage/s3server.py). Scratch space lives under
FLYWHEEL_HOME/tmp, one directory per process, and what a crashed process left there is removed by the
next one (storage/scratch.py).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

from storage.artifacts import ArtifactStore
from storage.catalog import Catalog
from storage.catalog_lock import WAIT_S
from storage.s3server import LocalS3Server
from storage.scratch import process_scratch
from storage.store import RETRY_WINDOW_S, Store, open_store

EMBEDDED_BUCKET = "flywheel"


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
) -> Runtime:
    """The runtime of a home and store, opened once per process; checks the store is reachable (fast fail).

    `uri` is `embedded`, `s3://bucket/prefix` or `file://path` (a config's `storage` section); the two
    waits are storage.retry_window_s and storage.catalog_wait_s. Opening sweeps the scratch directories
    that crashed processes left in the home and in its cache.
    """
    home = Path(home)
    key = (str(home), repr((uri, endpoint_url, region)))
    with _OPENING:
        if key not in _RUNTIMES:
            store, server = open_home_store(home, uri, endpoint_url, region, retry_window_s)
            catalog = Catalog(home / "catalog.duckdb", catalog_wait_s)
            _RUNTIMES[key] = rt = Runtime(home, store, ArtifactStore(store, home / "cache"), catalog, server)
            rt.scratch  # noqa: B018 (sweeps what crashed runs left, before this run adds its own)
        return _RUNTIMES[key]


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
