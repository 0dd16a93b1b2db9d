"""Training section for model averaging (Llama 3 style): the candidate becomes a weighted average of the newly
trained weights and earlier policies.

    averaging:
      enabled: true
      parents: last_k_promoted   # or `policy`: only the policy this round started from
      k: 3                       # the 3 latest policies of the pipeline (the base model counts as the first)
      from_round: 2              # optional: round 1 keeps its trained model (default 1: every round averages)
      weight_new: 0.5            # the newly trained model's share; the other 0.5 is split among the parents
      parent_weights: [2, 1, 1]  # optional, newest first: relative shares of the parents (None: equal)
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class AveragingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        False,
        description="Average the newly trained model with earlier policies before it is evaluated; the "
        "average becomes the candidate, stored as a model artifact with a lineage edge to each parent.",
    )
    parents: Literal["policy", "last_k_promoted"] = Field(
        "policy",
        description="What the new model is averaged with: `policy` (the policy this round started from) "
        "or `last_k_promoted` (the k latest policies of the pipeline, newest first: the base model counts as the "
        "first, so early rounds average with fewer than k).",
    )
    k: int = Field(2, ge=1, description="How many earlier policies `last_k_promoted` averages with.")
    from_round: int = Field(
        1,
        ge=1,
        description="The first round that averages; earlier rounds keep the trained model as the candidate. 2 "
        "skips round 1, whose only parent is the base model: on the tiny demo, averaging with a base that answers "
        'none of the held-out set cost round 1 26 points on the mean of 3 seeds (README, "Does DPO help here?").',
    )
    weight_new: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Share of the newly trained model in the average, in (0, 1]; the rest goes to "
        "the parents. 1 keeps the trained model as it is (like enabled: false).",
    )
    parent_weights: list[float] | None = Field(
        None,
        description="Relative shares of the parents, newest first (one for `policy`, k for "
        "`last_k_promoted`), scaled to sum to 1 - weight_new; when fewer than k parents exist, the first ones "
        "are used. None: equal shares.",
    )

    @model_validator(mode="after")
    def _check_parent_weights(self) -> AveragingConfig:
        if self.parent_weights is None:
            return self
        want = 1 if self.parents == "policy" else self.k
        if len(self.parent_weights) != want:
            raise ValueError(
                f"averaging.parent_weights has {len(self.parent_weights)} values but parents "
                f"({self.parents!r}, k={self.k}) has {want}"
            )
        if any(w <= 0 for w in self.parent_weights):
            raise ValueError(f"averaging.parent_weights ({self.parent_weights}) must all be > 0")
        return self
