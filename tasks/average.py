"""Average (optional, training.averaging): the candidate becomes a weighted average of the newly trained model
and earlier policies, as Llama 3 averaged its fine-tunes.

In a round flow, between training and evaluation:
    candidate = train_dpo_task(cfg, r, sft_model, pairs)
    history = policy_history(rt.catalog.rounds(cfg.pipeline), r)
    candidate = average_task(cfg, r, candidate, policy, history)   # the candidate itself when averaging is off

The parents are the policy the round started from, or the k latest policies of the pipeline (promoted
candidates, newest first, then the base model). The average is one step, "average", whose inputs are the
candidate and each parent (`parent:0` the newest), so the catalog has a lineage edge from each of them.

Run alone:  python -m tasks.average --config configs/x.yaml --round 1 [--home DIR] [--force]
"""

from __future__ import annotations

from typing import Any

from configs.averaging import AveragingConfig
from configs.schema import FlywheelConfig
from tasks.stage import Model, StageContext, StageOutput, Step, stage

STEP = "average"


def policy_history(rounds: list[dict[str, Any]], before_round: int) -> list[str]:
    """Policies a pipeline held before round `before_round`, newest first: per earlier round, newest first,
    its promoted candidate, then the policy it started from. Starting policies include manual promotions
    (`flywheel promote` sets the next round's starting policy); the oldest is the base model.

    >>> rounds = [{"round": 1, "status": "completed", "policy_in": "base", "policy_out": "c1", "promoted": True},
    ...           {"round": 2, "status": "completed", "policy_in": "c1", "policy_out": "c1", "promoted": False},
    ...           {"round": 3, "status": "completed", "policy_in": "c1", "policy_out": "c3", "promoted": True},
    ...           {"round": 4, "status": "running", "policy_in": "c3", "policy_out": None, "promoted": None}]
    >>> policy_history(rounds, 4)
    ['c3', 'c1', 'base']
    >>> rounds[3] = {"round": 4, "status": "completed", "policy_in": "c1m", "policy_out": "c1m", "promoted": False}
    >>> policy_history(rounds, 5)  # round 4 started from a manually promoted c1m
    ['c1m', 'c3', 'c1', 'base']
    """
    out: list[str] = []
    for r in sorted((r for r in rounds if r["round"] < before_round), key=lambda r: r["round"], reverse=True):
        if r["status"] == "completed" and r["promoted"] and r["policy_out"]:
            out.append(r["policy_out"])
        if r["policy_in"]:
            out.append(r["policy_in"])
    return list(dict.fromkeys(out))


def choose_parents(cfg: AveragingConfig, policy_id: str, history: list[str]) -> list[str]:
    """Artifact ids the new model is averaged with, newest first.

    The round's policy always comes first: it is the latest policy even where the catalog's history is
    incomplete (a pipeline whose earlier rounds were discarded).

    >>> choose_parents(AveragingConfig(parents="last_k_promoted", k=2), "c3", ["c3", "c1", "base"])
    ['c3', 'c1']
    >>> choose_parents(AveragingConfig(parents="policy"), "c3", ["c3", "c1", "base"])
    ['c3']
    """
    if cfg.parents == "policy":
        return [policy_id]
    return list(dict.fromkeys([policy_id, *history]))[: cfg.k]


def averaging_weights(cfg: AveragingConfig, n_parents: int) -> list[float]:
    """[weight of the new model, weight of each parent, newest first], summing to 1.

    >>> averaging_weights(AveragingConfig(parents="last_k_promoted", k=2, weight_new=0.5), 2)
    [0.5, 0.25, 0.25]
    >>> averaging_weights(AveragingConfig(parents="last_k_promoted", k=3, weight_new=0.5, parent_weights=[3, 1, 1]), 2)
    [0.5, 0.375, 0.125]
    """
    shares = (cfg.parent_weights or [1.0] * n_parents)[:n_parents]
    return [cfg.weight_new] + [(1 - cfg.weight_new) * s / sum(shares) for s in shares]


@stage("average-checkpoints", returns="model")
def average_task(
    cfg: FlywheelConfig, round_num: int, candidate_id: str, policy_id: str, history: list[str] = ()
) -> Step | str:
    """The round's candidate: the average with the parents chosen from `history` (the pipeline's earlier
    policies, newest first), or `candidate_id` unchanged and nothing recorded when averaging is off,
    weight_new is 1, the round comes before `from_round`, or training produced no new model (the gate says so)."""
    acfg: AveragingConfig = cfg.training.averaging
    if not acfg.enabled or acfg.weight_new == 1 or round_num < acfg.from_round or candidate_id == policy_id:
        return candidate_id
    parents = [p for p in choose_parents(acfg, policy_id, list(history)) if p != candidate_id]
    weights = averaging_weights(acfg, len(parents))
    return Step(
        STEP,
        # from_round decides only whether the step runs, not what it computes, so it stays out of the identity
        # (configs without it keep their steps).
        config=acfg.model_dump(mode="json", exclude={"from_round"}),
        inputs={"candidate": candidate_id, **{f"parent:{i}": p for i, p in enumerate(parents)}},
        run=lambda ctx: average(ctx, parents, weights),
    )


def average(ctx: StageContext, parents: list[str], weights: list[float]) -> StageOutput:
    from trainers.average import average_checkpoints  # torch: imported only when a round averages

    parts = " + ".join(f"{w:.3g} x {p[:12]}" for p, w in zip(parents, weights[1:]))
    ctx.log.info("%s: %.3g x the new model + %s", STEP, weights[0], parts)
    dirs = [ctx.model("candidate"), *(ctx.model(f"parent:{i}") for i in range(len(parents)))]
    out = average_checkpoints(list(zip(dirs, weights)), ctx.workdir / "model")
    return StageOutput(
        {"model": Model(out)},
        summary={"parents": parents, "weights": weights},
        metrics={"average/parents": float(len(parents)), "average/weight_new": weights[0]},
    )


if __name__ == "__main__":
    from tasks.run_alone import run_alone

    run_alone(
        average_task,
        lambda rnd: {
            "candidate_id": rnd.output("train-dpo", "model"),
            "policy_id": rnd.policy,
            "history": policy_history(rnd.catalog.rounds(rnd.cfg.pipeline), rnd.round),
        },
    )
