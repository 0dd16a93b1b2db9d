"""The "what changed" part of a round's report: the candidate against the policy on every eval set (each
figure's change with its 95 % interval, and the gate's checks), the eval prompts whose verdict flipped
between the two models with both answers, and the round's data mixture and yields against the previous
completed round of the pipeline.

Pure functions of plain data make the markdown; `what_changed_markdown` gathers that data from the
catalog and the store. flows/publish.py adds its lines to the round's Prefect report.
"""

from __future__ import annotations

import json
from typing import Any

from configs.schema import FlywheelConfig
from flows.quality_report import table_cell
from flows.report import STAGE_LABELS
from storage.runtime import Runtime
from tasks.promote import INTERVAL_METRICS, PERCENT_METRICS
from tasks.scoring.eval_metrics import IFEVAL_LEVELS
from tasks.scoring.stats import difference_lower_bound

# Eval sets whose metric gives each prompt a verdict; reward and win_rate sets score answers on a scale.
VERDICT_METRICS = ("accuracy", "ifeval")
# The steps that make the round's data; evaluation counts every eval prompt in and out, a yield of 100 %.
_EVAL_STEPS = ("evaluate-policy", "evaluate-candidate")
_PERCENT = (*PERCENT_METRICS, "pass@", "maj@")  # shares, shown as percentages and their changes in points
_DATA_STEPS = [s for s in STAGE_LABELS if not s.startswith(("evaluate", "compare"))]


def metric_deltas(metrics: dict[str, float], eval_sets: list[dict]) -> list[dict]:
    """Each eval set's figures for policy and candidate, their change and its 95 % interval.

    Args:
        metrics: the round's metrics (`eval/<figure>/<role>`, `eval/<figure>/ci_low/<role>`, ...).
        eval_sets: [{"name", "metric", "level"}] as in the config's evaluation.eval_sets.
    Returns:
        [{"eval_set", "figure", "policy", "candidate", "delta", "ci"}], `ci` the (low, high) interval of
        candidate - policy from the two Wilson intervals (Newcombe), None where no interval was recorded.
        Figures missing for either model are left out.
    """
    out = []
    for e in eval_sets:
        name, metric = e["name"], e["metric"]
        if metric == "ifeval":  # IFEval's four figures; the headline is one of them
            figures = [f"ifeval/{name}/{level}" for level in IFEVAL_LEVELS]
        else:
            figures = [f"{metric}/{name}"]
        figures += sorted(
            k.removeprefix("eval/").removesuffix("/candidate")
            for k in metrics
            if k.startswith(("eval/pass@", "eval/maj@")) and k.endswith(f"/{name}/candidate")
        )
        for fig in figures:
            p, c = metrics.get(f"eval/{fig}/policy"), metrics.get(f"eval/{fig}/candidate")
            if p is None or c is None:
                continue
            out.append(
                {"eval_set": name, "figure": fig, "policy": p, "candidate": c, "delta": c - p, "ci": _ci(metrics, fig)}
            )
    return out


def _ci(metrics: dict[str, float], fig: str) -> tuple[float, float] | None:
    """Newcombe's interval of candidate - policy; its upper bound is minus the lower bound of policy - candidate."""
    try:
        p, c = metrics[f"eval/{fig}/policy"], metrics[f"eval/{fig}/candidate"]
        ci_p = (metrics[f"eval/{fig}/ci_low/policy"], metrics[f"eval/{fig}/ci_high/policy"])
        ci_c = (metrics[f"eval/{fig}/ci_low/candidate"], metrics[f"eval/{fig}/ci_high/candidate"])
    except KeyError:
        return None
    return difference_lower_bound(c, ci_c, p, ci_p), -difference_lower_bound(p, ci_p, c, ci_c)


def comparison_markdown(deltas: list[dict], promoted: bool, reason: str) -> list[str]:
    """Markdown lines: the table of metric_deltas, then the gate's decision with each of its checks."""
    lines = ["### The candidate against the policy", ""]
    if deltas:
        lines += [
            "| eval set | figure | policy | candidate | change | 95 % interval of the change |",
            "|---|---|---|---|---|---|",
        ]
        for d in deltas:
            fig, ci = d["figure"], d["ci"]
            interval = "" if ci is None else f"[{_change(fig, ci[0])}, {_change(fig, ci[1])}]"
            lines.append(
                f"| {d['eval_set']} | {fig} | {_value(fig, d['policy'])} | {_value(fig, d['candidate'])} | "
                f"{_change(fig, d['delta'])} | {interval} |"
            )
        if any(d["figure"].startswith(INTERVAL_METRICS) for d in deltas):
            lines += [
                "",
                "Changes of shares are in percentage points; the interval treats the two models as independent "
                "samples, so on the same prompts it is wider than the true one.",
            ]
    else:
        lines.append("No eval figure was recorded for both models.")
    _, _, checks = reason.partition(": ")
    lines += ["", f"Gate: **{'promoted' if promoted else 'policy kept'}**" + ("" if checks else f" ({reason})")]
    lines += [f"- {check}" for check in checks.split("; ") if check]
    return lines


