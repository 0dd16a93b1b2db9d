"""Reward-model training through `training.launcher`: a real 2-process `accelerate launch` (gloo, CPU) of the
train-reward step, whose checkpoint matches the in-process one and loads in the reward-model scorer."""

from __future__ import annotations

import json
import math
import time

import pyarrow as pa
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from configs import parse_config
from configs.launcher import LauncherConfig
from configs.scoring import RewardModelScorerConfig
from tasks.scoring.reward_model import RewardModelScorer
from tasks.select import PAIR_SCHEMA

PIPELINE = "rm-launch"
ROUND = 2
SUMMARY = f"runs/{PIPELINE}/round-{ROUND:04d}/train-reward/summary.json"
# 32 pairs, 8 per process, 2 processes, 1 epoch: 2 optimizer steps (the processes split the pairs).
REWARD = {"enabled": True, "learning_rate": 1e-3, "epochs": 1, "batch_size": 8, "max_length": 64}
DDP = {"kind": "accelerate", "num_processes": 2, "cpu": True}


def pair_rows(n: int) -> list[dict]:
    """Rows in the select stage's pairs schema: the right sum chosen, a sum off by one rejected."""
    return [
        {
            "row_id": str(a),
            "prompt": [{"role": "user", "content": f"What is {a} plus 7?"}],
            "chosen": [{"role": "assistant", "content": str(a + 7)}],
            "rejected": [{"role": "assistant", "content": str(a + 8)}],
            "prompt_id": str(a),
            "chosen_id": f"c{a}",
            "rejected_id": f"r{a}",
            "margin": 1.0,
            "source": "pool",
            "license": "unknown",
            "tags": [],
        }
        for a in range(10, 10 + n)
    ]


def config(tiny_model, tmp_path, launcher: dict):
    return parse_config(
        {
            "pipeline": PIPELINE,
            "base_model": str(tiny_model),
            "home": str(tmp_path / "home"),
            "storage": {"uri": f"file://{tmp_path / 'store'}"},
            "curation": {"sources": [{"name": "pool", "path": str(tmp_path / "pool.jsonl")}]},
            "evaluation": {"eval_sets": [{"name": "heldout", "path": str(tmp_path / "heldout.jsonl")}]},
            "training": {"use_cpu": True, "reward_model": REWARD, "launcher": launcher},
        }
    )


@pytest.fixture(scope="module")
def launched(tiny_model, tmp_path_factory):
    """train-reward run once as a 2-process job (~30 s on two shared cores); what the tests below read."""
    from tasks.stage import runtime
    from tasks.train_reward import train_reward_task

    tmp = tmp_path_factory.mktemp("rm-launch")
    cfg = config(tiny_model, tmp, DDP)
    rt = runtime(cfg)
    base_id = rt.artifacts.put_model(tiny_model).id
    pairs_ids = [
        rt.artifacts.put_table(pa.Table.from_pylist(rows, schema=PAIR_SCHEMA), kind="pairs").id
        for rows in (pair_rows(32)[:20], pair_rows(32)[20:])  # two rounds' tables: the job gets one file
    ]
    rt.catalog.start_round(PIPELINE, ROUND, "config-hash", base_id, None)
    rm_id = train_reward_task.fn(cfg, ROUND, pairs_ids, base_id)
    return {"tmp": tmp, "cfg": cfg, "rt": rt, "base_id": base_id, "pairs_ids": pairs_ids, "rm_id": rm_id}


