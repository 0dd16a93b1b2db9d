"""The promotion gate: the candidate becomes the policy only if the configured rule over its metrics holds.

Rule (configs.schema.PromotionConfig): the primary metric (the gate eval set's own metric: accuracy,
reward or judge win rate) must reach policy + min_improvement - tolerance, and every guarded eval set may
drop by at most its max_drop. With `require_significant`, an accuracy or IFEval figure must also clear the
margin with the lower 95 % bound of the difference, so an improvement inside the noise does not promote.
The decision lists every check with its numbers; round r+1 starts from
whichever model the gate kept. `flywheel promote` overrides it by hand (promote_by_hand: recorded with
who, when and why, in the store and the catalog, while no round of the pipeline runs).
The step's inputs are the two models, and its config holds both models' metrics: the decision is a
function of them.

Run alone:  python -m tasks.promote --config configs/demo.yaml --round 1 [--home DIR] [--force]
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from configs.schema import FlywheelConfig, PromotionConfig
from storage.catalog import Catalog
from storage.rebuild import promotion_key, promotion_record
from storage.store import Store
from tasks.stage import Json, StageContext, StageOutput, Step, stage


@dataclass(frozen=True)
class Decision:
    promoted: bool
    policy_out: str
    reason: str


def _fmt(key: str, x: float) -> str:
    """Accuracy and win rates as percentages, rewards as plain numbers."""
    return f"{100 * x:.2f} %" if key.startswith(PERCENT_METRICS) else f"{x:.4f}"


PERCENT_METRICS = ("accuracy/", "win_rate/", "ifeval/")
INTERVAL_METRICS = ("accuracy/", "ifeval/")  # shares of prompts or instructions, with Wilson intervals


def decide(
    gate: PromotionConfig,
    metric_of: dict[str, str],
    gate_set: str,
    policy: dict[str, float],
    candidate: dict[str, float],
    policy_id: str,
    candidate_id: str,
) -> Decision:
    """Apply the gate's rule to the two models' metrics.

    Args:
        metric_of: {eval set: its metric} (accuracy, ifeval, reward or win_rate); keys of the dicts are
            "<metric>/<eval set>".
        policy, candidate: each model's metrics (the policy's win rate is 0.5: itself against itself).

    >>> m = {"h": "accuracy", "chat": "reward"}
    >>> decide(PromotionConfig(tolerance=0.01), m, "h", {"accuracy/h": .50}, {"accuracy/h": .495}, "p", "c").promoted
    True
    >>> g = PromotionConfig(min_improvement=0.02, guards=[{"eval_set": "chat", "max_drop": 0.1}])
    >>> decide(g, m, "h", {"accuracy/h": .5, "reward/chat": 1.0}, {"accuracy/h": .6, "reward/chat": .8}, "p", "c").reason
    'kept policy: accuracy/h 60.00 % >= 50.00 % + 2.00 (ok); reward/chat 0.8000 < 1.0000 - 0.1000 (regressed)'
    """
    if candidate_id == policy_id:
        return Decision(False, policy_id, "kept policy: training produced no new model")
    checks = []
    key = f"{metric_of[gate_set]}/{gate_set}"
    c, p = candidate[key], policy.get(key, 0.5 if key.startswith("win_rate/") else float("nan"))
    margin = gate.min_improvement - gate.tolerance
    ok = c >= p + margin
    sign = "+" if margin >= 0 else "-"
    unit = 100 if key.startswith(PERCENT_METRICS) else 1
    checks.append(
        (
            ok,
            f"{key} {_fmt(key, c)} {'>=' if ok else '<'} {_fmt(key, p)} {sign} "
            f"{unit * abs(margin):.2f} ({'ok' if ok else 'not enough'})",
        )
    )
    if gate.require_significant and key.startswith(INTERVAL_METRICS):
        checks.append(_significance(key, candidate, policy, margin))
    for guard in gate.guards:
        gk = f"{metric_of[guard.eval_set]}/{guard.eval_set}"
        gc, gp = candidate[gk], policy.get(gk, 0.5 if gk.startswith("win_rate/") else float("nan"))
        g_ok = gc >= gp - guard.max_drop
        checks.append(
            (
                g_ok,
                f"{gk} {_fmt(gk, gc)} {'>=' if g_ok else '<'} {_fmt(gk, gp)} - "
                f"{guard.max_drop:.4f} ({'ok' if g_ok else 'regressed'})",
            )
        )
    promoted = all(ok for ok, _ in checks)
    reason = ("promoted: " if promoted else "kept policy: ") + "; ".join(text for _, text in checks)
    return Decision(promoted, candidate_id if promoted else policy_id, reason)


def _significance(key: str, candidate: dict, policy: dict, margin: float) -> tuple[bool, str]:
    """Does the lower 95 % bound of candidate - policy clear the margin?

    >>> m = lambda p, lo, hi: {"accuracy/h": p, "accuracy/h/ci_low": lo, "accuracy/h/ci_high": hi}
    >>> _significance("accuracy/h", m(.6, .5, .69), m(.5, .4, .6), 0.0)
    (False, 'accuracy/h: lower 95 % bound of the gain -4.14 < +0.00 (inside the noise)')
    """
    from tasks.scoring.stats import difference_lower_bound

    try:
        c, p = candidate[key], policy[key]
        ci_c = (candidate[f"{key}/ci_low"], candidate[f"{key}/ci_high"])
        ci_p = (policy[f"{key}/ci_low"], policy[f"{key}/ci_high"])
    except KeyError:
        return False, f"{key}: no interval recorded for both models (re-evaluate them), so significance is unknown"
    low = difference_lower_bound(c, ci_c, p, ci_p)
    ok = low >= margin
    verdict = "clears the noise" if ok else "inside the noise"
    return (
        ok,
        f"{key}: lower 95 % bound of the gain {100 * low:+.2f} {'>=' if ok else '<'} {100 * margin:+.2f} ({verdict})",
    )


@stage("promotion-gate", returns=lambda result: Decision(**{k: result.summary[k] for k in Decision.__annotations__}))
def gate_task(
    cfg: FlywheelConfig,
    round_num: int,
    policy_id: str,
    candidate_id: str,
    policy_metrics: dict[str, float],
    candidate_metrics: dict[str, float],
) -> Step:
    """Decide whether the candidate becomes the policy; returns the Decision."""
    metrics = {"policy": policy_metrics, "candidate": candidate_metrics}
    config = {"promotion": cfg.promotion.model_dump(mode="json"), **metrics}  # the decision is a function of these
    return Step(
        "promote",
        config=config,
        inputs={"policy": policy_id, "candidate": candidate_id},
        run=lambda ctx: gate(ctx, cfg, round_num, **metrics),
    )


def gate(ctx: StageContext, cfg: FlywheelConfig, round_num: int, policy: dict, candidate: dict) -> StageOutput:
    metric_of = {e.name: e.metric for e in cfg.evaluation.eval_sets}
    decision = decide(
        cfg.promotion, metric_of, cfg.gate_eval_set, policy, candidate, ctx.id("policy"), ctx.id("candidate")
    )
    ctx.log.info("round %d: %s", round_num, decision.reason)
    return StageOutput(
        {"decision": Json(asdict(decision), "decision")},
        summary=asdict(decision),
        metrics={"promoted": float(decision.promoted)},
    )


def promote_by_hand(
    catalog: Catalog, store: Store, pipeline: str, from_round: int, which: str, who: str, why: str
) -> dict[str, Any]:
    """Make round `from_round`'s candidate (or the policy it kept) the pipeline's policy; the promotions row.

    The caller holds the pipeline's lock (flows/lock.py): a round running meanwhile would finish with its
    own gate's decision and silently override this one. Stored first, as `runs/<pipeline>/promotions/`,
    so `flywheel catalog-rebuild` restores it; then recorded in the catalog. Raises ValueError when the
    round does not exist or has no such model.
    """
    row = catalog.new_promotion(pipeline, from_round, which, who, why)
    store.put_bytes(promotion_key(pipeline, row["promoted_at"]), promotion_record(row))
    catalog.add_promotion(row)
    return row


if __name__ == "__main__":
    from tasks.run_alone import run_alone

    def args_of(rnd):
        # What the round flow passes: each evaluate step's metrics, the candidate's with compare's win rates.
        from tasks.compare import gate_metrics

        policy, candidate = (rnd.summary(f"evaluate-{role}")["metrics"] for role in ("policy", "candidate"))
        if rnd.catalog.step_outputs(rnd.cfg.pipeline, rnd.round, "compare"):
            candidate |= gate_metrics(rnd.summary("compare")["metrics"])
        return {
            "policy_id": rnd.policy,
            "candidate_id": rnd.candidate,
            "policy_metrics": policy,
            "candidate_metrics": candidate,
        }

    run_alone(gate_task, args_of)
