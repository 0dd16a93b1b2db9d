"""Train the candidate: TRL SFT on the best-of-N rows, then TRL DPO on the pairs, from the policy.

Two steps with their own identities, so a round that fails during DPO resumes without redoing SFT.
A disabled or empty stage passes its input model through unchanged (and says so in its summary).
`training.launcher` decides where a step trains: in this process (`local`), or as an `accelerate launch`
job (multi-GPU DDP, DeepSpeed or FSDP; trainers/launch.py) whose output streams into the task's logs.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

from prefect import task

from configs.launcher import LauncherConfig
from configs.schema import DPOConfig, FlywheelConfig, SFTConfig
from storage.runtime import open_runtime
from tasks import common
from tasks.engines import close_engines
from trainers.launch import launch_training, launcher_identity


def _release_accelerator() -> None:
    # On a GPU the vLLM engine holds most of the memory: free it before training.
    import torch

    if torch.cuda.is_available():
        close_engines()


def _train_step(
    cfg: FlywheelConfig, round_num: int, *, step: str, stage: SFTConfig | DPOConfig, model_id: str, data_id: str,
    train_fn: Callable, modules: tuple[str, ...],
) -> str:
    """One training step: `train_fn` from model `model_id` on table `data_id`; returns the new model's id."""
    rt = open_runtime(cfg)
    tcfg, name = cfg.training, step.removeprefix("train-")
    seed = tcfg.seed + round_num  # a different data order each round
    launcher: LauncherConfig = tcfg.launcher

    def compute() -> common.StepOutput:
        table = rt.artifacts.get_table(data_id)
        rows = table.to_pylist()
        if not stage.enabled or not rows:
            why = "disabled" if not stage.enabled else f"no {name} rows this round"
            common.get_logger().warning("%s skipped (%s): its input model passes through", step, why)
            return common.StepOutput({"model": rt.artifacts.ref(model_id)}, {"skipped": why, "rows_in": len(rows), "rows_out": 0})
        _release_accelerator()
        with tempfile.TemporaryDirectory(dir=rt.home) as tmp:
            kwargs = dict(seed=seed, use_cpu=tcfg.use_cpu, bf16=tcfg.bf16, logger=common.get_logger())
            model_dir = str(rt.artifacts.get_model(model_id))
            if launcher.kind == "local":
                ckpt, summary = train_fn(model_dir, rows, stage, Path(tmp), **kwargs)
            else:
                ckpt, summary = launch_training(launcher, stage=name, model_dir=model_dir, data=table,
                                                stage_config=stage, out_dir=Path(tmp), **kwargs)
            ref = rt.artifacts.put_model(ckpt, kind="model")
        summary.update(rows_in=len(rows), rows_out=len(rows), metrics={
            f"train/{name}_loss": summary["train_loss"], f"train/{name}_steps": summary["steps"]})
        return common.StepOutput({"model": ref}, summary)

    result = common.run_step(
        rt, pipeline=cfg.pipeline, round_num=round_num, step=step,
        config={name: stage.model_dump(mode="json"), "seed": seed, "bf16": tcfg.bf16,
                "launcher": launcher_identity(launcher)},  # e.g. 2 processes double the global batch
        inputs={"model": model_id, "data": data_id}, compute=compute,
        code=common.code_version(__name__, "trainers.common", "trainers.lora", "trainers.launch", "trainers.run",
                                  *modules),
    )
    return result.outputs["model"]


@task(name="train-sft")
def train_sft_task(cfg: FlywheelConfig, round_num: int, policy_id: str, sft_id: str) -> str:
    from trainers.sft import train_sft

    return _train_step(cfg, round_num, step="train-sft", stage=cfg.training.sft, model_id=policy_id, data_id=sft_id,
                       train_fn=train_sft, modules=("trainers.sft",))


@task(name="train-dpo")
def train_dpo_task(cfg: FlywheelConfig, round_num: int, model_id: str, pairs_id: str) -> str:
    from trainers.dpo import train_dpo

    return _train_step(cfg, round_num, step="train-dpo", stage=cfg.training.dpo, model_id=model_id, data_id=pairs_id,
                       train_fn=train_dpo, modules=("trainers.dpo",))
