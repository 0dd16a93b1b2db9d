"""What a launched training job and its parent agree on: the spec file, the data file, the result file, and
the marker a failing process prints (trainers/launch.py starts the job, trainers/run.py is every process).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from trainers.curves import CurveReport

SPEC_FILE = "train_spec.json"
DATA_FILE = "train_data.parquet"
RESULT_FILE = "train_result.json"
ERROR_MARKER = "flywheel-train-error: "  # trainers.run prints it before exiting non-zero: the cause, in one line


class TrainSpec(BaseModel):
    """What one launched training run does; written by the parent, read by every process of the job."""

    model_config = ConfigDict(extra="forbid")

    stage: Literal["sft", "dpo", "rl", "reward"] = Field(
        description="Which trainer: trainers.sft.train_sft, trainers.dpo.train_dpo, trainers.grpo.train_rl or "
        "trainers.reward.train_reward."
    )
    model_dir: str = Field(description="Local directory of the model to start from.")
    base_id: str = Field(description="Artifact id of that model, which the checkpoint records (not model_dir).")
    data: str = Field(
        description="Parquet file of the training rows (SFT `messages`, DPO/reward prompt/chosen/rejected, or RL "
        "curated prompts)."
    )
    stage_config: dict[str, Any] = Field(
        description="The stage's config (SFTConfig, DPOConfig, RLConfig or RewardModelTrainConfig) as JSON."
    )
    rewards: dict[str, Any] | None = Field(
        None,
        description="rl only: {factory: 'module:function', scorers: [scorer configs as JSON]}; each process calls "
        "the factory with the scorers to get its reward functions and weights (tasks/scoring/rl_rewards.py).",
    )
    out_dir: str = Field(description="Where the checkpoint (out_dir/model) and train_result.json are written.")
    seed: int = Field(description="Training seed.")
    use_cpu: bool = Field(description="Train on CPU.")
    bf16: bool = Field(description="Train in bfloat16.")
    report: CurveReport = Field(
        default_factory=CurveReport,
        description="Where the training curves go; every process sets its environment while training "
        "(transformers reports from the main process only).",
    )
