"""A round's report in the Prefect UI: a summary table, a markdown report, a metrics-over-rounds plot.

Artifact keys are stable per pipeline (`<pipeline>-round-summary`, `<pipeline>-round-report`), so the
UI's artifact page lists every round's report as the history of one key. The plot is a PNG stored
with the round's files (`runs/<pipeline>/round-NNNN/metrics.png`) and linked from the report; so is the
round's lineage graph (`lineage.png`, `lineage.svg`: flows/lineage_graph.py).
"""

from __future__ import annotations

import base64
import json
import tempfile
from pathlib import Path

from configs.schema import FlywheelConfig
from flows.lineage_graph import MISSING_DOT, store_round_graph
from flows.quality_report import curation_markdown, scoring_markdown
from flows.report import STAGE_LABELS, plot_rl_steps, plot_rounds, round_rows
from flows.tracking_mlflow import log_round
from flows.what_changed import what_changed_markdown
from storage.runtime import Runtime


def summary_rows(rnd: dict, steps: dict) -> list[dict]:
    """One row per stage (rows in and out, yield, wall time, reused), then accuracies and the decision.

    Every row has every column, with short values, so the UI shows the table whole.
    """
    out = []
    for name in [*STAGE_LABELS, "promote"]:
        s = steps.get(name)
        if s is None:
            continue
        rows_in, rows_out = s["rows_in"], s["rows_out"]
        out.append(
            {
                "stage": name,
                "rows in": rows_in,
                "rows out": rows_out,
                "yield": f"{rows_out / rows_in:.1%}" if rows_in and rows_out is not None else "",
                "seconds": round(s["duration_s"] or 0.0, 2),
                "reused": "yes" if s["reused"] else "no",
            }
        )
    m = rnd["metrics"]
    blank = {"rows in": None, "rows out": None, "seconds": None, "reused": ""}
    for role in ("policy", "candidate"):
        out.append(
            {
                "stage": f"accuracy of the {role}",
                **blank,
                "yield": f"{m.get(f'eval/accuracy/{role}', float('nan')):.1%}",
            }
        )
    out.append({"stage": "decision", **blank, "yield": "promoted" if rnd["promoted"] else "policy kept"})
    return out


def report_markdown(
    rnd: dict,
    steps: dict,
    uris: dict[str, str],
    plot_uri: str,
    lineage: list[dict],
    plot_png: bytes | None = None,
    data_quality: list[str] | None = None,
    rl_plot: tuple[str, bytes] | None = None,
    lineage_graph: tuple[str, bytes] | None = None,
) -> str:
    """The round's markdown report; `rl_plot` is (store URL, PNG) of its GRPO curves when it ran train-rl,
    `lineage_graph` (SVG URL, PNG) of its lineage graph, None when it was not drawn (no `dot`)."""
    m = rnd["metrics"]
    lines = [
        f"# {rnd['pipeline']}, round {rnd['round']}: {'promoted' if rnd['promoted'] else 'policy kept'}",
        "",
        f"**{rnd['reason']}**",
        "",
        f"- held-out accuracy: policy {m.get('eval/accuracy/policy', float('nan')):.1%}, "
        f"candidate {m.get('eval/accuracy/candidate', float('nan')):.1%}",
        f"- policy in: `{rnd['policy_in']}`",
        f"- candidate: `{rnd['candidate']}`",
        f"- policy out: `{rnd['policy_out']}`",
        f"- manifest: `{rnd['manifest_uri']}`",
        f"- metrics over all rounds (PNG): `{plot_uri}`",
        "",
        *(
            [f"![metrics over rounds](data:image/png;base64,{base64.b64encode(plot_png).decode()})", ""]
            if plot_png
            else []
        ),
        *(data_quality or []),
        *([""] if data_quality else []),
        *(
            [
                "## RL (train-rl)",
                "",
                f"Per-step GRPO metrics (PNG): `{rl_plot[0]}`",
                "",
                f"![RL steps](data:image/png;base64,{base64.b64encode(rl_plot[1]).decode()})",
                "",
            ]
            if rl_plot
            else []
        ),
        "## Lineage graph",
        "",
        *(
            [
                f"SVG: `{lineage_graph[0]}`",
                "",
                f"![lineage graph](data:image/png;base64,{base64.b64encode(lineage_graph[1]).decode()})",
            ]
            if lineage_graph
            else [f"Skipped: {MISSING_DOT}."]
        ),
        "",
        "## Artifacts",
        "",
        "| stage | output | id | uri |",
        "|---|---|---|---|",
    ]
    for name, s in steps.items():
        for out_name, artifact_id in json.loads(s["outputs"] or "{}").items():
            lines.append(f"| {name} | {out_name} | `{artifact_id[:16]}` | `{uris.get(artifact_id, '')}` |")
    lines += [
        "",
        "## Lineage of the candidate",
        "",
        "| depth | input | kind | into | step | round |",
        "|---|---|---|---|---|---|",
    ]
    for e in lineage:
        lines.append(
            f"| {e['depth']} | `{e['src'][:16]}` | {e['src_kind'] or ''} | `{e['dst'][:16]}` | {e['step']} | {e['round']} |"
        )
    return "\n".join(lines)


