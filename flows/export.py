"""Get a model out: `flywheel export --config X [--round N [--which candidate|policy]] DIR`.

Writes the pipeline's current policy (or round N's candidate, or the policy round N ended with) as a plain
transformers/vLLM directory, the files hash-verified on their way out of the store, with
`flywheel_lineage.json` beside them: which model it is, the round's decision and metrics, and every
lineage edge upstream of it. The directory is built aside and renamed into place, so a failed export
never leaves half a model that looks complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from configs.schema import FlywheelConfig
from storage.catalog import Catalog
from tasks.stage import runtime

LINEAGE_FILE = "flywheel_lineage.json"


class ExportError(Exception):
    """What to export does not exist, or where to put it is taken (one line: what and how to fix)."""


def pick_model(catalog: Catalog, pipeline: str, round_num: int | None, which: str) -> tuple[str, dict | None]:
    """(artifact id, its round's row) to export: the current policy when `round_num` is None, else round N's
    candidate or kept policy (Catalog.round_model, as `flywheel promote` picks it)."""
    if round_num is None:
        current = catalog.current_policy(pipeline)
        if current is None:
            raise ExportError(f"pipeline {pipeline!r} has no completed round yet: run one, or pass --round")
        return current, next((r for r in reversed(catalog.rounds(pipeline)) if r["policy_out"] == current), None)
    try:
        return catalog.round_model(pipeline, round_num, which), catalog.round(pipeline, round_num)
    except ValueError as e:
        raise ExportError(str(e)) from None


def export_model(cfg: FlywheelConfig, out_dir: Path, round_num: int | None = None, which: str = "candidate") -> dict:
    """Write the chosen model and its lineage summary into `out_dir` (new or empty); returns the summary."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ExportError(f"{out_dir} is not empty: export into a new directory")
    rt = runtime(cfg)
    model_id, rnd = pick_model(rt.catalog, cfg.pipeline, round_num, which)
    summary: dict[str, Any] = {
        "pipeline": cfg.pipeline,
        "artifact_id": model_id,
        "uri": rt.artifacts.ref(model_id).uri,
        "which": "policy" if round_num is None else which,
        "round": rnd["round"] if rnd else None,
        "promoted": rnd["promoted"] if rnd else None,
        "reason": rnd["reason"] if rnd else None,
        "metrics": {k: v for k, v in (rnd or {}).get("metrics", {}).items() if k.startswith("eval/")},
        "lineage": [
            {k: e[k] for k in ("src", "dst", "step", "round", "src_kind", "src_uri")}
            for e in rt.catalog.lineage(model_id)
        ],
    }
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}-"))
    try:
        shutil.copytree(rt.artifacts.get_model(model_id), tmp, dirs_exist_ok=True)
        (tmp / LINEAGE_FILE).write_text(json.dumps(summary, indent=2, default=str) + "\n")
        if out_dir.exists():
            out_dir.rmdir()  # empty: checked above
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary
