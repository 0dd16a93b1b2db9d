"""The data-quality part of a round's report: mixture drawn, rows removed by each filter, quarantine,
decontamination of prompts and of training data, and how reliable the scorers were. Markdown for the
Prefect UI, from the stored JSON reports and the round's metrics.
"""

from __future__ import annotations

# Short column titles for the removal reasons of tasks.curation.prompts.REMOVAL_REASONS (the rest are shown as-is).
_TITLES = {
    "duplicate_in_round": "dup",
    "seen_in_earlier_round": "earlier round",
    "near_duplicate": "near dup",
    "too_few_tokens": "few tokens",
    "too_many_tokens": "many tokens",
    "not_drawn": "not drawn",
}


def curation_markdown(curation: dict | None, decontam: list[dict], quarantine_uri: str | None) -> list[str]:
    """Markdown lines: a per-source table, the quarantine by reason, and the decontamination tables."""
    lines: list[str] = []
    if curation:
        lines += _sources_table(curation)
        q = curation.get("quarantine") or {}
        lines += ["", "### Quarantine", ""]
        if q:
            total = sum(q.values())
            lines.append(
                f"{total} malformed rows set aside ({', '.join(f'{r}: {n}' for r, n in q.items())}); "
                f"each with its reason in `{quarantine_uri or 'the quarantine artifact'}`."
            )
        else:
            lines.append("No malformed rows.")
    for rep in decontam:
        lines += _decontam_section(rep)
    return lines


def _sources_table(curation: dict) -> list[str]:
    removed = [r for r, n in curation["removed"].items() if n]  # only the filters that removed something
    head = ["source", "rows in", *(_TITLES.get(r, r) for r in removed), "drawn", "target share", "drawn share"]
    lines = ["## Curation", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    mixture = curation.get("mixture", {})
    for name, c in curation["per_source"].items():
        m = mixture.get(name, {})
        cells = [
            name,
            c["rows_in"],
            *(c[r] for r in removed),
            c["rows_out"],
            _pct(m.get("target_share")),
            _pct(m.get("drawn_share")),
        ]
        lines.append("| " + " | ".join(str(x) for x in cells) + " |")
    total = ["**all**", curation["rows_in"], *(curation["removed"][r] for r in removed), curation["rows_out"], "", ""]
    lines.append("| " + " | ".join(str(x) for x in total) + " |")
    return lines


def _decontam_section(rep: dict) -> list[str]:
    what = "prompts" if rep.get("stage") == "prompts" else "SFT rows and DPO pairs"
    lines = [
        "",
        f"### Decontamination of {what}",
        "",
        f"{rep['removed']} of {rep['checked']} removed ({rep['ngram']}-gram overlap >= {rep['threshold']:.0%} "
        "with an eval prompt).",
    ]
    rows = [(es, src, n) for es, by_source in rep["by_eval_set"].items() for src, n in by_source.items()]
    if rows:
        lines += ["", "| eval set | source | removed |", "|---|---|---|"]
        lines += [f"| {es} | {src} | {n} |" for es, src, n in rows]
    if rep.get("examples"):
        lines += ["", "| eval set | eval row | overlap | removed text |", "|---|---|---|---|"]
        for ex in rep["examples"]:
            lines.append(f"| {ex['eval_set']} | {ex['eval_index']} | {ex['overlap']:.0%} | {table_cell(ex['text'])} |")
    return lines


def _pct(x: float | None) -> str:
    return "" if x is None else f"{x:.1%}"


def table_cell(text: str, limit: int = 120) -> str:
    """Text safe inside a markdown table cell: one line, pipes escaped, shortened."""
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def scoring_markdown(metrics: dict[str, float]) -> list[str]:
    """Per scorer: mean value, shares of rows it could not score, its own reliability figures (e.g. a
    judge's position-swap agreement); then how often two scorers rank a prompt's completions alike."""
    per: dict[str, dict[str, float]] = {}
    agree: dict[str, dict[str, float]] = {}
    for name, value in metrics.items():
        parts = name.split("/")
        if len(parts) < 3 or parts[0] != "score":
            continue
        if parts[1] == "agreement":
            agree.setdefault(parts[2], {})["pairs" if parts[-1] == "pairs" else "value"] = value
        else:
            per.setdefault(parts[1], {})["/".join(parts[2:])] = value
    if not per:
        return []
    lines = ["", "## Scoring", "", "| scorer | figure | value |", "|---|---|---|"]
    for scorer, figures in per.items():
        for fig, value in sorted(figures.items()):
            lines.append(f"| {scorer} | {fig} | {_num(value)} |")
    if agree:
        lines += [
            "",
            "Agreement: of the pairs of a prompt's completions the first scorer tells apart, the share "
            "the second orders the same way (a tie counts half).",
            "",
            "| scorers | agreement | pairs |",
            "|---|---|---|",
        ]
        for pair, v in agree.items():
            lines.append(f"| {pair.replace('~', ' vs ')} | {_num(v.get('value'))} | {int(v.get('pairs', 0))} |")
    return lines


def _num(x: float | None) -> str:
    if x is None or x != x:
        return ""
    return f"{x:.3f}" if abs(x) < 1000 else f"{x:,.0f}"
