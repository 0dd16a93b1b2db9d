"""The catalog on DuckLake: metadata in SQLite (one machine) or Postgres (several), tables as Parquet in the store.

A DuckLake catalog is a DuckDB database whose table metadata sits in a SQL database and whose rows sit in
Parquet files under a data path: here the store's `catalog/lake/` prefix, next to the artifacts. Every
commit is a snapshot, so the catalog as of any round is a query (`Catalog.as_of_round`), and the store
holds the catalog's data itself: no file is copied after each round.

One process holds one attached lake (extension loading and the attach cost ~1.5 s, paid once) and runs
each catalog call on its own cursor, in its own transaction. Writers are serialised:
- within the process by a lock, since the metadata connection is shared;
- between the processes of one machine by a file lock beside the SQLite file. SQLite lets one writer in
  at a time, and a DuckLake commit that finds it busy fails ("database is locked") rather than waits.
  The file is in WAL mode, so readers (the DuckDB CLI, a notebook) never block a writer, nor it them.
- between machines (Postgres) by DuckLake itself, which retries a commit that does not conflict.

A reader on any machine (see README, "The catalog"):
    ATTACH 'ducklake:sqlite:.flywheel/catalog.sqlite' AS lake (READ_ONLY);  SELECT * FROM lake.rounds;
"""

from __future__ import annotations

import fcntl
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import duckdb

from storage.duckdb_ext import load_extensions

ALIAS = "lake"
SQLITE_PREFIX, POSTGRES_PREFIX = "sqlite:", "postgres:"
ROW_GROUP_ROWS = 4096  # rows per Parquet row group (bench/lineage.py --catalog ducklake)


@dataclass(frozen=True)
class LakeSpec:
    """Where a DuckLake catalog lives; holds no secret (keys come from the environment when it is opened).

    metadata: `sqlite:/abs/path.sqlite` or `postgres:<libpq keywords>` (the password from PGPASSWORD).
    data_path: `s3://bucket/prefix/catalog/lake/` or a local directory ending in '/'.
    """

    metadata: str
    data_path: str
    s3_endpoint: str | None = None  # http(s)://host:port of a non-AWS S3 server
    s3_region: str | None = None

    @property
    def sqlite_path(self) -> Path | None:
        return sqlite_file(self.metadata)

    def describe(self) -> str:
        """One line for logs and errors: where metadata and data are (libpq keywords other than the host and
        database are left out, in case a caller put a secret there)."""
        where = self.metadata
        if self.metadata.startswith(POSTGRES_PREFIX):
            keep = re.findall(r"\b(?:host|port|dbname)=\S+", self.metadata)
            where = POSTGRES_PREFIX + " ".join(keep)
        return f"DuckLake ({where}, data {self.data_path})"


def sqlite_file(metadata: str) -> Path | None:
    """The SQLite file of a `sqlite:` metadata string (None for Postgres)."""
    return Path(metadata.removeprefix(SQLITE_PREFIX)) if metadata.startswith(SQLITE_PREFIX) else None


