"""The one schema of a flywheel pipeline: pydantic models, YAML files in configs/ hold the values.

Every field has a type, a default and a description, so Prefect renders the same model as a typed
form in the UI. Secrets (S3 keys, API keys) never live here: they come from the environment.

Check a file:  flywheel validate configs/demo.yaml
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from configs.averaging import AveragingConfig
from configs.curation import CurationConfig, LoadDatasetSpec, SourceConfig  # noqa: F401  (re-exported)
from configs.generation import CommitteeMemberConfig, EngineConfig, GenerationConfig, SamplingConfig  # noqa: F401
from configs.launcher import LauncherConfig
from configs.reward import RewardModelTrainConfig
from configs.rl import RLConfig, rl_scorers
from configs.scoring import JudgeEndpointConfig, ScorerConfig, ScoringConfig  # noqa: F401  (re-exported)
from configs.tracking import TrackingConfig
from configs.training import DPOConfig, LoraConfig, SFTConfig  # noqa: F401  (re-exported)


class _Strict(BaseModel):
    # A typo in a YAML key must fail loudly instead of silently using a default.
    model_config = ConfigDict(extra="forbid")


class EvalSetConfig(_Strict):
    """A held-out eval set: never trained on, decontaminated against."""

    name: str = Field(
        "heldout", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Name of the eval set, used in metric names."
    )
    path: str = Field(
        description="Path to a .jsonl or .parquet file with prompts (and reference answers), or an "
        "s3://bucket/key object read with the store's credentials and storage.endpoint_url."
    )
    snapshot: bool = Field(True, description="Copy it into the store (inputs/sha256/...); false: register `path`.")
    prompt_field: str = Field("prompt", description="Column holding the prompt text.")
    answer_field: str | None = Field(
        "answer", description="Column holding the reference answer (needed by `metric: accuracy` only)."
    )
    metric: Literal["accuracy", "ifeval", "reward", "win_rate"] = Field(
        "accuracy",
        description="accuracy: greedy answers checked by the math verifier; ifeval: greedy answers checked "
        "against each prompt's IFEval instructions (`instruction_id_list`, `kwargs`) by Google's checkers; reward: "
        "mean score of `reward_model`; win_rate: the `judge` compares candidate and policy answers, each pair in "
        "both orders.",
    )
    instructions_field: str = Field(
        "instruction_id_list", description="metric ifeval: column with the prompt's IFEval instruction ids."
    )
    kwargs_field: str = Field(
        "kwargs", description="metric ifeval: column with the instructions' arguments (one dict per instruction)."
    )
    level: Literal["instruction_loose", "instruction_strict", "prompt_loose", "prompt_strict"] = Field(
        "instruction_loose",
        description="metric ifeval: which of IFEval's four figures is the set's headline (and what the gate "
        "compares): per instruction or per prompt (all of its instructions), strict or loose.",
    )
    decontam_field: str | None = Field(
        None,
        description="Column whose text training data is decontaminated against (None: the prompt). IFEval-style "
        "sets, whose prompts share the checkers' instruction wording by design, point it at the base request.",
    )
    samples: int = Field(
        0,
        ge=0,
        description="accuracy and ifeval: also draw this many answers per prompt at `temperature` and report "
        "pass@k (accuracy: and maj@k) for k = 1, 2, 4, ... up to it (0: greedy only).",
    )
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the `samples` answers.")
    reward_model: str | None = Field(
        None, description="metric reward: a reward model directory, or `trained` (the pipeline's latest one)."
    )
    judge: JudgeEndpointConfig | None = Field(None, description="metric win_rate: the judge model and where it runs.")

    @model_validator(mode="after")
    def _check_metric(self) -> EvalSetConfig:
        needs = {
            "accuracy": ("answer_field", self.answer_field),
            "ifeval": ("instructions_field", self.instructions_field),
            "reward": ("reward_model", self.reward_model),
            "win_rate": ("judge", self.judge),
        }
        field, value = needs[self.metric]
        if value is None:
            raise ValueError(f"evaluation.eval_sets[{self.name}]: metric {self.metric} needs `{field}`")
        return self


class ReplayConfig(_Strict):
    """Replay (Llama 2): earlier rounds' best SFT rows and pairs trained on again beside this round's."""

    enabled: bool = Field(False, description="Add rows of earlier rounds to this round's SFT rows and pairs.")
    rounds: int | None = Field(None, ge=1, description="How many earlier rounds to draw from (None: all).")
    share: float = Field(
        1.0, ge=0, description="Replayed rows per row selected this round, at most (1.0: as many as this round's)."
    )
    floor: int = Field(
        0, ge=0, description="Replayed rows allowed whatever this round's yield (a poor round still replays)."
    )
    cap: int = Field(512, ge=0, description="At most this many replayed rows (each of SFT and pairs) per round.")
    pairs: bool = Field(True, description="Replay DPO pairs too, by the same rule (ranked by margin).")


class SelectionConfig(_Strict):
    sft_min_reward: float = Field(1.0, description="Best-of-N: keep a prompt's best completion only at or above this.")
    pair_min_margin: float = Field(0.5, ge=0, description="DPO pair: best minus worst reward must reach this margin.")
    pairs_per_prompt: int = Field(1, ge=0, description="DPO pairs per prompt (0: no pairs).")
    allow_truncated: bool = Field(
        False,
        description="Let a completion cut off at max_tokens (finish_reason `length`) be an SFT row or a chosen "
        "answer. Off: it can only be rejected (a verifier may pass a cut-off answer that still teaches rambling).",
    )
    decontaminate: bool = Field(
        True,
        description="Drop SFT rows and DPO pairs whose prompt or answers overlap an eval set (same n-gram "
        "rule as curation): generated text can leak eval content too.",
    )
    replay: ReplayConfig = Field(default_factory=ReplayConfig, description="Replay of earlier rounds' rows.")


class TrainingConfig(_Strict):
    sft: SFTConfig = Field(default_factory=SFTConfig, description="Supervised fine-tuning on best-of-N rows.")
    dpo: DPOConfig = Field(default_factory=DPOConfig, description="Preference tuning on chosen/rejected pairs.")
    rl: RLConfig = Field(default_factory=RLConfig, description="Optional: TRL GRPO on verifiable rewards, after DPO.")
    launcher: LauncherConfig = Field(
        default_factory=LauncherConfig,
        description="Where training runs: in this process (local) or an "
        "accelerate launch job (DDP, DeepSpeed ZeRO, FSDP).",
    )
    averaging: AveragingConfig = Field(
        default_factory=AveragingConfig,
        description="Optional: the candidate is the weighted average of the newly "
        "trained weights and the policy (or the last K promoted policies), as in Llama 3, before evaluation.",
    )
    reward_model: RewardModelTrainConfig = Field(
        default_factory=RewardModelTrainConfig,
        description="Optional: train a reward model on the pipeline's "
        "chosen/rejected pairs each round (TRL RewardTrainer); `model: trained` scorers use the latest one.",
    )
    seed: int = Field(0, description="Training seed.")
    use_cpu: bool = Field(True, description="Train on CPU even where a GPU exists (the demo).")
    bf16: bool = Field(False, description="Train in bfloat16 (GPU).")

    @model_validator(mode="after")
    def _check_launcher(self) -> TrainingConfig:
        # use_cpu defaults to True: without this check a GPU launcher would quietly train N processes on CPU.
        if self.launcher.kind == "accelerate" and self.launcher.cpu != self.use_cpu:
            raise ValueError(
                f"training.launcher.cpu ({self.launcher.cpu}) and training.use_cpu ({self.use_cpu}) "
                "disagree: set both to true for CPU jobs, both to false for GPUs"
            )
        return self


class EvaluationConfig(_Strict):
    eval_sets: list[EvalSetConfig] = Field(min_length=1, description="Held-out eval sets.")
    max_tokens: int = Field(32, ge=1, description="Longest answer generated during evaluation (greedy).")


class GuardConfig(_Strict):
    """Another eval metric that must not get much worse for the candidate to be promoted."""

    eval_set: str = Field(description="Eval set whose metric is guarded (its own `metric`).")
    max_drop: float = Field(0.0, ge=0, description="Largest allowed drop, candidate vs policy, in metric units.")


class PromotionConfig(_Strict):
    """The gate: the primary metric is the `metric` of `eval_set` (accuracy, ifeval, reward or win_rate), candidate vs policy."""

    eval_set: str | None = Field(None, description="Eval set of the primary metric (None: the first configured).")
    min_improvement: float = Field(
        0.0, ge=0, description="The primary metric must improve by at least this (absolute, metric units)."
    )
    tolerance: float = Field(
        0.0, ge=0, description="Or: the primary metric may drop by at most this (set one of the two)."
    )
    require_significant: bool = Field(
        False,
        description="accuracy and ifeval sets: also require the lower 95 % bound of (candidate - policy) to clear "
        "the same margin (Newcombe's interval from the two Wilson intervals; conservative for paired prompts), "
        "so an improvement inside the noise does not promote.",
    )
    guards: list[GuardConfig] = Field(
        default_factory=list, description="Other eval sets that may not regress by more than their max_drop."
    )

    @model_validator(mode="before")
    @classmethod
    def _no_metric(cls, data: Any) -> Any:
        # It used to be accepted and ignored: say what decides instead of silently ignoring it.
        if isinstance(data, dict) and "metric" in data:
            raise ValueError(
                f"promotion.metric ({data['metric']!r}) is not a setting: the gate compares the `metric` of the eval "
                "set named by promotion.eval_set (evaluation.eval_sets[].metric: accuracy, ifeval, reward or win_rate); "
                "remove promotion.metric"
            )
        return data

    @model_validator(mode="after")
    def _one_rule(self) -> PromotionConfig:
        if self.min_improvement and self.tolerance:
            raise ValueError(
                f"promotion.min_improvement ({self.min_improvement}) and promotion.tolerance "
                f"({self.tolerance}) are both set: require an improvement, or tolerate a drop"
            )
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
    retry_window_s: float = Field(
        120.0,
        ge=0,
        description="How long a store call retries, with backoff, while S3 is unreachable or answers 5xx/"
        "SlowDown (a MinIO restart, a network blip) before the round fails; 0: fail at once. The check when "
        "a round starts tries once, so a wrong endpoint fails in seconds.",
    )
    catalog_wait_s: float = Field(
        3600.0,
        gt=0,
        description="How long a catalog write waits while another process (a DuckDB CLI, a notebook) holds "
        "the catalog file, logging the holder every 30 s, before the round fails.",
    )
    catalog: Literal["duckdb", "ducklake"] = Field(
        "duckdb",
        description="`duckdb`: one DuckDB file in the home (one machine; indexed row lineage). `ducklake`: "
        "DuckLake, its tables as Parquet under the store's catalog/lake/ and its metadata in SQLite or "
        "Postgres (catalog_metadata); every finished round is a snapshot (`flywheel rounds --as-of-round N`).",
    )
    catalog_metadata: str | None = Field(
        None,
        description="Where DuckLake keeps its metadata: None: SQLite, catalog.sqlite in the home (one "
        "machine); `postgres:host=H dbname=D user=U` for several machines sharing one catalog (the password "
        "from PGPASSWORD or ~/.pgpass, never here). Only with catalog: ducklake.",
    )

    @model_validator(mode="after")
    def _check_uri(self) -> StorageConfig:
        if self.uri != "embedded" and not self.uri.startswith(("s3://", "file://")):
            raise ValueError(f"storage.uri ({self.uri!r}) must start with s3:// or file://, or be 'embedded'")
        meta = self.catalog_metadata
        if meta is not None:
            if self.catalog != "ducklake":
                raise ValueError("storage.catalog_metadata is for DuckLake: set storage.catalog: ducklake, or drop it")
            if not meta.startswith(("sqlite:", "postgres:")):
                raise ValueError(
                    f"storage.catalog_metadata ({meta!r}) must be `sqlite:/path/catalog.sqlite` or "
                    "`postgres:host=... dbname=... user=...`"
                )
            if re.search(r"\bpassword\s*=", meta) or re.search(r"://[^/@]*:[^/@]*@", meta):
                raise ValueError(
                    "storage.catalog_metadata holds a password: set PGPASSWORD (or ~/.pgpass) in the "
                    "environment instead, so that it never lands in a config, a log or the catalog"
                )
        return self


class FlywheelConfig(_Strict):
    """A pipeline: everything one round needs, and the name its rounds are recorded under."""

    pipeline: str = Field(
        "demo", pattern=r"^[a-z0-9][a-z0-9_-]*$", description="Pipeline name (rounds are per pipeline)."
    )
    base_model: str = Field(description="Policy of round 0: a local model directory (or a hub id where reachable).")
    home: str | None = Field(
        None,
        description="Working directory for the catalog, caches and the embedded store (None: FLYWHEEL_HOME or ./.flywheel).",
    )
    storage: StorageConfig = Field(default_factory=StorageConfig, description="Artifact store.")
    curation: CurationConfig = Field(
        description="Where each round's prompts come from and how they are deduplicated and decontaminated."
    )
    generation: GenerationConfig = Field(default_factory=GenerationConfig, description="Sampling from the policy.")
    scoring: ScoringConfig = Field(default_factory=ScoringConfig, description="How completions are scored.")
    selection: SelectionConfig = Field(default_factory=SelectionConfig, description="Best-of-N and pair building.")
    training: TrainingConfig = Field(default_factory=TrainingConfig, description="TRL SFT, DPO, optional GRPO.")
    evaluation: EvaluationConfig = Field(description="Held-out eval sets on which policy and candidate are compared.")
    promotion: PromotionConfig = Field(default_factory=PromotionConfig, description="The promotion gate.")
    tracking: TrackingConfig = Field(
        default_factory=TrackingConfig, description="OpenLineage events, MLflow runs, training curves."
    )

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
            raise ValueError(
                f"evaluation.eval_sets {trained_eval} use `reward_model: trained`, but "
                "training.reward_model.enabled is false"
            )
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
        longest = self.generation.longest_completion()
        if longest >= self.generation.engine.max_model_len:
            raise ValueError(
                f"completions of up to {longest} tokens (generation sampling.max_tokens) leave no room for a prompt "
                f"in generation.engine.max_model_len ({self.generation.engine.max_model_len}): raise max_model_len"
            )
        if self.training.rl.enabled:
            rl_scorers(self.training.rl, self.scoring)  # raises naming an unknown or unverifiable scorer
        return self

    @property
    def gate_eval_set(self) -> str:
        return self.promotion.eval_set or self.evaluation.eval_sets[0].name

    def resolve_home(self) -> Path:
        import os

        return Path(self.home or os.environ.get("FLYWHEEL_HOME") or ".flywheel").resolve()
