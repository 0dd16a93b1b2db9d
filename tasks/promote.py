"""The promotion gate: the candidate becomes the policy only if it does not regress.

Rule: candidate[metric] >= policy[metric] - tolerance, on the configured eval set. The decision and
its reason are stored with the round; round r+1 starts from whichever model the gate kept.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from prefect import task

from configs.schema import FlywheelConfig, PromotionConfig
from storage.runtime import open_runtime
from tasks import common


@dataclass(frozen=True)
class Decision:
    promoted: bool
    policy_out: str
    reason: str


def decide(gate: PromotionConfig, gate_set: str, policy: dict[str, float], candidate: dict[str, float],
           policy_id: str, candidate_id: str) -> Decision:
    """Compare the gate metric of candidate and policy.

    >>> decide(PromotionConfig(tolerance=0.01), "h", {"accuracy": .50}, {"accuracy": .495}, "p", "c").promoted
    True
    >>> decide(PromotionConfig(), "h", {"accuracy": .50}, {"accuracy": .40}, "p", "c").reason
    'kept policy: accuracy on h 40.00 % < policy 50.00 % - tolerance 0.00'
    """
    if candidate_id == policy_id:
        return Decision(False, policy_id, "kept policy: training produced no new model")
    name = gate.metric.removeprefix("eval/")
    key = name if name in candidate else f"{name}/{gate_set}"
    c, p = candidate[key], policy[key]
    if c >= p - gate.tolerance:
        return Decision(True, candidate_id, f"promoted: {name} on {gate_set} {100 * c:.2f} % >= policy {100 * p:.2f} % - tolerance {100 * gate.tolerance:.2f}")
    return Decision(False, policy_id, f"kept policy: {name} on {gate_set} {100 * c:.2f} % < policy {100 * p:.2f} % - tolerance {100 * gate.tolerance:.2f}")


@task(name="promotion-gate")
def gate_task(cfg: FlywheelConfig, round_num: int, policy_id: str, candidate_id: str,
              policy_metrics: dict[str, float], candidate_metrics: dict[str, float]) -> Decision:
    rt = open_runtime(cfg)
    decision = decide(cfg.promotion, cfg.gate_eval_set, policy_metrics, candidate_metrics, policy_id, candidate_id)
    common.get_logger().info("round %d: %s", round_num, decision.reason)

    def compute() -> common.StepOutput:
        ref = rt.artifacts.put_json(asdict(decision), kind="decision")
        return common.StepOutput({"decision": ref}, {"metrics": {"promoted": float(decision.promoted)}, **asdict(decision)})

    common.run_step(
        rt, pipeline=cfg.pipeline, round_num=round_num, step="promote", config=cfg.promotion,
        inputs={"policy": policy_id, "candidate": candidate_id}, compute=compute, code=common.code_version(__name__),
    )
    return decision
