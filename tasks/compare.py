"""Judge win rate of the candidate against the policy on `metric: win_rate` eval sets.

For every prompt of such a set the judge sees both models' greedy answers twice, in both orders
(position bias would otherwise pass for preference). A prompt's outcome for the candidate is the mean of
its two verdicts (1 win, 0 loss); a verdict that cannot be parsed counts 0.5 and is counted. The policy's
win rate against itself is 0.5 by definition: that is the baseline the promotion gate compares with.
The inputs are the two evaluate steps' result tables, and a local judge's model directory.

Run alone:  python -m tasks.compare --config configs/x.yaml --round 1 [--home DIR] [--force]
"""

from __future__ import annotations

import pyarrow as pa

from configs.schema import EvalSetConfig, FlywheelConfig
from configs.scoring import JudgeScorerConfig
from tasks.scoring.judge import CHOICE_SCHEMA, LETTERS, pairwise_prompt, parse_choice
from tasks.stage import External, StageContext, StageOutput, Step, Table, stage


def win_rate(verdicts: list[tuple[str | None, str | None]]) -> dict[str, float]:
    """Candidate win rate from (verdict with the candidate shown first, verdict with it shown second).

    >>> win_rate([("A", "B"), ("A", "A"), ("B", "A"), (None, "B")])
    {'win_rate': 0.5, 'swap_agreement': 0.5, 'parse_failure_rate': 0.125, 'prompts': 4.0}
    """

    def points(v: str | None, candidate_letter: str) -> float:
        return 0.5 if v is None else float(v == candidate_letter)

    outcomes, agree, failures = [], 0, 0
    for first, second in verdicts:
        a, b = points(first, "A"), points(second, "B")
        outcomes.append((a + b) / 2)
        failures += (first is None) + (second is None)
        agree += first is not None and second is not None and (first == "A") == (second == "B")
    n = max(len(verdicts), 1)
    return {
        "win_rate": sum(outcomes) / n,
        "swap_agreement": agree / n,
        "parse_failure_rate": failures / (2 * n),
        "prompts": float(len(verdicts)),
    }


def judge_candidate(
    eval_set: EvalSetConfig, policy_rows: list[dict], candidate_rows: list[dict], engine_cfg
) -> tuple[list[dict], dict[str, float]]:
    """Verdict rows and the win-rate figures of one eval set (rows matched by their index in the set)."""
    from tasks.scoring.judge_backends import LocalJudge, RemoteJudge

    judge_cfg = JudgeScorerConfig(mode="pairwise", judge=eval_set.judge)
    judge = (RemoteJudge if eval_set.judge.backend == "openai" else LocalJudge)(eval_set.judge, engine_cfg)
    policy = {r["index"]: r for r in policy_rows}
    pairs = [(c, policy[c["index"]]) for c in candidate_rows if c["index"] in policy]
    prompts = []
    for cand, pol in pairs:
        row = {"prompt": cand["prompt"], "system": None}
        prompts += [
            pairwise_prompt(judge_cfg, row, cand["completion"], pol["completion"]),
            pairwise_prompt(judge_cfg, row, pol["completion"], cand["completion"]),
        ]
    replies = judge.ask(prompts, LETTERS, CHOICE_SCHEMA)
    letters = [parse_choice(r.text) if r.text is not None else None for r in replies]
    verdicts = list(zip(letters[0::2], letters[1::2]))
    rows = [
        {"eval_set": eval_set.name, "index": c["index"], "candidate_first": v1, "candidate_second": v2}
        for (c, _), (v1, v2) in zip(pairs, verdicts)
    ]
    return rows, win_rate(verdicts)


def gate_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """What the gate reads of compare's metrics: win_rate/<set> (the candidate's) and judge/<set>/<figure>."""
    return {k.removesuffix("/candidate"): v for k, v in metrics.items() if not k.endswith("/policy")}


@stage("compare-candidate", returns=lambda result: gate_metrics(result.metrics))
def compare_task(cfg: FlywheelConfig, round_num: int, policy_results: str, candidate_results: str) -> Step:
    """Judge the candidate against the policy on every win_rate eval set, from both models' eval results
    tables; returns {"win_rate/<set>": value, "judge/<set>/<figure>": value, ...}."""
    sets = [e for e in cfg.evaluation.eval_sets if e.metric == "win_rate"]
    judges = {
        f"judge:{e.name}": External.model_dir(e.judge.model, "judge-model", f"evaluation.eval_sets ({e.name}) judge")
        for e in sets
        if e.judge.backend == "vllm"
    }
    return Step(
        "compare",
        config=[e.model_dump(mode="json") for e in sets],
        run=lambda ctx: compare(ctx, cfg, sets),
        inputs={"policy_results": policy_results, "candidate_results": candidate_results, **judges},
        metric_name=lambda n: f"eval/{n}",
    )


def compare(ctx: StageContext, cfg: FlywheelConfig, sets: list[EvalSetConfig]) -> StageOutput:
    tables = {role: ctx.rows(f"{role}_results") for role in ("policy", "candidate")}
    rows, metrics = [], {}
    for e in sets:
        mine = {role: [r for r in t if r["eval_set"] == e.name] for role, t in tables.items()}
        verdicts, figures = judge_candidate(e, mine["policy"], mine["candidate"], cfg.generation.engine)
        rows += verdicts
        # The policy's win rate against itself is 0.5 by definition: the baseline, recorded beside it.
        metrics.update({f"win_rate/{e.name}/candidate": figures["win_rate"], f"win_rate/{e.name}/policy": 0.5})
        metrics.update({f"judge/{e.name}/{k}": v for k, v in figures.items() if k != "win_rate"})
        ctx.log.info(
            "candidate vs policy on %s: win rate %.3f (swap agreement %.3f)",
            e.name,
            figures["win_rate"],
            figures["swap_agreement"],
        )
    verdicts = Table(pa.Table.from_pylist(rows), "judge-verdicts")
    return StageOutput({"verdicts": verdicts}, metrics=metrics, rows_in=len(rows), rows_out=len(rows))


if __name__ == "__main__":
    from tasks.run_alone import run_alone

    run_alone(
        compare_task,
        lambda rnd: {
            "policy_results": rnd.output("evaluate-policy", "results"),
            "candidate_results": rnd.output("evaluate-candidate", "results"),
        },
    )
