"""Training section for the optional reward model: TRL RewardTrainer on the pipeline's chosen/rejected pairs.

The reward model trained in round r scores completions from round r+1 on (a `reward_model` scorer with
`model: trained`), so it can only judge rounds after the first one it was trained in.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class RewardModelTrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="Train a reward model on the pairs after selection each round.")
    learning_rate: float = Field(1e-5, gt=0, description="Peak learning rate (cosine decay, 10 % warm-up).")
    epochs: float = Field(1.0, gt=0, description="Passes over the pairs.")
    batch_size: int = Field(16, ge=1, description="Pairs per device per step (each pair is two sequences).")
    max_length: int = Field(
        512,
        ge=8,
        description="Longest prompt + answer, in tokens; a pair with a longer side is left out (not "
        "truncated: a cut-off answer could no longer show what made it better or worse).",
    )
    rounds_of_pairs: int | None = Field(
        None,
        ge=1,
        description="Train on the pairs of this many most recent rounds, this one included (None: every round so far).",
    )
    base: str = Field(
        "policy",
        description="Backbone of the reward model: `policy` (the policy this round started from, with a "
        "new one-output head) or a local model directory.",
    )
    seed: int = Field(0, description="Seed of the new reward head and of the data order (plus the round number).")
    center_rewards_coefficient: float | None = Field(
        0.01,
        ge=0,
        description="Pull rewards towards mean 0 (TRL; Eisenstein et al. 2023), so that the RM's weight "
        "in scoring.combine means the same from round to round. None: off.",
    )
