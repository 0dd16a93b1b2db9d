"""Shared by the TRL trainers: progress logging and saving a checkpoint vLLM can load."""
from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import torch
import trl
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

class LossLogger(TrainerCallback):
    """Sends the trainer's loss lines to a logger (Prefect run logs), and keeps them for the summary."""

    def __init__(self, logger: logging.Logger | logging.LoggerAdapter, name: str):
        self.logger, self.name, self.history = logger, name, []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.history.append({"step": state.global_step, **{k: float(v) for k, v in logs.items() if isinstance(v, (int, float))}})
            self.logger.info("%s step %d/%d loss %.4f", self.name, state.global_step, state.max_steps, logs["loss"])


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
    info = {**training_info, "trl_version": trl.__version__, "torch_version": torch.__version__}
    (out_dir / "flywheel_training.json").write_text(json.dumps(info, indent=2, sort_keys=True, default=str))
    return out_dir


def check_finite(history: list[dict], name: str) -> None:
    bad = [h for h in history if not math.isfinite(h.get("loss", 0.0))]
    if bad:
        raise FloatingPointError(f"{name}: loss became {bad[0]['loss']} at step {bad[0]['step']}; lower the learning rate")


def common_args(output_dir: Path, *, lr: float, epochs: float, batch_size: int, seed: int, use_cpu: bool, bf16: bool) -> dict:
    return dict(
        output_dir=str(output_dir), learning_rate=lr, num_train_epochs=epochs, per_device_train_batch_size=batch_size,
        lr_scheduler_type="cosine", warmup_steps=0.1,  # a float below 1 is a fraction of all steps
        logging_steps=5, save_strategy="no", report_to=[],
        seed=seed, data_seed=seed, use_cpu=use_cpu, bf16=bf16, disable_tqdm=True, dataloader_num_workers=0,
    )
