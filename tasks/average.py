"""Model averaging (training.averaging): the candidate becomes a weighted average of the newly trained model
and earlier policies, as Llama 3 averaged its fine-tunes.

In a round flow, between training and evaluation:
    candidate = train_dpo_task(cfg, r, sft_model, pairs)
    candidate = average_task(cfg, r, candidate, policy)    # the candidate itself when averaging is off

The parents are the policy the round started from, or the k latest policies of the pipeline (promoted
candidates, newest first, then the base model). The average is one step, "average", whose inputs are the
candidate and each parent (`parent:0` the newest), so the catalog has a lineage edge from each of them.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from prefect import task

from configs.averaging import AveragingConfig
from configs.schema import FlywheelConfig
from storage.runtime import open_runtime
from tasks import common

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


@task(name="average-checkpoints")
def average_task(cfg: FlywheelConfig, round_num: int, candidate_id: str, policy_id: str) -> str:
    """Artifact id of the round's candidate: the average, or `candidate_id` unchanged (nothing recorded) when
    averaging is off, when weight_new is 1, or when training produced no new model (the gate says so)."""
    acfg: AveragingConfig = cfg.training.averaging
    log = common.get_logger()
    if not acfg.enabled or acfg.weight_new == 1:
        return candidate_id
    if candidate_id == policy_id:
        log.info("%s: training produced no new model; the candidate is not averaged", STEP)
        return candidate_id
    rt = open_runtime(cfg)
    history = policy_history(rt.catalog.rounds(cfg.pipeline), round_num) if acfg.parents == "last_k_promoted" else []
    parents = [p for p in choose_parents(acfg, policy_id, history) if p != candidate_id]
    weights = averaging_weights(acfg, len(parents))
    log.info("%s: %.3g x the new model + %s", STEP, weights[0],
             " + ".join(f"{w:.3g} x {p[:12]}" for p, w in zip(parents, weights[1:])))

    def compute() -> common.StepOutput:
        from trainers.average import average_checkpoints  # torch: imported only when a round averages

        dirs = [rt.artifacts.get_model(a) for a in [candidate_id, *parents]]
        with tempfile.TemporaryDirectory(dir=rt.home) as tmp:
            out = average_checkpoints(list(zip(dirs, weights)), Path(tmp) / "model")
            ref = rt.artifacts.put_model(out, kind="model")
        summary = {"parents": parents, "weights": weights,
                   "metrics": {"average/parents": float(len(parents)), "average/weight_new": weights[0]}}
        return common.StepOutput({"model": ref}, summary)

    result = common.run_step(
        rt, pipeline=cfg.pipeline, round_num=round_num, step=STEP, config=acfg,
        inputs={"candidate": candidate_id, **{f"parent:{i}": p for i, p in enumerate(parents)}}, compute=compute,
        code=common.code_version(__name__, "trainers.average"),
    )
    return result.outputs["model"]