class LakeConnection:
    """One attached DuckLake per process; `tx()` gives a cursor in a transaction (see the module doc)."""

    def __init__(self, spec: LakeSpec, wait_s: float):
        self.spec, self.wait_s = spec, wait_s
        self._lock = threading.Lock()
        sqlite_path = spec.sqlite_path
        self._file_lock = None if sqlite_path is None else sqlite_path.with_name(sqlite_path.name + ".lock")
        self.db = duckdb.connect()  # in memory: it only holds the attachment
        metadata_ext = "sqlite" if sqlite_path is not None else "postgres"
        load_extensions(self.db, "ducklake", metadata_ext, *(["httpfs"] if spec.data_path.startswith("s3://") else []))
        if spec.data_path.startswith("s3://"):
            self._s3_secret()
        else:
            Path(spec.data_path).mkdir(parents=True, exist_ok=True)
        if sqlite_path is not None:
            sqlite_path.parent.mkdir(parents=True, exist_ok=True)
            with self._writer():
                _wal(sqlite_path)
        with self._writer():
            self.db.execute(
                f"ATTACH '{_lit('ducklake:' + spec.metadata)}' AS {ALIAS} (DATA_PATH '{_lit(spec.data_path)}')"
            )
            # Small row groups: with no index, a row-lineage lookup reads only the row groups whose min/max
            # range of (sorted) child ids holds the id; DuckDB's default of 122,880 rows reads far more.
            (size,) = self.db.execute(
                f"SELECT any_value(value) FROM {ALIAS}.options() WHERE option_name = 'parquet_row_group_size'"
            ).fetchone()
            if size != str(ROW_GROUP_ROWS):
                self.db.execute(f"CALL {ALIAS}.set_option('parquet_row_group_size', {ROW_GROUP_ROWS})")

    def _s3_secret(self) -> None:
        """An in-memory S3 secret from the standard AWS credential chain (boto3's): never written anywhere."""
        import boto3

        creds = boto3.session.Session().get_credentials()
        if creds is None:
            raise RuntimeError(f"{self.spec.describe()}: no AWS credentials in the environment for the catalog's data")
        frozen = creds.get_frozen_credentials()
        opts = {"KEY_ID": frozen.access_key, "SECRET": frozen.secret_key, "URL_STYLE": "path"}
        if frozen.token:
            opts["SESSION_TOKEN"] = frozen.token
        if self.spec.s3_endpoint:
            url = urlsplit(self.spec.s3_endpoint)
            opts |= {"ENDPOINT": url.netloc, "USE_SSL": str(url.scheme == "https").lower()}
        else:
            opts["URL_STYLE"] = "vhost"
        opts["REGION"] = self.spec.s3_region or os.environ.get("AWS_REGION") or "us-east-1"
        body = ", ".join(f"{k} {v}" if k == "USE_SSL" else f"{k} '{_lit(v)}'" for k, v in opts.items())
        self.db.execute(f"CREATE OR REPLACE TEMPORARY SECRET flywheel_catalog (TYPE s3, {body})")

    @contextmanager
    def _writer(self) -> Iterator[None]:
        """This process's turn at the metadata database, and on one machine, the other processes' too."""
        with self._lock:
            if self._file_lock is None:
                yield
                return
            with open(self._file_lock, "a") as f:
                _flock(f, self.wait_s, self.spec)
                try:
                    yield
                finally:
                    fcntl.flock(f, fcntl.LOCK_UN)

    @contextmanager
    def tx(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor on the lake in one transaction: committed on success, rolled back on any error."""
        with self._writer():
            cur = self.db.cursor()
            try:
                cur.execute(f"USE {ALIAS}")
                cur.execute("BEGIN TRANSACTION")
                try:
                    yield cur
                    cur.execute("COMMIT")
                except BaseException:
                    cur.execute("ROLLBACK")
                    raise
            finally:
                cur.close()

    def snapshot_of(self, message: str) -> int | None:
        """The id of the latest snapshot committed with this message (Catalog marks each finished round)."""
        rows = self.db.execute(
            f"SELECT max(snapshot_id) FROM {ALIAS}.snapshots() WHERE commit_message = ?", [message]
        ).fetchall()
        return rows[0][0] if rows else None

    def at_snapshot(self, snapshot_id: int) -> LakeSnapshot:
        """A read-only view of the catalog as of one snapshot."""
        return LakeSnapshot(self, snapshot_id)

    def close(self) -> None:
        self.db.close()


class LakeSnapshot:
    """The lake attached read-only at one snapshot, in the same DuckDB database; `tx()` reads from it."""

    def __init__(self, lake: LakeConnection, snapshot_id: int):
        self.lake, self.alias = lake, f"{ALIAS}_at_{int(snapshot_id)}"
        with lake._lock:
            attached = {r[0] for r in lake.db.execute("SELECT database_name FROM duckdb_databases()").fetchall()}
            if self.alias not in attached:
                meta = _lit("ducklake:" + lake.spec.metadata)
                lake.db.execute(f"ATTACH '{meta}' AS {self.alias} (SNAPSHOT_VERSION {int(snapshot_id)}, READ_ONLY)")

    @contextmanager
    def tx(self) -> Iterator[duckdb.DuckDBPyConnection]:
        cur = self.lake.db.cursor()
        try:
            cur.execute(f"USE {self.alias}")
            yield cur
        finally:
            cur.close()


def _lit(value: str) -> str:
    """A SQL string literal's body (DDL such as ATTACH and CREATE SECRET takes no parameters)."""
    return value.replace("'", "''")


def _wal(path: Path) -> None:
    """Put the SQLite metadata file in WAL mode (it persists in the file), so readers and the writer coexist."""
    con = sqlite3.connect(path)
    try:
        con.execute("PRAGMA journal_mode=WAL")
    finally:
        con.close()


def _flock(f, wait_s: float, spec: LakeSpec) -> None:
    """Take the machine's catalog write lock, waiting up to `wait_s` (a write holds it for milliseconds)."""
    start, delay = time.monotonic(), 0.01
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() - start >= wait_s:
                raise TimeoutError(
                    f"{spec.describe()}: another process held the write lock {f.name} for {wait_s:.0f} s"
                ) from None
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
