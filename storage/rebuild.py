"""Rebuild a DuckDB catalog from what the store holds: round manifests, artifact manifests, promotions.

The catalog is a fast index, the store is the record: if the catalog file is lost, every completed
round can be read back from `runs/<pipeline>/round-NNNN/manifest.json`, with its steps, artifacts,
lineage edges, metrics and row-level lineage (recomputed from the stored tables), and every manual
promotion (`flywheel promote`) from `runs/<pipeline>/promotions/<time>.json`.

Run:  flywheel catalog-rebuild --config configs/demo.yaml [--out new.duckdb]
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from storage.artifacts import ArtifactRef, ArtifactStore
from storage.catalog import Catalog, StepRecord
from storage.store import Store


def promotion_key(pipeline: str, promoted_at: datetime) -> str:
    """Store key of a manual promotion's record; the UTC time makes the keys of a pipeline sort in order."""
    return f"runs/{pipeline}/promotions/{promoted_at.astimezone(timezone.utc):%Y%m%dT%H%M%S.%fZ}.json"


def promotion_record(row: dict) -> bytes:
    """The stored form of a promotions row (Catalog.new_promotion), read back by rebuild_catalog."""
    return json.dumps({**row, "promoted_at": row["promoted_at"].isoformat()}, indent=2).encode()


# How each stored table links its rows to their parents (row id column, parent id columns).
ROW_PARENTS = {
    "completions": ("completion_id", ["prompt_id"]),
    "sft": ("row_id", ["completion_id"]),
    "pairs": ("row_id", ["chosen_id", "rejected_id"]),
}


def _row_edges(artifacts: ArtifactStore, step: dict, kind: str, artifact_id: str) -> list[tuple[str, str, str]]:
    if kind == "prompts":
        # A prompt's parent is its source file, named among the curate step's inputs as "source:<name>".
        sources = {k.removeprefix("source:"): v for k, v in step["inputs"].items() if k.startswith("source:")}
        rows = artifacts.get_table(artifact_id).select(["prompt_id", "source"]).to_pylist()
        return [(r["prompt_id"], sources[r["source"]], artifact_id) for r in rows if r["source"] in sources]
    if kind in ROW_PARENTS:
        row_col, parent_cols = ROW_PARENTS[kind]
        rows = artifacts.get_table(artifact_id).select([row_col, *parent_cols]).to_pylist()
        return [(r[row_col], r[p], artifact_id) for r in rows for p in parent_cols]
    return []


def _register_input(catalog: Catalog, artifacts: ArtifactStore, m: dict, name: str, artifact_id: str) -> None:
    """For a manifest without `inputs`: source files and eval sets (by their path), the base model."""
    kind, _, label = name.partition(":")
    if kind in ("source", "eval"):
        section = m["config"]["curation"]["sources"] if kind == "source" else m["config"]["evaluation"]["eval_sets"]
        path = next((Path(x["path"]) for x in section if x["name"] == label), None)
        if path is not None:
            record = ArtifactRef(
                artifact_id,
                "source" if kind == "source" else "eval-set",
                path.resolve().as_uri(),
                None,
                None,
                path.suffix.lstrip("."),
            )
            catalog.register_artifact(record, m["pipeline"], m["round"], kind)
    elif artifacts.exists(artifact_id):
        catalog.register_artifact(artifacts.ref(artifact_id), m["pipeline"], 0, "base-model")


def rebuild_catalog(store: Store, artifacts: ArtifactStore, catalog: Catalog) -> list[tuple[str, int]]:
    """Fill `catalog` (normally a new, empty file) from the store; returns the (pipeline, round) pairs read.
    Manual promotions are restored after the rounds, so each one again overrides the rounds before it."""
    keys = sorted(k for k in store.list("runs/") if k.endswith("/manifest.json"))
    done = []
    for key in keys:
        m = json.loads(store.get_bytes(key))
        pipeline, r = m["pipeline"], m["round"]
        catalog.ensure_pipeline(pipeline, m["config"]["base_model"], m["config"])
        catalog.start_round(pipeline, r, "", m["policy_in"], None)
        inputs = m.get("inputs")  # None in manifests written before they recorded their inputs
        for artifact_id, rec in (inputs or {}).items():
            ref = ArtifactRef(artifact_id, rec["kind"], rec["uri"], rec["bytes"], rec["rows"], rec["format"])
            catalog.register_artifact(ref, pipeline, rec["round"], rec["step"])
        for name, step in m["steps"].items():
            outputs = {k: artifacts.ref(a) for k, a in step["outputs"].items()}
            edges = [e for k, a in outputs.items() for e in _row_edges(artifacts, step, a.kind, a.id)]
            if inputs is None:
                for input_name, src in step["inputs"].items():
                    _register_input(catalog, artifacts, m, input_name, src)
            catalog.record_step(
                StepRecord(
                    pipeline=pipeline,
                    round=r,
                    step=name,
                    identity=step["identity"],
                    inputs=step["inputs"],
                    outputs=outputs,
                    row_edges=edges,
                    rows_in=step["rows_in"],
                    rows_out=step["rows_out"],
                    duration_s=step["duration_s"] or 0.0,
                    reused=bool(step["reused"]),
                    started_at=datetime.fromisoformat(m["written_at"]),
                )
            )
        catalog.record_metrics(pipeline, r, "manifest", m["metrics"])
        catalog.finish_round(
            pipeline,
            r,
            candidate=m["candidate"],
            policy_out=m["policy_out"],
            promoted=m["promoted"],
            reason=m["reason"],
            manifest_uri=store.url(key),
        )
        done.append((pipeline, r))
    for key in sorted(k for k in store.list("runs/") if k.split("/")[2:3] == ["promotions"] and k.endswith(".json")):
        row = json.loads(store.get_bytes(key))
        catalog.add_promotion({**row, "promoted_at": datetime.fromisoformat(row["promoted_at"])})
    return done
