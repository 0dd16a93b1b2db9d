"""Train: the optional RL step, TRL GRPO on the round's curated prompts, after DPO, rewarded by verifiers.

The step starts from the round's trained checkpoint (DPO's, or SFT's when DPO is disabled) and its
output becomes the candidate, which averaging, evaluation and the gate then treat like any other. Its
rewards are the configured verifiable scorers (configs/rl.py), the same scorer objects the score stage
runs (tasks/scoring/rl_rewards.py). Per-step reward mean and std, KL, completion length and the share of
groups with one reward for all (no learning signal) are stored as the step's metrics, and plotted in the
round's report. `training.launcher` decides where it trains, as for SFT and DPO.

Run alone:  python -m tasks.train_rl --config configs/demo.yaml --round 1 [--home DIR] [--force]
"""

from __future__ import annotations

import math

from configs.rl import RLConfig, rl_scorers
from configs.schema import FlywheelConfig
from tasks.generation import release_accelerator
from tasks.generation.handoff import free_accelerator_memory
from tasks.scoring.rl_rewards import reward_functions
from tasks.stage import Model, StageContext, StageOutput, Step, stage
from trainers.curves import curve_report
from trainers.launch import launch_training, launcher_identity


@stage("train-rl", returns="model")
def train_rl_task(
    cfg: FlywheelConfig, round_num: int, model_id: str, prompts_id: str, scores_id: str | None = None
) -> Step | str:
    """The GRPO step from `model_id` on the prompts `prompts_id` (those with mixed rewards in `scores_id`
    under prompt_selection: mixed); disabled: `model_id`, and nothing is recorded."""
    rl = cfg.training.rl
    if not rl.enabled:
        return model_id
    seed = cfg.training.seed + round_num
    rl = rl.for_round(round_num)
    scorers = [s.model_dump(mode="json") for s in rl_scorers(rl, cfg.scoring)]
    config = {
        # max_prompts enters only when set, so the steps of configs without it keep their identities.
        "rl": rl.model_dump(mode="json", exclude={"schedule"} | ({"max_prompts"} if rl.max_prompts is None else set())),
        "scorers": scorers,  # a changed verifier setting is a new reward, so a new step
        "seed": seed,
        "bf16": cfg.training.bf16,
        "use_cpu": cfg.training.use_cpu,  # decides the rollout backend under generation_backend: auto
        "launcher": launcher_identity(cfg.training.launcher),
    }
    inputs = {"model": model_id, "prompts": prompts_id}
    if rl.prompt_selection == "mixed":  # an input only where the step reads it: lineage names what it used
        if scores_id is None:
            raise ValueError("training.rl.prompt_selection: mixed needs the round's scores (the score step's output)")
        inputs["scores"] = scores_id
    return Step(
        "train-rl",
        config=config,
        inputs=inputs,
        run=lambda ctx: train_rl(ctx, cfg, round_num, rl, scorers, seed),
    )


def rl_prompts(rows: list[dict], fraction: float, cap: int | None = None) -> list[dict]:
    """The first `fraction` of the prompt rows (at least one, at most `cap`), in prompt-id order: a reproducible sample.

    >>> rows = [{"prompt_id": "b"}, {"prompt_id": "a"}, {"prompt_id": "c"}]
    >>> [r["prompt_id"] for r in rl_prompts(rows, 0.5)], [r["prompt_id"] for r in rl_prompts(rows, 1.0, cap=1)]
    (['a', 'b'], ['a'])
    """
    ordered = sorted(rows, key=lambda r: r["prompt_id"])
    keep = max(1, math.ceil(fraction * len(ordered)))
    return ordered[: min(keep, cap or keep)] if ordered else []


def mixed_reward_prompts(scores: list[dict]) -> set[str]:
    """Prompt ids whose scored completions got more than one distinct reward (None: excluded, not counted).

    >>> rows = [{"prompt_id": "p", "reward": 1.0}, {"prompt_id": "p", "reward": 0.0}, {"prompt_id": "q", "reward": 1.0}]
    >>> sorted(mixed_reward_prompts(rows))
    ['p']
    """
    rewards: dict[str, set[float]] = {}
    for row in scores:  # one row per (completion, scorer), each with the completion's combined reward
        if row["reward"] is not None:
            rewards.setdefault(row["prompt_id"], set()).add(row["reward"])
    return {p for p, seen in rewards.items() if len(seen) > 1}


