"""Optional stage: train a reward model on this pipeline's chosen/rejected pairs (training.reward_model).

Runs after selection: the reward model of round r learns from the pairs of round r (and earlier rounds,
see rounds_of_pairs) and scores completions from round r+1 on, for a `reward_model` scorer with
`model: trained`. The stage is one step, "train-reward", whose identity covers its pairs tables and
backbone, so a resumed round reuses a reward model it already trained.

In a round flow:
    base_id = reward_base_id(rt, cfg, policy)                      # the policy, or training.reward_model.base
    pairs_ids = reward_pairs_ids(rt.catalog, cfg.pipeline, r, pairs, cfg.training.reward_model.rounds_of_pairs)
    rm_id = train_reward_task(cfg, r, pairs_ids, base_id)          # None when disabled or without pairs
and, before scoring round r:
    context = reward_model_context(rt, cfg.pipeline, r)            # {} before the first reward model
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from prefect import task

from configs.reward import RewardModelTrainConfig
from configs.schema import FlywheelConfig
from storage.catalog import ArtifactRecord, Catalog
from storage.runtime import Runtime, open_runtime
from tasks import common

STEP = "train-reward"
PAIR_COLUMNS = ["prompt", "chosen", "rejected"]


def _outputs(catalog: Catalog, pipeline: str, round_num: int, step: str) -> dict[str, str]:
    """Output name -> artifact id of a completed step of one round ({} if it did not complete)."""
    row = catalog.steps_of(pipeline, round_num).get(step)
    if row is None or row["status"] != "completed" or not row["outputs"]:
        return {}
    return json.loads(row["outputs"])


def latest_reward_model(catalog: Catalog, pipeline: str, before_round: int) -> str | None:
    """Artifact id of the reward model trained in the latest round before `before_round`, if any.

    One small query per round, newest first: pipelines have tens of rounds, not millions.
    """
    for r in range(before_round - 1, 0, -1):
        rm = _outputs(catalog, pipeline, r, STEP).get("reward_model")
        if rm:
            return rm
    return None


def reward_pairs_ids(
    catalog: Catalog, pipeline: str, round_num: int, pairs_id: str, rounds_of_pairs: int | None,
) -> list[str]:
    """The pairs tables a round's reward model trains on: this round's and those of earlier rounds,
    oldest first; `rounds_of_pairs` rounds in all (None: every round so far)."""
    first = 1 if rounds_of_pairs is None else max(1, round_num - rounds_of_pairs + 1)
    earlier = [_outputs(catalog, pipeline, r, "select").get("pairs") for r in range(first, round_num)]
    return list(dict.fromkeys([p for p in earlier if p] + [pairs_id]))


def reward_base_id(rt: Runtime, cfg: FlywheelConfig, policy_id: str) -> str:
    """Artifact id of the reward model's backbone: the round's policy, or `base` stored as a model artifact."""
    rm_cfg: RewardModelTrainConfig = cfg.training.reward_model
    if rm_cfg.base == "policy":
        return policy_id
    if not Path(rm_cfg.base).is_dir():
        raise FileNotFoundError(
            f"training.reward_model.base ({rm_cfg.base!r}) is neither `policy` nor a model directory")
    ref = rt.artifacts.put_model(Path(rm_cfg.base), kind="model")  # stored once: ids are content hashes
    rt.catalog.register_artifact(ArtifactRecord(ref.id, ref.kind, ref.format, ref.uri, ref.bytes, ref.rows),
                                 cfg.pipeline, 0, "reward-model-base")
    return ref.id


def uses_trained_reward_model(cfg: FlywheelConfig) -> bool:
    """Whether a scorer or an eval set of this pipeline reads the latest trained reward model."""
    return (any(s.kind == "reward_model" and s.model == "trained" for s in cfg.scoring.scorers)
            or any(e.metric == "reward" and e.reward_model == "trained" for e in cfg.evaluation.eval_sets))


def reward_model_context(rt: Runtime, pipeline: str, round_num: int) -> dict:
    """Scorer context for round `round_num`: the latest earlier reward model's directory and id ({} if none).

    The id belongs in the score step's inputs, so a new reward model gives the step a new identity.
    """
    rm = latest_reward_model(rt.catalog, pipeline, round_num)
    if rm is None:
        return {}
    return {"reward_model_dir": str(rt.artifacts.get_model(rm)), "reward_model_id": rm}


def _release_accelerator() -> None:
    # On a GPU the vLLM engine holds most of the memory: free it before training (as tasks/train.py).
    import torch

    if torch.cuda.is_available():
        from tasks.engines import close_engines

        close_engines()


@task(name="train-reward")
def train_reward_task(cfg: FlywheelConfig, round_num: int, pairs_ids: list[str], base_id: str) -> str | None:
    """Train the round's reward model from `base_id` on the pairs tables `pairs_ids`; its artifact id.

    None when training.reward_model is disabled (no step is recorded) or the tables hold no pairs (the
    step is recorded as skipped).
    """
    rm_cfg: RewardModelTrainConfig = cfg.training.reward_model
    if not rm_cfg.enabled:
        return None
    from trainers.reward import train_reward_model

    rt = open_runtime(cfg)
    tcfg = cfg.training
    pairs_ids = list(dict.fromkeys(pairs_ids))
    stage = rm_cfg.model_copy(update={"seed": rm_cfg.seed + round_num})  # a different data order each round

    def compute() -> common.StepOutput:
        rows = [r for pid in pairs_ids for r in rt.artifacts.get_table(pid, columns=PAIR_COLUMNS).to_pylist()]
        if not rows:
            common.get_logger().warning("%s skipped: no pairs in %d table(s)", STEP, len(pairs_ids))
            return common.StepOutput({}, {"skipped": "no pairs", "rows_in": 0, "rows_out": 0})
        _release_accelerator()
        with tempfile.TemporaryDirectory(dir=rt.home) as tmp:
            out = Path(tmp) / "reward-model"
            summary = train_reward_model(rows, str(rt.artifacts.get_model(base_id)), str(out), stage,
                                         use_cpu=tcfg.use_cpu, bf16=tcfg.bf16, logger=common.get_logger())
            ref = rt.artifacts.put_model(out, kind="reward-model")
        summary.update(rows_in=len(rows), rows_out=summary["pairs"], metrics={
            "reward_model/accuracy_before": summary["accuracy_before"],
            "reward_model/accuracy_after": summary["accuracy_after"],
            "reward_model/pairs": summary["pairs"], "reward_model/loss": summary["loss"]})
        return common.StepOutput({"reward_model": ref}, summary)

    result = common.run_step(
        rt, pipeline=cfg.pipeline, round_num=round_num, step=STEP,
        config={"reward_model": stage.model_dump(mode="json"), "use_cpu": tcfg.use_cpu, "bf16": tcfg.bf16},
        inputs={"base": base_id, **{f"pairs{i}": pid for i, pid in enumerate(pairs_ids)}}, compute=compute,
        code=common.code_version(__name__, "trainers.reward", "trainers.common", "tasks.scorers.reward_model"),
    )
    return result.outputs.get("reward_model")
