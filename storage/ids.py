"""Content hashes that name artifacts, rows and steps (docs/design.md, "Identities").

All ids are lowercase hex sha256, shortened where a row id is enough; the same input always gives the
same id, on any machine, so a rerun finds its earlier outputs.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from json.encoder import encode_basestring  # the C string encoder json.dumps itself uses
from pathlib import Path
from typing import Any

ROW_ID_LEN = 20  # 80 bits: collision-free for billions of rows, short enough to read in a table


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_dir(path: Path) -> str:
    """Hash of a directory: sha256 over its sorted (relative path, file sha256) pairs."""
    entries = sorted((p.relative_to(path).as_posix(), sha256_file(p)) for p in path.rglob("*") if p.is_file())
    return sha256_bytes("\n".join(f"{rel}\t{digest}" for rel, digest in entries).encode())


def stable_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: the canonical form that gets hashed."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def hash_obj(obj: Any, length: int | None = None) -> str:
    digest = sha256_bytes(stable_json(obj).encode())
    return digest[:length] if length else digest


def normalize_text(text: str) -> str:
    """Unicode NFC, whitespace runs folded to one space, stripped: the form prompts are compared in."""
    if not text.isascii():  # ASCII is already NFC; isascii() is O(1), the NFC check is not
        text = unicodedata.normalize("NFC", text)
    return " ".join(text.split())


def json_strings(*parts: str) -> str:
    """stable_json of a list of strings, built directly: curation hashes millions of these.

    >>> json_strings("prompt", 'say "hi"', "pool") == stable_json(["prompt", 'say "hi"', "pool"])
    True
    """
    return "[" + ",".join(map(encode_basestring, parts)) + "]"


def text_hash(text: str) -> str:
    """Exact-dedup key of a prompt: hash of its normalised, case-folded text (source-independent).

    The same value as hash_obj(normalized.casefold(), ROW_ID_LEN), without json.dumps per row.
    """
    return normalized_text_hash(normalize_text(text))


def normalized_text_hash(normalized: str) -> str:
    """text_hash of a text already passed through normalize_text (curation normalises each row once)."""
    return hashlib.sha256(encode_basestring(normalized.casefold()).encode()).hexdigest()[:ROW_ID_LEN]


def prompt_id(normalized_text: str, source: str) -> str:
    return sha256_bytes(json_strings("prompt", normalized_text, source).encode())[:ROW_ID_LEN]


def prompt_id_of(source: str):
    """prompt_id(text, source) for one source, with the JSON around the text built once (curation's hot loop).

    >>> prompt_id_of("pool")("What is 2 + 2?") == prompt_id("What is 2 + 2?", "pool")
    True
    """
    head, tail = '["prompt",', "," + encode_basestring(source) + "]"
    sha256 = hashlib.sha256

    def make(normalized_text: str) -> str:
        return sha256((head + encode_basestring(normalized_text) + tail).encode()).hexdigest()[:ROW_ID_LEN]

    return make


def completion_id(prompt_id_: str, model_id: str, sampling: dict, sample_index: int, seed: int) -> str:
    return hash_obj(["completion", prompt_id_, model_id, sampling, sample_index, seed], ROW_ID_LEN)


def home_relative(obj: Any, home: str | Path) -> Any:
    """`obj` (JSON-able) with the home directory written as `{home}` in every string, as configs write it.

    A config's paths into FLYWHEEL_HOME (the demo's base model and data) would otherwise make its hash, and
    the identities of the steps it configures, differ from home to home and from machine to machine.

    >>> home_relative({"path": "/h/demo/data.jsonl", "other": ["/h", "/hx/a", 3]}, "/h")
    {'path': '{home}/demo/data.jsonl', 'other': ['{home}', '/hx/a', 3]}
    """
    if isinstance(obj, str):
        return re.sub(re.escape(str(home).rstrip("/")) + r"(?=/|$)", "{home}", obj)
    if isinstance(obj, dict):
        return {k: home_relative(v, home) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [home_relative(v, home) for v in obj]
    return obj


def step_identity(step: str, code_version: str, config: Any, inputs: dict[str, str]) -> str:
    """Identity of one step run: same step, code, config section and input artifacts -> same output."""
    return hash_obj(["step", step, code_version, config, sorted(inputs.items())])
