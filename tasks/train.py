"""Train the candidate: TRL SFT on the best-of-N rows, then TRL DPO on the pairs, from the policy.

Two steps with their own identities, so a round that fails during DPO resumes without redoing SFT.
A disabled or empty stage passes its input model through unchanged (and says so in its summary).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from prefect import task

from configs.schema import FlywheelConfig
from storage.runtime import open_runtime
from tasks import common
from tasks.engines import close_engines

MIN_ROWS = 1


def _release_accelerator() -> None:
    # On a GPU the vLLM engine holds most of the memory: free it before training.
    import torch

    if torch.cuda.is_available():
        close_engines()


@task(name="train-sft")
def train_sft_task(cfg: FlywheelConfig, round_num: int, policy_id: str, sft_id: str) -> str:
    from trainers.sft import train_sft

    rt = open_runtime(cfg)
    sft_cfg, tcfg = cfg.training.sft, cfg.training

    def compute() -> common.StepOutput:
        rows = rt.artifacts.get_table(sft_id).to_pylist()
        if not sft_cfg.enabled or len(rows) < MIN_ROWS:
            why = "disabled" if not sft_cfg.enabled else f"only {len(rows)} SFT rows"
            common.get_logger().warning("train-sft skipped (%s): the policy passes through", why)
            return common.StepOutput({"model": rt.artifacts.ref(policy_id)}, {"skipped": why, "rows_in": len(rows), "rows_out": 0})
        _release_accelerator()
        with tempfile.TemporaryDirectory(dir=rt.home) as tmp:
            ckpt, summary = train_sft(
                str(rt.artifacts.get_model(policy_id)), rows, sft_cfg, Path(tmp), seed=tcfg.seed + round_num,
                use_cpu=tcfg.use_cpu, bf16=tcfg.bf16, logger=common.get_logger(),
            )
            ref = rt.artifacts.put_model(ckpt, kind="model")
        summary.update(rows_in=len(rows), rows_out=len(rows), metrics={
            "train/sft_loss": summary["train_loss"], "train/sft_steps": summary["steps"]})
        return common.StepOutput({"model": ref}, summary)

    result = common.run_step(
        rt, pipeline=cfg.pipeline, round_num=round_num, step="train-sft",
        config={"sft": sft_cfg.model_dump(mode="json"), "seed": tcfg.seed + round_num, "bf16": tcfg.bf16},
        inputs={"policy": policy_id, "sft": sft_id}, compute=compute,
        code=common.code_version(__name__, "trainers.sft", "trainers.common"),
    )
    return result.outputs["model"]


@task(name="train-dpo")
def train_dpo_task(cfg: FlywheelConfig, round_num: int, model_id: str, pairs_id: str) -> str:
    from trainers.dpo import train_dpo

    rt = open_runtime(cfg)
    dpo_cfg, tcfg = cfg.training.dpo, cfg.training

    def compute() -> common.StepOutput:
        pairs = rt.artifacts.get_table(pairs_id).to_pylist()
        if not dpo_cfg.enabled or len(pairs) < MIN_ROWS:
            why = "disabled" if not dpo_cfg.enabled else f"only {len(pairs)} pairs"
            common.get_logger().warning("train-dpo skipped (%s): the SFT model passes through", why)
            return common.StepOutput({"model": rt.artifacts.ref(model_id)}, {"skipped": why, "rows_in": len(pairs), "rows_out": 0})
        _release_accelerator()
        with tempfile.TemporaryDirectory(dir=rt.home) as tmp:
            ckpt, summary = train_dpo(
                str(rt.artifacts.get_model(model_id)), pairs, dpo_cfg, Path(tmp), seed=tcfg.seed + round_num,
                use_cpu=tcfg.use_cpu, bf16=tcfg.bf16, logger=common.get_logger(),
            )
            ref = rt.artifacts.put_model(ckpt, kind="model")
        summary.update(rows_in=len(pairs), rows_out=len(pairs), metrics={
            "train/dpo_loss": summary["train_loss"], "train/dpo_steps": summary["steps"]})
        return common.StepOutput({"model": ref}, summary)

    result = common.run_step(
        rt, pipeline=cfg.pipeline, round_num=round_num, step="train-dpo",
        config={"dpo": dpo_cfg.model_dump(mode="json"), "seed": tcfg.seed + round_num, "bf16": tcfg.bf16},
        inputs={"model": model_id, "pairs": pairs_id}, compute=compute,
        code=common.code_version(__name__, "trainers.dpo", "trainers.common"),
    )
    return result.outputs["model"]
