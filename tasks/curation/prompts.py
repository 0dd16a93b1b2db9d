"""Curation's pure core: quarantine, normalise, filter, dedup, skip earlier rounds, decontaminate, draw.

A function of the rows read from each source (tasks/curation/sources.py) and of the other inputs
tasks/curation/inputs.py loads; the stage around it is tasks/curate.py. Every row is counted under
exactly one outcome, so `rows_in == rows_out + sum(removed)` always holds (checked on every run, overall
and per source).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow as pa

from configs.schema import CurationConfig, SourceConfig
from storage.ids import normalize_text, normalized_text_hash, prompt_id_of, stable_json
from tasks.curation.decontam import DecontamIndex
from tasks.curation.filters import ContextCheck, TokenCounter, keyword_pattern
from tasks.curation.mixture import allocate_draw, draw_rows, mixture_report
from tasks.curation.perf import gc_paused
from tasks.curation.sources import QUARANTINE_REASONS, SourceRows

# In the order the filters run; each removed row is counted under the first reason that applies.
REMOVAL_REASONS = (
    "quarantined",
    "too_short",
    "too_long",
    "keyword",
    "duplicate_in_round",
    "seen_in_earlier_round",
    "contaminated",
    "too_few_tokens",
    "too_many_tokens",
    "too_long_for_context",
    "language",
    "near_duplicate",
    "not_drawn",
)
MAX_EXAMPLES = 5  # per eval set in the decontamination report, per reason in the quarantine summary

PROMPT_SCHEMA = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("text_hash", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("system", pa.string()),  # system prompt of a `messages` source, else null
        pa.field("answer", pa.string()),
        pa.field("source", pa.string(), nullable=False),
        pa.field("license", pa.string(), nullable=False),
        pa.field("tags", pa.list_(pa.string()), nullable=False),
        pa.field("provenance", pa.string(), nullable=False),  # JSON object of the source's keep_fields
        pa.field("source_row", pa.int64(), nullable=False),
    ]
)
QUARANTINE_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("location", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("raw", pa.string()),
    ]
)


class CurationError(Exception):
    """Curation cannot produce a usable prompt set (one-line message with the counts and what to change)."""


@dataclass(frozen=True)
class EarlierPrompts:
    """Prompts that earlier rounds drew and that may not be drawn again (see curation.reuse_after_rounds)."""

    text_hashes: set[str] = field(default_factory=set)
    texts: list[str] = field(default_factory=list)  # for near-duplicate checks across rounds


@dataclass(frozen=True)
class CurationResult:
    prompts: list[dict]  # PROMPT_SCHEMA rows, sorted by prompt_id
    report: dict  # rows_in, removed{reason: n}, rows_out, per_source, quarantine, mixture
    decontamination: dict  # per eval set and source: removed counts and examples


def curate_prompts(
    sources: dict[str, SourceRows],
    cfg: CurationConfig,
    round_num: int,
    earlier: EarlierPrompts,
    index: DecontamIndex,
    count_tokens: TokenCounter | None = None,
    detect_languages: Callable[[list[str]], list[str | None]] | None = None,
    fits_context: ContextCheck | None = None,
) -> CurationResult:
    """Turn the rows read from each source into this round's prompt set.

    Args:
        sources: {source name: SourceRows from read_source}; one entry per source in `cfg.sources`.
        cfg: the curation config (sources with weights and licenses, draw size, filter settings).
        round_num: round number; with `cfg.seed` it fixes the weighted draw.
        earlier: prompts of earlier rounds that are not to be drawn again (exact and near duplicates).
        index: the n-gram index of every eval set of the pipeline.
        count_tokens: token counts with the policy's tokenizer; needed when min/max_tokens are set.
        detect_languages: language code per text (None: too short to judge); needed when `languages` is set.
        fits_context: whether each (system prompt, prompt) leaves the generation room for a whole completion in
            the model's context; a prompt that does not is removed (`too_long_for_context`), so it never
            reaches the engine. None: not checked.
    Returns:
        CurationResult with prompt rows sorted by prompt_id, the counts report and the decontamination report.
    Raises:
        CurationError if the sources do not match the config, a needed filter is missing, or no prompt is left.
    """
    _check_inputs(sources, cfg, count_tokens, detect_languages)
    with gc_paused():
        return _curate(sources, cfg, round_num, earlier, index, count_tokens, detect_languages, fits_context)


def _curate(
    sources: dict[str, SourceRows],
    cfg: CurationConfig,
    round_num: int,
    earlier: EarlierPrompts,
    index: DecontamIndex,
    count_tokens: TokenCounter | None,
    detect_languages: Callable[[list[str]], list[str | None]] | None,
    fits_context: ContextCheck | None,
) -> CurationResult:
    blocked = keyword_pattern(cfg.blocked_keywords)
    per_source = {s.name: _counts(sources[s.name].rows_in) for s in cfg.sources}
    hashes_this_round: set[str] = set()
    pending: list[tuple[SourceConfig, str, str, dict]] = []  # (source, normalised text, text hash, raw row)

    # Config order, then file order: an earlier source wins a cross-source duplicate, whatever the dict order.
    # Locals instead of attribute lookups: this loop runs once per row of every source (millions).
    min_chars, max_chars = cfg.min_chars, cfg.max_chars if cfg.max_chars is not None else float("inf")
    seen, normalize, thash = earlier.text_hashes, normalize_text, normalized_text_hash
    for src in cfg.sources:
        counts = per_source[src.name]
        counts["quarantined"] = len(sources[src.name].quarantined)
        for row in sources[src.name].rows:
            text = normalize(row["prompt"])
            if len(text) < min_chars:
                counts["too_short"] += 1
            elif len(text) > max_chars:
                counts["too_long"] += 1
            elif blocked is not None and blocked.search(text):
                counts["keyword"] += 1
            else:
                th = thash(text)
                if th in hashes_this_round:
                    counts["duplicate_in_round"] += 1
                    continue
                hashes_this_round.add(th)
                if th in seen:
                    counts["seen_in_earlier_round"] += 1
                else:
                    pending.append((src, text, th, row))

    matches = index.match_many([p[1] for p in pending], normalized=True)
    decontam = _decontam_report(index, cfg, [(p[0].name, p[1], m) for p, m in zip(pending, matches)])
    pending = [p for p, m in zip(pending, matches) if m is None or _count(per_source, p, "contaminated")]
    if cfg.min_tokens is not None or cfg.max_tokens is not None:
        lengths = count_tokens([p[1] for p in pending])  # type: ignore[misc]  # checked in _check_inputs
        lo, hi = cfg.min_tokens or 0, cfg.max_tokens or float("inf")
        pending = [
            p
            for p, n in zip(pending, lengths)
            if (lo <= n <= hi) or _count(per_source, p, "too_few_tokens" if n < lo else "too_many_tokens")
        ]
    if fits_context is not None:
        fits = fits_context([(p[3].get("system"), p[1]) for p in pending])
        pending = [p for p, ok in zip(pending, fits) if ok or _count(per_source, p, "too_long_for_context")]
    if cfg.languages is not None:
        wanted = set(cfg.languages)
        langs = detect_languages([p[1] for p in pending])  # type: ignore[misc]
        pending = [
            p for p, lang in zip(pending, langs) if lang is None or lang in wanted or _count(per_source, p, "language")
        ]

    candidates: dict[str, list[dict]] = {s.name: [] for s in cfg.sources}
    ids_of = {s.name: prompt_id_of(s.name) for s in cfg.sources}
    for src, text, th, row in pending:
        candidates[src.name].append(_prompt_row(ids_of[src.name](text), text, th, row, src))
    if cfg.near_dup_threshold is not None:
        _drop_near_duplicates(candidates, per_source, cfg, earlier.texts)
    quotas = allocate_draw(
        {n: len(c) for n, c in candidates.items()}, {s.name: s.weight for s in cfg.sources}, cfg.prompts_per_round
    )
    prompts: list[dict] = []
    for name, rows in candidates.items():
        prompts.extend(draw_rows(rows, quotas[name], cfg.seed, round_num))
        per_source[name]["not_drawn"] = len(rows) - quotas[name]
        per_source[name]["rows_out"] = quotas[name]
    prompts.sort(key=lambda r: r["prompt_id"])

    mixture = mixture_report(
        {s.name: s.weight for s in cfg.sources}, {n: len(c) for n, c in candidates.items()}, quotas
    )
    report = _report(per_source, sources, mixture)
    if report["rows_out"] == 0:
        nonzero = {k: v for k, v in report["removed"].items() if v}
        raise CurationError(
            f"round {round_num}: no prompts left after curation ({report['rows_in']} in, all removed: {nonzero}); "
            "add sources, allow reuse with curation.reuse_after_rounds, or relax the filters"
        )
    return CurationResult(prompts=prompts, report=report, decontamination=decontam)


def quarantine_problem(sources: dict[str, SourceRows], cfg: CurationConfig) -> str | None:
    """Why the round must stop for malformed rows (None: the quarantined share is acceptable everywhere).

    Checked per source: one broken file should stop the round even when other sources are large.
    """
    problems = []
    for src in cfg.sources:
        s = sources[src.name]
        if s.rows_in and len(s.quarantined) / s.rows_in > cfg.max_quarantine_fraction:
            reasons = Counter(q["reason"] for q in s.quarantined)
            first = s.quarantined[0]
            problems.append(
                f"source {src.name!r}: {len(s.quarantined)} of {s.rows_in} rows malformed "
                f"({len(s.quarantined) / s.rows_in:.1%} > curation.max_quarantine_fraction "
                f"{cfg.max_quarantine_fraction:.1%}; {', '.join(f'{r} {n}' for r, n in reasons.most_common())}; "
                f"first: {first['location']}: {first['detail']})"
            )
    return "; ".join(problems) or None


def quarantine_rows(sources: dict[str, SourceRows]) -> list[dict]:
    """Every quarantined row of every source, in source then file order (QUARANTINE_SCHEMA rows)."""
    return [{k: q[k] for k in QUARANTINE_SCHEMA.names} for s in sources.values() for q in s.quarantined]


def _count(per_source: dict[str, dict], pending_row: tuple, reason: str) -> bool:
    """Count a removal for the row's source; returns False so it reads as a filter condition."""
    per_source[pending_row[0].name][reason] += 1
    return False


