"""Sources and eval sets as step inputs: local paths or s3:// URIs, hashed by content and snapshotted into the store.

A step's external inputs are identified by the sha256 of their bytes, so the same file on two machines
gives the same step identity. What the catalog registers as their URI is decided here:
  - `snapshot: true` (the default): a copy in the store under inputs/sha256/<hash>/<name>
    (storage/inputs.py), stored once per content, so another machine or a rerun next month reads exactly
    the bytes the round read, even after the original file moved or changed;
  - `snapshot: false`: the path (file:///abs/path) or s3:// URI as the config gives it, for a source too
    big to copy; it must then stay unchanged where it is.
An s3:// path is read with the store's credential chain and endpoint (storage.endpoint_url, or the
embedded server), downloaded once per object version into the home's cache.

    python -m tasks.curate --config configs/demo.yaml --round 1   (declares and reads every input)
Tests:  python -m pytest tests/test_store_inputs.py -q
"""

from __future__ import annotations

from pathlib import Path

from configs.schema import EvalSetConfig, FlywheelConfig
from storage.ids import sha256_file
from storage.inputs import fetch_s3, is_s3, snapshot

__all__ = ["eval_set_input", "eval_set_inputs", "eval_set_rows", "fetched", "is_s3", "source_input"]
from tasks.curation.source_files import SourceError, Where, check_file, reading
from tasks.curation.sources import read_eval_set, source_fingerprint, source_uri
from tasks.stage import External, runtime


def fetched(cfg: FlywheelConfig, path: str | None, what: str) -> Path | None:
    """The local copy of an s3:// `path` (downloaded once per object version), None for a local path.

    `what` names the config field in errors, e.g. "curation.sources[0].path (pool)".
    """
    return _fetch(cfg, path, what)[0] if is_s3(path) else None


def _fetch(cfg: FlywheelConfig, uri: str, what: str) -> tuple[Path, str]:
    rt = runtime(cfg)
    # With `storage.uri: embedded` the store is the home's own server: s3:// inputs are read from it too.
    endpoint = rt.server.endpoint_url if rt.server is not None else cfg.storage.endpoint_url
    return fetch_s3(uri, what, rt.home / "cache", endpoint, cfg.storage.region, cfg.storage.retry_window_s)


def source_input(cfg: FlywheelConfig, i: int) -> External:
    """curation.sources[i] as a step input: its content hash, and the URI the catalog registers."""
    s = cfg.curation.sources[i]
    if s.dataset is not None:  # a load_dataset spec is named by its spec; datasets caches the data
        return External(source_fingerprint(s), "source", source_uri(s), s.format, None)
    what = f"curation.sources[{i}].path ({s.name})"
    if is_s3(s.path):
        if s.format == "hf_disk":
            raise SourceError(f"{what}: a save_to_disk directory must be a local path, not {s.path} (copy it here)")
        local, digest = _fetch(cfg, s.path, what)
    else:
        local = Path(s.path).resolve()
        digest = source_fingerprint(s)  # checks the file (missing, unknown extension) with the usual messages
    uri = _registered(cfg, s.snapshot, local, digest, source_uri(s), what)
    return External(digest, "source", uri, s.format, local, local.stat().st_size if local.is_file() else None)


def eval_set_input(cfg: FlywheelConfig, i: int) -> External:
    """evaluation.eval_sets[i] as a step input (as source_input: content hash, registered URI)."""
    e = cfg.evaluation.eval_sets[i]
    what = f"evaluation.eval_sets[{i}].path ({e.name})"
    if is_s3(e.path):
        local, digest = _fetch(cfg, e.path, what)
        given = e.path
    else:
        where = Where(f"eval set {e.name!r}", "evaluation.eval_sets[]", e.path)
        local, _ = check_file(where, "auto")
        local = local.resolve()
        with reading(where):
            digest = sha256_file(local)
        given = local.as_uri()
    uri = _registered(cfg, e.snapshot, local, digest, given, what)
    return External(digest, "eval-set", uri, local.suffix.lstrip("."), local, local.stat().st_size)


def eval_set_inputs(cfg: FlywheelConfig) -> dict[str, External]:
    """{"eval:<name>": External} of every configured eval set."""
    return {f"eval:{e.name}": eval_set_input(cfg, i) for i, e in enumerate(cfg.evaluation.eval_sets)}


def eval_set_rows(cfg: FlywheelConfig) -> dict[str, tuple[EvalSetConfig, list[dict]]]:
    """{name: (its config, its rows)} of every eval set, s3:// ones read from their downloaded copy."""
    sets = cfg.evaluation.eval_sets
    return {
        e.name: (e, read_eval_set(e, fetched(cfg, e.path, f"evaluation.eval_sets[{i}].path ({e.name})")))
        for i, e in enumerate(sets)
    }


def _registered(cfg: FlywheelConfig, keep: bool, local: Path, digest: str, given: str, what: str) -> str:
    """The URI the catalog registers: the store's snapshot of `local`, or `given` when not snapshotting."""
    if not keep:
        return given
    try:
        return snapshot(runtime(cfg).store, local, digest)
    except ValueError as e:  # a file name the store's keys cannot hold
        raise SourceError(
            f"{what}: cannot snapshot {local} into the store: {e} (rename it, or set snapshot: false)"
        ) from None
