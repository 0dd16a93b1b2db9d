"""TRL SFT and DPO on a tiny model built in the test: one short run each changes the weights."""
from __future__ import annotations

import logging
import math

import torch
from safetensors.torch import load_file

from configs.schema import DPOConfig, SFTConfig
from trainers.dpo import train_dpo
from trainers.sft import to_prompt_completion, train_sft

LOG = logging.getLogger("test")


def _weights(path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def _changed(before: dict, after: dict) -> int:
    return sum(not torch.equal(before[k], after[k]) for k in before)


def test_to_prompt_completion():
    rows = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}]
    assert to_prompt_completion(rows) == [
        {"prompt": [{"role": "user", "content": "q"}], "completion": [{"role": "assistant", "content": "a"}]}
    ]


def test_sft_changes_weights_and_saves_a_loadable_checkpoint(tiny_model, tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"What is {a} plus 5?"}, {"role": "assistant", "content": str(a + 5)}]}
            for a in range(10, 42)]
    ckpt, summary = train_sft(str(tiny_model), rows, SFTConfig(learning_rate=1e-3, batch_size=8, max_length=64),
                              tmp_path, seed=0, use_cpu=True, bf16=False, logger=LOG)
    assert summary["steps"] == 4  # 32 rows / batch 8, one epoch
    assert math.isfinite(summary["train_loss"])
    assert _changed(_weights(tiny_model), _weights(ckpt)) > 10
    info = (ckpt / "flywheel_training.json").read_text()
    assert '"trl_version"' in info and '"stage": "sft"' in info
    assert not (ckpt / "training_args.bin").exists()  # model and tokenizer only: same weights, same hash


def test_dpo_changes_weights(tiny_model, tmp_path):
    pairs = [{"prompt": [{"role": "user", "content": f"What is {a} plus 9?"}],
              "chosen": [{"role": "assistant", "content": str(a + 9)}],
              "rejected": [{"role": "assistant", "content": str(a - 1)}]} for a in range(11, 27)]
    cfg = DPOConfig(learning_rate=1e-3, batch_size=8, max_length=64, loss_types=["sigmoid", "sft"])
    ckpt, summary = train_dpo(str(tiny_model), pairs, cfg, tmp_path, seed=0, use_cpu=True, bf16=False, logger=LOG)
    assert summary["steps"] == 2
    assert math.isfinite(summary["train_loss"])
    assert _changed(_weights(tiny_model), _weights(ckpt)) > 10
