"""Evaluate a model on the held-out eval sets: greedy answers from the vLLM engine, then each set's metric.

Per eval set (evaluation.eval_sets[].metric): `accuracy` checks the answers with the math verifier,
`ifeval` checks them against each prompt's IFEval instructions (strict and loose, per prompt and per
instruction, as IFEval reports), both with 95 % Wilson intervals and optional pass@k / maj@k; `reward`
averages a reward model's scores, `win_rate` only stores the answers: tasks/compare.py has a
judge compare candidate and policy answers once both exist.
The candidate and the current policy are evaluated by the same step; its identity does not depend
on the role, so a policy that was last round's candidate is not evaluated twice. The eval-set files and
local reward models are external inputs.

Run alone:  python -m tasks.evaluate --config configs/demo.yaml --round 1 [--role policy|candidate] [--force]
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from configs.schema import EvalSetConfig, FlywheelConfig, SamplingConfig
from configs.scoring import MathScorerConfig, RewardModelScorerConfig
from tasks.curation import store_inputs
from tasks.generation import Engine, get_engine
from tasks.scoring import Scorer, ScoreResult
from tasks.scoring.eval_metrics import ifeval_metrics, proportion, sampled_metrics
from tasks.scoring.verifiable import MathAnswerScorer
from tasks.stage import External, StageContext, StageOutput, Step, Table, stage

RESULT_SCHEMA = pa.schema(
    [
        ("eval_set", pa.string()),
        ("index", pa.int64()),
        ("prompt", pa.string()),
        ("answer", pa.string()),
        ("completion", pa.string()),
        ("extracted", pa.string()),
        ("score", pa.float64()),
        ("status", pa.string()),
    ]
)


def evaluate_model(
    engine: Engine,
    eval_sets: dict[str, tuple[EvalSetConfig, list[dict]]],
    max_tokens: int,
    scorers: dict[str, Scorer] | None = None,
) -> tuple[list[dict], dict[str, float]]:
    """Greedy answers to every eval prompt; returns result rows (RESULT_SCHEMA) and metrics per eval set.

    Args:
        eval_sets: {name: (its config, its rows from read_eval_set)}.
        scorers: {name: scorer} for `reward` sets (the math verifier is used for `accuracy` sets).
    Returns:
        rows, and {"accuracy/<set>" | "ifeval/<set>" | "reward/<set>": value, with "/ci_low", "/ci_high"
        and "/n" beside accuracy and ifeval figures, and pass@k / maj@k of sampled answers} (win_rate sets
        have no metric here).
    """
    greedy = SamplingConfig(n=1, temperature=0.0, max_tokens=max_tokens, seed=0)
    scorers = scorers or {}
    rows, metrics = [], {}
    for name, (cfg, items) in eval_sets.items():
        gens = engine.generate([it["prompt"] for it in items], greedy, [0] * len(items))
        texts = [g[0].text for g in gens]
        if cfg.metric == "accuracy":
            results = _math_results(items, texts)
            metrics |= proportion(f"accuracy/{name}", sum(r.value > 0 for r in results), len(items))
        elif cfg.metric == "ifeval":
            checked = _ifeval_checks(items, texts)
            results = [_ifeval_result(c) for c in checked]
            metrics |= ifeval_metrics(name, checked, cfg.level)
        elif cfg.metric == "reward":
            results = scorers[name]([_scored(it, t) for it, t in zip(items, texts)])
            ok = [r.value for r in results if r.status == "ok"]
            metrics[f"reward/{name}"] = sum(ok) / len(ok) if ok else float("nan")
        else:
            results = [None] * len(items)
        if cfg.samples and cfg.metric in ("accuracy", "ifeval"):
            metrics |= _sampled(engine, cfg, items, max_tokens)
        for i, (it, text, res) in enumerate(zip(items, texts, results)):
            rows.append(
                {
                    "eval_set": name,
                    "index": i,
                    "prompt": it["prompt"],
                    "answer": it["answer"],
                    "completion": text,
                    "extracted": res.raw if res else None,
                    "score": res.value if res else None,
                    "status": res.status if res else None,
                }
            )
    return rows, metrics


def _scored(item: dict, text: str) -> dict:
    return {"prompt": item["prompt"], "completion": text, "answer": item["answer"], "system": None}


def _math_results(items: list[dict], texts: list[str]) -> list[ScoreResult]:
    return MathAnswerScorer(MathScorerConfig())([_scored(it, t) for it, t in zip(items, texts)])


def _ifeval_checks(items: list[dict], texts: list[str]) -> list:
    from tasks.scoring.ifeval import check_instructions

    return [check_instructions(t, it["instruction_id_list"], it["kwargs"], it["prompt"]) for it, t in zip(items, texts)]


def _ifeval_result(checked) -> ScoreResult:
    raw = json.dumps(
        {"checks": [[c.instruction_id, c.strict, c.loose] for c in checked.checks], "errors": checked.errors}
    )
    return ScoreResult(checked.loose_fraction, raw, "parse_error" if checked.errors else "ok")


def _sampled(engine: Engine, cfg: EvalSetConfig, items: list[dict], max_tokens: int) -> dict[str, float]:
    """pass@k (and maj@k for accuracy) from `cfg.samples` answers per prompt at `cfg.temperature`."""
    params = SamplingConfig(n=cfg.samples, temperature=cfg.temperature, max_tokens=max_tokens, seed=0)
    gens = engine.generate([it["prompt"] for it in items], params, list(range(len(items))))
    passed, answers = [], []
    for it, samples in zip(items, gens):
        texts = [g.text for g in samples]
        if cfg.metric == "accuracy":
            results = _math_results([it] * len(texts), texts)
            passed.append([r.value > 0 for r in results])
            answers.append([r.raw or None for r in results])
        else:
            strict = cfg.level.endswith("strict")
            checked = _ifeval_checks([it] * len(texts), texts)
            passed.append([c.prompt_strict if strict else c.prompt_loose for c in checked])
    return sampled_metrics(cfg.name, passed, answers if cfg.metric == "accuracy" else None)


def gate_metric_name(cfg: FlywheelConfig) -> str:
    """`<metric>/<eval set>` the promotion gate compares, e.g. accuracy/heldout."""
    e = next(x for x in cfg.evaluation.eval_sets if x.name == cfg.gate_eval_set)
    return f"{e.metric}/{e.name}"


@stage("evaluate-model")
def evaluate_task(
    cfg: FlywheelConfig, round_num: int, model_id: str, role: str, reward_model_id: str | None = None
) -> Step:
    """Evaluate `model_id` as `role` ("policy" or "candidate"); the StepResult: metrics per eval set, and
    the per-prompt `results` table. `reward_model_id`: the trained reward model, for `reward_model: trained`."""
    inputs = {"model": model_id, **eval_set_inputs(cfg)}
    if reward_model_id:
        inputs["reward_model"] = reward_model_id
    config = {
        "evaluation": cfg.evaluation.model_dump(mode="json"),
        "gate_set": cfg.gate_eval_set,
        "engine": cfg.generation.engine.backend,
    }
    return Step(
        f"evaluate-{role}",
        config=config,
        inputs=inputs,
        run=lambda ctx: evaluate(ctx, cfg, role),
        same_work_as="evaluate",
        metric_name=lambda n: f"eval/{n}/{role}",
    )


def eval_set_inputs(cfg: FlywheelConfig) -> dict[str, External]:
    """The eval-set files (local or s3://, snapshotted: tasks/curation/store_inputs.py), and the local reward
    models of `reward` sets given by path."""
    out = store_inputs.eval_set_inputs(cfg)
    for i, e in enumerate(cfg.evaluation.eval_sets):
        if e.metric == "reward" and e.reward_model != "trained" and Path(e.reward_model).expanduser().is_dir():
            what = f"evaluation.eval_sets[{i}] ({e.name}) reward_model"
            out[f"reward_model:{e.name}"] = External.model_dir(e.reward_model, "reward-model", what)
    return out


def evaluate(ctx: StageContext, cfg: FlywheelConfig, role: str) -> StageOutput:
    from tasks.scoring.reward_model import RewardModelScorer

    context = {}
    if "reward_model" in ctx.inputs:
        context = {"reward_model_dir": str(ctx.model("reward_model")), "reward_model_id": ctx.id("reward_model")}
    sets = store_inputs.eval_set_rows(cfg)
    scorers = {
        e.name: RewardModelScorer(RewardModelScorerConfig(model=e.reward_model), context)
        for e in cfg.evaluation.eval_sets
        if e.metric == "reward"
    }
    engine = get_engine(cfg.generation.engine, str(ctx.model("model")))
    rows, metrics = evaluate_model(engine, sets, cfg.evaluation.max_tokens, scorers)
    for name, value in metrics.items():
        if "/type/" not in name and not name.endswith(("/ci_low", "/ci_high", "/n")):  # those are in the report
            ci = (metrics.get(f"{name}/ci_low"), metrics.get(f"{name}/ci_high"))
            extra = f" [{ci[0]:.4f}, {ci[1]:.4f}]" if None not in ci else ""
            ctx.log.info("eval %s: %s %.4f%s", role, name, value, extra)
    gate = gate_metric_name(cfg)
    if gate in metrics:  # the short names plots and tables show, e.g. eval/accuracy/policy
        kind = gate.split("/")[0]
        short = "accuracy" if kind == "ifeval" else kind  # IFEval's headline is an accuracy too
        for suffix in ("", "/ci_low", "/ci_high"):
            if f"{gate}{suffix}" in metrics:
                metrics[f"{short}{suffix}"] = metrics[f"{gate}{suffix}"]
    results = Table(pa.Table.from_pylist(rows, schema=RESULT_SCHEMA), "eval-results")
    return StageOutput({"results": results}, metrics=metrics, rows_in=len(rows), rows_out=len(rows))


if __name__ == "__main__":
    from tasks.run_alone import run_alone
    from tasks.train_reward import reward_model_for

    run_alone(
        evaluate_task,
        lambda rnd: {
            "model_id": rnd.policy if rnd.options.role == "policy" else rnd.candidate,
            "role": rnd.options.role,
            "reward_model_id": reward_model_for(rnd.catalog, rnd.cfg, rnd.round + 1, "evaluate"),
        },
        {
            "--role": {
                "choices": ["policy", "candidate"],
                "default": "candidate",
                "help": "which model (default candidate)",
            }
        },
    )
