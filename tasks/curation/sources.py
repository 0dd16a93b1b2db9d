"""Read prompt sources and eval sets into plain dict rows; a source's bad rows are quarantined, not fatal.

Pure I/O, no Prefect: curation calls `read_source` per source (JSONL/Parquet/CSV file, save_to_disk directory
or `datasets.load_dataset` spec) and `read_eval_set` per eval set. A broken row (bad bytes or JSON, a missing
or mistyped field) lands in `SourceRows.quarantined` with reason and location; a problem with the whole
source (no file, a field no row has, every row broken) is a one-line `SourceError`: what, where, what to fix.
Eval sets are small and curated, so any bad row in one is a `SourceError`. An s3:// path is read from its
downloaded copy (`local`), fetched by tasks/curation/store_inputs.py; messages keep naming the URI.

Try it on a config:  python -m tasks.curate configs/demo.yaml   (reads every source and eval set)
Tests:  python -m pytest tests/test_sources.py -q
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from itertools import islice
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from configs.schema import EvalSetConfig, SourceConfig
from storage.ids import sha256_bytes, sha256_dir, sha256_file, stable_json
from tasks.curation.perf import gc_paused
from tasks.curation.source_files import (
    Bad,
    Records,
    SourceError,
    Where,
    _a,
    check_file,
    dataset_records,
    load_dataset,
    open_file,
    reading,
)

__all__ = [
    "QUARANTINE_REASONS",
    "SourceError",
    "SourceRows",
    "read_eval_set",
    "read_source",
    "source_fingerprint",
    "source_uri",
]

QUARANTINE_REASONS = (
    "undecodable",
    "invalid_json",
    "not_an_object",
    "missing_field",
    "wrong_type",
    "empty",
    "over_length",
)
_RAW_CHARS = 1000  # a quarantined row keeps this much of its raw text: enough to see what is wrong


@dataclass(frozen=True)
class SourceRows:
    """One source's rows: good ones for curation, bad ones for the quarantine artifact (both in file order)."""

    rows: list[dict]
    quarantined: list[dict]

    @property
    def rows_in(self) -> int:
        return len(self.rows) + len(self.quarantined)


def read_source(cfg: SourceConfig, max_row_chars: int | None = None, local: Path | None = None) -> SourceRows:
    """Read one prompt source (at most `cfg.limit` rows, quarantined ones included).

    Good rows:  {"prompt": str (non-empty), "system": str | None (first system turn of messages_field),
                 "answer": str | None (numbers as text; None when answer_field is None),
                 "provenance": {keep_field: value}, "source_row": 0-based position among the rows read}
    Quarantined: {"source", "location" ("line 7" | "row 3 (0-based)"), "reason" (QUARANTINE_REASONS),
                  "detail", "raw" (at most 1000 chars)}
    Args:
        max_row_chars: a prompt longer than this is a broken row (reason "over_length"); None: no limit.
        local: where the bytes of an s3:// `path` were downloaded (tasks.curation.store_inputs.fetched).
    Raises SourceError for a missing/unreadable source, an unknown extension, a configured field that no row
    has (listing the columns there are), a source without rows, and a source whose every row is quarantined.
    """
    where = _source_where(cfg, local)
    main = cfg.messages_field or cfg.prompt_field
    needed = list(dict.fromkeys([main, *([cfg.answer_field] if cfg.answer_field else []), *cfg.keep_fields]))
    with reading(where), gc_paused():  # millions of row dicts that all stay alive: see tasks.curation.perf
        columns, records = _open_source(where, cfg, needed)
        if columns is not None:  # the schema is known up front: check the fields before reading a row
            _check_fields(where, cfg, columns)
        # JSONL has no schema: a field is missing from every row only if it is still unseen at the end.
        unseen = dict.fromkeys(needed) if columns is None else {}
        seen_columns: dict[str, None] = {}
        rows: list[dict] = []
        quarantined: list[dict] = []
        parsed = 0
        for i, (line, rec) in enumerate(islice(records, cfg.limit)):
            if rec.__class__ is Bad:
                quarantined.append(_quarantine(cfg.name, line, i, rec, None))
                continue
            parsed += 1
            if unseen:  # stops costing anything once every field has been seen
                seen_columns.update(dict.fromkeys(rec))
                for f in [f for f in unseen if f in rec]:
                    del unseen[f]
            row = _to_row(rec, cfg, max_row_chars, i)
            if row.__class__ is Bad:
                quarantined.append(_quarantine(cfg.name, line, i, row, rec))
            else:
                rows.append(row)
    if not rows and not quarantined:
        key = "dataset" if cfg.dataset else "path"
        raise where.error(f"{where.path} has no rows", f"fill it, or fix {where.key}.{key}")
    if parsed and unseen:
        _check_fields(where, cfg, list(seen_columns))
    if not rows:
        counts = Counter(q["reason"] for q in quarantined)
        summary = ", ".join(f"{r} {counts[r]}" for r in QUARANTINE_REASONS if counts[r])
        first = quarantined[0]
        # Read up to the limit (preflight reads a sample): the rows past it were not looked at.
        n = len(quarantined)
        which = f"all of the first {n} rows" if cfg.limit is not None and n >= cfg.limit else f"all {n} rows"
        raise where.error(
            f"{which} of {where.path} are malformed ({summary}; first: {first['location']}: {first['detail']})",
            f"fix the file, or the field settings in {where.key}",
        )
    return SourceRows(rows, quarantined)


