"""The file formats a prompt source can come in, read as streams of (line, record) for tasks.curation.sources.

JSONL (line by line, strict UTF-8 per line), CSV (bad bytes kept visible), Parquet and `datasets` data
(Arrow batches of the needed columns only). A row that cannot be read becomes a `Bad` with its reason;
a problem with the whole file is a one-line `SourceError`.
"""

from __future__ import annotations

import codecs
import csv
import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from pyarrow import ArrowException

from configs.schema import LoadDatasetSpec

EXTENSIONS = {".jsonl": "jsonl", ".parquet": "parquet", ".csv": "csv"}
_BATCH = 65_536  # rows per Arrow batch: bounded memory on big files, and `limit` stops reading early


class SourceError(Exception):
    """A prompt source or eval set cannot be used as configured (one-line message: what, where, fix)."""


@dataclass(frozen=True)
class Bad:
    """A row that cannot be used: one of QUARANTINE_REASONS, a short detail, its raw text (None: the record's JSON)."""

    reason: str
    detail: str
    raw: str | None = None


class Where:
    """Names a source in error messages: its label ("source 'pool'"), config list key, and path or URI.

    `local` is where the bytes are read when that differs from `path`: the downloaded copy of an s3:// object
    (tasks/curation/store_inputs.py), so messages keep naming the URI the config gave.
    """

    def __init__(self, label: str, key: str, path: str, local: Path | None = None):
        self.label, self.key, self.path, self.local = label, key, path, local

    def error(self, what: str, fix: str) -> SourceError:
        return SourceError(f"{self.label}: {what} ({fix})")


# A record stream yields (line number, record): the line for JSONL/CSV, None for Arrow-backed rows.
Records = Iterator[tuple[int | None, "dict | Bad"]]


def check_file(where: Where, fmt: str) -> tuple[Path, str]:
    if where.local is None and where.path.startswith("s3://"):
        # Only tasks.curation.store_inputs knows the store's endpoint and credentials, so it fetches first.
        raise where.error(f"{where.path} was not fetched before reading", "read s3:// inputs through a round")
    path = where.local or Path(where.path)
    if not path.exists():
        raise where.error(f"file not found: {where.path}", f"fix {where.key}.path")
    if path.is_dir():
        # A directory is a dataset saved with datasets' save_to_disk (it holds its state.json or dataset_dict.json).
        saved = any((path / f).exists() for f in ("state.json", "dataset_dict.json"))
        if fmt in ("auto", "hf_disk") and saved and where.key.startswith("curation"):
            return path, "hf_disk"
        raise where.error(
            f"not a file: {where.path}", f"fix {where.key}.path (a directory must come from save_to_disk)"
        )
    if fmt == "auto":
        fmt = EXTENSIONS.get(path.suffix.lower(), "")
        if not fmt:
            fix = "rename it to .jsonl, .parquet or .csv"
            if where.key.startswith("curation"):
                fix += f", or set {where.key}.format"
            raise where.error(f"unknown file extension {path.suffix!r}: {where.path}", fix)
    return path, fmt


def open_file(
    where: Where, path: Path, fmt: str, needed: list[str], limit: int | None
) -> tuple[list[str] | None, Records]:
    if fmt == "jsonl":
        return None, _jsonl_records(path)
    if fmt == "csv":
        return _csv_records(path, needed)
    if fmt == "hf_disk":
        return dataset_records(load_saved(where, path), needed, limit)
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except ArrowException as e:
        raise where.error(
            f"not a readable Parquet file: {where.path}: {first_line(e)}", f"check the file, or fix {where.key}.path"
        ) from e
    columns = list(pf.schema_arrow.names)
    wanted = [c for c in needed if c in columns]  # read only the configured columns
    batches = pf.iter_batches(batch_size=min(_BATCH, limit or _BATCH), columns=wanted)
    return columns, _arrow_records(batches)


