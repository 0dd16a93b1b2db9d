"""The catalog's tables, and the SQL both backends run (a DuckDB file and DuckLake).

DuckLake refuses primary keys, ON CONFLICT, RETURNING and indexes, so the writes never rely on them: an
upsert is a delete and an insert in one transaction. The DuckDB file keeps its keys, which check the
writes there, and the index that makes row lineage a few point reads.
"""

from __future__ import annotations

import re
from typing import Any

import duckdb

SCHEMA = """
CREATE TABLE IF NOT EXISTS pipelines (
    name TEXT PRIMARY KEY, created_at TIMESTAMPTZ, base_model TEXT, config JSON);
CREATE TABLE IF NOT EXISTS rounds (
    pipeline TEXT, round INTEGER, status TEXT, config_hash TEXT,
    policy_in TEXT, candidate TEXT, policy_out TEXT, promoted BOOLEAN, reason TEXT,
    flow_run_id TEXT, started_at TIMESTAMPTZ, finished_at TIMESTAMPTZ, manifest_uri TEXT,
    PRIMARY KEY (pipeline, round));
CREATE TABLE IF NOT EXISTS round_attempts (
    pipeline TEXT, round INTEGER, attempt INTEGER, status TEXT, started_at TIMESTAMPTZ, finished_at TIMESTAMPTZ,
    error TEXT, flow_run_id TEXT, pid INTEGER, host TEXT, config_hash TEXT, policy_in TEXT, steps JSON,
    PRIMARY KEY (pipeline, round, attempt));
CREATE TABLE IF NOT EXISTS steps (
    pipeline TEXT, round INTEGER, step TEXT, identity TEXT, status TEXT, reused BOOLEAN,
    flow_run_id TEXT, task_run_id TEXT, started_at TIMESTAMPTZ, finished_at TIMESTAMPTZ,
    duration_s DOUBLE, rows_in BIGINT, rows_out BIGINT, inputs JSON, outputs JSON, error TEXT,
    PRIMARY KEY (pipeline, round, step));
CREATE TABLE IF NOT EXISTS artifacts (
    id TEXT PRIMARY KEY, kind TEXT, format TEXT, uri TEXT, bytes BIGINT, rows BIGINT,
    pipeline TEXT, round INTEGER, step TEXT, created_at TIMESTAMPTZ);
CREATE TABLE IF NOT EXISTS edges (
    src TEXT, dst TEXT, step TEXT, pipeline TEXT, round INTEGER, PRIMARY KEY (src, dst));
CREATE TABLE IF NOT EXISTS metrics (
    pipeline TEXT, round INTEGER, step TEXT, name TEXT, value DOUBLE, PRIMARY KEY (pipeline, round, name));
-- child_id: DuckLake reserves the name row_id.
CREATE TABLE IF NOT EXISTS row_edges (child_id TEXT, parent_id TEXT, artifact_id TEXT);
CREATE TABLE IF NOT EXISTS promotions (
    pipeline TEXT, after_round INTEGER, policy TEXT, from_round INTEGER, which TEXT, who TEXT,
    promoted_at TIMESTAMPTZ, why TEXT);
CREATE INDEX IF NOT EXISTS row_edges_child ON row_edges (child_id);
"""


def lake_schema(schema: str = SCHEMA) -> str:
    """The schema without what DuckLake refuses: keys and indexes (the writes never rely on them)."""
    schema = re.sub(r",\s*PRIMARY KEY \([^)]*\)", "", schema)
    schema = schema.replace(" PRIMARY KEY", "")
    return "\n".join(line for line in schema.splitlines() if not line.startswith(("CREATE INDEX", "--")))


def upsert(con: duckdb.DuckDBPyConnection, table: str, keys: dict[str, Any], values: dict[str, Any]) -> None:
    """Replace the row of `keys` in `table` by keys + values (INSERT OR REPLACE, in SQL DuckLake runs)."""
    where = " AND ".join(f"{k} = ?" for k in keys)
    con.execute(f"DELETE FROM {table} WHERE {where}", list(keys.values()))
    row = keys | values
    con.execute(f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", list(row.values()))


def insert_new(con: duckdb.DuckDBPyConnection, table: str, keys: dict[str, Any], values: dict[str, Any]) -> None:
    """Insert keys + values unless a row with these keys exists (ON CONFLICT DO NOTHING, in SQL DuckLake runs)."""
    row = keys | values
    where = " AND ".join(f"{k} = ?" for k in keys)
    con.execute(
        f"INSERT INTO {table} ({', '.join(row)}) SELECT {', '.join('?' * len(row))} "
        f"WHERE NOT EXISTS (SELECT 1 FROM {table} WHERE {where})",
        [*row.values(), *keys.values()],
    )


def round_mark(pipeline: str, round_num: int) -> str:
    """The commit message of the snapshot that finishes a round (DuckLake)."""
    return f"{pipeline} round {round_num} finished"


def migrate_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Bring a DuckDB catalog that older code wrote up to this schema (row_edges.row_id -> child_id)."""
    cols = {
        r[0]
        for r in con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'row_edges'"
        ).fetchall()
    }
    if "row_id" in cols:
        con.execute("DROP INDEX IF EXISTS row_edges_row")  # an indexed column cannot be renamed
        con.execute("ALTER TABLE row_edges RENAME COLUMN row_id TO child_id")