def read_eval_set(cfg: EvalSetConfig, local: Path | None = None) -> list[dict]:
    """Read a held-out eval set: [{"prompt": str, "answer": str | None}], in file order.

    Every row must have a non-empty prompt, and an answer (string or number) when `answer_field` is set;
    a bad row is a SourceError naming its line (JSONL, CSV) or row (Parquet). With `decontam_field` a row
    also has "decontam_text", the text decontamination compares with. `metric: ifeval` sets also
    give each row its "instruction_id_list" and "kwargs" (as stored: lists, or their JSON text), which must
    be present; the checkers report malformed ones per prompt. `local`: where an s3:// `path` was downloaded.
    """
    where = Where(f"eval set {cfg.name!r}", "evaluation.eval_sets[]", cfg.path, local)
    path, fmt = check_file(where, "auto")
    with reading(where):
        extra = [cfg.instructions_field, cfg.kwargs_field] if cfg.metric == "ifeval" else []
        extra += [cfg.decontam_field] if cfg.decontam_field else []
        needed = [f for f in (cfg.prompt_field, cfg.answer_field, *extra) if f]
        columns, stream = open_file(where, path, fmt, needed, None)
        records = list(stream)
    for i, (line, rec) in enumerate(records):
        if rec.__class__ is Bad:
            loc = _location(line, i)
            what = (
                f"invalid JSON on {loc} of {cfg.path}: {rec.detail}"
                if rec.reason == "invalid_json"
                else f"{loc} of {cfg.path} is {rec.detail}"
            )
            raise where.error(what, "fix the file: one JSON object per line" if fmt == "jsonl" else "fix the file")
    if not records:
        raise where.error(f"{cfg.path} has no rows", f"fill it, or fix {where.key}.path")
    if columns is None:
        columns = list(dict.fromkeys(k for _, rec in records for k in rec))
    _require_field(where, columns, cfg.prompt_field, "prompt_field")
    if cfg.answer_field:
        _require_field(where, columns, cfg.answer_field, "answer_field")
    if cfg.metric == "ifeval":
        _require_field(where, columns, cfg.instructions_field, "instructions_field")
    if cfg.decontam_field:
        _require_field(where, columns, cfg.decontam_field, "decontam_field")
    rows = []
    for i, (line, rec) in enumerate(records):
        prompt = rec.get(cfg.prompt_field)
        answer = _answer_str(rec.get(cfg.answer_field)) if cfg.answer_field else None
        if not (isinstance(prompt, str) and prompt.strip()):
            raise where.error(
                f"{_location(line, i)} of {cfg.path}: field {cfg.prompt_field!r} must be a non-empty "
                f"string, got {_short(prompt)}",
                "fix the file",
            )
        if cfg.answer_field and (answer is None or not answer.strip()):
            raise where.error(
                f"{_location(line, i)} of {cfg.path}: field {cfg.answer_field!r} must be a non-empty "
                f"string or a number, got {_short(rec.get(cfg.answer_field))}",
                "fix the file",
            )
        row = {"prompt": prompt, "answer": answer}
        if cfg.decontam_field:
            text = rec.get(cfg.decontam_field)
            if not (isinstance(text, str) and text.strip()):
                raise where.error(
                    f"{_location(line, i)} of {cfg.path}: field {cfg.decontam_field!r} (decontam_field) must be a "
                    f"non-empty string, got {_short(text)}",
                    "fix the file",
                )
            row["decontam_text"] = text
        if cfg.metric == "ifeval":
            row["instruction_id_list"] = rec.get(cfg.instructions_field)
            row["kwargs"] = rec.get(cfg.kwargs_field)
            if not row["instruction_id_list"]:
                raise where.error(
                    f"{_location(line, i)} of {cfg.path}: field {cfg.instructions_field!r} must list the "
                    f"prompt's IFEval instruction ids, got {_short(row['instruction_id_list'])}",
                    "fix the file",
                )
        rows.append(row)
    return rows