def train_rl(
    ctx: StageContext, cfg: FlywheelConfig, round_num: int, rl: RLConfig, scorers: list[dict], seed: int
) -> StageOutput:
    """GRPO from model `model` on table `prompts`; the new checkpoint, with per-step metrics."""
    columns = ["prompt_id", "prompt", "system", "answer", "provenance"]
    rows = ctx.rows("prompts", columns=columns)
    selection: dict[str, int] = {}
    if "scores" in ctx.inputs:
        mixed = mixed_reward_prompts(ctx.rows("scores", columns=["prompt_id", "reward"]))
        kept = [r for r in rows if r["prompt_id"] in mixed]
        selection = {"train/rl_prompts_mixed": len(kept), "train/rl_prompts_uniform": len(rows) - len(kept)}
        ctx.log.info(
            "train-rl: %d of %d prompts had mixed rewards in the score step; the %d whose samples all scored "
            "alike are left out (prompt_selection: mixed)",
            len(kept),
            len(rows),
            len(rows) - len(kept),
        )
        rows = kept
    rows = rl_prompts(rows, rl.prompt_fraction, rl.max_prompts)
    if not rows:
        why = "no prompt had mixed rewards" if selection else "no prompts this round"
        ctx.log.warning("train-rl skipped (%s): its input model passes through", why)
        return StageOutput({"model": ctx.id("model")}, rows_in=0, rows_out=0, summary={"skipped": "no prompts"})
    release_accelerator()
    tcfg = cfg.training
    kwargs = dict(base_id=ctx.id("model"), seed=seed, use_cpu=tcfg.use_cpu, bf16=tcfg.bf16, logger=ctx.log)
    # Curves are reported, not computed: tracking stays out of the step's config, so out of its identity.
    kwargs["report"] = curve_report(cfg.tracking, cfg.resolve_home(), cfg.pipeline, round_num, "train-rl", ctx.log)
    model_dir = str(ctx.model("model"))
    if tcfg.launcher.kind == "local":
        from trainers.grpo import train_rl as train_fn  # torch and TRL: imported only when a round trains

        funcs, weights = reward_functions(scorers)
        ckpt, summary = train_fn(model_dir, rows, rl, ctx.workdir, reward_funcs=funcs, reward_weights=weights, **kwargs)
        free_accelerator_memory()  # as after SFT and DPO: the engine's wake must find the memory free
    else:
        import pyarrow as pa

        ckpt, summary = launch_training(
            tcfg.launcher,
            stage="rl",
            model_dir=model_dir,
            data=pa.Table.from_pylist(rows),
            stage_config=rl,
            out_dir=ctx.workdir,
            # The job's processes build the same reward functions from these (trainers/run.py).
            rewards={"factory": f"{reward_functions.__module__}:{reward_functions.__name__}", "scorers": scorers},
            **kwargs,
        )
    history = summary.get("history", [])
    rewards = [h["reward"] for h in history if "reward" in h]
    metrics = {
        "train/rl_loss": summary["train_loss"],
        "train/rl_steps": summary["steps"],
        **({"train/rl_reward_first": rewards[0], "train/rl_reward_last": rewards[-1]} if rewards else {}),
        **summary.pop("step_metrics", {}),
        **selection,
    }
    return StageOutput({"model": Model(ckpt)}, rows_in=len(rows), rows_out=len(rows), summary=summary, metrics=metrics)


if __name__ == "__main__":
    from tasks.run_alone import run_alone

    run_alone(
        train_rl_task,
        lambda rnd: {
            "model_id": rnd.output("train-dpo", "model"),
            "prompts_id": rnd.output("curate", "prompts"),
            "scores_id": rnd.output("score", "scores"),
        },
    )
