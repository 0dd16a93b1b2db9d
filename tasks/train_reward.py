"""Train-reward (optional, training.reward_model): a reward model trained on the pipeline's chosen/rejected pairs.

Runs after selection: the reward model of round r learns from the pairs of round r (and earlier rounds,
see rounds_of_pairs) and scores completions from round r+1 on, for a `reward_model` scorer with
`model: trained`. One step, "train-reward", whose identity covers its pairs tables and backbone, so a
resumed round reuses a reward model it already trained. The backbone is the round's policy, or a model
directory (`base`), which is then an external input. `training.launcher` decides where it trains, as for
train-sft and train-dpo: in this process (`local`), or as an `accelerate launch` job (DDP, DeepSpeed, FSDP;
trainers/launch.py) whose checkpoint is the same AutoModelForSequenceClassification directory.

In a round flow:
    pairs_ids = reward_pairs_ids(rt.catalog, cfg.pipeline, r, pairs, cfg.training.reward_model.rounds_of_pairs)
    rm_id = train_reward_task(cfg, r, pairs_ids, policy)      # None when disabled or without pairs
and, before scoring round r (and, with r + 1, before evaluating it: this round's reward model counts):
    reward_model = reward_model_for(rt.catalog, cfg, r, "score")   # None before the first reward model

Run alone:  python -m tasks.train_reward --config configs/x.yaml --round 1 [--home DIR] [--force]
"""

from __future__ import annotations

import pyarrow as pa

from configs.reward import RewardModelTrainConfig
from configs.schema import FlywheelConfig
from storage.catalog import Catalog
from tasks.generation import release_accelerator
from tasks.generation.handoff import free_accelerator_memory
from tasks.stage import External, Model, StageContext, StageOutput, Step, stage
from trainers.curves import curve_report
from trainers.launch import launch_training, launcher_identity

STEP = "train-reward"
PAIR_COLUMNS = ["prompt", "chosen", "rejected"]


@stage("train-reward", returns="reward_model")
def train_reward_task(cfg: FlywheelConfig, round_num: int, pairs_ids: list[str], policy_id: str) -> Step | None:
    """The round's reward model, trained on the pairs tables `pairs_ids` from the policy or a `base` directory;
    None when training.reward_model is disabled (nothing recorded) or the tables hold no pairs (skipped)."""
    rm_cfg: RewardModelTrainConfig = cfg.training.reward_model
    if not rm_cfg.enabled:
        return None
    base = policy_id
    if rm_cfg.base != "policy":
        base = External.model_dir(rm_cfg.base, "reward-model-base", "training.reward_model.base")
    stage_cfg = rm_cfg.model_copy(update={"seed": rm_cfg.seed + round_num})  # a different data order each round
    config = {
        "reward_model": stage_cfg.model_dump(mode="json"),
        **cfg.training.model_dump(include={"use_cpu", "bf16"}),
        "launcher": launcher_identity(cfg.training.launcher),  # e.g. 2 processes double the global batch
    }
    return Step(
        STEP,
        config=config,
        inputs={"base": base, **{f"pairs{i}": p for i, p in enumerate(dict.fromkeys(pairs_ids))}},
        run=lambda ctx: train_reward(ctx, cfg, round_num, stage_cfg),
    )


