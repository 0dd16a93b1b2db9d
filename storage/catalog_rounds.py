"""The catalog's rounds: pipelines, each round's latest state, every attempt of a round, manual promotions.

A mixin of `storage.catalog.Catalog`, which owns the connection (`_tx`, `_query`); kept apart so that each
file reads whole. `rounds` holds one row per round as its latest attempt left it; `round_attempts` keeps
every attempt with its owner (pid, host), times, error and the steps it recorded. An attempt goes

    running ──▶ completed | failed | crashed

`crashed` means its owner died without a word (kill -9, the OOM killer, a lost machine): the next trigger
of the pipeline or `flywheel rounds` found it `running` with no owner (flows/crashes.py), so `running`
always means that something is running it.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime, timezone
from typing import Any

import duckdb

from storage.catalog_schema import insert_new, round_mark


def now() -> datetime:
    return datetime.now(timezone.utc)


class RoundsMixin:
    _tx: Callable[[], AbstractContextManager[duckdb.DuckDBPyConnection]]
    _query: Callable[..., list[dict[str, Any]]]
    _mark_snapshot: Callable[[duckdb.DuckDBPyConnection, str], None]

    # --- pipelines --------------------------------------------------------------------------

    def ensure_pipeline(self, name: str, base_model: str, config: dict) -> None:
        with self._tx() as con:
            # The first record keeps its creation time and base model; the config is the latest round's.
            con.execute("UPDATE pipelines SET config = ? WHERE name = ?", [json.dumps(config), name])
            insert_new(
                con,
                "pipelines",
                {"name": name},
                {"created_at": now(), "base_model": base_model, "config": json.dumps(config)},
            )

    def pipeline_config(self, name: str) -> dict | None:
        """The config the pipeline's latest round ran with (None for an unknown pipeline)."""
        rows = self._query("SELECT config FROM pipelines WHERE name = ?", [name])
        return json.loads(rows[0]["config"]) if rows else None

    # --- the round lifecycle ----------------------------------------------------------------

    def start_round(
        self, pipeline: str, round_num: int, config_hash: str, policy_in: str, flow_run_id: str | None
    ) -> int:
        """Open a round, or reopen one that did not complete (its finished steps stay and are reused), as a
        new attempt owned by this process; returns the attempt number (from 1)."""
        t = now()
        with self._tx() as con:
            opened = {"status": "running", "config_hash": config_hash, "policy_in": policy_in}
            opened |= {"flow_run_id": flow_run_id, "started_at": t}
            con.execute(
                """UPDATE rounds SET status = 'running', config_hash = ?, policy_in = ?, flow_run_id = ?, started_at = ?,
                     finished_at = NULL, reason = NULL WHERE pipeline = ? AND round = ?""",
                [config_hash, policy_in, flow_run_id, t, pipeline, round_num],
            )
            insert_new(con, "rounds", {"pipeline": pipeline, "round": round_num}, opened)
            # A caller opens a round only while it holds the pipeline's lock, so an attempt still marked
            # running has no owner left: close it rather than leave two running attempts.
            _end_attempt(con, pipeline, round_num, "crashed", "superseded by a new attempt: its owner was gone")
            (attempt,) = con.execute(
                "SELECT coalesce(max(attempt), 0) + 1 FROM round_attempts WHERE pipeline = ? AND round = ?",
                [pipeline, round_num],
            ).fetchone()
            con.execute(
                """INSERT INTO round_attempts (pipeline, round, attempt, status, started_at, flow_run_id, pid, host,
                     config_hash, policy_in) VALUES (?, ?, ?, 'running', ?, ?, ?, ?, ?, ?)""",
                [
                    pipeline,
                    round_num,
                    attempt,
                    t,
                    flow_run_id,
                    os.getpid(),
                    socket.gethostname(),
                    config_hash,
                    policy_in,
                ],
            )
        return attempt

    def finish_round(
        self,
        pipeline: str,
        round_num: int,
        *,
        candidate: str,
        policy_out: str,
        promoted: bool,
        reason: str,
        manifest_uri: str,
    ) -> None:
        with self._tx() as con:
            con.execute(
                """UPDATE rounds SET status = 'completed', candidate = ?, policy_out = ?, promoted = ?, reason = ?,
                   manifest_uri = ?, finished_at = ? WHERE pipeline = ? AND round = ?""",
                [candidate, policy_out, promoted, reason, manifest_uri, now(), pipeline, round_num],
            )
            _end_attempt(con, pipeline, round_num, "completed", None)
            self._mark_snapshot(con, round_mark(pipeline, round_num))

    def fail_round(self, pipeline: str, round_num: int, reason: str) -> None:
        with self._tx() as con:
            con.execute(
                "UPDATE rounds SET status = 'failed', reason = ?, finished_at = ? WHERE pipeline = ? AND round = ?",
                [reason[:2000], now(), pipeline, round_num],
            )
            _end_attempt(con, pipeline, round_num, "failed", reason[:2000])

    def crash_round(self, pipeline: str, round_num: int, reason: str) -> dict[str, Any] | None:
        """Mark a `running` round whose owner is dead `crashed`, now; its attempt row (None if it was not
        running: another process closed it first)."""
        with self._tx() as con:
            running = "WHERE pipeline = ? AND round = ? AND status = 'running'"
            closed = con.execute(f"SELECT flow_run_id FROM rounds {running}", [pipeline, round_num]).fetchall()
            con.execute(
                f"UPDATE rounds SET status = 'crashed', reason = ?, finished_at = ? {running}",
                [reason[:2000], now(), pipeline, round_num],
            )
            attempt = _end_attempt(con, pipeline, round_num, "crashed", reason[:2000])
        if not closed:
            return None
        # A round opened before attempts were recorded has none: its row stands for it.
        return attempt or {"pipeline": pipeline, "round": round_num, "attempt": None, "flow_run_id": closed[0][0]}

    def reject_round(self, pipeline: str, round_num: int, reason: str) -> bool:
        """A round stopped by bad input: discarded if it has nothing worth keeping (no completed step, no
        earlier attempt), else failed, so its finished steps stay reusable. True if it was discarded."""
        done = self._query(
            """SELECT (SELECT count(*) FROM steps WHERE pipeline = ? AND round = ? AND status = 'completed') AS steps,
                      (SELECT count(*) FROM round_attempts WHERE pipeline = ? AND round = ?) AS attempts""",
            [pipeline, round_num, pipeline, round_num],
        )[0]
        if done["steps"] == 0 and done["attempts"] <= 1:
            self.discard_round(pipeline, round_num)
            return True
        self.fail_round(pipeline, round_num, reason)
        return False

    def discard_round(self, pipeline: str, round_num: int) -> None:
        """Remove a round that failed on bad input before producing anything worth keeping."""
        with self._tx() as con:
            for table in ("rounds", "round_attempts", "steps", "metrics"):
                con.execute(f"DELETE FROM {table} WHERE pipeline = ? AND round = ?", [pipeline, round_num])

    # --- reading rounds ---------------------------------------------------------------------

    def round(self, pipeline: str, round_num: int) -> dict[str, Any] | None:
        """One round's row, with its metrics and steps as in rounds() (None if there is no such round)."""
        return next((r for r in self.rounds(pipeline) if r["round"] == round_num), None)

    def rounds(self, pipeline: str | None = None) -> list[dict[str, Any]]:
        """Every round (of one pipeline), each with its `metrics`, `steps` and number of `attempts`."""
        where, params = ("WHERE pipeline = ?", [pipeline]) if pipeline else ("", [])
        rounds = self._query(f"SELECT * FROM rounds {where} ORDER BY pipeline, round", params)
        metrics = self._query(f"SELECT pipeline, round, name, value FROM metrics {where}", params)
        steps = self._query(
            f"SELECT pipeline, round, step, duration_s, reused, rows_in, rows_out, status FROM steps {where}", params
        )
        tries = self._query(f"SELECT pipeline, round, count(*) AS n FROM round_attempts {where} GROUP BY ALL", params)
        attempts = {(a["pipeline"], a["round"]): a["n"] for a in tries}
        for r in rounds:
            key = (r["pipeline"], r["round"])
            r["metrics"] = {m["name"]: m["value"] for m in metrics if (m["pipeline"], m["round"]) == key}
            r["steps"] = {s["step"]: s for s in steps if (s["pipeline"], s["round"]) == key}
            r["attempts"] = attempts.get(key, 0)
        return rounds

    def attempts(self, pipeline: str | None = None, round_num: int | None = None) -> list[dict[str, Any]]:
        """Every attempt of every round (of one pipeline, of one round), oldest first; `steps` decoded."""
        conds = [c for c, v in (("pipeline = ?", pipeline), ("round = ?", round_num)) if v is not None]
        where = f"WHERE {' AND '.join(conds)}" if conds else ""
        rows = self._query(
            f"SELECT * FROM round_attempts {where} ORDER BY pipeline, round, attempt",
            [v for v in (pipeline, round_num) if v is not None],
        )
        for r in rows:
            r["steps"] = json.loads(r["steps"]) if r["steps"] else {}
        return rows

    def running_rounds(self, pipeline: str | None = None) -> list[dict[str, Any]]:
        """Rounds marked `running`, each with its latest attempt's owner (attempt, pid, host, flow_run_id)."""
        where, params = ("AND r.pipeline = ?", [pipeline]) if pipeline else ("", [])
        return self._query(
            f"""SELECT r.pipeline, r.round, r.started_at, r.flow_run_id, a.attempt, a.pid, a.host
                FROM rounds r LEFT JOIN round_attempts a ON a.pipeline = r.pipeline AND a.round = r.round
                  AND a.attempt = (SELECT max(attempt) FROM round_attempts x
                                   WHERE x.pipeline = r.pipeline AND x.round = r.round)
                WHERE r.status = 'running' {where} ORDER BY r.pipeline, r.round""",
            params,
        )

    def next_round(self, pipeline: str) -> int:
        """The round to run next: the first one not completed (a failed or crashed round is retried)."""
        rows = self._query(
            "SELECT coalesce(max(round), 0) AS r FROM rounds WHERE pipeline = ? AND status = 'completed'", [pipeline]
        )
        return int(rows[0]["r"]) + 1

    def current_policy(self, pipeline: str) -> str | None:
        """Policy the next round starts from: the last completed round's, unless a manual promotion
        (`flywheel promote`) came after that round (None before round 1: the base model)."""
        rows = self._query(
            "SELECT round, policy_out FROM rounds WHERE pipeline = ? AND status = 'completed' ORDER BY round DESC LIMIT 1",
            [pipeline],
        )
        last_round = rows[0]["round"] if rows else 0
        manual = self._query(
            "SELECT policy FROM promotions WHERE pipeline = ? AND after_round >= ? ORDER BY promoted_at DESC LIMIT 1",
            [pipeline, last_round],
        )
        if manual:
            return manual[0]["policy"]
        return rows[0]["policy_out"] if rows else None

    def round_model(self, pipeline: str, round_num: int, which: str) -> str:
        """Artifact id of round `round_num`'s candidate (`which="candidate"`) or of the policy it ended with.

        Raises ValueError, naming the rounds there are, when the round does not exist or has no such model.
        """
        rnd = self._query("SELECT * FROM rounds WHERE pipeline = ? AND round = ?", [pipeline, round_num])
        if not rnd:
            rounds = self._query("SELECT round FROM rounds WHERE pipeline = ? ORDER BY round", [pipeline])
            known = [r["round"] for r in rounds]
            raise ValueError(f"pipeline {pipeline!r} has no round {round_num} (rounds: {known or 'none'})")
        model = rnd[0]["candidate"] if which == "candidate" else rnd[0]["policy_out"]
        if not model:
            raise ValueError(f"round {round_num} of {pipeline!r} has no {which} (status {rnd[0]['status']})")
        return model

    # --- manual promotions ------------------------------------------------------------------

    def new_promotion(self, pipeline: str, from_round: int, which: str, who: str, why: str) -> dict[str, Any]:
        """The row that makes round `from_round`'s candidate (or its kept policy) the pipeline's policy, with
        who, when and why; not recorded yet (add_promotion). Raises ValueError when the round does not exist
        or has no such model (round_model)."""
        policy = self.round_model(pipeline, from_round, which)
        last = "SELECT max(round) AS r FROM rounds WHERE pipeline = ? AND status = 'completed'"
        after = self._query(last, [pipeline])[0]["r"] or 0
        return {
            "pipeline": pipeline,
            "after_round": after,
            "policy": policy,
            "from_round": from_round,
            "which": which,
            "who": who,
            "promoted_at": now(),
            "why": why,
        }

    def add_promotion(self, row: dict[str, Any]) -> None:
        """Record a promotion row (new_promotion's, or one read back from the store); the next round starts
        from its policy. A row already recorded (same pipeline and time) is not added twice."""
        cols = ["pipeline", "after_round", "policy", "from_round", "which", "who", "promoted_at", "why"]
        with self._tx() as con:
            con.execute(
                f"""INSERT INTO promotions SELECT {", ".join("?" * len(cols))} WHERE NOT EXISTS (
                      SELECT 1 FROM promotions WHERE pipeline = ? AND promoted_at = ?)""",
                [row[c] for c in cols] + [row["pipeline"], row["promoted_at"]],
            )

    def record_promotion(self, pipeline: str, from_round: int, which: str, who: str, why: str) -> dict[str, Any]:
        """new_promotion, recorded at once (the catalog only: `flywheel promote` also stores it)."""
        row = self.new_promotion(pipeline, from_round, which, who, why)
        self.add_promotion(row)
        return row

    def promotions(self, pipeline: str) -> list[dict[str, Any]]:
        return self._query("SELECT * FROM promotions WHERE pipeline = ? ORDER BY promoted_at", [pipeline])


