"""Read prompt sources and eval sets (JSONL or Parquet) into plain dict rows.

Pure I/O on local files, no Prefect: the curate task calls `read_source` once per configured source and
`read_eval_set` for each held-out eval set. Every problem with a file is a `SourceError` whose message is
one line saying what is wrong, where, and which config key to fix, raised before any heavy work starts.

Try it on a config:  python -m tasks.curate configs/demo.yaml   (reads every source and eval set)
Tests:  python -m pytest tests/test_curate.py -q
"""
from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator

from configs.schema import EvalSetConfig, SourceConfig

_EXTENSIONS = {".jsonl": "jsonl", ".parquet": "parquet", ".csv": "csv"}
_PARQUET_BATCH = 65_536  # rows per batch: bounded memory on big files, and `limit` stops reading early


class SourceError(Exception):
    """A prompt source or eval set cannot be used as configured (one-line message: what, where, fix)."""


class _Where:
    """Names a file in error messages: its label ("source 'pool'") and the config list it comes from."""

    def __init__(self, label: str, key: str, path: str):
        self.label, self.key, self.path = label, key, path

    def error(self, what: str, fix: str) -> SourceError:
        return SourceError(f"{self.label}: {what} ({fix})")


def read_source(cfg: SourceConfig) -> list[dict]:
    """Read one prompt source.

    Returns one dict per row (at most `cfg.limit`), in file order:
      prompt      raw text of `cfg.prompt_field`, or None when it is not a non-empty string (such rows are
                  not errors here: curation counts them as malformed)
      answer      `cfg.answer_field` as a string (numbers converted), None when absent/null or not configured
      provenance  {field: value} for `cfg.keep_fields`
      source_row  0-based index of the row in the file
    Raises SourceError for a missing/unreadable file, an unknown extension, invalid JSON (with its line
    number), and for configured fields that the file does not have (listing the columns it does have).
    """
    where = _Where(f"source {cfg.name!r}", "curation.sources[]", cfg.path)
    path, fmt = _check_file(where, cfg.format)
    answer_fields = [cfg.answer_field] if cfg.answer_field else []
    needed = list(dict.fromkeys([cfg.prompt_field, *answer_fields, *cfg.keep_fields]))
    columns, records = _load(where, path, fmt, needed, cfg.limit)
    _require_field(where, columns, cfg.prompt_field, "prompt_field")
    if cfg.answer_field:
        _require_field(where, columns, cfg.answer_field, "answer_field")
    missing = [f for f in cfg.keep_fields if f not in columns]
    if missing:
        raise where.error(
            f"keep_fields {missing} not in {cfg.path}, which has columns: {_names(columns)}",
            f"fix {where.key}.keep_fields",
        )
    _require_rows(where, records)
    rows = []
    for i, (_, rec) in enumerate(records):
        prompt = rec.get(cfg.prompt_field)
        rows.append({
            "prompt": prompt if isinstance(prompt, str) and prompt.strip() else None,
            "answer": _answer_str(rec.get(cfg.answer_field)) if cfg.answer_field else None,
            "provenance": {f: rec.get(f) for f in cfg.keep_fields},
            "source_row": i,
        })
    return rows


def read_eval_set(cfg: EvalSetConfig) -> list[dict]:
    """Read a held-out eval set: [{"prompt": str, "answer": str}], in file order.

    Eval sets are small and curated, so every row must have a non-empty prompt and an answer (string or
    number); a bad row is a SourceError naming its line (JSONL) or row (Parquet).
    """
    where = _Where(f"eval set {cfg.name!r}", "evaluation.eval_sets[]", cfg.path)
    path, fmt = _check_file(where, "auto")
    columns, records = _load(where, path, fmt, list(dict.fromkeys([cfg.prompt_field, cfg.answer_field])), None)
    _require_field(where, columns, cfg.prompt_field, "prompt_field")
    _require_field(where, columns, cfg.answer_field, "answer_field")
    _require_rows(where, records)
    rows = []
    for loc, rec in records:
        prompt, answer = rec.get(cfg.prompt_field), _answer_str(rec.get(cfg.answer_field))
        if not (isinstance(prompt, str) and prompt.strip()):
            raise where.error(
                f"{loc} of {cfg.path}: field {cfg.prompt_field!r} must be a non-empty string, got {_short(prompt)}",
                "fix the file",
            )
        if answer is None or not answer.strip():
            raise where.error(
                f"{loc} of {cfg.path}: field {cfg.answer_field!r} must be a non-empty string or a number, "
                f"got {_short(rec.get(cfg.answer_field))}",
                "fix the file",
            )
        rows.append({"prompt": prompt, "answer": answer})
    return rows