def train_reward(
    ctx: StageContext, cfg: FlywheelConfig, round_num: int, stage_cfg: RewardModelTrainConfig
) -> StageOutput:
    tables = [k for k in ctx.inputs if k.startswith("pairs")]
    parts = [ctx.table(k, columns=PAIR_COLUMNS) for k in tables]
    if not sum(t.num_rows for t in parts):
        ctx.log.warning("%s skipped: no pairs in %d table(s)", STEP, len(tables))
        return StageOutput({}, rows_in=0, rows_out=0, summary={"skipped": "no pairs"})
    table = pa.concat_tables(parts)  # one table for either path: a launched job's processes read it as parquet
    release_accelerator()
    tcfg = cfg.training
    kwargs = dict(base_id=ctx.id("base"), seed=stage_cfg.seed, use_cpu=tcfg.use_cpu, bf16=tcfg.bf16, logger=ctx.log)
    # Curves are reported, not computed: tracking stays out of the step's config, so out of its identity.
    kwargs["report"] = curve_report(cfg.tracking, cfg.resolve_home(), cfg.pipeline, round_num, STEP, ctx.log)
    if tcfg.launcher.kind == "local":
        from trainers.reward import train_reward as train_fn  # torch and TRL: imported only when a round trains one

        out, summary = train_fn(str(ctx.model("base")), table.to_pylist(), stage_cfg, ctx.workdir, **kwargs)
        free_accelerator_memory()  # as after SFT/DPO: the engine's wake must find the trainer's memory free
    else:
        out, summary = launch_training(
            tcfg.launcher,
            stage="reward",
            model_dir=str(ctx.model("base")),
            data=table,
            stage_config=stage_cfg,
            out_dir=ctx.workdir,
            **kwargs,
        )
    return StageOutput(
        {"reward_model": Model(out, kind="reward-model")},
        rows_in=table.num_rows,
        rows_out=summary["pairs"],
        summary={k: v for k, v in summary.items() if k != "seconds"},
        timings={"reward_model/seconds": summary["seconds"]},
        metrics={
            "reward_model/accuracy_before": summary["accuracy_before"],
            "reward_model/accuracy_after": summary["accuracy_after"],
            "reward_model/pairs": summary["pairs"],
            "reward_model/loss": summary["loss"],
        },
    )


def latest_reward_model(catalog: Catalog, pipeline: str, before_round: int) -> str | None:
    """Artifact id of the reward model trained in the latest round before `before_round`, if any.

    One small query per round, newest first: pipelines have tens of rounds, not millions.
    """
    for r in range(before_round - 1, 0, -1):
        rm = catalog.step_outputs(pipeline, r, STEP).get("reward_model")
        if rm:
            return rm
    return None


def reward_model_for(catalog: Catalog, cfg: FlywheelConfig, before_round: int, reader: str) -> str | None:
    """The latest reward model trained before round `before_round`, if `reader` reads one, else None.

    `reader` is "score" (a scorer with `model: trained`) or "evaluate" (an eval set with `reward_model:
    trained`). Only then is it an input: it can be as large as the policy, and a step that declares it
    fetches it.
    """
    if reader == "score":
        reads = any(s.kind == "reward_model" and s.model == "trained" for s in cfg.scoring.scorers)
    else:
        reads = any(e.metric == "reward" and e.reward_model == "trained" for e in cfg.evaluation.eval_sets)
    return latest_reward_model(catalog, cfg.pipeline, before_round) if reads else None


def reward_pairs_ids(
    catalog: Catalog,
    pipeline: str,
    round_num: int,
    pairs_id: str,
    rounds_of_pairs: int | None,
) -> list[str]:
    """The pairs tables a round's reward model trains on: this round's and those of earlier rounds,
    oldest first; `rounds_of_pairs` rounds in all (None: every round so far)."""
    first = 1 if rounds_of_pairs is None else max(1, round_num - rounds_of_pairs + 1)
    earlier = [catalog.step_outputs(pipeline, r, "select").get("pairs") for r in range(first, round_num)]
    return list(dict.fromkeys([p for p in earlier if p] + [pairs_id]))


if __name__ == "__main__":
    from tasks.run_alone import run_alone

    run_alone(
        train_reward_task,
        lambda rnd: {
            "pairs_ids": reward_pairs_ids(
                rnd.catalog,
                rnd.cfg.pipeline,
                rnd.round,
                rnd.output("select", "pairs"),
                rnd.cfg.training.reward_model.rounds_of_pairs,
            ),
            "policy_id": rnd.policy,
        },
    )
