"""Artifact ids are content hashes, so they must not depend on the machine: not on FLYWHEEL_HOME, not on
where the store is, not on where the base model and the data lie.

The round test runs the same round in two homes, each with its own copy of the base model and the data
(named through `{home}`, as configs/demo.yaml does) and its own store (S3 in one, a file store in the
other), and compares every artifact id and step identity the two catalogs hold, step summaries included
(their wall-clock timings are metrics, kept out of the stored summary).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from configs import parse_config
from configs.reward import RewardModelTrainConfig
from configs.training import DPOConfig, SFTConfig
from tasks.stage import runtime
from trainers.dpo import train_dpo
from trainers.reward import train_reward_model
from trainers.sft import train_sft

QUESTIONS = [[{"role": "user", "content": f"What is {i} plus 2?"}] for i in range(8)]
ANSWERS = [[{"role": "assistant", "content": str(i + 2)}] for i in range(8)]
PAIRS = [
    {"prompt": q, "chosen": a, "rejected": [{"role": "assistant", "content": "0"}]} for q, a in zip(QUESTIONS, ANSWERS)
]
PARENT = "0" * 64  # the artifact id of the model a stage starts from


def _train(stage: str, parent: Path, work: Path) -> Path:
    """Train `stage` from the model at `parent` for one short epoch; the checkpoint directory."""
    log = logging.getLogger("t")
    if stage == "reward":
        cfg = RewardModelTrainConfig(enabled=True, batch_size=4, max_length=64, base=str(parent))
        train_reward_model(PAIRS, str(parent), str(work / "model"), cfg, base_id=PARENT, logger=log)
        return work / "model"
    kw = dict(base_id=PARENT, seed=0, use_cpu=True, bf16=False, logger=log)
    if stage == "sft":
        rows = [{"messages": q + a} for q, a in zip(QUESTIONS, ANSWERS)]
        return train_sft(str(parent), rows, SFTConfig(batch_size=4, max_length=64), work, **kw)[0]
    return train_dpo(str(parent), PAIRS, DPOConfig(batch_size=4, max_length=64), work, **kw)[0]


@pytest.mark.parametrize("stage", ["sft", "dpo", "reward"])
def test_a_checkpoint_names_its_parent_by_id_and_no_path_of_the_home(tiny_model, tmp_path, stage):
    home = tmp_path / "home-marker"
    parent = home / "cache" / "models" / PARENT  # where a stage reads a stored model from: the home's cache
    shutil.copytree(tiny_model, parent)
    ckpt = _train(stage, parent, home / "work")
    assert json.loads((ckpt / "flywheel_training.json").read_text())["base"] == PARENT
    for f in sorted(ckpt.iterdir()):  # config.json and the tokenizer's files too (save_pretrained's name_or_path)
        if f.suffix in (".json", ".jinja", ".txt"):
            assert str(home) not in f.read_text(), f"{f.name} names the home"


@pytest.fixture
def two_rounds(make_config, small_model, demo_data, prefect_harness, tmp_path):
    """Round 1 of one pipeline in two homes; the two configs."""
    from flows.round import round_flow

    data_dir = demo_data["pool"].parent
    cfgs = []
    for name, storage in [
        ("home-a", None),
        ("home-b", {"uri": (tmp_path / "store-b").as_uri()}),
    ]:
        home = tmp_path / name
        shutil.copytree(small_model, home / "base-model")
        shutil.copytree(data_dir, home / "data")
        overrides = {
            "training__reward_model": {"enabled": True, "batch_size": 8, "max_length": 64},
            "training__averaging": {"enabled": True, "weight_new": 0.5},
        }
        if storage:
            overrides["storage"] = storage
        dumped = json.dumps(make_config(home=home, prefix=name, **overrides).model_dump(mode="json"))
        dumped = dumped.replace(str(small_model), "{home}/base-model").replace(str(data_dir), "{home}/data")
        cfg = parse_config(json.loads(dumped))
        assert str(home) in cfg.base_model and str(home) in cfg.curation.sources[0].path
        round_flow(cfg)
        cfgs.append(cfg)
    return cfgs


def _ids(cfg) -> dict[str, dict[str, str]]:
    """step -> {"identity", "in:<name>", "out:<name>": id} of round 1."""
    steps = runtime(cfg).catalog.steps_of(cfg.pipeline, 1)
    return {
        step: {
            "identity": s["identity"],
            **{f"in:{k}": v for k, v in json.loads(s["inputs"]).items()},
            **{f"out:{k}": v for k, v in json.loads(s["outputs"]).items()},
        }
        for step, s in steps.items()
    }


def test_the_same_round_in_two_homes_makes_the_same_artifacts(two_rounds):
    a, b = two_rounds
    ids_a, ids_b = _ids(a), _ids(b)
    assert ids_a.keys() == ids_b.keys()
    differ = {
        (step, name): (ids_a[step].get(name), ids_b[step].get(name))
        for step in ids_a
        for name in ids_a[step].keys() | ids_b[step].keys()
        if ids_a[step].get(name) != ids_b[step].get(name)
    }
    # Step summaries too: wall-clock timings (generate's tokens/s) are metrics, not part of the summary.
    assert not differ, f"ids that differ between the homes: {differ}"
    assert runtime(a).catalog.round(a.pipeline, 1)["metrics"]["generate/tokens_per_s"] > 0

    made = [
        {x["id"]: x["kind"] for x in runtime(cfg).catalog.artifacts_of_round(cfg.pipeline, 1)} for cfg in two_rounds
    ]
    assert made[0] == made[1]
    assert {"model", "reward-model", "prompts", "completions", "sft", "pairs", "eval-results"} <= set(made[0].values())
    round_a, round_b = (runtime(cfg).catalog.round(cfg.pipeline, 1) for cfg in two_rounds)
    assert all(round_a[k] == round_b[k] for k in ("policy_in", "candidate", "policy_out"))