def _check_file(where: _Where, fmt: str) -> tuple[Path, str]:
    path = Path(where.path)
    if not path.exists():
        raise where.error(f"file not found: {where.path}", f"fix {where.key}.path")
    if path.is_dir():
        # A directory is a dataset saved with datasets' save_to_disk (it holds its state.json or dataset_dict.json).
        saved = any((path / f).exists() for f in ("state.json", "dataset_dict.json"))
        if fmt in ("auto", "hf_disk") and saved and where.key.startswith("curation"):
            return path, "hf_disk"
        raise where.error(f"not a file: {where.path}", f"fix {where.key}.path (a directory must come from save_to_disk)")
    if fmt == "auto":
        fmt = _EXTENSIONS.get(path.suffix.lower(), "")
        if not fmt:
            fix = "rename it to .jsonl, .parquet or .csv"
            if where.key.startswith("curation"):
                fix += f", or set {where.key}.format"
            raise where.error(f"unknown file extension {path.suffix!r}: {where.path}", fix)
    return path, fmt


def _load(where: _Where, path: Path, fmt: str, needed: list[str], limit: int | None
          ) -> tuple[list[str], list[tuple[str, dict]]]:
    """(column names, [(location for messages, record)]); reads at most `limit` records."""
    try:
        if fmt == "jsonl":
            records = list(_iter_jsonl(where, path, limit))
            columns = list(dict.fromkeys(k for _, rec in records for k in rec))
        elif fmt == "csv":
            columns, records = _read_csv(path, limit)
        elif fmt == "hf_disk":
            columns, records = _read_saved_dataset(where, path, limit)
        else:
            columns, records = _read_parquet(where, path, needed, limit)
    except (OSError, UnicodeDecodeError) as e:
        raise where.error(f"cannot read {where.path}: {type(e).__name__}: {_first_line(e)}",
                          f"check the file, or fix {where.key}.path") from e
    if fmt == "jsonl":
        _require_rows(where, records)  # an empty JSONL file has no columns either: say so first
    return columns, records


def _iter_jsonl(where: _Where, path: Path, limit: int | None) -> Iterator[tuple[str, dict]]:
    count = 0
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if limit is not None and count >= limit:
                return
            if not line.strip():
                continue  # blank lines (often a trailing one) are not rows
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise where.error(f"invalid JSON on line {lineno} of {where.path}: {e.msg}",
                                  "fix the file: one JSON object per line") from None
            if not isinstance(rec, dict):
                raise where.error(f"line {lineno} of {where.path} is a JSON {type(rec).__name__}, not an object",
                                  "fix the file: one JSON object per line")
            count += 1
            yield f"line {lineno}", rec


def _read_csv(path: Path, limit: int | None) -> tuple[list[str], list[tuple[str, dict]]]:
    """CSV with a header row; every value is text (an answer "45" stays "45")."""
    import csv

    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or [])
        records = []
        for rec in reader:
            if limit is not None and len(records) >= limit:
                break
            # The header is line 1, so data row i (0-based) is on line i + 2 when no field spans lines.
            records.append((f"line {reader.line_num}", rec))
    return columns, records


def _read_saved_dataset(where: _Where, path: Path, limit: int | None) -> tuple[list[str], list[tuple[str, dict]]]:
    """A `datasets.save_to_disk` directory; of a DatasetDict, the "train" split."""
    from datasets import DatasetDict, load_from_disk

    ds = load_from_disk(str(path))
    if isinstance(ds, DatasetDict):
        if "train" not in ds:
            raise where.error(f"{where.path} is a DatasetDict without a 'train' split (splits: {', '.join(ds)})",
                              "save the split to use with save_to_disk on its own")
        ds = ds["train"]
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    return list(ds.column_names), [(f"row {i} (0-based)", rec) for i, rec in enumerate(ds)]


def _read_parquet(where: _Where, path: Path, needed: list[str], limit: int | None
                  ) -> tuple[list[str], list[tuple[str, dict]]]:
    import pyarrow.parquet as pq
    from pyarrow import ArrowException

    try:
        pf = pq.ParquetFile(path)
        columns = list(pf.schema_arrow.names)
        # Read only the configured columns; fields the file lacks are reported by the caller.
        wanted = [c for c in needed if c in columns]
        records: list[tuple[str, dict]] = []
        if not wanted:
            return columns, records  # nothing configured exists: the caller reports the missing field
        for batch in pf.iter_batches(batch_size=_PARQUET_BATCH, columns=wanted):
            for rec in batch.to_pylist():
                if limit is not None and len(records) >= limit:
                    return columns, records
                records.append((f"row {len(records)} (0-based)", rec))
    except ArrowException as e:
        raise where.error(f"not a readable Parquet file: {where.path}: {_first_line(e)}",
                          f"check the file, or fix {where.key}.path") from e
    return columns, records


def _require_rows(where: _Where, records: list) -> None:
    if not records:
        raise where.error(f"{where.path} has no rows", f"fill the file, or fix {where.key}.path")


def _require_field(where: _Where, columns: list[str], field: str, key: str) -> None:
    if field not in columns:
        raise where.error(
            f"{key} {field!r} not in {where.path}, which has columns: {_names(columns)}", f"fix {where.key}.{key}"
        )


def _answer_str(value: Any) -> str | None:
    """Reference answers are compared as text later, so numbers become strings; bools/lists are not answers."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | Decimal):
        return str(value)
    if isinstance(value, float):
        return None if value != value else repr(value)  # NaN is how Parquet/pandas often spell "missing"
    return None


def _names(columns: list[str]) -> str:
    return ", ".join(columns) if columns else "none"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0]