def _value(fig: str, x: float) -> str:
    return f"{100 * x:.1f} %" if fig.startswith(_PERCENT) else f"{x:.4f}"


def _change(fig: str, x: float) -> str:
    return f"{100 * x:+.1f} pts" if fig.startswith(_PERCENT) else f"{x:+.4f}"


def is_right(row: dict, metric: str, level: str = "prompt_loose") -> bool:
    """Whether an eval-results row (tasks/evaluate.py RESULT_SCHEMA) is a right answer.

    accuracy: the verifier's score is positive. ifeval: every instruction is met at the strictness of
    the set's headline `level` and none errored (IFEval's prompt-level verdict; an instruction-level
    headline has no verdict per prompt, so its prompt-level counterpart is used).

    >>> is_right({"score": 1.0, "extracted": "4"}, "accuracy")
    True
    >>> row = {"score": 0.5, "extracted": '{"checks": [["a", true, true], ["b", false, true]], "errors": []}'}
    >>> is_right(row, "ifeval", "prompt_loose"), is_right(row, "ifeval", "prompt_strict")
    (True, False)
    """
    if metric == "accuracy":
        return (row.get("score") or 0.0) > 0
    if not row.get("extracted"):
        return False
    checked = json.loads(row["extracted"])
    col = 1 if level.endswith("strict") else 2
    return not checked["errors"] and all(c[col] for c in checked["checks"])


def prompt_flips(policy: list[dict], candidate: list[dict], metric: str, level: str = "prompt_loose") -> dict:
    """The prompts of one eval set whose verdict differs between the two models' answers.

    Args:
        policy, candidate: the set's eval-results rows of each model; a prompt is matched by its index
            and text, so rows of a changed eval file are not paired.
    Returns:
        {"right_to_wrong": [...], "wrong_to_right": [...], "both_right": n, "both_wrong": n}, each flip
        {"index", "prompt", "answer", "policy", "candidate"} (the two completions), in index order.
    """
    theirs = {(r["index"], r["prompt"]): r for r in candidate}
    out: dict[str, Any] = {"right_to_wrong": [], "wrong_to_right": [], "both_right": 0, "both_wrong": 0}
    for p in sorted(policy, key=lambda r: r["index"]):
        c = theirs.get((p["index"], p["prompt"]))
        if c is None:
            continue
        was, now = is_right(p, metric, level), is_right(c, metric, level)
        if was == now:
            out["both_right" if now else "both_wrong"] += 1
            continue
        flip = {k: p[k] for k in ("index", "prompt", "answer")} | {
            "policy": p["completion"],
            "candidate": c["completion"],
        }
        out["right_to_wrong" if was else "wrong_to_right"].append(flip)
    return out


def flips_markdown(eval_set: str, metric: str, flips: dict | None, limit: int = 10) -> list[str]:
    """Markdown lines for one eval set: the counts, then up to `limit` flips of each direction."""
    if metric not in VERDICT_METRICS:
        return [f"- {eval_set} ({metric}): scored on a scale, no per-prompt right or wrong."]
    if flips is None:
        return [f"- {eval_set} ({metric}): no per-prompt results recorded for both models."]
    down, up = flips["right_to_wrong"], flips["wrong_to_right"]
    n = len(down) + len(up) + flips["both_right"] + flips["both_wrong"]
    lines = [
        f"- {eval_set} ({metric}): {len(down)} right → wrong, {len(up)} wrong → right, "
        f"{flips['both_right']} right in both, {flips['both_wrong']} wrong in both (of {n} prompts)."
    ]
    for title, rows in (("right → wrong", down), ("wrong → right", up)):
        if not rows:
            continue
        shown = f"first {limit} of {len(rows)}" if len(rows) > limit else f"{len(rows)}"
        lines += [
            "",
            f"{eval_set}, {title} ({shown}):",
            "",
            "| # | prompt | reference | policy's answer | candidate's answer |",
            "|---|---|---|---|---|",
        ]
        for f in rows[:limit]:
            cells = (table_cell(str(f[k] or "")) for k in ("prompt", "answer", "policy", "candidate"))
            lines.append(f"| {f['index']} | " + " | ".join(cells) + " |")
    return lines


