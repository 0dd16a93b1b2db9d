"""Train: the candidate, TRL SFT on the best-of-N rows, then TRL DPO on the pairs, from the policy.

Two steps with their own identities, so a round that fails during DPO resumes without redoing SFT.
A disabled or empty stage passes its input model through unchanged (and says so in its summary).
`training.launcher` decides where a step trains: in this process (`local`), or as an `accelerate launch`
job (multi-GPU DDP, DeepSpeed or FSDP; trainers/launch.py) whose output streams into the task's logs.

Run alone:  python -m tasks.train --config configs/demo.yaml --round 1 --stage sft|dpo [--home DIR] [--force]
"""

from __future__ import annotations

from configs.schema import DPOConfig, FlywheelConfig, SFTConfig
from tasks.generation import release_accelerator
from tasks.generation.handoff import free_accelerator_memory
from tasks.stage import Model, StageContext, StageOutput, Step, stage
from trainers.curves import curve_report
from trainers.launch import launch_training, launcher_identity


@stage("train-sft", returns="model")
def train_sft_task(cfg: FlywheelConfig, round_num: int, policy_id: str, sft_id: str) -> Step:
    return _train_step(cfg, round_num, "sft", cfg.training.sft, policy_id, sft_id)


@stage("train-dpo", returns="model")
def train_dpo_task(cfg: FlywheelConfig, round_num: int, model_id: str, pairs_id: str) -> Step:
    return _train_step(cfg, round_num, "dpo", cfg.training.dpo, model_id, pairs_id)


def _train_step(
    cfg: FlywheelConfig, round_num: int, name: str, stage_cfg: SFTConfig | DPOConfig, model_id: str, data_id: str
) -> Step:
    seed = cfg.training.seed + round_num  # a different data order each round
    stage_cfg = stage_cfg.for_round(round_num)
    config = {
        name: stage_cfg.model_dump(mode="json", exclude={"schedule"}),  # the settings this round trains with
        "seed": seed,
        "bf16": cfg.training.bf16,
        "launcher": launcher_identity(cfg.training.launcher),
    }  # e.g. 2 processes double the global batch
    return Step(
        f"train-{name}",
        config=config,
        inputs={"model": model_id, "data": data_id},
        run=lambda ctx: train(ctx, cfg, round_num, name, stage_cfg, seed),
    )


def train(
    ctx: StageContext,
    cfg: FlywheelConfig,
    round_num: int,
    name: str,
    stage_cfg: SFTConfig | DPOConfig,
    seed: int,
) -> StageOutput:
    """Train model `model` on table `data` with TRL's `name` ("sft" or "dpo") trainer; the new checkpoint."""
    table = ctx.table("data")
    rows = table.to_pylist()
    if not stage_cfg.enabled or not rows:
        why = "disabled" if not stage_cfg.enabled else f"no {name} rows this round"
        ctx.log.warning("train-%s skipped (%s): its input model passes through", name, why)
        return StageOutput({"model": ctx.id("model")}, rows_in=len(rows), rows_out=0, summary={"skipped": why})
    release_accelerator()
    tcfg = cfg.training
    # The checkpoint names its parent by id: the local path is in this home's cache, and would be hashed.
    kwargs = dict(base_id=ctx.id("model"), seed=seed, use_cpu=tcfg.use_cpu, bf16=tcfg.bf16, logger=ctx.log)
    # Curves are reported, not computed: tracking stays out of the step's config, so out of its identity.
    kwargs["report"] = curve_report(cfg.tracking, cfg.resolve_home(), cfg.pipeline, round_num, f"train-{name}", ctx.log)
    model_dir = str(ctx.model("model"))
    if tcfg.launcher.kind == "local":
        if name == "sft":
            from trainers.sft import train_sft as train_fn  # torch and TRL: imported only when a round trains
        else:
            from trainers.dpo import train_dpo as train_fn
        ckpt, summary = train_fn(model_dir, rows, stage_cfg, ctx.workdir, **kwargs)
        # The trainer and its model are unreachable now, but may sit in reference cycles, and PyTorch caches
        # their freed blocks: give the memory back before the next stage, or the engine's wake finds it taken.
        free_accelerator_memory()
    else:
        ckpt, summary = launch_training(
            tcfg.launcher,
            stage=name,
            model_dir=model_dir,
            data=table,
            stage_config=stage_cfg,
            out_dir=ctx.workdir,
            **kwargs,
        )
    return StageOutput(
        {"model": Model(ckpt)},
        rows_in=len(rows),
        rows_out=len(rows),
        summary=summary,
        metrics={f"train/{name}_loss": summary["train_loss"], f"train/{name}_steps": summary["steps"]},
    )


if __name__ == "__main__":
    from tasks.run_alone import run_alone

    def args_of(rnd):
        if rnd.options.stage == "sft":
            return {"policy_id": rnd.policy, "sft_id": rnd.output("select", "sft")}
        return {"model_id": rnd.output("train-sft", "model"), "pairs_id": rnd.output("select", "pairs")}

    stage_option = {"--stage": {"choices": ["sft", "dpo"], "required": True, "help": "which training step"}}
    run_alone(
        train_sft_task, args_of, stage_option, choose=lambda ns: train_sft_task if ns.stage == "sft" else train_dpo_task
    )