def source_fingerprint(cfg: SourceConfig, local: Path | None = None) -> str:
    """sha256 hex of the source's content: a file's bytes, a save_to_disk directory's files (by relative
    path), or a load_dataset spec plus the loaded dataset's fingerprint. Renaming a file keeps it, and an
    s3:// object (read from its downloaded copy `local`) has the id of the same bytes as a local file."""
    where = _source_where(cfg, local)
    if cfg.dataset is not None:
        # datasets caches the load, so loading again for read_source costs little.
        ds = load_dataset(where, cfg.dataset)
        return sha256_bytes(f"{stable_json(cfg.dataset.model_dump(mode='json'))}\n{ds._fingerprint}".encode())
    path, _ = check_file(where, cfg.format)
    with reading(where):
        return sha256_dir(path) if path.is_dir() else sha256_file(path)


def source_uri(cfg: SourceConfig) -> str:
    """Where the source lives, as the config names it: file:///abs/path, s3://bucket/key as given, or
    hf://datasets/<path>?name=..&split=.. (the catalog registers it when the source is not snapshotted)."""
    if cfg.path is not None and cfg.path.startswith("s3://"):
        return cfg.path
    if cfg.dataset is None:
        return Path(cfg.path).resolve().as_uri()
    spec = cfg.dataset
    files = spec.data_files
    if files is not None and not isinstance(files, str):
        files = stable_json(files)
    params = {"name": spec.name, "split": spec.split, "revision": spec.revision, "data_files": files}
    return f"hf://datasets/{spec.path}?" + urlencode({k: v for k, v in params.items() if v is not None}, safe="/")


# ---- one row --------------------------------------------------------------------------------------------


def _to_row(rec: dict, cfg: SourceConfig, max_chars: int | None, i: int) -> dict | Bad:
    """A good row dict, or the first problem of the record. The common path has no exception and no regex."""
    system = None
    if cfg.messages_field:
        got = _from_messages(rec, cfg.messages_field)
        if got.__class__ is Bad:
            return got
        prompt, system = got
    else:
        prompt = rec.get(cfg.prompt_field)
        if not isinstance(prompt, str):
            return _field_problem(rec, cfg.prompt_field, _a(prompt) + ", expected a string")
        if not prompt or prompt.isspace():  # isspace stops at the first visible character; strip would copy
            return Bad("empty", f"field {cfg.prompt_field!r} is empty or whitespace")
    if max_chars is not None and len(prompt) > max_chars:
        return Bad("over_length", f"prompt is {len(prompt):,} characters, over max_row_chars ({max_chars:,})")
    answer = None
    if cfg.answer_field:
        value = rec.get(cfg.answer_field)
        answer = _answer_str(value)
        if answer is None:
            if isinstance(value, float) and math.isnan(value):  # how pandas-written Parquet spells "missing"
                return Bad("missing_field", f"field {cfg.answer_field!r} is NaN")
            shown = f"{_a(value)} ({value!r})" if isinstance(value, float) else _a(value)
            return _field_problem(rec, cfg.answer_field, f"{shown}, expected a string or a finite number")
    return {
        "prompt": prompt,
        "system": system,
        "answer": answer,
        "provenance": {f: rec.get(f) for f in cfg.keep_fields},
        "source_row": i,
    }


