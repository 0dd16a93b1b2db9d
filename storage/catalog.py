"""The catalog: pipelines, rounds, steps, artifacts, lineage edges and metrics, in DuckDB or on DuckLake.

This file holds the connection, the schema, steps, artifacts and lineage; pipelines, rounds, their
attempts and manual promotions are storage/catalog_rounds.py (a mixin of Catalog).

Every write goes through Catalog, one transaction per call, in SQL both backends run (DuckLake has no
keys, ON CONFLICT, RETURNING or indexes: an upsert is a delete and an insert in one transaction).
- `storage.catalog: duckdb` (one machine): one DuckDB file. A connection is opened per call and closed
  after it, so several processes (two flows, a CLI query) can share the file: DuckDB lets only one
  process hold it at a time, and a caller that finds it locked waits and retries.
  Query it with any DuckDB client:  duckdb .flywheel/catalog.duckdb "select * from rounds"
- `storage.catalog: ducklake` (several machines): storage/catalog_lake.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb

from storage.artifacts import ArtifactRef
from storage.catalog_lake import ALIAS, LakeConnection, LakeSnapshot, LakeSpec
from storage.catalog_lock import WAIT_S, held_connection
from storage.catalog_rounds import RoundsMixin
from storage.catalog_schema import SCHEMA, insert_new, lake_schema, migrate_schema, round_mark, upsert


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
    """The catalog; its rounds, attempts and promotions are in storage/catalog_rounds.py.

    `path` is the DuckDB file, or with `lake` the DuckLake catalog's local marker (the SQLite file where
    that holds the metadata): see the module doc.
    """

    # Class defaults, so that a Catalog made without __init__ (as_of_round's views) is a DuckDB-file one.
    lake: LakeConnection | None = None
    _reader: LakeSnapshot | None = None  # a read-only snapshot (as_of_round)

    def __init__(self, path: Path, lock_wait_s: float = WAIT_S, lake: LakeSpec | None = None):
        self.path, self.lock_wait_s = Path(path), lock_wait_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lake = LakeConnection(lake, lock_wait_s) if lake is not None else None
        with self._tx() as con:
            if self.lake is None:
                migrate_schema(con)
            con.execute(SCHEMA if self.lake is None else lake_schema())

    @property
    def where(self) -> str:
        """Where the catalog is, for messages: the DuckDB file, or the lake's metadata and data."""
        return str(self.path) if self.lake is None else self.lake.spec.describe()

    def _tx(self) -> AbstractContextManager[duckdb.DuckDBPyConnection]:
        """One connection (a cursor on the lake), one transaction: commit on success, roll back on any
        error. A DuckDB file another process holds (a reader too) is waited for: storage/catalog_lock.py."""
        if self._reader is not None:
            return self._reader.tx()
        if self.lake is not None:
            return self.lake.tx()
        return self._file_tx()

    @contextmanager
    def _file_tx(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with held_connection(self.path, self.lock_wait_s) as con:
            try:
                con.execute("BEGIN TRANSACTION")
                yield con
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

    def _mark_snapshot(self, con: duckdb.DuckDBPyConnection, message: str) -> None:
        """Name the snapshot this transaction commits (DuckLake), so that as_of_round can find it."""
        if self.lake is not None:
            con.execute(f"CALL {ALIAS}.set_commit_message('flywheel', ?)", [message])

    def as_of_round(self, pipeline: str, round_num: int) -> Catalog:
        """The catalog as it was when this round finished: a read-only Catalog (DuckLake time travel)."""
        if self.lake is None:
            raise ValueError(
                f"the catalog {self.path} is a DuckDB file, which keeps no history: time travel needs "
                "`storage.catalog: ducklake`"
            )
        snapshot = self.lake.snapshot_of(round_mark(pipeline, round_num))
        if snapshot is None:
            raise LookupError(f"no finished round {round_num} of pipeline {pipeline!r} in {self.where}")
        view = object.__new__(Catalog)
        view.path, view.lock_wait_s, view.lake = self.path, self.lock_wait_s, self.lake
        view._reader = self.lake.at_snapshot(snapshot)
        return view

    def close(self) -> None:
        if self.lake is not None:
            self.lake.close()

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
            upsert(
                con,
                "steps",
                {"pipeline": rec.pipeline, "round": rec.round, "step": rec.step},
                {
                    "identity": rec.identity,
                    "status": "completed",
                    "reused": rec.reused,
                    "flow_run_id": rec.flow_run_id,
                    "task_run_id": rec.task_run_id,
                    "started_at": rec.started_at or finished,
                    "finished_at": finished,
                    "duration_s": rec.duration_s,
                    "rows_in": rec.rows_in,
                    "rows_out": rec.rows_out,
                    "inputs": json.dumps(rec.inputs),
                    "outputs": json.dumps({k: a.id for k, a in rec.outputs.items()}),
                },
            )
            for a in rec.outputs.values():
                _add_artifact(con, a, rec.pipeline, rec.round, rec.step, finished)
                for src in rec.inputs.values():
                    if src != a.id:
                        insert_new(
                            con,
                            "edges",
                            {"src": src, "dst": a.id},
                            {"step": rec.step, "pipeline": rec.pipeline, "round": rec.round},
                        )
            _put_metrics(con, rec.pipeline, rec.round, rec.step, rec.metrics)
            if rec.row_edges and not rec.reused:
                import pyarrow as pa

                new_artifacts = sorted({e[2] for e in rec.row_edges})
                con.execute(
                    f"DELETE FROM row_edges WHERE artifact_id IN ({','.join('?' * len(new_artifacts))})", new_artifacts
                )
                # Sorted, so that each Parquet row group of a DuckLake table covers a narrow range of ids and
                # a lookup skips the others (there is no index there).
                rows, parents, arts = zip(*sorted(rec.row_edges))
                edges_tbl = pa.table({"child_id": rows, "parent_id": parents, "artifact_id": arts})  # noqa: F841
                con.execute("INSERT INTO row_edges SELECT * FROM edges_tbl")

    def record_metrics(self, pipeline: str, round_num: int, step: str, metrics: dict[str, float]) -> None:
        with self._tx() as con:
            _put_metrics(con, pipeline, round_num, step, metrics)

    def record_step_failure(self, pipeline: str, round_num: int, step: str, identity: str, error: str) -> None:
        with self._tx() as con:
            upsert(
                con,
                "steps",
                {"pipeline": pipeline, "round": round_num, "step": step},
                {
                    "identity": identity,
                    "status": "failed",
                    "reused": False,
                    "finished_at": _now(),
                    "error": error[:2000],
                },
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
            _add_artifact(con, a, pipeline, round_num, step, _now())

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
            """SELECT DISTINCT a.* FROM steps s, json_each(s.outputs) o JOIN artifacts a ON a.id = (o.value ->> '$')
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
        row_id (the row's; row_edges calls it child_id), parent_id, artifact_id, depth, and the kind, round
        and step of the artifact holding the row (None where the catalog has no such artifact).
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
    return f"SELECT DISTINCT child_id, parent_id, artifact_id FROM row_edges WHERE child_id IN ({marks}) ORDER BY ALL"


# The recursive query's cap, kept; the walk ends on cycles through `seen`, not through this. A replay of a
# replayed row adds one level per round (tasks/selection/replay.py), so a row replayed in about 45
# successive rounds would reach it.
MAX_ROW_DEPTH = 50


def walk_row_edges(
    con: duckdb.DuckDBPyConnection, row_id: str, max_depth: int = MAX_ROW_DEPTH
) -> list[tuple[str, str, str, int]]:
    """The row edges upstream of `row_id`, level by level: (row_id, parent_id, artifact_id, depth).

    One query per depth for the rows on that level, `WHERE child_id IN (...)`, which DuckDB answers from
    the ART index on row_edges(child_id) (EXPLAIN ANALYZE: "Index Scan", no row group scanned), so a
    lookup costs a few point reads whatever the size of the table. The recursive CTE it replaces joined
    against the whole table at every level: seconds at 10 M edges, growing with history (bench/lineage.py).
    Each row is expanded once, at its nearest depth: a cycle ends, and a prompt that two completions of
    a pair share is listed once. On DuckLake, which has no index, each level reads the row groups whose
    id range holds the frontier (record_step writes them sorted); bench/lineage_lake.py compares the two.
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


def _add_artifact(con, a: ArtifactRef, pipeline: str, round_num: int, step: str, at: datetime) -> None:
    """Record an artifact once: the first record of an id stays (its round and step are where it was made)."""
    insert_new(
        con,
        "artifacts",
        {"id": a.id},
        {"kind": a.kind, "format": a.format, "uri": a.uri, "bytes": a.bytes, "rows": a.rows}
        | {"pipeline": pipeline, "round": round_num, "step": step, "created_at": at},
    )


def _put_metrics(con, pipeline: str, round_num: int, step: str, metrics: dict[str, float]) -> None:
    for name, value in metrics.items():
        upsert(
            con,
            "metrics",
            {"pipeline": pipeline, "round": round_num, "name": name},
            {"step": step, "value": float(value)},
        )
