"""What a model directory must hold before an engine or trainer loads it: weights and a chat template.

Checked from the files alone, in milliseconds: a safetensors file is checked by its header (8 bytes of
length, then JSON), never loaded, because a model can be tens of GB. Without these checks a directory
with only config.json was uploaded and registered, and vLLM then died a minute into generation with
no root cause anywhere in its tracebacks.

Each function returns a problem (a sentence without the config field's name) or None; tasks/stage.py
turns a problem into a PreflightError that names the field.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

SAFETENSORS, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
TORCH_BIN, TORCH_BIN_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"
_MAX_HEADER = 100_000_000  # the safetensors format's own limit on the header's JSON


def weights_problem(d: Path) -> str | None:
    """Why the weights in model directory `d` cannot load, or None when they look whole.

    Accepts what save_pretrained writes: one model.safetensors, shards named by
    model.safetensors.index.json, or the older pytorch_model.bin (sharded or not).
    """
    for index in (SAFETENSORS_INDEX, TORCH_BIN_INDEX):
        if (d / index).is_file():
            return _index_problem(d, index)
    if (d / SAFETENSORS).is_file():
        return safetensors_problem(d / SAFETENSORS)
    if (d / TORCH_BIN).is_file():
        return None  # a pickle: reading it is loading it, so presence is all that is checked
    return (
        f"no weights found in {d}: expected {SAFETENSORS}, model-*.safetensors (with {SAFETENSORS_INDEX}) "
        f"or {TORCH_BIN}"
    )


def _index_problem(d: Path, index: str) -> str | None:
    try:
        shards = sorted(set(json.loads((d / index).read_text())["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return f"{d / index} is unreadable ({type(e).__name__}: {e}): re-save or re-download the model"
    missing = [s for s in shards if not (d / s).is_file()]
    if missing:
        return f"{d / index} names {len(missing)} shard(s) missing from {d} (first: {missing[0]}): copy them there"
    for s in shards:
        if s.endswith(".safetensors") and (problem := safetensors_problem(d / s)):
            return problem
    return None


def safetensors_problem(path: Path) -> str | None:
    """Why `path` is not a whole safetensors file, from its header and size alone (no tensor is read)."""
    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError(f"the file is {size} bytes")
            (n,) = struct.unpack("<Q", head)
            if not 0 < n <= min(_MAX_HEADER, size - 8):
                raise ValueError(f"header length {n} does not fit a {size}-byte file")
            header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, IndexError) as e:  # JSON and UTF-8 errors are ValueErrors
        return f"the safetensors header of {path} is unreadable ({e}): the file is corrupt; re-save or re-download it"
    if 8 + n + end > size:
        return f"{path} is truncated ({size} bytes, its header needs {8 + n + end}): re-save or re-download it"
    return None


def chat_template_problem(d: Path) -> str | None:
    """Why the tokenizer in `d` cannot render a conversation, or None when it has a chat template.

    Transformers reads the template from chat_template.jinja (what it saves now), chat_template.json,
    or the "chat_template" key of tokenizer_config.json; the files are read, the tokenizer is not loaded.
    """
    if (d / "chat_template.jinja").is_file() and (d / "chat_template.jinja").read_text().strip():
        return None
    for name in ("chat_template.json", "tokenizer_config.json"):
        try:
            if json.loads((d / name).read_text()).get("chat_template"):
                return None
        except (OSError, ValueError, AttributeError):  # absent or unreadable: the next place may have it
            continue
    return (
        f'the tokenizer in {d} has no chat template: add one (tokenizer_config.json "chat_template" '
        "or chat_template.jinja)"
    )
