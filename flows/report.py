"""Round tables and plots for people: the per-round table of `flywheel rounds`/`demo`, a metrics plot."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def round_rows(rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The JSON shape of `flywheel rounds --json`: one object per round."""
    out = []
    for r in rounds:
        out.append(
            {
                "pipeline": r["pipeline"],
                "round": r["round"],
                "status": r["status"],
                "attempts": r.get("attempts", 0),
                "promoted": bool(r["promoted"]),
                "policy": r["policy_out"] if r["status"] == "completed" else r["policy_in"],
                "policy_in": r["policy_in"],
                "candidate": r["candidate"],
                "reason": r["reason"],
                "metrics": r["metrics"],
                "timings_s": {name: round(s["duration_s"] or 0.0, 2) for name, s in r["steps"].items()},
                "reused_steps": sorted(name for name, s in r["steps"].items() if s["reused"]),
                "started_at": str(r["started_at"]),
                "finished_at": str(r["finished_at"]) if r["finished_at"] else None,
                "manifest_uri": r["manifest_uri"],
            }
        )
    return out


def attempt_rows(attempts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The JSON shape of `flywheel rounds --attempts --json`: one object per attempt of a round."""
    keys = ("pipeline", "round", "attempt", "status", "error", "pid", "host", "flow_run_id", "steps")
    return [
        {
            **{k: a[k] for k in keys},
            "started_at": str(a["started_at"]),
            "finished_at": str(a["finished_at"]) if a["finished_at"] else None,
        }
        for a in attempts
    ]


def print_attempts(rows: list[dict[str, Any]], console: Console | None = None) -> None:
    """Every attempt of every round: when, by whom, how it ended, which steps it ran (r: reused)."""
    console = console or Console(width=max(Console().width, 130))
    t = Table(title="rounds: every attempt")
    for col in ["pipeline", "round", "attempt", "status", "started", "finished", "owner", "steps", "error"]:
        t.add_column(col, overflow="fold", no_wrap=col in ("status", "started", "finished", "owner"))
    for a in rows:
        steps = " ".join(
            STAGE_LABELS.get(name, name) + (" r" if s["reused"] else "") + ("" if s["status"] == "completed" else " x")
            for name, s in a["steps"].items()
        )
        t.add_row(
            a["pipeline"],
            str(a["round"]),
            str(a["attempt"]),
            a["status"],
            a["started_at"][:19],
            (a["finished_at"] or "")[:19],
            f"pid {a['pid']} on {a['host']}",
            steps,
            (a["error"] or "")[:300],
        )
    console.print(t)


def _pct(m: dict, key: str) -> str:
    return f"{100 * m[key]:.1f}" if key in m else "-"


def _pct_ci(m: dict, role: str) -> str:
    """Held-out accuracy of `role` with its 95 % interval where one was recorded: 88.7 [83.0-92.6]."""
    lo, hi = m.get(f"eval/accuracy/ci_low/{role}"), m.get(f"eval/accuracy/ci_high/{role}")
    value = _pct(m, f"eval/accuracy/{role}")
    return value if lo is None or hi is None else f"{value} [{100 * lo:.1f}-{100 * hi:.1f}]"


STAGE_LABELS = {
    "curate": "curate",
    "generate": "gen",
    "score": "score",
    "select": "select",
    "train-reward": "rm",
    "train-sft": "sft",
    "train-dpo": "dpo",
    "train-rl": "rl",
    "average": "avg",
    "evaluate-policy": "eval pol",
    "evaluate-candidate": "eval cand",
    "compare": "judge",
}


def print_rounds(rows: list[dict[str, Any]], console: Console | None = None) -> None:
    """Two tables: what each round produced and decided, then where its time went."""
    console = console or Console(width=max(Console().width, 130))
    t = Table(title="rounds: yields, held-out accuracy, promotion")
    for col in [
        "pipeline",
        "round",
        "status",
        "tries",
        "prompts",
        "samples",
        "pass@n %",
        "SFT rows",
        "pairs",
        "acc policy %",
        "acc cand. %",
        "promoted",
    ]:
        t.add_column(col, justify="left" if col in ("pipeline", "status") else "right")
    for r in rows:
        m = r["metrics"]
        t.add_row(
            r["pipeline"],
            str(r["round"]),
            r["status"],
            str(r["attempts"]),
            str(int(m.get("curate/prompts", 0))),
            str(int(m.get("generate/completions", 0))),
            _pct(m, "score/pass_at_n"),
            str(int(m.get("select/sft_rows", 0))),
            str(int(m.get("select/pairs", 0))),
            _pct_ci(m, "policy"),
            _pct_ci(m, "candidate"),
            "yes" if r["promoted"] else "no",
        )
    console.print(t)
    t = Table(title="rounds: wall time per stage (s; r = reused from an identical earlier step)")
    for col in ["pipeline", "round", *STAGE_LABELS.values(), "total"]:
        t.add_column(col, justify="left" if col == "pipeline" else "right")
    for r in rows:
        cells = [f"{r['timings_s'].get(s, 0):.1f}" + (" r" if s in r["reused_steps"] else "") for s in STAGE_LABELS]
        t.add_row(r["pipeline"], str(r["round"]), *cells, f"{sum(r['timings_s'].values()):.1f}")
    console.print(t)


def plot_rounds(rows: list[dict[str, Any]], out: Path) -> Path:
    """Accuracy of policy and candidate, and the data yields, over rounds (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["status"] == "completed"]
    xs = [r["round"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    # The policy line starts at the policy round 1 began from, then follows what each gate kept.
    pol_x = [xs[0] - 1] + xs if rows else []
    pol_y = [100 * rows[0]["metrics"].get("eval/accuracy/policy", float("nan"))] if rows else []
    for r in rows:
        kept = "eval/accuracy/candidate" if r["promoted"] else "eval/accuracy/policy"
        pol_y.append(100 * r["metrics"].get(kept, float("nan")))
    ax1.plot(pol_x, pol_y, marker="o", label="policy (after the gate)")
    ax1.plot(
        xs,
        [100 * r["metrics"].get("eval/accuracy/candidate", float("nan")) for r in rows],
        marker="x",
        linestyle="--",
        label="candidate",
    )
    for r in rows:
        ax1.annotate(
            "promoted" if r["promoted"] else "kept",
            (r["round"], 100 * r["metrics"].get("eval/accuracy/candidate", 0)),
            textcoords="offset points",
            xytext=(0, -14),
            ha="center",
            fontsize=8,
        )
    ax1.set(title="held-out accuracy", xlabel="round", ylabel="%", ylim=(0, 105))
    ax1.legend()
    for key, label in [
        ("score/pass_at_n", "pass@n"),
        ("select/sft_yield", "SFT yield"),
        ("select/pair_yield", "pair yield"),
    ]:
        ax2.plot(xs, [100 * r["metrics"].get(key, float("nan")) for r in rows], marker="o", label=label)
    ax2.set(title="data yield per prompt", xlabel="round", ylabel="%", ylim=(0, 105))
    ax2.legend()
    ax1.set_xticks(pol_x)
    ax2.set_xticks(xs)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


_RL_STEP = re.compile(r"^train/rl/(\w+)/(\d+)$")  # trainers.grpo.step_metrics' names


def rl_step_series(metrics: dict[str, float]) -> dict[str, list[tuple[int, float]]]:
    """The per-step RL metrics of a round, by name, in step order.

    >>> rl_step_series({"train/rl/reward_mean/0002": 0.5, "train/rl/reward_mean/0001": 0.25, "eval/x": 1.0})
    {'reward_mean': [(1, 0.25), (2, 0.5)]}
    """
    out: dict[str, list[tuple[int, float]]] = {}
    for key, value in metrics.items():
        if m := _RL_STEP.match(key):
            out.setdefault(m.group(1), []).append((int(m.group(2)), value))
    return {k: sorted(v) for k, v in out.items()}


def plot_rl_steps(metrics: dict[str, float], out: Path) -> Path | None:
    """The round's GRPO curves (PNG): reward mean +- std, KL, completion length, share of zero-std groups.

    None when the round ran no RL step.
    """
    series = rl_step_series(metrics)
    if not series.get("reward_mean"):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.5))
    steps, mean = zip(*series["reward_mean"])
    std = dict(series.get("reward_std", []))
    axes[0].plot(steps, mean, marker=".", label="mean")
    lo = [m - std.get(s, 0.0) for s, m in zip(steps, mean)]
    hi = [m + std.get(s, 0.0) for s, m in zip(steps, mean)]
    axes[0].fill_between(steps, lo, hi, alpha=0.2, label="+- std")
    axes[0].set(title="reward", xlabel="step")
    axes[0].legend()
    for ax, (name, title) in zip(
        axes[1:],
        [
            ("kl", "KL to the reference"),
            ("completion_length", "completion length (tokens)"),
            ("zero_std_groups", "groups with zero reward std"),
        ],
    ):
        points = series.get(name, [])
        if points:
            ax.plot(*zip(*points), marker=".")
        else:  # kl: only logged with beta > 0
            ax.text(0.5, 0.5, "not logged (beta 0)", ha="center", va="center", transform=ax.transAxes)
        ax.set(title=title, xlabel="step")
        if name == "zero_std_groups":
            ax.set_ylim(-0.05, 1.05)  # a share
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def print_lineage(artifact: dict | None, edges: list[dict], rows: list[dict], console: Console | None = None) -> None:
    """An artifact's ancestors (one line each, nearest first), or a row's chain of parent rows."""
    console = console or Console(width=max(Console().width, 160))
    if artifact:
        console.print(
            f"[bold]{artifact['kind']}[/bold] {artifact['id']}\n  {artifact['uri']}\n"
            f"  made by step {artifact['step']!r} of round {artifact['round']} ({artifact['pipeline']})"
        )
        t = Table(title="ancestors (depth 1 = direct input)")
        for col in ["depth", "kind", "artifact", "into", "via step", "round", "rows", "uri"]:
            t.add_column(col, overflow="fold")
        seen: set[tuple[str, str]] = set()
        for e in edges:
            if (e["src"], e["dst"]) in seen:
                continue
            seen.add((e["src"], e["dst"]))
            t.add_row(
                str(e["depth"]),
                e["src_kind"] or "?",
                e["src"][:16],
                e["dst"][:16],
                e["step"],
                str(e["round"]),
                "" if e["src_rows"] is None else str(e["src_rows"]),
                e["src_uri"] or "",
            )
        console.print(t)
    if rows:
        t = Table(title="row lineage (row <- parent row or source file)")
        for col in ["depth", "row", "parent", "in artifact", "kind", "round", "step"]:
            t.add_column(col)
        for r in rows:
            t.add_row(
                str(r["depth"]),
                r["row_id"],
                r["parent_id"][:20],
                str(r["artifact_id"])[:16],
                r["kind"] or "?",
                str(r["round"]),
                r["step"] or "",
            )
        console.print(t)


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str)
