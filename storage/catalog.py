"""The DuckDB catalog: pipelines, rounds, steps, artifacts, lineage edges and metrics.

This file holds the connection, the schema, steps, artifacts and lineage; pipelines, rounds, their
attempts and manual promotions are storage/catalog_rounds.py (a mixin of Catalog).

Every write goes through Catalog, one transaction per call. A connection is opened per call and
closed after it, so several processes (two flows, a CLI query) can share the file: DuckDB lets only one
process hold it at a time, and a caller that finds it locked waits and retries.

Query it with any DuckDB client:  duckdb .flywheel/catalog.duckdb "select * from rounds"
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb

from storage.artifacts import ArtifactRef
from storage.catalog_lock import WAIT_S, connect_waiting
from storage.catalog_rounds import RoundsMixin

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
CREATE TABLE IF NOT EXISTS row_edges (row_id TEXT, parent_id TEXT, artifact_id TEXT);
CREATE TABLE IF NOT EXISTS promotions (
    pipeline TEXT, after_round INTEGER, policy TEXT, from_round INTEGER, which TEXT, who TEXT,
    promoted_at TIMESTAMPTZ, why TEXT);
CREATE INDEX IF NOT EXISTS row_edges_row ON row_edges (row_id);
"""


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class StepRecord:
    """What one step wrote: its outputs, their parents, metrics and row-level lineage."""

    pipeline: str
    round: int
    step: str
    identity: str
    inputs: dict[str, str]
    outputs: dict[str, ArtifactRef]
    metrics: dict[str, float] = field(default_factory=dict)
    row_edges: list[tuple[str, str, str]] = field(default_factory=list)  # (row_id, parent_id, artifact_id)
    rows_in: int | None = None
    rows_out: int | None = None
    started_at: datetime | None = None
    duration_s: float = 0.0
    flow_run_id: str | None = None
    task_run_id: str | None = None
    reused: bool = False


