"""Train a reward model on chosen/rejected pairs with TRL's RewardTrainer (Bradley-Terry loss).

The backbone is a causal-LM checkpoint (by default the policy) loaded as a sequence classifier with a
new one-output head; training pushes r(prompt + chosen) above r(prompt + rejected). Pairs are tokenized
here by the reward-model scorer's own `encode_conversations`, so training and scoring read the same
sequences.

`train_reward` has train_sft's signature, so trainers/run.py runs it in every process of an `accelerate
launch` job (DDP, DeepSpeed, FSDP: `training.launcher`) and the checkpoint is the same directory either way.

Run alone (pairs: a Parquet table of TRL conversational prompt/chosen/rejected rows):
    python -m trainers.reward --pairs pairs.parquet --base /tmp/base --out /tmp/rm
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PrinterCallback, set_seed
from trl import RewardConfig, RewardTrainer
from trl.trainer.reward_trainer import suppress_seqcls_warning

from configs.reward import RewardModelTrainConfig
from storage.ids import sha256_dir
from trainers.common import LossLogger, _save_sharded, _sharded, check_finite, common_args, save_checkpoint
from trainers.curves import CurveReport, reporting
from trainers.reward_encoding import encode_conversations, reward_values


def tokenize_pairs(tokenizer, pairs: list[dict], max_length: int) -> tuple[list[dict], int]:
    """TRL's pre-tokenized preference rows {chosen_ids, rejected_ids}, and how many pairs were too long.

    A pair with a side longer than `max_length` is left out rather than truncated (as TRL does): cut
    short, the two answers may no longer differ.
    """

    def convs(side: str) -> list[list[dict]]:
        return [[dict(m) for m in p["prompt"]] + [dict(m) for m in p[side]] for p in pairs]

    chosen = encode_conversations(tokenizer, convs("chosen"))
    rejected = encode_conversations(tokenizer, convs("rejected"))
    rows = [
        {"chosen_ids": c, "rejected_ids": r}
        for c, r in zip(chosen, rejected)
        if len(c) <= max_length and len(r) <= max_length
    ]
    return rows, len(pairs) - len(rows)


def pair_accuracy(model, rows: list[dict], pad_id: int, batch_size: int, device: torch.device) -> float:
    """Fraction of pairs with r(chosen) > r(rejected) (a tie counts as wrong)."""
    model.eval()
    values = reward_values(
        model, [r["chosen_ids"] for r in rows] + [r["rejected_ids"] for r in rows], pad_id, batch_size, device
    )
    n = len(rows)
    return sum(values[i] > values[n + i] for i in range(n)) / max(n, 1)


def load_backbone(base_model_dir: str, seed: int, bf16: bool):
    """(sequence-classification model with a fresh 1-output head, tokenizer) from a causal-LM checkpoint."""
    set_seed(seed)  # the new head is drawn at random: seed it for a reproducible reward model
    with suppress_seqcls_warning():  # "score.weight newly initialized" is the point here, not a problem
        model = AutoModelForSequenceClassification.from_pretrained(
            base_model_dir, num_labels=1, dtype=torch.bfloat16 if bf16 else torch.float32
        )
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # The head reads the last non-pad token; without a pad id it cannot find it in a padded batch.
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def train_reward_model(
    pairs: list[dict],
    base_model_dir: str,
    out_dir: str,
    cfg: RewardModelTrainConfig,
    *,
    base_id: str,
    use_cpu: bool = True,
    bf16: bool = False,
    logger: logging.Logger | logging.LoggerAdapter | None = None,
    report: CurveReport | None = None,
) -> dict:
    """Train a reward model on conversational prompt/chosen/rejected `pairs`; save it to `out_dir`.

    Args:
        pairs: rows like tasks/select.py PAIR_SCHEMA (only prompt, chosen and rejected are read; the
            selection margin is in combined-reward units, not logits, so it is not used as TRL's margin).
        base_model_dir: causal-LM (or sequence-classification) checkpoint for the backbone.
        base_id: what names the backbone in flywheel_training.json: its artifact id (no path, which would
            make the reward model's id depend on where the backbone lies).
        out_dir: receives model + tokenizer (+ flywheel_training.json), loadable by
            AutoModelForSequenceClassification; replaced if it exists.
        report: where the training curves go (trainers/curves.py; None: nowhere).

    Returns:
        {"pairs", "pairs_too_long", "accuracy_before", "accuracy_after", "loss", "steps", "seconds",
        "history"}: accuracies are on the training pairs, before is the fresh head's (about 0.5).
    """
    t0 = time.perf_counter()
    logger = logger or logging.getLogger("flywheel")
    model, tokenizer = load_backbone(base_model_dir, cfg.seed, bf16)
    rows, too_long = tokenize_pairs(tokenizer, pairs, cfg.max_length)
    if not rows:
        raise ValueError(f"reward model: all {len(pairs)} pairs are longer than max_length ({cfg.max_length} tokens)")
    if too_long:
        logger.warning(
            "reward model: left out %d of %d pairs longer than %d tokens", too_long, len(pairs), cfg.max_length
        )

    callback = LossLogger(logger, "reward")
    with tempfile.TemporaryDirectory() as scratch:  # the trainer's output_dir; nothing in it is kept
        args = RewardConfig(
            **common_args(
                Path(scratch),
                lr=cfg.learning_rate,
                epochs=cfg.epochs,
                batch_size=cfg.batch_size,
                seed=cfg.seed,
                use_cpu=use_cpu,
                bf16=bf16,
                report=report,
            ),
            max_length=cfg.max_length,
            center_rewards_coefficient=cfg.center_rewards_coefficient,
            gradient_checkpointing=not use_cpu,  # it trades compute for GPU memory; on CPU it only costs time
        )
        # The arguments' device is this process's own (cuda:<local rank> in a launched job): a bare "cuda"
        # would put every rank's copy of the model on GPU 0 before training starts.
        before = pair_accuracy(model.to(args.device), rows, tokenizer.pad_token_id, cfg.batch_size * 2, args.device)
        with reporting(report):  # built inside: TensorBoard's callback reads its directory when it is made
            trainer = RewardTrainer(
                model=model,
                args=args,
                train_dataset=Dataset.from_list(rows),
                processing_class=tokenizer,
                callbacks=[callback],
            )
            trainer.remove_callback(PrinterCallback)  # its raw dicts on stdout duplicate LossLogger's lines
            result = trainer.train()
    check_finite(callback.history, "reward")
    # Every process scores all pairs in the same batches: with ZeRO-3 or FSDP each forward gathers the
    # weights from all ranks, so no rank may skip it.
    after = pair_accuracy(trainer.model, rows, tokenizer.pad_token_id, cfg.batch_size * 2, args.device)

    info = {
        "stage": "reward",
        "config": cfg.model_dump(exclude={"base"}),  # `base` may be a path: base_id says what the backbone is
        "pairs": len(rows),
        "base": base_id,
        "accuracy_before": before,
        "accuracy_after": after,
    }
    if _sharded(trainer):  # ZeRO-3/FSDP: all ranks gather the full weights, the main process writes them
        _save_sharded(trainer, tokenizer, Path(out_dir), info)
    elif trainer.is_world_process_zero():  # the other ranks hold the same weights: one copy is written
        save_checkpoint(trainer.model, tokenizer, Path(out_dir), info)
    logger.info("reward model: %d pairs, training-pair accuracy %.3f -> %.3f", len(rows), before, after)
    return {
        "pairs": len(rows),
        "pairs_too_long": too_long,
        "accuracy_before": before,
        "accuracy_after": after,
        "loss": result.training_loss,
        "steps": result.global_step,
        "seconds": time.perf_counter() - t0,
        "history": callback.history,
    }


def train_reward(
    model_path: str,
    rows: list[dict],
    cfg: RewardModelTrainConfig,
    out_dir: Path,
    *,
    base_id: str,
    seed: int,
    use_cpu: bool,
    bf16: bool,
    logger: logging.Logger | logging.LoggerAdapter,
    report: CurveReport | None = None,
) -> tuple[Path, dict]:
    """train_reward_model with train_sft's contract (trainers/run.py calls either): the reward model is
    written to out_dir/reward-model; returns (that directory, summary). `seed` replaces cfg.seed."""
    ckpt = Path(out_dir) / "reward-model"
    summary = train_reward_model(
        rows,
        model_path,
        str(ckpt),
        cfg.model_copy(update={"seed": seed}),
        base_id=base_id,
        use_cpu=use_cpu,
        bf16=bf16,
        logger=logger,
        report=report,
    )
    return ckpt, summary


if __name__ == "__main__":
    import argparse
    import json

    import pyarrow.parquet as pq

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", required=True, help="Parquet table of prompt/chosen/rejected rows.")
    parser.add_argument("--base", required=True, help="Backbone checkpoint directory.")
    parser.add_argument("--out", required=True, help="Where the reward model is saved.")
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--epochs", type=float, default=1.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    metrics = train_reward_model(
        pq.read_table(args.pairs).to_pylist(),
        args.base,
        args.out,
        RewardModelTrainConfig(enabled=True, learning_rate=args.lr, epochs=args.epochs),
        base_id=sha256_dir(Path(args.base)),  # the id the directory would have as a stored artifact
    )
    print(json.dumps({k: v for k, v in metrics.items() if k != "history"}, indent=2))