def data_figures(metrics: dict[str, float], steps: dict[str, dict]) -> dict[str, float | None]:
    """A round's data figures by row title: prompts per source, completions, SFT rows, pairs, replayed
    rows, then `yield of <step>` (rows_out / rows_in) for each step before evaluation that counted both."""
    out: dict[str, float | None] = {}
    for k in sorted(metrics):
        if k.startswith("curate/drawn/"):
            out[f"prompts from {k.removeprefix('curate/drawn/')}"] = metrics[k]
    for key, title in [
        ("curate/prompts", "prompts"),
        ("generate/completions", "completions"),
        ("select/sft_rows", "SFT rows"),
        ("select/pairs", "pairs"),
        ("select/replayed_sft_rows", "replayed SFT rows"),
        ("select/replayed_pairs", "replayed pairs"),
    ]:
        out[title] = metrics.get(key)
    for name in _DATA_STEPS:
        s = steps.get(name)
        if s and s.get("rows_in") and s.get("rows_out") is not None:
            out[f"yield of {name}"] = s["rows_out"] / s["rows_in"]
    return out


def data_markdown(round_num: int, now: dict[str, float | None], prev_round: int | None, prev: dict | None) -> list[str]:
    """Markdown lines: data_figures of this round beside the previous round's, with the change."""
    lines = ["### Data against the previous round", ""]
    if prev_round is None or prev is None:
        lines += [f"Round {round_num} has no earlier completed round to compare with.", ""]
        lines += [f"| figure | round {round_num} |", "|---|---|"]
        return lines + [f"| {t} | {_data(t, v)} |" for t, v in now.items()]
    titles = [*now, *(t for t in prev if t not in now)]  # a source drawn then but not now still shows
    # Yields last, as data_figures orders them.
    titles = [t for t in titles if not t.startswith("yield of")] + [t for t in titles if t.startswith("yield of")]
    lines += [f"| figure | round {prev_round} | round {round_num} | change |", "|---|---|---|---|"]
    for t in titles:
        a, b = prev.get(t), now.get(t)
        change = "" if a is None or b is None else _data_change(t, b - a)
        lines.append(f"| {t} | {_data(t, a)} | {_data(t, b)} | {change} |")
    return lines


def _data(title: str, x: float | None) -> str:
    if x is None:
        return ""
    return f"{100 * x:.1f} %" if title.startswith("yield of") else f"{x:.0f}"


def _data_change(title: str, x: float) -> str:
    return f"{100 * x:+.1f} pts" if title.startswith("yield of") else f"{x:+.0f}"


def what_changed_markdown(rt: Runtime, cfg: FlywheelConfig, round_num: int, max_flips: int = 10) -> list[str]:
    """The "What changed" section of round `round_num`'s report, as markdown lines.

    Reads the round's metrics, decision and steps from the catalog, and the evaluate steps' per-prompt
    results tables from the store; `max_flips` caps each direction's table of flipped prompts.
    """
    rounds = {r["round"]: r for r in rt.catalog.rounds(cfg.pipeline)}
    rnd = rounds[round_num]
    eval_sets = [{"name": e.name, "metric": e.metric, "level": e.level} for e in cfg.evaluation.eval_sets]
    lines = ["## What changed", ""]
    lines += comparison_markdown(metric_deltas(rnd["metrics"], eval_sets), bool(rnd["promoted"]), rnd["reason"] or "")
    lines += ["", "### Prompts that flipped", ""]
    results = _eval_results(rt, rt.catalog.steps_of(cfg.pipeline, round_num))
    for e in eval_sets:
        flips = None
        if results is not None and e["metric"] in VERDICT_METRICS:
            mine = [[row for row in rows if row["eval_set"] == e["name"]] for rows in results]
            flips = prompt_flips(*mine, e["metric"], e["level"])
        lines += flips_markdown(e["name"], e["metric"], flips, max_flips)
    prev = max((n for n, r in rounds.items() if n < round_num and r["status"] == "completed"), default=None)
    prev_data = None if prev is None else data_figures(rounds[prev]["metrics"], rounds[prev]["steps"])
    return [*lines, "", *data_markdown(round_num, data_figures(rnd["metrics"], rnd["steps"]), prev, prev_data)]


def _eval_results(rt: Runtime, steps: dict[str, dict]) -> tuple[list[dict], list[dict]] | None:
    """The policy's and the candidate's eval-results rows (None when either step recorded none)."""
    ids = [json.loads(steps[s]["outputs"] or "{}").get("results") if s in steps else None for s in _EVAL_STEPS]
    if None in ids:
        return None
    policy, candidate = (rt.artifacts.get_table(i).to_pylist() for i in ids)
    return policy, candidate
