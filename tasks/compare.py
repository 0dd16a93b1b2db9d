"""Judge win rate of the candidate against the policy on `metric: win_rate` eval sets.

For every prompt of such a set the judge sees both models' greedy answers twice, in both orders
(position bias would otherwise pass for preference). A prompt's outcome for the candidate is the mean of
its two verdicts (1 win, 0 loss); a verdict that cannot be parsed counts 0.5 and is counted. The policy's
win rate against itself is 0.5 by definition: that is the baseline the promotion gate compares with.
"""
from __future__ import annotations

import pyarrow as pa
from prefect import task

from configs.schema import EvalSetConfig, FlywheelConfig
from configs.scoring import JudgeScorerConfig
from storage.runtime import open_runtime
from tasks import common
from tasks.scorers.judge import CHOICE_SCHEMA, LETTERS, pairwise_prompt, parse_choice


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
    return {"win_rate": sum(outcomes) / n, "swap_agreement": agree / n, "parse_failure_rate": failures / (2 * n),
            "prompts": float(len(verdicts))}


def judge_candidate(eval_set: EvalSetConfig, policy_rows: list[dict], candidate_rows: list[dict], engine_cfg
                    ) -> tuple[list[dict], dict[str, float]]:
    """Verdict rows and the win-rate figures of one eval set (rows matched by their index in the set)."""
    from tasks.scorers.judge_backends import LocalJudge, RemoteJudge

    judge_cfg = JudgeScorerConfig(mode="pairwise", judge=eval_set.judge)
    judge = (RemoteJudge if eval_set.judge.backend == "openai" else LocalJudge)(eval_set.judge, engine_cfg)
    policy = {r["index"]: r for r in policy_rows}
    pairs = [(c, policy[c["index"]]) for c in candidate_rows if c["index"] in policy]
    prompts = []
    for cand, pol in pairs:
        row = {"prompt": cand["prompt"], "system": None}
        prompts += [pairwise_prompt(judge_cfg, row, cand["completion"], pol["completion"]),
                    pairwise_prompt(judge_cfg, row, pol["completion"], cand["completion"])]
    replies = judge.ask(prompts, LETTERS, CHOICE_SCHEMA)
    letters = [parse_choice(r.text) if r.text is not None else None for r in replies]
    verdicts = list(zip(letters[0::2], letters[1::2]))
    rows = [{"eval_set": eval_set.name, "index": c["index"], "candidate_first": v1, "candidate_second": v2}
            for (c, _), (v1, v2) in zip(pairs, verdicts)]
    return rows, win_rate(verdicts)


@task(name="compare-candidate")
def compare_task(cfg: FlywheelConfig, round_num: int, policy_id: str, candidate_id: str) -> dict[str, float]:
    """Judge the candidate against the policy on every win_rate eval set; {"win_rate/<set>": value, ...}."""
    rt = open_runtime(cfg)
    sets = [e for e in cfg.evaluation.eval_sets if e.metric == "win_rate"]
    steps = rt.catalog.steps_of(cfg.pipeline, round_num)
    results = {role: common.step_outputs(steps[f"evaluate-{role}"])["results"] for role in ("policy", "candidate")}

    def compute() -> common.StepOutput:
        tables = {role: rt.artifacts.get_table(i).to_pylist() for role, i in results.items()}
        rows, metrics = [], {}
        for e in sets:
            mine = {role: [r for r in t if r["eval_set"] == e.name] for role, t in tables.items()}
            verdicts, figures = judge_candidate(e, mine["policy"], mine["candidate"], cfg.generation.engine)
            rows += verdicts
            metrics[f"win_rate/{e.name}"] = figures["win_rate"]
            metrics.update({f"judge/{e.name}/{k}": v for k, v in figures.items() if k != "win_rate"})
            common.get_logger().info("candidate vs policy on %s: win rate %.3f (swap agreement %.3f)", e.name,
                                     figures["win_rate"], figures["swap_agreement"])
        ref = rt.artifacts.put_table(pa.Table.from_pylist(rows), kind="judge-verdicts")
        return common.StepOutput({"verdicts": ref}, {"rows_in": len(rows), "rows_out": len(rows), "metrics": metrics})

    result = common.run_step(
        rt, pipeline=cfg.pipeline, round_num=round_num, step="compare", config=[e.model_dump(mode="json") for e in sets],
        inputs={"policy_results": results["policy"], "candidate_results": results["candidate"]}, compute=compute,
        code=common.code_version(__name__, "tasks.scorers.judge", "tasks.scorers.judge_backends"),
        metric_name=lambda n: f"eval/{n}/candidate" if n.startswith("win_rate/") else f"eval/{n}",
    )
    metrics = {k: float(v) for k, v in result.summary["metrics"].items()}
    for e in sets:
        rt.catalog.record_metrics(cfg.pipeline, round_num, "compare", {f"eval/win_rate/{e.name}/policy": 0.5})
    return metrics
