"""Supervised fine-tuning of the policy on best-of-N rows with TRL's SFTTrainer.

Rows arrive as TRL `messages` conversations; they are split into conversational prompt/completion
pairs so that, with `completion_only_loss`, only the assistant answer is learned (not the question).

Packing and completion-only loss together: TRL 1.16 builds the labels (prompt tokens at -100) before it
packs rows with best-fit decreasing, so the mask survives packing; BFD packing is padding-free and passes
each row's `position_ids`, from which transformers' attention (sdpa, eager, flash) keeps rows from seeing
each other. Both options are therefore passed through unchanged; tests/test_trainers.py checks the packed
labels still mask the prompts.

Optional LoRA (`cfg.lora`): adapters are merged into the weights before saving (see trainers/lora.py).
"""

from __future__ import annotations

import logging
from pathlib import Path

from datasets import Dataset
from transformers import PrinterCallback
from trl import SFTConfig as TRLSFTConfig
from trl import SFTTrainer

from configs.training import SFTConfig
from trainers.common import LossLogger, finish_stage, load_policy, stage_args
from trainers.curves import CurveReport, reporting
from trainers.lora import peft_config


def to_prompt_completion(rows: list[dict]) -> list[dict]:
    """`messages` -> {"prompt": all turns but the last, "completion": [last assistant turn]}."""
    out = []
    for r in rows:
        msgs = [dict(m) for m in r["messages"]]
        if not msgs or msgs[-1]["role"] != "assistant":
            raise ValueError(f"SFT row {r.get('row_id')}: the last message must be the assistant's answer")
        out.append({"prompt": msgs[:-1], "completion": msgs[-1:]})
    return out


def build_sft_trainer(
    model_path: str,
    rows: list[dict],
    cfg: SFTConfig,
    out_dir: Path,
    *,
    seed: int,
    use_cpu: bool,
    bf16: bool,
    callbacks: list,
    report: CurveReport | None = None,
) -> tuple[SFTTrainer, object]:
    """The SFTTrainer `train_sft` runs (exposed so tests can look at its prepared data); returns it and the tokenizer."""
    model, tokenizer = load_policy(model_path, bf16)
    args = TRLSFTConfig(
        **stage_args(cfg, out_dir / "trainer", seed=seed, use_cpu=use_cpu, bf16=bf16, report=report),
        max_length=cfg.max_length,
        completion_only_loss=cfg.completion_only_loss,
        packing=cfg.packing,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(to_prompt_completion(rows)),
        processing_class=tokenizer,
        callbacks=callbacks,
        peft_config=peft_config(cfg.lora),
    )
    trainer.remove_callback(PrinterCallback)  # its raw dicts on stdout duplicate LossLogger's lines
    return trainer, tokenizer


def train_sft(
    model_path: str,
    rows: list[dict],
    cfg: SFTConfig,
    out_dir: Path,
    *,
    base_id: str,
    seed: int,
    use_cpu: bool,
    bf16: bool,
    logger: logging.Logger | logging.LoggerAdapter,
    report: CurveReport | None = None,
) -> tuple[Path, dict]:
    """Fine-tune `model_path` on `rows`; returns the saved checkpoint dir and a summary (losses, steps).

    `base_id` names the model in `model_path` (its artifact id) in the checkpoint's flywheel_training.json.
    `report` says where the training curves go (trainers/curves.py; None: nowhere).
    """
    callback = LossLogger(logger, "sft")
    # The integrations read their environment when the trainer is built (TensorBoard's directory) and when
    # it starts (MLflow's and wandb's runs): both inside.
    with reporting(report):
        trainer, tokenizer = build_sft_trainer(
            model_path, rows, cfg, out_dir, seed=seed, use_cpu=use_cpu, bf16=bf16, callbacks=[callback], report=report
        )
        result = trainer.train()
    info = {
        "stage": "sft",
        "config": cfg.model_dump(mode="json"),
        "loss_types": ["nll"],
        "rows": len(rows),
        "base": base_id,
        "seed": seed,
    }
    return finish_stage(trainer, tokenizer, result, callback, out_dir, info)
