"""Shared by the TRL trainers: progress logging, training arguments, and saving a checkpoint vLLM can load."""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import torch
import transformers
import trl
from pydantic import BaseModel
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from trainers.curves import CurveReport
from trainers.lora import merge_adapters, peft_version


class LossLogger(TrainerCallback):
    """Sends the trainer's loss lines to a logger (Prefect run logs), and keeps them for the summary."""

    def __init__(self, logger: logging.Logger | logging.LoggerAdapter, name: str):
        self.logger, self.name, self.history = logger, name, []

    def on_step_end(self, args, state, control, **kwargs):
        # Log the last step too (not only every logging_steps), so the history ends with the final loss.
        if state.global_step >= state.max_steps:
            control.should_log = True
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.history.append(
                {"step": state.global_step, **{k: float(v) for k, v in logs.items() if isinstance(v, (int, float))}}
            )
            self.logger.info(*self.line(state, logs))

    def line(self, state, logs: dict) -> tuple:
        """One logged step's line, as the logger's arguments (a stage's logger may say more)."""
        return "%s step %d/%d loss %.4f", self.name, state.global_step, state.max_steps, logs["loss"]


def load_policy(model_path: str, bf16: bool):
    dtype = torch.bfloat16 if bf16 else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def save_checkpoint(model, tokenizer, out_dir: Path, training_info: dict) -> Path:
    """Model + tokenizer only (no optimizer or trainer state), so the same weights hash the same."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    model.config.use_cache = True  # trainers switch the KV cache off; generation wants it back
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    write_training_info(out_dir, training_info)
    return out_dir


def write_training_info(out_dir: Path, training_info: dict) -> None:
    """flywheel_training.json beside the weights: what made the checkpoint, with the library versions.

    The file is part of the checkpoint, so of its content id: it names models by artifact id and holds no
    paths or times, or the same training would get a new id in every home and on every machine.
    """
    info = {
        **training_info,
        "trl_version": trl.__version__,
        "transformers_version": transformers.__version__,
        "peft_version": peft_version(),
        "torch_version": torch.__version__,
    }
    (out_dir / "flywheel_training.json").write_text(json.dumps(info, indent=2, sort_keys=True, default=str))


def check_finite(history: list[dict], name: str) -> None:
    bad = [h for h in history if not math.isfinite(h.get("loss", 0.0))]
    if bad:
        raise FloatingPointError(
            f"{name}: loss became {bad[0]['loss']} at step {bad[0]['step']}; lower the learning rate"
        )


def common_args(
    output_dir: Path,
    *,
    lr: float,
    epochs: float,
    batch_size: int,
    seed: int,
    use_cpu: bool,
    bf16: bool,
    scheduler: str = "cosine",
    warmup_ratio: float = 0.1,
    weight_decay: float = 0.0,
    grad_accum: int = 1,
    report: CurveReport | None = None,
) -> dict:
    """TrainingArguments shared by every trainer; `report` names the training-curve integrations (none by default)."""
    report = report or CurveReport()
    return dict(
        output_dir=str(output_dir),
        learning_rate=lr,
        num_train_epochs=epochs,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=grad_accum,
        weight_decay=weight_decay,
        lr_scheduler_type=scheduler,
        warmup_steps=warmup_ratio,  # transformers 5: a float below 1 is a fraction of all steps
        logging_steps=5,
        save_strategy="no",
        report_to=list(report.report_to),
        run_name=report.run_name,
        seed=seed,
        data_seed=seed,
        use_cpu=use_cpu,
        bf16=bf16,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def stage_args(
    cfg: BaseModel,
    output_dir: Path,
    *,
    seed: int,
    use_cpu: bool,
    bf16: bool,
    batch_size: int | None = None,
    report: CurveReport | None = None,
) -> dict:
    """`common_args` from an SFT, DPO or RL stage config (all carry the same optimizer fields).

    `batch_size` overrides the config's (RL counts its batch in completions: prompts x group size).
    """
    return common_args(
        output_dir,
        lr=cfg.learning_rate,
        epochs=cfg.epochs,
        batch_size=batch_size or cfg.batch_size,
        seed=seed,
        use_cpu=use_cpu,
        bf16=bf16,
        scheduler=cfg.lr_scheduler_type,
        warmup_ratio=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay,
        grad_accum=cfg.gradient_accumulation_steps,
        report=report,
    )


def finish_stage(trainer, tokenizer, result, callback: LossLogger, out_dir: Path, info: dict) -> tuple[Path, dict]:
    """Check the losses, merge LoRA adapters if any, and save the checkpoint with what made it.

    Args:
        result: the `TrainOutput` of `trainer.train()`.
        info: stage, config, loss types, base (the parent's artifact id), rows, seed... (written to
            flywheel_training.json with the steps, the losses and the library versions).
    Returns:
        (checkpoint dir, summary with steps, mean train loss, final logged loss and the loss history)
    """
    check_finite(callback.history, info["stage"])
    final = callback.history[-1]["loss"] if callback.history else result.training_loss
    summary = {
        "steps": result.global_step,
        "train_loss": result.training_loss,
        "final_loss": final,
        "history": callback.history,
    }
    info = {
        **info,
        "steps": result.global_step,
        "train_loss": result.training_loss,
        "final_loss": final,
        "trainer": type(trainer).__name__,
    }
    if _sharded(trainer):
        return _save_sharded(trainer, tokenizer, out_dir / "model", info), summary
    model = merge_adapters(trainer.model)
    return save_checkpoint(model, tokenizer, out_dir / "model", info), summary


def _sharded(trainer) -> bool:
    """True when the weights are partitioned across processes (DeepSpeed ZeRO-3, FSDP)."""
    ds = (
        getattr(trainer, "is_deepspeed_enabled", False)
        and getattr(trainer.accelerator.state.deepspeed_plugin, "zero_stage", 0) == 3
    )
    return bool(ds or getattr(trainer, "is_fsdp_enabled", False))


def _save_sharded(trainer, tokenizer, out_dir: Path, info: dict) -> Path:
    """ZeRO-3/FSDP: every process takes part in gathering the full weights (trainer.save_model, which needs
    stage3_gather_16bit_weights_on_model_save in the DeepSpeed config); the main process writes the rest.
    A per-rank model.save_pretrained would write partitions that neither transformers nor vLLM can load."""
    if getattr(trainer.model, "peft_config", None):
        raise ValueError(
            "LoRA with ZeRO-3 or FSDP is not supported: merging needs the full weights on one "
            "process; use ZeRO-2 (configs/deepspeed/zero2.json) or DDP for LoRA runs"
        )
    trainer.model.config.use_cache = True
    trainer.save_model(str(out_dir))
    if trainer.accelerator.is_main_process:
        tokenizer.save_pretrained(out_dir)
        write_training_info(out_dir, info)
    trainer.accelerator.wait_for_everyone()
    return out_dir