def test_two_processes_train_the_reward_model(launched, tiny_model):
    rt, rm_id = launched["rt"], launched["rm_id"]
    summary = rt.artifacts.get_json(rt.artifacts.read_link(SUMMARY).id)
    assert summary["launch"] == {
        "world_size": 2,
        "num_processes": 2,
        "distributed_type": "MULTI_CPU",
        "device": "cpu:0",
    }
    assert summary["steps"] == 2 and summary["pairs"] == 32 and summary["pairs_too_long"] == 0
    assert math.isfinite(summary["loss"]) and all(math.isfinite(h["loss"]) for h in summary["history"])
    rm_dir = rt.artifacts.get_model(rm_id)
    backbone, trained = load_file(str(tiny_model / "model.safetensors")), load_file(str(rm_dir / "model.safetensors"))
    shared = [k for k in backbone if k in trained]
    assert len(shared) > 10 and sum(not torch.equal(backbone[k], trained[k]) for k in shared) > 10
    info = json.loads((rm_dir / "flywheel_training.json").read_text())
    assert (info["stage"], info["base"], info["pairs"]) == ("reward", launched["base_id"], 32)
    assert info["config"]["seed"] == ROUND  # seed 0 plus the round: the round's seed reached the job


def test_the_step_is_recorded_like_the_in_process_one(launched):
    rt, rm_id = launched["rt"], launched["rm_id"]
    assert rt.catalog.artifact(rm_id)["kind"] == "reward-model"
    step = rt.catalog.steps_of(PIPELINE, ROUND)["train-reward"]
    assert step["status"] == "completed" and step["rows_in"] == 32 and not step["reused"]
    metrics = rt.catalog.rounds(PIPELINE)[0]["metrics"]
    assert metrics["reward_model/pairs"] == 32 and 0.0 <= metrics["reward_model/accuracy_after"] <= 1.0
    assert {e["src"] for e in rt.catalog.lineage(rm_id) if e["depth"] == 1} == {
        launched["base_id"],
        *launched["pairs_ids"],
    }
    from tasks.train_reward import latest_reward_model, train_reward_task

    assert latest_reward_model(rt.catalog, PIPELINE, ROUND + 1) == rm_id
    t0 = time.perf_counter()  # same identity: reused, nothing launched
    assert train_reward_task.fn(launched["cfg"], ROUND, launched["pairs_ids"], launched["base_id"]) == rm_id
    assert time.perf_counter() - t0 < 10
    assert rt.catalog.steps_of(PIPELINE, ROUND)["train-reward"]["reused"]


def test_the_scorer_loads_the_launched_reward_model(launched):
    rm_dir = launched["rt"].artifacts.get_model(launched["rm_id"])
    rows = [
        {
            "completion_id": f"{a}-{side}",
            "prompt_id": str(a),
            "prompt": f"What is {a} plus 7?",
            "system": None,
            "completion": str(a + 7 + (side == "rejected")),
            "answer": None,
            "provenance": {},
        }
        for a in range(60, 68)
        for side in ("chosen", "rejected")
    ]
    results = RewardModelScorer(RewardModelScorerConfig(model=str(rm_dir)), {})(rows)
    assert [r.status for r in results] == ["ok"] * 16 and all(math.isfinite(r.value) for r in results)
    assert len({round(r.value, 6) for r in results}) > 1  # the head reads the answer, not a constant


def test_in_process_training_gives_the_same_kind_of_checkpoint(launched):
    """The local launcher is another identity (another global batch): it trains again, in this process, and
    writes the same files, architecture and tensor shapes as the launched job."""
    from tasks.train_reward import train_reward_task

    rt, cfg = launched["rt"], launched["cfg"]
    local = cfg.model_copy(update={"training": cfg.training.model_copy(update={"launcher": LauncherConfig()})})
    local_id = train_reward_task.fn(local, ROUND, launched["pairs_ids"], launched["base_id"])
    assert local_id not in (launched["rm_id"], None)
    a, b = rt.artifacts.get_model(launched["rm_id"]), rt.artifacts.get_model(local_id)
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    ca, cb = (AutoModelForSequenceClassification.from_pretrained(d).config for d in (a, b))
    assert (ca.architectures, ca.num_labels, ca.pad_token_id) == (cb.architectures, cb.num_labels, cb.pad_token_id)
    sa, sb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert {k: v.shape for k, v in sa.items()} == {k: v.shape for k, v in sb.items()}
    summary = rt.artifacts.get_json(rt.artifacts.read_link(SUMMARY).id)
    assert "launch" not in summary and summary["steps"] == 4  # one process: 32 pairs / 8