def publish_round_report(rt: Runtime, cfg: FlywheelConfig, r: int) -> str:
    """Create the round's Prefect artifacts; returns the store URL of the metrics plot."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    rounds = rt.catalog.rounds(cfg.pipeline)
    rnd = next(x for x in rounds if x["round"] == r)
    steps = rt.catalog.steps_of(cfg.pipeline, r)
    with tempfile.TemporaryDirectory() as tmp:
        png = plot_rounds(round_rows(rounds), Path(tmp) / "metrics.png")
        key = f"runs/{cfg.pipeline}/round-{r:04d}/metrics.png"
        rt.store.put_file(key, png)
        png_bytes = png.read_bytes()
        rl_plot = None
        if (rl_png := plot_rl_steps(rnd["metrics"], Path(tmp) / "rl.png")) is not None:
            rl_key = f"runs/{cfg.pipeline}/round-{r:04d}/rl.png"
            rt.store.put_file(rl_key, rl_png)
            rl_plot = (rt.store.url(rl_key), rl_png.read_bytes())
        lineage_graph = store_round_graph(rt, cfg.pipeline, r, Path(tmp))
    plot_uri = rt.store.url(key)
    uris = {a["id"]: a["uri"] for a in rt.catalog.artifacts_of_round(cfg.pipeline, r)}
    lineage = rt.catalog.lineage(rnd["candidate"]) if rnd["candidate"] else []
    lineage = [e for e in lineage if e["round"] == r or e["depth"] == 1]
    quality = curation_markdown(*_data_quality_reports(rt, steps, uris)) + scoring_markdown(rnd["metrics"])
    try:
        quality += ["", *what_changed_markdown(rt, cfg, r)]
    except Exception as e:  # the round is recorded by now: a section that cannot be built must not fail it
        _warn(r, "the report's 'what changed' section failed", e)
        quality += ["", f"'What changed' could not be built: {type(e).__name__}: {e}"]
    create_table_artifact(
        key=f"{cfg.pipeline}-round-summary",
        table=summary_rows(rnd, steps),
        description=f"{cfg.pipeline} round {r}: rows, yields, timings and the decision",
    )
    report = report_markdown(rnd, steps, uris, plot_uri, lineage, png_bytes, quality, rl_plot, lineage_graph)
    create_markdown_artifact(
        key=f"{cfg.pipeline}-round-report",
        markdown=report,
        description=f"{cfg.pipeline} round {r}: artifacts and lineage",
    )
    plots = {
        "metrics.png": png_bytes,
        "rl.png": rl_plot and rl_plot[1],
        "lineage.png": lineage_graph and lineage_graph[1],
    }
    try:
        log_round(rt, cfg, rnd, report, plots)
    except Exception as e:  # as above: the round is recorded; a tracking server that is down must not fail it
        _warn(r, "could not log the round to MLflow", e)
    return plot_uri


def _warn(r: int, what: str, e: Exception) -> None:
    from tasks.stage import get_logger

    get_logger().warning("round %d: %s: %s: %s", r, what, type(e).__name__, e)


def _data_quality_reports(rt: Runtime, steps: dict, uris: dict[str, str]) -> tuple[dict | None, list[dict], str | None]:
    """The round's curation report, its decontamination reports (prompts, then training data) and the
    quarantine's URI, read from the store (rounds recorded before these reports existed give None/[])."""
    outputs = {name: json.loads(s["outputs"] or "{}") for name, s in steps.items()}
    curate, select = outputs.get("curate", {}), outputs.get("select", {})
    curation = rt.artifacts.get_json(curate["report"]) if "report" in curate else None
    decontam = [rt.artifacts.get_json(o["decontamination"]) for o in (curate, select) if "decontamination" in o]
    return curation, decontam, uris.get(curate.get("quarantine", ""))