def _from_messages(rec: dict, field: str) -> tuple[str, str | None] | Bad:
    """(last user turn, first system turn or None) of a chat, or why it has none."""
    messages = rec.get(field)
    if not isinstance(messages, list):
        return _field_problem(rec, field, _a(messages) + ", expected a list of {role, content} messages")
    prompt = system = None
    for j, m in enumerate(messages):
        if not isinstance(m, dict):
            return Bad("wrong_type", f"field {field!r}: message {j} is {_a(m)}, expected {{role, content}}")
        role, content = m.get("role"), m.get("content")
        if not (isinstance(role, str) and isinstance(content, str)):
            key, value = ("role", role) if not isinstance(role, str) else ("content", content)
            return Bad("wrong_type", f"field {field!r}: message {j} {key} is {_a(value)}, expected a string")
        if role == "user":
            prompt = content
        elif role == "system" and system is None:
            system = content
    if prompt is None:
        return Bad("empty", f"field {field!r} has no user turn")
    if not prompt or prompt.isspace():
        return Bad("empty", f"field {field!r}: the last user turn is empty or whitespace")
    return prompt, system


def _field_problem(rec: dict, field: str, wrong: str) -> Bad:
    """missing_field for an absent or null value, else wrong_type ("field 'x' is <wrong>")."""
    if rec.get(field) is None:
        return Bad("missing_field", f"field {field!r} is {'null' if field in rec else 'missing'}")
    return Bad("wrong_type", f"field {field!r} is {wrong}")


def _answer_str(value: Any) -> str | None:
    """Reference answers are compared as text later, so numbers become strings; bools/lists are not answers."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | Decimal):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else None
    return None


def _quarantine(source: str, line: int | None, i: int, bad: Bad, rec: dict | None) -> dict:
    raw = bad.raw if bad.raw is not None else json.dumps(rec, ensure_ascii=False, default=str)
    return {
        "source": source,
        "location": _location(line, i),
        "reason": bad.reason,
        "detail": bad.detail,
        "raw": raw[:_RAW_CHARS],
    }


def _location(line: int | None, i: int) -> str:
    return f"line {line}" if line is not None else f"row {i} (0-based)"


# ---- opening a source -----------------------------------------------------------------------------------


def _source_where(cfg: SourceConfig, local: Path | None = None) -> Where:
    path = cfg.path if cfg.dataset is None else source_uri(cfg)
    return Where(f"source {cfg.name!r}", "curation.sources[]", path, local)


def _open_source(where: Where, cfg: SourceConfig, needed: list[str]) -> tuple[list[str] | None, Records]:
    """(column names, or None when only the rows tell (JSONL); the record stream)."""
    if cfg.dataset is not None:
        return dataset_records(load_dataset(where, cfg.dataset), needed, cfg.limit)
    path, fmt = check_file(where, cfg.format)
    return open_file(where, path, fmt, needed, cfg.limit)


# ---- fields and messages --------------------------------------------------------------------------------


def _check_fields(where: Where, cfg: SourceConfig, columns: list[str]) -> None:
    if cfg.messages_field:
        _require_field(where, columns, cfg.messages_field, "messages_field")
    else:
        _require_field(where, columns, cfg.prompt_field, "prompt_field")
    if cfg.answer_field:
        _require_field(where, columns, cfg.answer_field, "answer_field")
    missing = [f for f in cfg.keep_fields if f not in columns]
    if missing:
        raise where.error(
            f"keep_fields {missing} not in {where.path}, which has columns: {_names(columns)}",
            f"fix {where.key}.keep_fields",
        )


def _require_field(where: Where, columns: list[str], field: str, key: str) -> None:
    if field not in columns:
        raise where.error(
            f"{key} {field!r} not in {where.path}, which has columns: {_names(columns)}", f"fix {where.key}.{key}"
        )


def _names(columns: list[str]) -> str:
    return ", ".join(map(str, columns)) if columns else "none"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
