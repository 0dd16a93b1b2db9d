"""Preference tuning of the policy on chosen/rejected pairs: TRL's DPOTrainer, or CPOTrainer when reference-free.

`cfg.reference` picks the trainer (see configs/training.py):
  policy  DPOTrainer. The reference is a frozen copy of the model the stage starts from (the SFT checkpoint
          of this round), which TRL builds itself when no `ref_model` is given; with LoRA it is the same model
          with its adapters switched off. `precompute_ref_log_probs` scores all pairs with it once, up front.
  none    CPOTrainer (trl.experimental.cpo): one of sigmoid / hinge / ipo / simpo on the policy's own
          log-probs, and `sft` in loss_types becomes its NLL term (cpo_alpha = the sft weight, else 0).
          trl.experimental may change between minor releases: tests/test_trainers.py trains every route.

Optional LoRA (`cfg.lora`): adapters are merged into the weights before saving (see trainers/lora.py).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from datasets import Dataset
from transformers import PrinterCallback
from trl import DPOConfig as TRLDPOConfig
from trl import DPOTrainer

from configs.training import DPOConfig
from trainers.common import LossLogger, finish_stage, load_policy, stage_args
from trainers.curves import CurveReport, reporting
from trainers.lora import peft_config


def _to_pairs(pairs: list[dict]) -> Dataset:
    return Dataset.from_list(
        [
            {
                "prompt": [dict(m) for m in p["prompt"]],
                "chosen": [dict(m) for m in p["chosen"]],
                "rejected": [dict(m) for m in p["rejected"]],
            }
            for p in pairs
        ]
    )


def _dpo_trainer(model, tokenizer, data: Dataset, cfg: DPOConfig, base: dict, callbacks: list) -> DPOTrainer:
    args = TRLDPOConfig(
        **base,
        beta=cfg.beta,
        loss_type=list(cfg.loss_types),
        loss_weights=cfg.loss_weights,
        label_smoothing=cfg.label_smoothing,
        precompute_ref_log_probs=cfg.precompute_ref_log_probs,
        max_length=cfg.max_length,
    )
    return DPOTrainer(
        model=model,
        args=args,
        train_dataset=data,
        processing_class=tokenizer,
        callbacks=callbacks,
        peft_config=peft_config(cfg.lora),
    )


def _cpo_trainer(model, tokenizer, data: Dataset, cfg: DPOConfig, base: dict, callbacks: list):
    with warnings.catch_warnings():  # the "trl.experimental is unstable" notice: the tests pin what we use
        warnings.simplefilter("ignore")
        from trl.experimental.cpo import CPOConfig, CPOTrainer

    (loss,) = [t for t in cfg.loss_types if t != "sft"]  # the config validator allows exactly one
    weights = cfg.loss_weights or [1.0] * len(cfg.loss_types)
    cpo_alpha = weights[cfg.loss_types.index("sft")] if "sft" in cfg.loss_types else 0.0
    args = CPOConfig(
        **base,
        beta=cfg.beta,
        loss_type=loss,
        cpo_alpha=cpo_alpha,
        simpo_gamma=cfg.simpo_gamma,
        label_smoothing=cfg.label_smoothing,
        max_length=cfg.max_length,
        remove_unused_columns=False,  # its pair collator needs every column (it would reset this with a warning)
    )
    return CPOTrainer(
        model=model,
        args=args,
        train_dataset=data,
        processing_class=tokenizer,
        callbacks=callbacks,
        peft_config=peft_config(cfg.lora),
    )


def train_dpo(
    model_path: str,
    pairs: list[dict],
    cfg: DPOConfig,
    out_dir: Path,
    *,
    base_id: str,
    seed: int,
    use_cpu: bool,
    bf16: bool,
    logger: logging.Logger | logging.LoggerAdapter,
    report: CurveReport | None = None,
) -> tuple[Path, dict]:
    """Tune `model_path` on conversational `prompt/chosen/rejected` rows; returns checkpoint and summary.

    `base_id` names the model in `model_path` (its artifact id) in the checkpoint's flywheel_training.json.
    `report` says where the training curves go (trainers/curves.py; None: nowhere).
    """
    model, tokenizer = load_policy(model_path, bf16)
    callback = LossLogger(logger, "dpo")
    base = stage_args(cfg, out_dir / "trainer", seed=seed, use_cpu=use_cpu, bf16=bf16, report=report)
    build = _dpo_trainer if cfg.reference == "policy" else _cpo_trainer
    with reporting(report):  # built inside too: TensorBoard's callback reads its directory when it is made
        trainer = build(model, tokenizer, _to_pairs(pairs), cfg, base, [callback])
        trainer.remove_callback(PrinterCallback)  # its raw dicts on stdout duplicate LossLogger's lines
        result = trainer.train()
    info = {
        "stage": "dpo",
        "config": cfg.model_dump(mode="json"),
        "loss_types": list(cfg.loss_types),
        "loss_weights": cfg.loss_weights or [1.0] * len(cfg.loss_types),
        "reference": cfg.reference,
        "rows": len(pairs),
        "base": base_id,
        "seed": seed,
    }
    return finish_stage(trainer, tokenizer, result, callback, out_dir, info)