def _drop_near_duplicates(
    candidates: dict[str, list[dict]], per_source: dict[str, dict], cfg: CurationConfig, seen_texts: list[str]
) -> None:
    """Remove (in place) candidates that nearly repeat an earlier candidate or an earlier round's prompt."""
    from tasks.curation.neardup import near_duplicates

    order = [(name, row) for name, rows in candidates.items() for row in rows]  # config order, then file order
    flags = near_duplicates([row["prompt"] for _, row in order], seen_texts, cfg.near_dup_threshold)
    for name in candidates:
        candidates[name] = []
    for (name, row), dup in zip(order, flags):
        if dup:
            per_source[name]["near_duplicate"] += 1
        else:
            candidates[name].append(row)


def _decontam_report(index: DecontamIndex, cfg: CurationConfig, checked: list[tuple[str, str, object]]) -> dict:
    """Removed prompts per eval set and source, with the first few examples of each eval set."""
    table: dict[str, dict[str, int]] = {name: {} for name in index.eval_set_names}
    examples: list[dict] = []
    shown: Counter = Counter()
    for source, text, m in checked:
        if m is None:
            continue
        by_source = table[m.eval_set]
        by_source[source] = by_source.get(source, 0) + 1
        if shown[m.eval_set] < MAX_EXAMPLES:
            shown[m.eval_set] += 1
            examples.append(
                {
                    "eval_set": m.eval_set,
                    "eval_index": m.eval_index,
                    "overlap": round(m.overlap, 4),
                    "source": source,
                    "text": text,
                }
            )
    return {
        "stage": "prompts",
        "ngram": cfg.decontam_ngram,
        "threshold": cfg.decontam_threshold,
        "checked": len(checked),
        "removed": sum(sum(t.values()) for t in table.values()),
        "by_eval_set": table,
        "examples": examples,
    }


