"""One round of the flywheel as a Prefect flow: curate → generate → score → select → train → evaluate → promote.

Run one round of a config:  flywheel run --config configs/demo.yaml --rounds 1

Each stage is a Prefect task made by the stage mechanism (tasks/stage.py), which owns the step's identity,
reuse, catalog record and lineage; this flow only passes each stage its inputs and records the round
itself (started, finished, failed, crashed or discarded) in the catalog. Before a round starts it closes
rounds left running by a dead owner (flows/crashes.py), and before one resumes it checks that what the
catalog says it finished is still in the store (storage/audit.py).
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import BaseModel, Field

from configs.schema import FlywheelConfig
from flows.crashes import close_dead_rounds
from flows.lock import pipeline_lock
from flows.preflight import PreflightError, preflight
from flows.publish import publish_round_report
from storage.audit import repair_round
from storage.ids import hash_obj, home_relative
from storage.runtime import Runtime
from tasks.average import average_task, policy_history
from tasks.compare import compare_task
from tasks.curate import curate_task
from tasks.curation.inputs import earlier_prompt_tables
from tasks.curation.prompts import CurationError
from tasks.curation.sources import SourceError
from tasks.evaluate import evaluate_task
from tasks.generate import generate_task
from tasks.promote import Decision, gate_task
from tasks.score import score_task
from tasks.select import replay_tables, select_task
from tasks.stage import import_model, runtime
from tasks.train import train_dpo_task, train_sft_task
from tasks.train_reward import reward_model_for, reward_pairs_ids, train_reward_task
from tasks.train_rl import train_rl_task

# Errors in the user's input: the round is rolled back entirely instead of being kept as "failed", unless
# some of its steps finished: those stay reusable, so a late bad input does not cost the work before it.
INPUT_ERRORS: tuple[type[Exception], ...] = (PreflightError, SourceError, CurationError)


class RoundReport(BaseModel):
    pipeline: str
    round: int = Field(description="Round number, from 1.")
    promoted: bool
    reason: str
    policy_in: str = Field(description="Artifact id of the policy the round started from.")
    candidate: str = Field(description="Artifact id of the trained candidate.")
    policy_out: str = Field(description="Artifact id of the policy after the gate.")
    metrics: dict[str, float]
    manifest_uri: str
    seconds: float


@flow(name="flywheel-round", flow_run_name="{cfg.pipeline}-round")
def round_flow(cfg: FlywheelConfig) -> RoundReport:
    """Run the next round of `cfg.pipeline` (a failed round is retried, reusing its finished steps).

    Rounds of one pipeline never overlap: a second call waits until the running round has finished.
    """
    t0 = time.perf_counter()
    rt = runtime(cfg)
    log = get_run_logger()
    with pipeline_lock(rt.home, cfg.pipeline, log=log.info):
        close_dead_rounds(rt.catalog, rt.home, cfg.pipeline, lock_held=True, log=log.warning)
        report = _run_round(rt, cfg)
    publish_round_report(rt, cfg, report.round)
    return report.model_copy(update={"seconds": time.perf_counter() - t0})


def _run_round(rt: Runtime, cfg: FlywheelConfig) -> RoundReport:
    r = rt.catalog.next_round(cfg.pipeline)
    preflight(cfg, need_base_model=rt.catalog.current_policy(cfg.pipeline) is None)
    rt.catalog.ensure_pipeline(cfg.pipeline, cfg.base_model, cfg.model_dump(mode="json"))
    # The policy the round starts from: the last promoted one, or (round 1) the base model, imported.
    policy = rt.catalog.current_policy(cfg.pipeline) or import_model(cfg, cfg.base_model, "base-model", "base_model")
    if rt.catalog.round(cfg.pipeline, r) is not None:  # a resume
        _repair(rt, cfg.pipeline, r)
    config_hash = hash_obj(home_relative(cfg.model_dump(mode="json"), rt.home))  # the same in every home
    rt.catalog.start_round(cfg.pipeline, r, config_hash, policy, str(flow_run.id or ""))
    try:
        prompts = curate_task(cfg, r, earlier_prompt_tables(rt.catalog, cfg, r))
        completions = generate_task(cfg, r, policy, prompts)
        scores = score_task(cfg, r, completions, reward_model_for(rt.catalog, cfg, r, "score"))
        sft, pairs = select_task(cfg, r, completions, scores, replay_tables(rt.catalog, cfg, r))
        if cfg.training.reward_model.enabled:  # trained on this round's pairs, it scores the next rounds
            pairs_ids = reward_pairs_ids(rt.catalog, cfg.pipeline, r, pairs, cfg.training.reward_model.rounds_of_pairs)
            train_reward_task(cfg, r, pairs_ids, policy)
        sft_model = train_sft_task(cfg, r, policy, sft)
        candidate = train_dpo_task(cfg, r, sft_model, pairs)
        if cfg.training.rl.enabled:  # GRPO on verifiable rewards, from the preference-tuned checkpoint
            candidate = train_rl_task(cfg, r, candidate, prompts, scores)
        # The trained model itself when averaging is off.
        candidate = average_task(cfg, r, candidate, policy, policy_history(rt.catalog.rounds(cfg.pipeline), r))
        reward_model = reward_model_for(rt.catalog, cfg, r + 1, "evaluate")  # this round's counts too
        policy_eval = evaluate_task(cfg, r, policy, "policy", reward_model)
        candidate_eval = evaluate_task(cfg, r, candidate, "candidate", reward_model)
        candidate_metrics = candidate_eval.metrics
        if any(e.metric == "win_rate" for e in cfg.evaluation.eval_sets) and candidate != policy:
            candidate_metrics |= compare_task(cfg, r, policy_eval.outputs["results"], candidate_eval.outputs["results"])
        decision = gate_task(cfg, r, policy, candidate, policy_eval.metrics, candidate_metrics)
        manifest_uri = write_manifest(rt, cfg, r, policy, candidate, decision)
        rt.catalog.finish_round(
            cfg.pipeline,
            r,
            candidate=candidate,
            policy_out=decision.policy_out,
            promoted=decision.promoted,
            reason=decision.reason,
            manifest_uri=manifest_uri,
        )
    except INPUT_ERRORS as e:
        rt.catalog.reject_round(cfg.pipeline, r, f"{type(e).__name__}: {e}")
        raise
    except BaseException as e:
        rt.catalog.fail_round(cfg.pipeline, r, f"{type(e).__name__}: {e}")
        raise
    if rt.catalog.lake is None:  # a DuckLake catalog's data is in the store already
        rt.store.put_file("catalog/catalog.duckdb", rt.catalog.path)  # backup after every round
    return RoundReport(
        pipeline=cfg.pipeline,
        round=r,
        promoted=decision.promoted,
        reason=decision.reason,
        policy_in=policy,
        candidate=candidate,
        policy_out=decision.policy_out,
        metrics=rt.catalog.round(cfg.pipeline, r)["metrics"],
        manifest_uri=manifest_uri,
        seconds=0.0,
    )


def _repair(rt: Runtime, pipeline: str, r: int) -> None:
    """Forget the finished steps of round r whose outputs the store lost, so they run again."""
    repair = repair_round(rt.catalog, rt.artifacts, pipeline, r)
    log = get_run_logger()
    if repair.missing:
        log.warning(
            "resuming round %d: %d of its %d recorded artifacts are missing from the store (%s); "
            "steps %s will run again",
            r,
            len(repair.missing),
            repair.checked,
            ", ".join(a[:12] for a in repair.missing),
            ", ".join(repair.steps),
        )
    else:
        log.info("resuming round %d: its %d recorded artifacts are all in the store", r, repair.checked)


def write_manifest(rt: Runtime, cfg: FlywheelConfig, r: int, policy: str, candidate: str, decision: Decision) -> str:
    """The round's manifest, written last: its presence in the store means the round is complete."""
    info = rt.catalog.round(cfg.pipeline, r)
    steps = {
        name: {
            "identity": s["identity"],
            "inputs": json.loads(s["inputs"]) if s.get("inputs") else {},
            "outputs": json.loads(s["outputs"]) if s.get("outputs") else {},
            "duration_s": s["duration_s"],
            "reused": s["reused"],
            "rows_in": s["rows_in"],
            "rows_out": s["rows_out"],
        }
        for name, s in rt.catalog.steps_of(cfg.pipeline, r).items()
    }
    # Inputs no step of this round made (external files, the base model, earlier rounds' outputs), with their
    # catalog records: a catalog rebuilt from the store registers them as the live one did.
    made = {a for s in steps.values() for a in s["outputs"].values()}
    read = sorted({a for s in steps.values() for a in s["inputs"].values()} - made)
    fields = ("kind", "uri", "format", "bytes", "rows", "round", "step")
    inputs = {a: {k: rec[k] for k in fields} for a, rec in rt.catalog.artifacts_by_id(read).items()}
    manifest = {
        "pipeline": cfg.pipeline,
        "round": r,
        "written_at": datetime.now(timezone.utc).isoformat(),
        "config": cfg.model_dump(mode="json"),
        "policy_in": policy,
        "candidate": candidate,
        "policy_out": decision.policy_out,
        "promoted": decision.promoted,
        "reason": decision.reason,
        "metrics": info["metrics"],
        "steps": steps,
        "inputs": inputs,
        "artifacts": {a: rt.artifacts.ref(a).uri for s in steps.values() for a in s["outputs"].values()},
    }
    key = f"runs/{cfg.pipeline}/round-{r:04d}/manifest.json"
    rt.store.put_bytes(key, json.dumps(manifest, indent=2, default=str).encode())
    return rt.store.url(key)
