"""What curation reads besides its config: the sources, the eval-set index, the filters that need a model
or a library, and the prompts of earlier rounds (their tables are found through the catalog).

Kept apart from tasks/curation/prompts.py so the curation logic stays a pure function of these inputs.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from configs.schema import FlywheelConfig
from storage.ids import hash_obj, sha256_file
from tasks.curation.decontam import DecontamIndex
from tasks.curation.prompts import EarlierPrompts
from tasks.curation.sources import SourceRows, read_source
from tasks.curation.store_inputs import eval_set_rows, fetched, source_input
from tasks.stage import External

__all__ = [
    "context_budget",
    "earlier_prompt_tables",
    "eval_index",
    "load_earlier_prompts",
    "prompt_filters",
    "read_sources",
    "source_input",  # re-exported: tasks.curate declares its sources through this module
    "tokenizer_input",
]


def read_sources(cfg: FlywheelConfig) -> dict[str, SourceRows]:
    """Every configured source, malformed rows set aside (see tasks.curation.sources); s3:// sources are
    read from their copy in the home's cache (tasks.curation.store_inputs)."""
    return {
        s.name: read_source(
            s, cfg.curation.max_row_chars, fetched(cfg, s.path, f"curation.sources[{i}].path ({s.name})")
        )
        for i, s in enumerate(cfg.curation.sources)
    }


def eval_index(cfg: FlywheelConfig) -> DecontamIndex:
    """The n-gram index of every configured eval set (prompts and training data are checked against it)."""
    texts = {
        name: [r.get("decontam_text", r["prompt"]) for r in rows] for name, (_, rows) in eval_set_rows(cfg).items()
    }
    return DecontamIndex(texts, cfg.curation.decontam_ngram, cfg.curation.decontam_threshold)


def context_budget(cfg: FlywheelConfig) -> int:
    """Prompt tokens the round can generate from: the context length minus the longest completion asked for."""
    return cfg.generation.engine.max_model_len - cfg.generation.longest_completion()


def prompt_filters(cfg: FlywheelConfig) -> dict:
    """The context check, and the token counter and language detector when configured, for curate_prompts."""
    from functools import partial

    from tasks.curation.filters import context_check, detect_languages, token_counter

    c = cfg.curation
    out: dict = {"fits_context": context_check(cfg.base_model, context_budget(cfg))}
    if c.min_tokens is not None or c.max_tokens is not None:
        out["count_tokens"] = token_counter(cfg.base_model)
    if c.languages is not None:
        out["detect_languages"] = partial(detect_languages, min_letters=c.language_min_chars)
    return out


def earlier_prompt_tables(catalog, cfg: FlywheelConfig, round_num: int) -> list[str]:
    """Prompt tables of the earlier rounds whose prompts may not be drawn again this round.

    With reuse_after_rounds K, a prompt drawn in round r0 is blocked while round_num - r0 < K.
    """
    k = cfg.curation.reuse_after_rounds
    return [
        artifact_id
        for r0, artifact_id in catalog.prompt_tables_before(cfg.pipeline, round_num)
        if reuse_blocked(r0, round_num, k)
    ]


def reuse_blocked(drawn_in: int, round_num: int, reuse_after: int | None) -> bool:
    """Whether prompts drawn in round `drawn_in` are still barred from round `round_num`.

    >>> [reuse_blocked(1, 4, None), reuse_blocked(1, 4, 3), reuse_blocked(2, 4, 3), reuse_blocked(3, 4, 1)]
    [True, False, True, False]
    """
    return reuse_after is None or round_num - drawn_in < reuse_after


def load_earlier_prompts(tables: list[pa.Table]) -> EarlierPrompts:
    """Text hashes and texts of earlier rounds' prompt tables (columns text_hash and prompt)."""
    hashes: set[str] = set()
    texts: list[str] = []
    for table in tables:
        hashes.update(table.column("text_hash").to_pylist())
        texts.extend(table.column("prompt").to_pylist())
    return EarlierPrompts(hashes, texts)


def tokenizer_input(model_dir: str) -> External:
    """The tokenizer files of a model directory: the input of the token-length filters."""
    files = sorted(p for p in Path(model_dir).glob("*token*") if p.is_file())
    return External(
        hash_obj([[p.name, sha256_file(p)] for p in files]),
        "tokenizer",
        Path(model_dir).resolve().as_uri(),
        "files",
        Path(model_dir),
    )
