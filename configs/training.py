"""Training sections for the policy: TRL SFT, then preference tuning (DPO, or reference-free CPO/SimPO),
each optionally through LoRA adapters that are merged back into a full checkpoint.

`configs.schema` imports these back, so `from configs.schema import SFTConfig, DPOConfig` still works.

Reference handling of the preference stage:
  reference: policy  TRL DPOTrainer; the reference is a frozen copy of the model the stage starts from (with
                     LoRA: the same model with its adapters switched off, so no second copy is kept).
  reference: none    reference-free: TRL's CPOTrainer (trl.experimental), whose losses are DPO's without the
                     reference terms: sigmoid (reference-free DPO), hinge, ipo, simpo (SimPO: length-normalised,
                     with a target margin). `sft` next to one of them becomes CPO's NLL term on the chosen answer,
                     weighted by its loss weight (cpo_alpha): [sigmoid, sft] is CPO, [simpo, sft] is CPO-SimPO.
DPOTrainer has no SimPO and no reference-free switch in TRL 1.16, hence the routing on `reference`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    # A typo in a YAML key must fail loudly instead of silently using a default.
    model_config = ConfigDict(extra="forbid")


# transformers' schedulers that need no extra kwargs (cosine_with_min_lr, warmup_stable_decay do).
LRScheduler = Literal[
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt"
]

# Exactly the loss types of trl 1.16's DPOTrainer (tests/test_trainers.py compares them with TRL's help text),
# plus `simpo`, which only CPOTrainer has.
DPOLoss = Literal[
    "sigmoid",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sft",
    "sigmoid_norm",
    "simpo",
]
# The preference losses of CPOTrainer (reference: none); `sft` may join one of them as the NLL term.
REFERENCE_FREE_LOSSES = ("sigmoid", "hinge", "ipo", "simpo")


class LoraConfig(_Strict):
    """LoRA adapters (peft) instead of full fine-tuning; merged into the weights before the checkpoint is saved."""

    enabled: bool = Field(False, description="Train LoRA adapters instead of all weights (then merge them in).")
    r: int = Field(16, ge=1, description="Rank of the adapter matrices.")
    alpha: int = Field(32, ge=1, description="LoRA scaling numerator: the update is scaled by alpha / r.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapter input during training.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear",
        description="Module names to adapt, e.g. [q_proj, v_proj], or `all-linear` (every linear "
        "layer but the output head).",
    )


class RoundSetting(_Strict):
    """Learning rate and epochs from one round on (until a later entry's `from_round`)."""

    from_round: int = Field(ge=1, description="First round these settings apply to.")
    learning_rate: float | None = Field(None, gt=0, description="Peak learning rate from that round (None: unchanged).")
    epochs: float | None = Field(None, gt=0, description="Passes over the data from that round (None: unchanged).")


class _Optimizer(_Strict):
    """Optimizer settings both training stages share."""

    schedule: list[RoundSetting] = Field(
        default_factory=list,
        description="Per-round learning rate and epochs, e.g. [{from_round: 2, learning_rate: 1e-5}]: later rounds "
        "start from a policy that already learned the easy cases, and often want a gentler step (empty: the same "
        "every round).",
    )

    @model_validator(mode="after")
    def _schedule_in_order(self):
        starts = [s.from_round for s in self.schedule]
        if starts != sorted(set(starts)):
            raise ValueError(f"schedule: from_round values must be distinct and increasing, got {starts}")
        return self

    def for_round(self, round_num: int):
        """These settings as they apply in `round_num`: the schedule's last entry at or before it, applied.

        >>> from configs.training import SFTConfig
        >>> c = SFTConfig(learning_rate=1e-4, schedule=[{"from_round": 2, "learning_rate": 5e-5}, {"from_round": 3, "epochs": 2}])
        >>> [(x.learning_rate, x.epochs) for x in (c.for_round(1), c.for_round(2), c.for_round(5))]
        [(0.0001, 1.0), (5e-05, 1.0), (5e-05, 2.0)]
        """
        update: dict = {}
        for entry in self.schedule:
            if entry.from_round <= round_num:
                update |= {k: v for k, v in (("learning_rate", entry.learning_rate), ("epochs", entry.epochs)) if v}
        return self.model_copy(update=update)

    gradient_accumulation_steps: int = Field(
        1, ge=1, description="Batches summed into one optimizer step (effective batch = batch_size x this x devices)."
    )
    lr_scheduler_type: LRScheduler = Field("cosine", description="Learning-rate schedule after warm-up.")
    warmup_ratio: float = Field(
        0.1, ge=0, lt=1, description="Fraction of all steps spent warming the learning rate up."
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")


class SFTConfig(_Optimizer):
    enabled: bool = Field(True, description="Run TRL SFTTrainer this round.")
    learning_rate: float = Field(1e-4, gt=0, description="Peak learning rate.")
    epochs: float = Field(1.0, gt=0, description="Passes over the SFT set.")
    batch_size: int = Field(
        16, ge=1, description="Per-device batch size: rows, or with packing, packed blocks of max_length tokens."
    )
    max_length: int = Field(
        256,
        ge=8,
        description="Longest training sequence, in tokens (longer rows are cut); with packing, the "
        "length of each packed block.",
    )
    completion_only_loss: bool = Field(True, description="Loss on the assistant turn only (not on the prompt).")
    packing: bool = Field(
        False,
        description="Pack rows into blocks of max_length tokens (TRL best-fit decreasing, padding-free). "
        "Works with completion_only_loss: TRL 1.16 masks the prompt before packing, and attention stays within "
        "each row (sequence boundaries come from position_ids).",
    )
    lora: LoraConfig = Field(default_factory=LoraConfig, description="Optional LoRA adapters, merged after training.")


class DPOConfig(_Optimizer):
    enabled: bool = Field(True, description="Run preference tuning this round (after SFT).")
    learning_rate: float = Field(5e-6, gt=0, description="Peak learning rate.")
    epochs: float = Field(1.0, gt=0, description="Passes over the pairs.")
    batch_size: int = Field(16, ge=1, description="Per-device batch size, in pairs.")
    beta: float = Field(
        0.1,
        gt=0,
        description="DPO temperature: strength of the pull towards the reference (IPO: its tau; SimPO: "
        "the reward scale, ~2 in the SimPO paper).",
    )
    loss_types: list[DPOLoss] = Field(
        default_factory=lambda: ["sigmoid"],
        min_length=1,
        description="TRL loss types, summed with `loss_weights` (e.g. [sigmoid, sft] adds an NLL term on the chosen "
        "answer, as RPO; sigmoid_norm is the length-normalised DPO of Tulu 3; simpo needs reference: none).",
    )
    loss_weights: list[float] | None = Field(None, description="Weight of each loss type (None: all 1.0).")
    reference: Literal["policy", "none"] = Field(
        "policy",
        description="`policy`: DPO against a frozen copy of the starting model. `none`: reference-free "
        "(TRL CPOTrainer) with one of sigmoid, hinge, ipo, simpo, optionally plus sft.",
    )
    precompute_ref_log_probs: bool = Field(
        False,
        description="Compute the reference log-probs of all pairs once before training, so the reference "
        "model is not kept in memory (reference: policy only).",
    )
    simpo_gamma: float = Field(0.5, ge=0, description="SimPO's target reward margin (loss type simpo only).")
    label_smoothing: float = Field(
        0.0,
        ge=0,
        lt=0.5,
        description="Probability that a preference label is flipped: robust DPO and the "
        "sigmoid/simpo losses of reference: none use it; exo_pair needs it > 0 (its paper: 1e-3).",
    )
    max_length: int = Field(256, ge=8, description="Longest prompt + answer, in tokens.")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="Optional LoRA adapters, merged after training.")

    @model_validator(mode="after")
    def _check_losses(self) -> DPOConfig:
        types, weights = self.loss_types, self.loss_weights
        if weights is not None and len(weights) != len(types):
            raise ValueError(
                f"training.dpo.loss_weights has {len(weights)} values but loss_types has {len(types)} ({types}): "
                "give one weight per loss type"
            )
        if "exo_pair" in types and self.label_smoothing == 0:
            raise ValueError("training.dpo.loss_types has exo_pair, which needs label_smoothing > 0 (e.g. 1e-3)")
        if self.reference == "policy":
            if "simpo" in types:
                raise ValueError("training.dpo.loss_types has simpo, which is reference-free: set reference: none")
            return self
        preference = [t for t in types if t != "sft"]
        if len(preference) != 1 or preference[0] not in REFERENCE_FREE_LOSSES or types.count("sft") > 1:
            raise ValueError(
                f"training.dpo.reference is none, so loss_types ({types}) must be one of {list(REFERENCE_FREE_LOSSES)}, "
                "optionally with sft (TRL CPOTrainer)"
            )
        if weights is not None and weights[types.index(preference[0])] != 1.0:
            raise ValueError(
                f"training.dpo.reference is none: the weight of {preference[0]} must be 1.0 (got "
                f"{weights[types.index(preference[0])]}); CPOTrainer only weights the sft term"
            )
        if self.precompute_ref_log_probs:
            raise ValueError("training.dpo.precompute_ref_log_probs needs a reference: set reference: policy")
        return self
