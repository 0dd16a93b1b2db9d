"""Preference tuning of the policy on chosen/rejected pairs with TRL's DPOTrainer.

The reference model is a frozen copy of the model DPO starts from (the SFT checkpoint of this round),
which TRL builds itself when no `ref_model` is given.
"""
from __future__ import annotations

import logging
from pathlib import Path

from datasets import Dataset
from transformers import PrinterCallback
from trl import DPOConfig as TRLDPOConfig
from trl import DPOTrainer

from configs.schema import DPOConfig
from trainers.common import LossLogger, check_finite, common_args, load_policy, save_checkpoint


def train_dpo(
    model_path: str, pairs: list[dict], cfg: DPOConfig, out_dir: Path, *, seed: int, use_cpu: bool, bf16: bool,
    logger: logging.Logger | logging.LoggerAdapter,
) -> tuple[Path, dict]:
    """DPO from `model_path` on conversational `prompt/chosen/rejected` rows; returns checkpoint and summary."""
    model, tokenizer = load_policy(model_path, bf16)
    args = TRLDPOConfig(
        **common_args(out_dir / "trainer", lr=cfg.learning_rate, epochs=cfg.epochs, batch_size=cfg.batch_size,
                      seed=seed, use_cpu=use_cpu, bf16=bf16),
        beta=cfg.beta, loss_type=list(cfg.loss_types), loss_weights=cfg.loss_weights, max_length=cfg.max_length,
    )
    data = [{"prompt": [dict(m) for m in p["prompt"]], "chosen": [dict(m) for m in p["chosen"]],
             "rejected": [dict(m) for m in p["rejected"]]} for p in pairs]
    callback = LossLogger(logger, "dpo")
    trainer = DPOTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(data), processing_class=tokenizer, callbacks=[callback],
    )
    trainer.remove_callback(PrinterCallback)  # its raw dicts on stdout duplicate LossLogger's lines
    result = trainer.train()
    check_finite(callback.history, "dpo")
    info = {"stage": "dpo", "config": cfg.model_dump(), "rows": len(pairs), "base": model_path, "seed": seed}
    ckpt = save_checkpoint(trainer.model, tokenizer, out_dir / "model", info)
    return ckpt, {"steps": result.global_step, "train_loss": result.training_loss, "history": callback.history}