def _jsonl_records(path: Path) -> Records:
    """Lines decoded one by one (strict UTF-8), so one bad byte costs one row, not the file."""
    with open(path, "rb") as f:
        if f.read(3) != codecs.BOM_UTF8:  # some editors start UTF-8 files with a byte-order mark
            f.seek(0)
        for lineno, line in enumerate(f, start=1):
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as e:
                yield (
                    lineno,
                    Bad(
                        "undecodable",
                        f"not valid UTF-8 ({e.reason} at byte {e.start})",
                        line.decode("utf-8", "backslashreplace").rstrip("\r\n"),
                    ),
                )
                continue
            try:
                rec = json.loads(text)
            except json.JSONDecodeError as e:
                if text.strip():  # blank lines (often a trailing one) are not rows
                    yield lineno, Bad("invalid_json", e.msg, text.rstrip("\r\n"))
                continue
            if not isinstance(rec, dict):
                yield lineno, Bad("not_an_object", f"{_a(rec)}, not an object", text.rstrip("\r\n"))
            elif (b"\\ud" in line or b"\\uD" in line) and not _encodable(rec):
                # A "\ud800" escape alone parses into a string that no UTF-8 writer (Parquet) accepts later.
                yield (
                    lineno,
                    Bad("undecodable", "not valid Unicode (a \\u escape of a lone surrogate)", text.rstrip("\r\n")),
                )
            else:
                yield lineno, rec


def _csv_records(path: Path, needed: list[str]) -> tuple[list[str], Records]:
    """CSV with a header row; every value is text (an answer "45" stays "45")."""
    # The default 128 KiB field limit would stop the file at an over-long cell: let that row be quarantined.
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        columns = next(csv.reader(f), [])

    def records() -> Records:
        # surrogateescape keeps bad bytes as lone surrogates, so a bad row can be told apart and quarantined.
        with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
            reader = csv.DictReader(f)
            for rec in reader:
                bad = [k for k in needed if not _clean_text(rec.get(k))]
                if bad:
                    raw = json.dumps(rec, ensure_ascii=False, default=str)  # bad bytes shown as \xNN
                    raw = raw.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
                    yield reader.line_num, Bad("undecodable", f"not valid UTF-8 (field {bad[0]!r})", raw)
                else:
                    yield reader.line_num, rec

    return columns, records()


def dataset_records(ds: Any, needed: list[str], limit: int | None) -> tuple[list[str], Records]:
    """A datasets.Dataset read in Arrow batches of the needed columns only."""
    columns = list(ds.column_names)
    if limit is not None and limit < len(ds):
        ds = ds.select(range(limit))
    ds = ds.select_columns([c for c in needed if c in columns])
    return columns, _arrow_records(ds.with_format("arrow").iter(batch_size=_BATCH))


def _arrow_records(batches: Iterable[Any]) -> Records:
    for batch in batches:
        for rec in batch.to_pylist():
            yield None, rec


def load_saved(where: Where, path: Path) -> Any:
    """A `datasets.save_to_disk` directory; of a DatasetDict, the "train" split."""
    from datasets import DatasetDict, load_from_disk

    ds = load_from_disk(str(path))
    if isinstance(ds, DatasetDict):
        if "train" not in ds:
            raise where.error(
                f"{where.path} is a DatasetDict without a 'train' split (splits: {', '.join(ds)})",
                "save the split to use with save_to_disk on its own",
            )
        ds = ds["train"]
    return ds


def load_dataset(where: Where, spec: LoadDatasetSpec) -> Any:
    import datasets

    try:
        return datasets.load_dataset(
            spec.path, spec.name, split=spec.split, data_files=spec.data_files, revision=spec.revision
        )
    except Exception as e:  # not found, no network, bad split...: all mean "this spec cannot be read here"
        raise where.error(
            f"cannot load {where.path}: {type(e).__name__}: {first_line(e)}",
            f"check {where.key}.dataset, or download the data and set {where.key}.path to a local file",
        ) from e


@contextmanager
def reading(where: Where) -> Iterator[None]:
    """Turn I/O failures while opening or reading into one-line SourceErrors."""
    try:
        yield
    except (OSError, csv.Error, ArrowException) as e:
        raise where.error(
            f"cannot read {where.path}: {type(e).__name__}: {first_line(e)}", f"check the file, or fix {where.key}.path"
        ) from e


def _clean_text(value: Any) -> bool:
    """False for a string holding surrogateescape'd bad bytes. isascii() is O(1) in CPython: the common case."""
    if not isinstance(value, str) or value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _encodable(rec: dict) -> bool:
    try:
        json.dumps(rec, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _a(value: Any) -> str:  # shared with tasks.curation.sources
    """'an int', 'a list', 'an object', ...: a value's type in a detail line."""
    names = {
        str: "a string",
        bool: "a bool",
        int: "an int",
        float: "a float",
        list: "a list",
        dict: "an object",
        type(None): "null",
        Decimal: "a number",
    }
    return names.get(type(value)) or f"a {type(value).__name__}"


def first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0]
