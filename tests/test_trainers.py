"""TRL SFT and preference tuning on a tiny model built in the test: each run takes a step or a few and changes
the weights; every DPO loss route, packing, and LoRA (merged back into a plain checkpoint) is trained for real."""

from __future__ import annotations

import json
import logging
import math
import re

import pytest
import torch
import trl
from pydantic import ValidationError
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from trl import DPOConfig as TRLDPOConfig

from configs.schema import DPOConfig, SFTConfig
from configs.training import DPOLoss
from trainers.dpo import train_dpo
from trainers.sft import build_sft_trainer, to_prompt_completion, train_sft

LOG = logging.getLogger("test")
BASE = "b" * 64  # the artifact id a checkpoint records for the model it started from
ONE_STEP = dict(learning_rate=1e-3, warmup_ratio=0.0, max_length=64)  # no warm-up: a single step at lr 0 moves nothing


def _weights(path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def _changed(before: dict, after: dict) -> int:
    return sum(not torch.equal(before[k], after[k]) for k in before)


def _info(ckpt) -> dict:
    return json.loads((ckpt / "flywheel_training.json").read_text())


def _sft_rows(n: int, start: int = 10) -> list[dict]:
    return [
        {
            "messages": [
                {"role": "user", "content": f"What is {a} plus 5?"},
                {"role": "assistant", "content": str(a + 5)},
            ]
        }
        for a in range(start, start + n)
    ]


def _pairs(n: int) -> list[dict]:
    return [
        {
            "prompt": [{"role": "user", "content": f"What is {a} plus 9?"}],
            "chosen": [{"role": "assistant", "content": str(a + 9)}],
            "rejected": [{"role": "assistant", "content": str(a - 1)}],
        }
        for a in range(11, 11 + n)
    ]


def test_to_prompt_completion():
    rows = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}]
    assert to_prompt_completion(rows) == [
        {"prompt": [{"role": "user", "content": "q"}], "completion": [{"role": "assistant", "content": "a"}]}
    ]


def test_sft_changes_weights_and_saves_a_loadable_checkpoint(tiny_model, tmp_path):
    cfg = SFTConfig(learning_rate=1e-3, batch_size=8, max_length=64)
    ckpt, summary = train_sft(
        str(tiny_model), _sft_rows(32), cfg, tmp_path, base_id=BASE, seed=0, use_cpu=True, bf16=False, logger=LOG
    )
    assert summary["steps"] == 4  # 32 rows / batch 8, one epoch
    assert math.isfinite(summary["train_loss"])
    assert summary["history"][-1]["step"] == 4  # the last step is always logged: its loss is the final loss
    assert _changed(_weights(tiny_model), _weights(ckpt)) > 10
    info = _info(ckpt)
    assert (info["stage"], info["trainer"], info["trl_version"]) == ("sft", "SFTTrainer", trl.__version__)
    assert SFTConfig.model_validate(info["config"]) == cfg  # the stage's full config, restorable
    assert (info["steps"], info["seed"], info["final_loss"]) == (4, 0, summary["final_loss"])
    assert info["base"] == BASE  # the parent's id, not its path
    assert info["transformers_version"] and "peft_version" in info
    assert not (ckpt / "training_args.bin").exists()  # model and tokenizer only: same weights, same hash


def test_dpo_changes_weights(tiny_model, tmp_path):
    cfg = DPOConfig(learning_rate=1e-3, batch_size=8, max_length=64, loss_types=["sigmoid", "sft"])
    ckpt, summary = train_dpo(
        str(tiny_model), _pairs(16), cfg, tmp_path, base_id=BASE, seed=0, use_cpu=True, bf16=False, logger=LOG
    )
    assert summary["steps"] == 2
    assert math.isfinite(summary["train_loss"])
    assert _changed(_weights(tiny_model), _weights(ckpt)) > 10


# --- every preference-loss route, one step each ---------------------------------------------------

LOSS_VARIANTS = [
    pytest.param({"loss_types": ["sigmoid"]}, "DPOTrainer", id="sigmoid"),
    pytest.param({"loss_types": ["ipo"]}, "DPOTrainer", id="ipo"),
    pytest.param({"loss_types": ["sigmoid_norm"]}, "DPOTrainer", id="sigmoid_norm-tulu3"),
    pytest.param({"loss_types": ["sigmoid", "sft"], "loss_weights": [1.0, 0.5]}, "DPOTrainer", id="mixed-rpo"),
    pytest.param({"loss_types": ["sigmoid"], "precompute_ref_log_probs": True}, "DPOTrainer", id="precomputed-ref"),
    pytest.param({"loss_types": ["simpo"], "reference": "none", "beta": 2.0}, "CPOTrainer", id="simpo"),
    pytest.param({"loss_types": ["sigmoid"], "reference": "none"}, "CPOTrainer", id="reference-free-dpo"),
    pytest.param(
        {"loss_types": ["simpo", "sft"], "loss_weights": [1.0, 0.2], "reference": "none"}, "CPOTrainer", id="cpo-simpo"
    ),
]


@pytest.mark.parametrize("options,trainer", LOSS_VARIANTS)
def test_preference_loss_takes_a_step(tiny_model, tmp_path, options, trainer):
    cfg = DPOConfig(batch_size=4, **ONE_STEP, **options)
    ckpt, summary = train_dpo(
        str(tiny_model), _pairs(4), cfg, tmp_path, base_id=BASE, seed=0, use_cpu=True, bf16=False, logger=LOG
    )
    assert summary["steps"] == 1
    assert math.isfinite(summary["final_loss"])
    assert _changed(_weights(tiny_model), _weights(ckpt)) > 10
    info = _info(ckpt)
    assert (info["trainer"], info["loss_types"], info["reference"]) == (trainer, cfg.loss_types, cfg.reference)
    assert DPOConfig.model_validate(info["config"]) == cfg


