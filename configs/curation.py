"""The curation section of a pipeline: prompt sources (files or load_dataset specs) and the filters,
dedup, decontamination and mixture settings (tasks/curation/). Re-exported by configs.schema.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    # A typo in a YAML key must fail loudly instead of silently using a default.
    model_config = ConfigDict(extra="forbid")


class LoadDatasetSpec(_Strict):
    """Arguments of `datasets.load_dataset(path, name, split=, data_files=, revision=)` for a source."""

    path: str = Field(
        description="Hub dataset id (e.g. 'openai/gsm8k') or a packaged builder such as 'json', 'csv' or 'parquet' "
        "(then give data_files)."
    )
    name: str | None = Field(None, description="Dataset config name, e.g. 'main' for gsm8k (None: the default config).")
    split: str = Field("train", description="Split to read, e.g. 'train' or 'train[:10%]'.")
    data_files: str | list[str] | dict[str, str | list[str]] | None = Field(
        None,
        description="Data files for a builder like 'json': a path or glob, a list of them, or {split: files} "
        "(None: the dataset's own files).",
    )
    revision: str | None = Field(
        None,
        description="Hub revision (branch, tag or commit sha); pin a commit so reruns read the same data "
        "(None: the default branch).",
    )


class SourceConfig(_Strict):
    """One prompt source: a local file (JSONL, Parquet, CSV), a save_to_disk directory, or a load_dataset spec."""

    name: str = Field(description="Short name of the source, stored on every prompt row as `source`.")
    path: str | None = Field(
        None,
        description="A .jsonl, .parquet or .csv file, or a directory saved with datasets' save_to_disk "
        "(relative paths: from the working directory), or an s3://bucket/key object read with the store's "
        "credentials and storage.endpoint_url. Set this or `dataset`, not both.",
    )
    dataset: LoadDatasetSpec | None = Field(
        None,
        description="Read the source with datasets.load_dataset instead of from `path` (hub datasets are "
        "cached by datasets). Set this or `path`, not both.",
    )
    format: Literal["auto", "jsonl", "parquet", "csv", "hf_disk"] = Field(
        "auto",
        description="Format of `path`; `auto` picks it from the file extension (a directory: save_to_disk). "
        "Leave it `auto` with `dataset`.",
    )
    prompt_field: str = Field(
        "prompt", description="Column holding the prompt text (not used when messages_field is set)."
    )
    messages_field: str | None = Field(
        None,
        description="Column holding a chat as a list of {role, content} messages: the prompt is the content "
        "of the last user turn and the system prompt that of the first system turn (None: use prompt_field).",
    )
    answer_field: str | None = Field(
        "answer",
        description="Column holding the reference answer for verifiable rewards (None: no reference); "
        "a row without one is quarantined.",
    )
    keep_fields: list[str] = Field(
        default_factory=list, description="Extra provenance columns copied onto every prompt row."
    )
    tags: list[str] = Field(
        default_factory=list,
        description="Free-form labels carried onto every prompt row of this source, e.g. [math, synthetic].",
    )
    weight: float = Field(1.0, gt=0, description="Relative share of this source in the round's prompt mixture.")
    limit: int | None = Field(
        None, ge=1, description="At most this many rows read from the source, quarantined rows included (None: all)."
    )
    license: str = Field("unknown", description="License of the source, stored on every row derived from it.")
    snapshot: bool = Field(
        True,
        description="Copy the bytes read from `path` into the store (inputs/sha256/<hash>/<name>) and register "
        "that copy in the catalog, so another machine or a later rerun reads exactly what the round read. "
        "false: register `path` as given (for a huge source; it must stay unchanged there). Not used with `dataset`.",
    )

    @model_validator(mode="after")
    def _check_location(self) -> SourceConfig:
        if (self.path is None) == (self.dataset is None):
            got = "both" if self.path is not None else "neither"
            raise ValueError(
                f"source {self.name!r}: set exactly one of path (a local file or save_to_disk directory) and "
                f"dataset (a datasets.load_dataset spec); got {got}"
            )
        if self.dataset is not None and self.format != "auto":
            raise ValueError(f"source {self.name!r}: format ({self.format!r}) applies to path only; remove it")
        return self


class CurationConfig(_Strict):
    sources: list[SourceConfig] = Field(description="Prompt sources mixed into each round.", min_length=1)
    prompts_per_round: int = Field(512, ge=1, description="Prompts drawn per round (weighted across sources).")
    min_chars: int = Field(1, ge=1, description="Drop prompts shorter than this many characters (normalised).")
    max_chars: int | None = Field(
        None, ge=1, description="Drop prompts longer than this many characters (None: no limit)."
    )
    min_tokens: int | None = Field(
        None,
        ge=1,
        description="Drop prompts shorter than this many tokens of the base model's tokenizer (None: no limit).",
    )
    max_tokens: int | None = Field(
        None,
        ge=1,
        description="Drop prompts longer than this many tokens of the base model's tokenizer (None: no "
        "limit); keep it below generation.engine.max_model_len minus the completion length.",
    )
    blocked_keywords: list[str] = Field(
        default_factory=list,
        description="Drop prompts containing any of these words or phrases (case-insensitive, whole words), "
        "e.g. other models' names as in Tulu 3.",
    )
    languages: list[str] | None = Field(
        None,
        description="Keep only prompts detected (py3langid) as one of these ISO 639-1 codes, e.g. [en] "
        "(None: no language filter).",
    )
    language_min_chars: int = Field(
        20,
        ge=0,
        description="Prompts with fewer letters than this are too short to judge and pass the language filter.",
    )
    near_dup_threshold: float | None = Field(
        0.8,
        gt=0,
        le=1,
        description="Drop a prompt whose word-3-gram Jaccard similarity (MinHash estimate) with an "
        "earlier prompt of this or an earlier round reaches this (None: exact dedup only).",
    )
    reuse_after_rounds: int | None = Field(
        None,
        ge=1,
        description="A prompt drawn in round r may be drawn again from round r + K on (None: never "
        "again; 1: always). Exact and near-duplicate checks against earlier rounds follow the same rule.",
    )
    decontam_ngram: int = Field(
        8, ge=1, description="Word n-gram size for decontamination against the eval sets (shorter texts: whole text)."
    )
    decontam_threshold: float = Field(
        0.5,
        gt=0,
        le=1,
        description="A text is contaminated when this fraction of the n-grams of it or of an eval "
        "prompt (the smaller) are shared; applied to prompts here and to SFT/DPO rows before training.",
    )
    max_row_chars: int = Field(
        100_000,
        ge=1,
        description="A prompt longer than this is a broken row (e.g. a whole document in one field) "
        "and is quarantined rather than filtered.",
    )
    max_quarantine_fraction: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Stop the round when more than this fraction of a source's rows are "
        "malformed (each is in the quarantine artifact with its reason).",
    )
    seed: int = Field(0, description="Seed of the weighted draw (combined with the round number).")

    @model_validator(mode="after")
    def _check_ranges(self) -> CurationConfig:
        for low, high in (("min_chars", "max_chars"), ("min_tokens", "max_tokens")):
            lo, hi = getattr(self, low), getattr(self, high)
            if lo is not None and hi is not None and lo > hi:
                raise ValueError(f"curation.{low} ({lo}) is above curation.{high} ({hi}): no prompt could pass")
        if self.languages is not None and not self.languages:
            raise ValueError("curation.languages is an empty list: give ISO 639-1 codes such as [en], or null")
        return self