def _end_attempt(
    con: duckdb.DuckDBPyConnection, pipeline: str, round_num: int, status: str, error: str | None
) -> dict[str, Any] | None:
    """Close the round's running attempt (if any) with its status, error, end time and the steps recorded
    since it started (a snapshot: the steps table keeps only each step's latest record)."""
    cur = con.execute(
        """SELECT * FROM round_attempts WHERE pipeline = ? AND round = ? AND status = 'running'
           ORDER BY attempt DESC LIMIT 1""",
        [pipeline, round_num],
    )
    row = cur.fetchone()
    if row is None:
        return None
    attempt = dict(zip([d[0] for d in cur.description], row))
    steps = con.execute(
        """SELECT step, status, reused, duration_s, error FROM steps
           WHERE pipeline = ? AND round = ? AND finished_at >= ? ORDER BY started_at""",
        [pipeline, round_num, attempt["started_at"]],
    ).fetchall()
    snapshot = {s: {"status": st, "reused": bool(re), "duration_s": d, "error": e} for s, st, re, d, e in steps}
    t = now()
    con.execute(
        """UPDATE round_attempts SET status = ?, error = ?, finished_at = ?, steps = ?
           WHERE pipeline = ? AND round = ? AND attempt = ?""",
        [status, error, t, json.dumps(snapshot), pipeline, round_num, attempt["attempt"]],
    )
    return {**attempt, "status": status, "error": error, "finished_at": t, "steps": snapshot}
