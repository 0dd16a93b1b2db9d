"""Supervised fine-tuning of the policy on best-of-N rows with TRL's SFTTrainer.

Rows arrive as TRL `messages` conversations; they are split into conversational prompt/completion
pairs so that, with `completion_only_loss`, only the assistant answer is learned (not the question).
"""
from __future__ import annotations

import logging
from pathlib import Path

from datasets import Dataset
from transformers import PrinterCallback
from trl import SFTConfig as TRLSFTConfig
from trl import SFTTrainer

from configs.schema import SFTConfig
from trainers.common import LossLogger, check_finite, common_args, load_policy, save_checkpoint


def to_prompt_completion(rows: list[dict]) -> list[dict]:
    """`messages` -> {"prompt": all turns but the last, "completion": [last assistant turn]}."""
    out = []
    for r in rows:
        msgs = [dict(m) for m in r["messages"]]
        if not msgs or msgs[-1]["role"] != "assistant":
            raise ValueError(f"SFT row {r.get('row_id')}: the last message must be the assistant's answer")
        out.append({"prompt": msgs[:-1], "completion": msgs[-1:]})
    return out


def train_sft(
    model_path: str, rows: list[dict], cfg: SFTConfig, out_dir: Path, *, seed: int, use_cpu: bool, bf16: bool,
    logger: logging.Logger | logging.LoggerAdapter,
) -> tuple[Path, dict]:
    """Fine-tune `model_path` on `rows`; returns the saved checkpoint dir and a summary (losses, steps)."""
    model, tokenizer = load_policy(model_path, bf16)
    args = TRLSFTConfig(
        **common_args(out_dir / "trainer", lr=cfg.learning_rate, epochs=cfg.epochs, batch_size=cfg.batch_size,
                      seed=seed, use_cpu=use_cpu, bf16=bf16),
        max_length=cfg.max_length, completion_only_loss=cfg.completion_only_loss,
    )
    callback = LossLogger(logger, "sft")
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(to_prompt_completion(rows)),
        processing_class=tokenizer, callbacks=[callback],
    )
    trainer.remove_callback(PrinterCallback)  # its raw dicts on stdout duplicate LossLogger's lines
    result = trainer.train()
    check_finite(callback.history, "sft")
    info = {"stage": "sft", "config": cfg.model_dump(), "rows": len(rows), "base": model_path, "seed": seed}
    ckpt = save_checkpoint(trainer.model, tokenizer, out_dir / "model", info)
    return ckpt, {"steps": result.global_step, "train_loss": result.training_loss, "history": callback.history}