def to_table(rows: list[dict]) -> pa.Table:
    """Prompt rows as a Parquet-ready table with the fixed PROMPT_SCHEMA (an empty list gives 0 rows)."""
    return pa.Table.from_pylist(rows, schema=PROMPT_SCHEMA)


def _prompt_row(pid: str, text: str, th: str, row: dict, src: SourceConfig) -> dict:
    return {
        "prompt_id": pid,
        "text_hash": th,
        "prompt": text,
        "system": row.get("system"),
        "answer": row.get("answer"),
        "source": src.name,
        "license": src.license,
        "tags": src.tags,
        "provenance": stable_json(row["provenance"]) if row.get("provenance") else "{}",
        "source_row": row.get("source_row"),
    }


def _counts(rows_in: int) -> dict:
    return {"rows_in": rows_in, "rows_out": 0, **{reason: 0 for reason in REMOVAL_REASONS}}


def _report(per_source: dict[str, dict], sources: dict[str, SourceRows], mixture: dict) -> dict:
    removed = {reason: sum(c[reason] for c in per_source.values()) for reason in REMOVAL_REASONS}
    reasons = Counter(q["reason"] for s in sources.values() for q in s.quarantined)
    report = {
        "rows_in": sum(c["rows_in"] for c in per_source.values()),
        "removed": removed,
        "rows_out": sum(c["rows_out"] for c in per_source.values()),
        "per_source": per_source,
        "quarantine": {r: reasons[r] for r in QUARANTINE_REASONS if reasons[r]},
        "mixture": mixture,
    }
    # Every row is accounted for exactly once, overall and per source: a bug here must not pass silently.
    if report["rows_in"] != report["rows_out"] + sum(removed.values()):
        raise AssertionError(f"curation lost rows: {report}")
    for name, c in per_source.items():
        if c["rows_in"] != c["rows_out"] + sum(c[r] for r in REMOVAL_REASONS):
            raise AssertionError(f"curation lost rows of source {name!r}: {c}")
    return report


def _check_inputs(sources: dict[str, SourceRows], cfg: CurationConfig, count_tokens, detect_languages) -> None:
    configured = [s.name for s in cfg.sources]
    missing = [n for n in configured if n not in sources]
    unknown = [n for n in sources if n not in configured]
    if missing or unknown:
        raise CurationError(
            f"rows given for sources {sorted(sources)} but curation.sources is {configured} "
            f"(missing: {missing}, not configured: {unknown}); read every configured source, and only those"
        )
    if (cfg.min_tokens is not None or cfg.max_tokens is not None) and count_tokens is None:
        raise CurationError("curation.min_tokens/max_tokens are set but no tokenizer was given to count tokens")
    if cfg.languages is not None and detect_languages is None:
        raise CurationError("curation.languages is set but no language detector was given")