def test_dpo_loss_types_are_exactly_trls():
    # TRL's DPOConfig lists its loss types in its help text only; simpo is ours, routed to CPOTrainer.
    help_text = TRLDPOConfig.__dataclass_fields__["loss_type"].metadata["help"]
    trl_losses = set(re.findall(r"`'([a-z_]+)'`", help_text))
    assert "sigmoid_norm" in trl_losses
    assert set(DPOLoss.__args__) == trl_losses | {"simpo"}


@pytest.mark.parametrize(
    "options,message",
    [
        ({"loss_types": ["simpo"]}, "simpo, which is reference-free: set reference: none"),
        ({"loss_types": ["sigmoid_norm"], "reference": "none"}, "must be one of ['sigmoid', 'hinge', 'ipo', 'simpo']"),
        ({"loss_types": ["sigmoid", "ipo"], "reference": "none"}, "optionally with sft"),
        (
            {"loss_types": ["sigmoid", "sft"], "loss_weights": [0.5, 1.0], "reference": "none"},
            "weight of sigmoid must be 1.0",
        ),
        ({"reference": "none", "precompute_ref_log_probs": True}, "precompute_ref_log_probs needs a reference"),
        ({"loss_types": ["exo_pair"]}, "exo_pair, which needs label_smoothing > 0"),
        ({"loss_types": ["sigmoid", "sft"], "loss_weights": [1.0]}, "loss_weights has 1 values but loss_types has 2"),
        ({"loss_types": ["orpo"]}, "loss_types.0"),
    ],
)
def test_invalid_preference_configs(options, message):
    with pytest.raises(ValidationError, match=re.escape(message)):
        DPOConfig(**options)


# --- SFT packing ------------------------------------------------------------------------------------


def test_packing_keeps_the_prompt_mask_and_row_boundaries(tiny_model, tmp_path):
    cfg = SFTConfig(max_length=64, packing=True, batch_size=8)
    trainer, tokenizer = build_sft_trainer(
        str(tiny_model), _sft_rows(8), cfg, tmp_path, seed=0, use_cpu=True, bf16=False, callbacks=[]
    )
    packed = trainer.train_dataset[0]
    assert len(trainer.train_dataset) < 8 and len(packed["seq_lengths"]) > 1  # several rows per block
    learned = tokenizer.decode([t for t, lab in zip(packed["input_ids"], packed["labels"]) if lab != -100])
    assert "plus" not in learned and learned.strip()  # completion-only loss survived packing: answers only
    # Rows in a block do not attend to each other: the second row's logits match the row run alone.
    batch = trainer.data_collator([packed])
    start, length = packed["seq_lengths"][0], packed["seq_lengths"][1]
    model = trainer.model.eval()
    with torch.no_grad():
        together = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[
            0, start : start + length
        ]
        alone = model(input_ids=torch.tensor([packed["input_ids"][start : start + length]])).logits[0]
    torch.testing.assert_close(together, alone, atol=1e-4, rtol=1e-4)


def test_sft_with_packing_and_accumulation_trains(tiny_model, tmp_path):
    cfg = SFTConfig(
        batch_size=1,
        gradient_accumulation_steps=2,
        packing=True,
        lr_scheduler_type="constant",
        weight_decay=0.01,
        **ONE_STEP,
    )
    ckpt, summary = train_sft(
        str(tiny_model), _sft_rows(8), cfg, tmp_path, base_id=BASE, seed=0, use_cpu=True, bf16=False, logger=LOG
    )
    assert summary["steps"] == 1  # 8 rows of 14 tokens -> 2 blocks of 64 -> 2 batches of 1 -> one optimizer step
    assert math.isfinite(summary["final_loss"])
    assert _changed(_weights(tiny_model), _weights(ckpt)) > 10


# --- LoRA ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_lora_is_merged_into_a_plain_checkpoint(tiny_model, tmp_path, stage):
    lora = {"enabled": True, "r": 4, "alpha": 8}
    if stage == "sft":
        cfg = SFTConfig(batch_size=4, lora=lora, **ONE_STEP)
        ckpt, summary = train_sft(
            str(tiny_model), _sft_rows(4), cfg, tmp_path, base_id=BASE, seed=0, use_cpu=True, bf16=False, logger=LOG
        )
    else:
        cfg = DPOConfig(batch_size=4, lora=lora, **ONE_STEP)
        ckpt, summary = train_dpo(
            str(tiny_model), _pairs(4), cfg, tmp_path, base_id=BASE, seed=0, use_cpu=True, bf16=False, logger=LOG
        )
    assert summary["steps"] == 1
    assert not list(ckpt.glob("adapter_*"))  # merged: nothing for vLLM to load separately
    base, merged = _weights(tiny_model), _weights(ckpt)
    assert set(merged) == set(base)  # same tensors as the base model, no lora_A/lora_B
    assert _changed(base, merged) > 5  # the adapted linear layers moved
    model = AutoModelForCausalLM.from_pretrained(ckpt)
    assert type(model).__name__ == type(AutoModelForCausalLM.from_pretrained(tiny_model)).__name__
    assert _info(ckpt)["config"]["lora"]["enabled"] is True