class Catalog(RoundsMixin):
    """The catalog file; its rounds, attempts and promotions are in storage/catalog_rounds.py."""

    def __init__(self, path: Path, lock_wait_s: float = WAIT_S):
        self.path, self.lock_wait_s = Path(path), lock_wait_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._tx() as con:
            con.execute(SCHEMA)

    @contextmanager
    def _tx(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One connection, one transaction: commit on success, roll back on any error.
        A file another process holds (a reader too) is waited for: see storage/catalog_lock.py."""
        con = connect_waiting(self.path, self.lock_wait_s)
        try:
            con.execute("BEGIN TRANSACTION")
            yield con
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        finally:
            con.close()

    def _query(self, sql: str, params: list | None = None) -> list[dict[str, Any]]:
        with self._tx() as con:
            cur = con.execute(sql, params or [])
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, row)) for row in cur.fetchall()]

    # --- steps ------------------------------------------------------------------------------

    def step_outputs(self, pipeline: str, round_num: int, step: str) -> dict[str, str]:
        """Output name -> artifact id of a completed step of one round ({} if it did not complete)."""
        row = self.steps_of(pipeline, round_num).get(step)
        if row is None or row["status"] != "completed" or not row["outputs"]:
            return {}
        return json.loads(row["outputs"])

    def steps_of(self, pipeline: str, round_num: int) -> dict[str, dict[str, Any]]:
        rows = self._query(
            "SELECT * FROM steps WHERE pipeline = ? AND round = ? ORDER BY started_at", [pipeline, round_num]
        )
        return {r["step"]: r for r in rows}

    def find_completed_step(self, identity: str) -> dict[str, str] | None:
        """Outputs (name -> artifact id) of an earlier completed run of the same step identity."""
        rows = self._query(
            "SELECT outputs FROM steps WHERE identity = ? AND status = 'completed' ORDER BY finished_at DESC LIMIT 1",
            [identity],
        )
        return json.loads(rows[0]["outputs"]) if rows else None

    def record_step(self, rec: StepRecord) -> None:
        """Write a finished step with its artifacts, edges, metrics and row lineage, atomically."""
        finished = _now()
        with self._tx() as con:
            con.execute(
                """INSERT OR REPLACE INTO steps VALUES (?, ?, ?, ?, 'completed', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)""",
                [
                    rec.pipeline,
                    rec.round,
                    rec.step,
                    rec.identity,
                    rec.reused,
                    rec.flow_run_id,
                    rec.task_run_id,
                    rec.started_at or finished,
                    finished,
                    rec.duration_s,
                    rec.rows_in,
                    rec.rows_out,
                    json.dumps(rec.inputs),
                    json.dumps({k: a.id for k, a in rec.outputs.items()}),
                ],
            )
            for a in rec.outputs.values():
                con.execute(
                    "INSERT INTO artifacts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                    [a.id, a.kind, a.format, a.uri, a.bytes, a.rows, rec.pipeline, rec.round, rec.step, finished],
                )
                for src in rec.inputs.values():
                    if src != a.id:
                        con.execute(
                            "INSERT INTO edges VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                            [src, a.id, rec.step, rec.pipeline, rec.round],
                        )
            for name, value in rec.metrics.items():
                con.execute(
                    "INSERT OR REPLACE INTO metrics VALUES (?, ?, ?, ?, ?)",
                    [rec.pipeline, rec.round, rec.step, name, float(value)],
                )
            if rec.row_edges and not rec.reused:
                import pyarrow as pa

                new_artifacts = sorted({e[2] for e in rec.row_edges})
                con.execute(
                    f"DELETE FROM row_edges WHERE artifact_id IN ({','.join('?' * len(new_artifacts))})", new_artifacts
                )
                rows, parents, arts = zip(*rec.row_edges)
                edges_tbl = pa.table({"row_id": rows, "parent_id": parents, "artifact_id": arts})  # noqa: F841
                con.execute("INSERT INTO row_edges SELECT * FROM edges_tbl")

    def record_metrics(self, pipeline: str, round_num: int, step: str, metrics: dict[str, float]) -> None:
        with self._tx() as con:
            for name, value in metrics.items():
                con.execute(
                    "INSERT OR REPLACE INTO metrics VALUES (?, ?, ?, ?, ?)",
                    [pipeline, round_num, step, name, float(value)],
                )

    def record_step_failure(self, pipeline: str, round_num: int, step: str, identity: str, error: str) -> None:
        with self._tx() as con:
            con.execute(
                """INSERT OR REPLACE INTO steps (pipeline, round, step, identity, status, reused, finished_at, error)
                   VALUES (?, ?, ?, ?, 'failed', false, ?, ?)""",
                [pipeline, round_num, step, identity, _now(), error[:2000]],
            )

    def forget_steps(self, pipeline: str, round_num: int, steps: list[str], missing: list[str]) -> None:
        """Forget steps of a round so that they run again (storage/audit.py: outputs lost from the store).

        Drops the steps' rows and metrics, and the `missing` artifacts this round first recorded, with the
        edges and row edges into them: the rerun records them again (the same ids if it makes the same
        content). Records of other rounds are left as they are.
        """
        if not steps:
            return
        with self._tx() as con:
            marks = ",".join("?" * len(steps))
            for table in ("steps", "metrics"):
                con.execute(
                    f"DELETE FROM {table} WHERE pipeline = ? AND round = ? AND step IN ({marks})",
                    [pipeline, round_num, *steps],
                )
            mine = (
                con.execute(
                    f"SELECT id FROM artifacts WHERE pipeline = ? AND round = ? AND id IN ({','.join('?' * len(missing))})",
                    [pipeline, round_num, *missing],
                ).fetchall()
                if missing
                else []
            )
            for (artifact_id,) in mine:
                con.execute("DELETE FROM edges WHERE dst = ?", [artifact_id])
                con.execute("DELETE FROM row_edges WHERE artifact_id = ?", [artifact_id])
                con.execute("DELETE FROM artifacts WHERE id = ?", [artifact_id])

    def register_artifact(self, a: ArtifactRef, pipeline: str, round_num: int, step: str) -> None:
        """An artifact produced outside a step (a prompt source file, the base model)."""
        with self._tx() as con:
            con.execute(
                "INSERT INTO artifacts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                [a.id, a.kind, a.format, a.uri, a.bytes, a.rows, pipeline, round_num, step, _now()],
            )

    def prompt_tables_before(self, pipeline: str, before_round: int) -> list[tuple[int, str]]:
        """(round, prompt table id) of each earlier round of this pipeline, oldest first."""
        rows = self._query(
            """SELECT DISTINCT round, json_extract_string(outputs, '$.prompts') AS id FROM steps
               WHERE pipeline = ? AND round < ? AND step = 'curate' AND status = 'completed' ORDER BY round, id""",
            [pipeline, before_round],
        )
        return [(r["round"], r["id"]) for r in rows if r["id"]]

    # --- lineage ----------------------------------------------------------------------------

    def artifacts_by_id(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        """The artifacts rows of these exact ids (those the catalog holds), by id."""
        if not ids:
            return {}
        rows = self._query(f"SELECT * FROM artifacts WHERE id IN ({','.join('?' * len(ids))})", list(ids))
        return {r["id"]: r for r in rows}

    def artifact(self, artifact_id: str) -> dict[str, Any] | None:
        rows = self._query(
            "SELECT * FROM artifacts WHERE id = ? OR id LIKE ? || '%' LIMIT 2", [artifact_id, artifact_id]
        )
        return rows[0] if len(rows) == 1 else None

    def artifacts_of_round(self, pipeline: str, round_num: int) -> list[dict[str, Any]]:
        """Every artifact a step of this round output (including ones first made in earlier rounds)."""
        return self._query(
            """SELECT DISTINCT a.* FROM steps s, json_each(s.outputs) o JOIN artifacts a ON a.id = o.value ->> '$'
               WHERE s.pipeline = ? AND s.round = ?""",
            [pipeline, round_num],
        )

    def lineage(self, artifact_id: str) -> list[dict[str, Any]]:
        """Every edge upstream of an artifact, nearest first: (src, dst, step, round, depth)."""
        return self._query(
            """WITH RECURSIVE up(src, dst, step, pipeline, round, depth) AS (
                   SELECT src, dst, step, pipeline, round, 1 FROM edges WHERE dst = ?
                   UNION
                   SELECT e.src, e.dst, e.step, e.pipeline, e.round, up.depth + 1
                   FROM edges e JOIN up ON e.dst = up.src WHERE up.depth < 200)
               SELECT up.*, a.kind AS src_kind, a.uri AS src_uri, a.rows AS src_rows
               FROM up LEFT JOIN artifacts a ON a.id = up.src ORDER BY depth, step, src""",
            [artifact_id],
        )

    def row_lineage(self, row_id: str) -> list[dict[str, Any]]:
        """Ancestry of one row (training row -> pair -> completions -> prompt -> source file).

        Returns one dict per row edge, by depth (1: the row's own edges), then row_id, parent_id:
        row_id, parent_id, artifact_id, depth, and the kind, round and step of the artifact holding the
        row (None where the catalog has no such artifact).
        """
        with self._tx() as con:
            edges = walk_row_edges(con, row_id)
            ids = sorted({e[2] for e in edges})
            marks = ",".join("?" * len(ids))
            sql = f"SELECT id, kind, round, step FROM artifacts WHERE id IN ({marks})"
            meta = {a[0]: a[1:] for a in con.execute(sql, ids).fetchall()} if ids else {}
        cols = ("row_id", "parent_id", "artifact_id", "depth", "kind", "round", "step")
        return [dict(zip(cols, (*e, *meta.get(e[2], (None, None, None))))) for e in edges]


def level_query(n: int) -> str:
    """The row edges of `n` row ids (bound as parameters), sorted so that a level lists the same way each time."""
    marks = ",".join("?" * n)
    return f"SELECT DISTINCT row_id, parent_id, artifact_id FROM row_edges WHERE row_id IN ({marks}) ORDER BY ALL"


# The recursive query's cap, kept; the walk ends on cycles through `seen`, not through this. A replay of a
# replayed row adds one level per round (tasks/selection/replay.py), so a row replayed in about 45
# successive rounds would reach it.
MAX_ROW_DEPTH = 50


def walk_row_edges(
    con: duckdb.DuckDBPyConnection, row_id: str, max_depth: int = MAX_ROW_DEPTH
) -> list[tuple[str, str, str, int]]:
    """The row edges upstream of `row_id`, level by level: (row_id, parent_id, artifact_id, depth).

    One query per depth for the rows on that level, `WHERE row_id IN (...)`, which DuckDB answers from
    the ART index on row_edges(row_id) (EXPLAIN ANALYZE: "Index Scan", no row group scanned), so a
    lookup costs a few point reads whatever the size of the table. The recursive CTE it replaces joined
    against the whole table at every level: seconds at 10 M edges, growing with history (bench/lineage.py).
    Each row is expanded once, at its nearest depth: a cycle ends, and a prompt that two completions of
    a pair share is listed once. A store without that index (DuckLake) needs only this function
    changed.
    """
    seen, frontier, out = {row_id}, [row_id], []
    for depth in range(1, max_depth + 1):
        if not frontier:
            break
        level = con.execute(level_query(len(frontier)), frontier).fetchall()
        out += [(*e, depth) for e in level]
        frontier = sorted({e[1] for e in level} - seen)
        seen.update(frontier)
    return out
