"""Generation behind one interface: vLLM (default) or plain transformers (fallback).

`generation.engine.replicas` > 1 spreads the prompts over that many engines in Ray actors
(`tasks.generation.ray_pool`), behind the same interface.

Engines are expensive to start (vLLM: 17-30 s on CPU), so one engine per process is kept and reused
across stages and rounds; switching to another checkpoint of the same architecture reloads weights in
place instead of starting a new engine. On a GPU, `release_accelerator()` puts the vLLM engine to sleep
for in-process training and scoring, and `get_engine` wakes it (tasks/generation/handoff.py).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from configs.schema import EngineConfig, SamplingConfig

# EngineConfig fields that say where and how engines run, not what they generate: left out of step identities.
ENGINE_PLACEMENT = frozenset({"replicas", "ray_address", "cpus_per_replica", "sleep_mode"})

# A user message, or a conversation as chat messages ({"role", "content"}) ending in a user turn.
Prompt = str | list[dict]


@dataclass(frozen=True)
class Generation:
    text: str
    num_tokens: int
    finish_reason: str


class Engine(Protocol):
    model_path: str

    def load(self, model_path: str) -> None:
        """Serve this checkpoint from now on (same architecture and tokenizer: weights reload in place)."""

    def generate(self, prompts: list[Prompt], params: SamplingConfig, seeds: list[int]) -> list[list[Generation]]:
        """`params.n` completions for each prompt (rendered with the model's chat template).

        Args:
            prompts: one per request: a user message, or a conversation ending in a user turn
                (e.g. a system message, then the user message).
            params: sampling parameters; temperature 0 means greedy.
            seeds: one seed per prompt, so a prompt's samples do not depend on batch composition.
        Returns:
            one list of `params.n` generations per prompt, in order.
        """

    def close(self) -> None: ...


class EngineError(Exception):
    pass


def architecture_key(model_path: str) -> str:
    """Hash of what must match for an in-place weight reload: architecture, vocabulary, chat template.

    Fields that trainers rewrite without changing either (use_cache, padding settings, versions) are
    left out, so a fine-tuned checkpoint reloads into the engine of the model it was trained from.
    """
    root = Path(model_path)
    parts: dict[str, object] = {}
    cfg_file, tok_file, tmpl_file = root / "config.json", root / "tokenizer.json", root / "chat_template.jinja"
    if cfg_file.exists():
        cfg = json.loads(cfg_file.read_text())
        for k in ("torch_dtype", "dtype", "transformers_version", "_name_or_path", "use_cache"):
            cfg.pop(k, None)
        parts["config"] = cfg
    if tok_file.exists():
        tok = json.loads(tok_file.read_text())
        parts["tokenizer"] = {
            k: tok.get(k) for k in ("model", "added_tokens", "normalizer", "pre_tokenizer", "decoder")
        }
    if tmpl_file.exists():
        parts["chat_template"] = tmpl_file.read_text()
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


_ENGINES: dict[str, Engine] = {}


def get_engine(cfg: EngineConfig, model_path: str) -> Engine:
    """The process's engine for `cfg`, serving `model_path` (created, woken, or reloaded in place).

    Raises EngineError when a sleeping engine would not fit back into the GPU's free memory.
    """
    key = cfg.model_dump_json()
    engine = _ENGINES.get(key)
    if engine is not None:
        same = engine.model_path == model_path or architecture_key(engine.model_path) == architecture_key(model_path)
        if same and getattr(engine, "sleeping", False):
            from tasks.generation.handoff import free_accelerator_memory

            free_accelerator_memory()  # what training or scoring left behind, before the engine maps its memory back
            engine.wake(model_path)
            return engine
        if engine.model_path == model_path:
            return engine
        if same:
            engine.load(model_path)
            return engine
        engine.close()
        del _ENGINES[key]
    engine = create_engine(cfg, model_path)
    _ENGINES[key] = engine
    return engine


def create_engine(cfg: EngineConfig, model_path: str) -> Engine:
    """A new engine for `cfg` (not the process's shared one: use `get_engine` for that)."""
    if cfg.replicas > 1 or cfg.ray_address:
        from tasks.generation.ray_pool import RayEnginePool  # optional dependency (ray): import lazily

        return RayEnginePool(cfg, model_path)
    if cfg.backend == "vllm":
        from tasks.generation.vllm import VLLMEngine  # optional heavy dependency: import lazily

        return VLLMEngine(cfg, model_path)
    from tasks.generation.hf import HFEngine

    return HFEngine(cfg, model_path)


def close_engine(cfg: EngineConfig) -> None:
    """Stop the process's engine for `cfg`, if one runs (the others keep running)."""
    engine = _ENGINES.pop(cfg.model_dump_json(), None)
    if engine is not None:
        engine.close()


def close_engines() -> None:
    """Stop every engine (frees GPU memory before training, and child processes before exit)."""
    while _ENGINES:
        _, engine = _ENGINES.popitem()
        engine.close()


def release_accelerator() -> None:
    """Before training or scoring in this process: on a GPU the engines hold most of the memory, so free it.

    A vLLM engine with sleep mode goes to sleep (the next `get_engine` wakes it: one start per round), any
    other engine is closed. On CPU nothing happens: the engines keep serving and reload weights in place.
    """
    import torch

    if not torch.cuda.is_available():
        return
    for key, engine in list(_ENGINES.items()):
        if getattr(engine, "sleep_mode", False):
            engine.sleep()
        else:
            del _ENGINES[key]
            engine.close()


def render_prompts(tokenizer, prompts: list[Prompt]) -> list[str]:
    """Prompts rendered with the model's chat template, ready for generation.

    Raises EngineError when the template rejects a conversation (e.g. a system message for a model
    whose template has no system role), instead of a Jinja traceback.
    """
    out = []
    for p in prompts:
        messages = [{"role": "user", "content": p}] if isinstance(p, str) else p
        try:
            out.append(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
        except Exception as e:  # jinja2 raises TemplateError subclasses, templates may raise anything
            roles = [m["role"] for m in messages]
            raise EngineError(
                f"the model's chat template cannot render a conversation with roles {roles}: {e} (use a model "
                "whose template supports them, or a source without system prompts)"
            ) from None
    return out
