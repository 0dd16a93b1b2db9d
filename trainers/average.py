"""Average model checkpoints tensor by tensor (Llama 3's model averaging), over safetensors files.

    from trainers.average import average_checkpoints
    average_checkpoints([(Path("new"), 0.5), (Path("policy"), 0.5)], Path("averaged"))

Pure: directories in, one directory out (no store, no catalog: tasks/average.py does the I/O). The output
is a checkpoint `from_pretrained` and vLLM load: the weights laid out like the first parent's (one file or
shards with an index), its config, tokenizer and other files, and `averaging.json`, a record of the parents
and their weights.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import struct
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
RECORD_FILE = "averaging.json"
# Files not copied from the first parent: its weights (rewritten) and weights in other formats.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
# config.json keys that do not change what a state dict computes, so parents may differ in them: a trainer
# saves another dtype, switches the KV cache back on, sets a pad token. Every other key must be equal.
NON_ARCH_KEYS = frozenset(
    {
        "_name_or_path",
        "transformers_version",
        "dtype",
        "torch_dtype",
        "use_cache",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "initializer_range",
        "_attn_implementation",
        "attn_implementation",
    }
)
# With tie_word_embeddings the output projection is the input embedding: save_pretrained stores only the
# embedding, though some writers store both. It is left out of the comparison and of the output.
TIED_KEY = "lm_head.weight"
VOCAB_FILES = ("tokenizer.model", "vocab.json", "merges.txt", "vocab.txt")


class AveragingError(ValueError):
    """The parents cannot be averaged (different architecture, tensors or tokenizer)."""


@dataclass(frozen=True)
class _Checkpoint:
    path: Path
    config: dict
    weight_map: dict[str, str]  # tensor name -> safetensors file, relative to path (tied key left out)
    shapes: dict[str, tuple[int, ...]]


def average_checkpoints(parents: list[tuple[Path, float]], out_dir: Path) -> Path:
    """Write the weighted average of `parents` to `out_dir` and return it.

    Args:
        parents: (checkpoint directory, weight) pairs, newest first. Weights must be >= 0 with a positive sum;
            they are scaled to sum to 1. Each directory holds config.json and safetensors weights (one file or
            shards with model.safetensors.index.json).
        out_dir: where to write; must not exist or be empty.

    Every floating-point tensor is sum_i w_i * parent_i[name], computed in float32 and cast back to the dtype
    of the first parent's tensor (integer buffers are copied from the first parent). Config, tokenizer and
    every other non-weight file come from the first parent.

    Raises:
        AveragingError: the parents differ in architecture (config.json), tensor names or shapes, or
            tokenizer vocabulary; nothing is written then.
    """
    if not parents:
        raise ValueError("average_checkpoints needs at least one parent")
    weights = _normalise([w for _, w in parents])
    ckpts = [_read_checkpoint(Path(p)) for p, _ in parents]
    _check_compatible(ckpts)
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty: average_checkpoints writes into a new directory")
    out_dir.mkdir(parents=True, exist_ok=True)

    first = ckpts[0]
    shards: dict[str, list[str]] = {}
    for name, file in first.weight_map.items():
        shards.setdefault(file, []).append(name)
    total_bytes = 0
    dtypes: set[str] = set()
    with ExitStack() as stack:
        handles: dict[tuple[int, str], object] = {}

        def tensor(i: int, name: str) -> torch.Tensor:
            file = ckpts[i].weight_map[name]
            if (i, file) not in handles:  # files are memory-mapped: open each once, read tensor by tensor
                handles[i, file] = stack.enter_context(safe_open(ckpts[i].path / file, framework="pt"))
            return handles[i, file].get_tensor(name)

        # One output shard at a time, so memory holds one shard plus one float32 accumulator, not whole models.
        for file, names in shards.items():
            out: dict[str, torch.Tensor] = {}
            for name in names:
                t0 = tensor(0, name)
                if t0.is_floating_point():
                    acc = t0.float() * weights[0]
                    for i in range(1, len(ckpts)):
                        acc.add_(tensor(i, name).float(), alpha=weights[i])
                    t0 = acc.to(t0.dtype)
                out[name] = t0.contiguous()
                total_bytes += t0.numel() * t0.element_size()
                dtypes.add(str(t0.dtype).removeprefix("torch."))
            save_file(out, out_dir / file, metadata={"format": "pt"})

    if (first.path / INDEX_FILE).is_file():
        index = {"metadata": {"total_size": total_bytes}, "weight_map": dict(sorted(first.weight_map.items()))}
        (out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    for f in sorted(first.path.iterdir()):
        if f.is_file() and not f.name.endswith(WEIGHT_SUFFIXES) and f.name not in (INDEX_FILE, RECORD_FILE):
            shutil.copyfile(f, out_dir / f.name)
    # No paths or timestamps: the same average has the same bytes, hence the same artifact id on any machine.
    record = {
        "method": "weighted mean of each tensor, in float32, cast to the first parent's dtype",
        "parents": [{"name": c.path.name, "weight": w} for c, w in zip(ckpts, weights)],
        "dtypes": sorted(dtypes),
        "tensors": len(first.weight_map),
        "tied_embeddings": _tied(first.config),
    }
    (out_dir / RECORD_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return out_dir


def _normalise(weights: list[float]) -> list[float]:
    """Weights scaled to sum to 1.

    >>> _normalise([4, 1])
    [0.8, 0.2]
    """
    if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"averaging weights must be finite and >= 0 with a positive sum, got {weights}")
    total = sum(weights)
    return [w / total for w in weights]


def _tied(config: dict) -> bool:
    # save_pretrained writes the flag. Without it the checkpoint counts as untied, so a checkpoint missing its
    # lm_head shows up as a tensor mismatch instead of being silently treated as tied.
    return bool(config.get("tie_word_embeddings", False))


def _header(file: Path) -> dict:
    """The JSON header of a safetensors file (names, dtypes, shapes) without reading any tensor."""
    with open(file, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    return header


def _read_checkpoint(path: Path) -> _Checkpoint:
    if not (path / "config.json").is_file():
        raise AveragingError(f"{path}: no config.json (pass the directory save_pretrained wrote)")
    config = json.loads((path / "config.json").read_text())
    if (path / INDEX_FILE).is_file():
        weight_map = dict(json.loads((path / INDEX_FILE).read_text())["weight_map"])
    elif (path / SINGLE_FILE).is_file():
        weight_map = {name: SINGLE_FILE for name in _header(path / SINGLE_FILE)}
    else:
        raise AveragingError(
            f"{path}: no {SINGLE_FILE} or {INDEX_FILE}: only safetensors checkpoints can be "
            "averaged (save with safe_serialization=True)"
        )
    if _tied(config):
        weight_map.pop(TIED_KEY, None)
    shapes: dict[str, tuple[int, ...]] = {}
    for file in sorted(set(weight_map.values())):
        header = _header(path / file)
        shapes.update({n: tuple(h["shape"]) for n, h in header.items() if weight_map.get(n) == file})
    if shapes.keys() != weight_map.keys():
        raise AveragingError(
            f"{path}: {INDEX_FILE} names tensors its shards lack: {_names(weight_map.keys() - shapes.keys())}"
        )
    return _Checkpoint(path, config, weight_map, shapes)


def _vocab_fingerprint(path: Path) -> dict[str, str]:
    """Hash of each tokenizer vocabulary file present (tokenizer.json: its vocabulary and added tokens only,
    since a trainer may change its padding or truncation settings)."""
    fp = {}
    if (path / "tokenizer.json").is_file():
        tok = json.loads((path / "tokenizer.json").read_text())
        vocab = json.dumps({"model": tok.get("model"), "added_tokens": tok.get("added_tokens")}, sort_keys=True)
        fp["tokenizer.json"] = hashlib.sha256(vocab.encode()).hexdigest()
    for name in VOCAB_FILES:
        if (path / name).is_file():
            fp[name] = hashlib.sha256((path / name).read_bytes()).hexdigest()
    return fp


def _names(names: set[str]) -> str:
    return ", ".join(sorted(names)[:5]) + (f" (and {len(names) - 5} more)" if len(names) > 5 else "")


def _check_compatible(ckpts: list[_Checkpoint]) -> None:
    """Raise AveragingError naming the first difference between a parent and the first parent."""
    first = ckpts[0]
    arch0 = {k: v for k, v in first.config.items() if k not in NON_ARCH_KEYS}
    vocab0 = _vocab_fingerprint(first.path)
    for c in ckpts[1:]:
        where = f"{c.path} and {first.path}"
        arch = {k: v for k, v in c.config.items() if k not in NON_ARCH_KEYS}
        diff = sorted(k for k in arch0.keys() | arch.keys() if arch0.get(k) != arch.get(k))
        if diff:
            shown = "; ".join(f"{k}: {arch.get(k)!r} vs {arch0.get(k)!r}" for k in diff[:5])
            raise AveragingError(
                f"{where} differ in architecture (config.json {shown}): only fine-tunes of one model can be averaged"
            )
        lacks, extra = first.shapes.keys() - c.shapes.keys(), c.shapes.keys() - first.shapes.keys()
        if lacks or extra:
            raise AveragingError(
                f"{where} hold different tensors: {c.path} lacks {_names(lacks) or '-'} and has "
                f"{_names(extra) or '-'} that the first has not"
            )
        bad = {n for n in first.shapes if first.shapes[n] != c.shapes[n]}
        if bad:
            n = sorted(bad)[0]
            raise AveragingError(
                f"{where} differ in tensor shapes: {n} is {list(c.shapes[n])} vs "
                f"{list(first.shapes[n])} ({len(bad)} tensors differ)"
            )
        vocab = _vocab_fingerprint(c.path)
        if vocab != vocab0:
            files = sorted(k for k in vocab0.keys() | vocab.keys() if vocab0.get(k) != vocab.get(k))
            raise AveragingError(
                f"{where} have different tokenizer vocabularies ({', '.join(files)}): the same "
                "embedding row would mean different tokens"
            )
