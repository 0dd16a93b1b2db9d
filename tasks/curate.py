"""Curate a round's prompts: normalise, drop malformed, dedup, skip earlier rounds, decontaminate, draw.

Pure logic over rows from `tasks.sources.read_source`; the Prefect task around it loads the sources,
the eval sets and the text hashes used by earlier rounds, and stores `to_table(result.prompts)`.
Every removed row is counted under one reason, so `rows_in == rows_out + sum(removed)` always holds.

Dry run on a config (reads the files, stores nothing, ignores earlier rounds, prints the report):
    python -m tasks.curate configs/demo.yaml --round 1 [--home DIR]
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import pyarrow as pa
from prefect import task

from configs.schema import CurationConfig, FlywheelConfig, SourceConfig
from storage.ids import encode_basestring, normalize_text, prompt_id, sha256_bytes, stable_json, text_hash

# In the order the filters run; each removed row is counted under the first reason that applies.
REMOVAL_REASONS = ("malformed", "too_short", "too_long", "keyword", "duplicate_in_round", "seen_in_earlier_round",
                   "contaminated", "near_duplicate", "not_drawn")
MAX_CONTAMINATED_EXAMPLES = 5

PROMPT_SCHEMA = pa.schema([
    pa.field("prompt_id", pa.string(), nullable=False),
    pa.field("text_hash", pa.string(), nullable=False),
    pa.field("prompt", pa.string(), nullable=False),
    pa.field("answer", pa.string()),
    pa.field("source", pa.string(), nullable=False),
    pa.field("license", pa.string(), nullable=False),
    pa.field("provenance", pa.string(), nullable=False),  # JSON object of the source's keep_fields
    pa.field("source_row", pa.int64(), nullable=False),
])

_TOKEN = re.compile(r"\w+|[^\w\s]")  # words, and each punctuation mark as its own token


class CurationError(Exception):
    """Curation cannot produce a usable prompt set (one-line message with the counts and what to change)."""


@dataclass(frozen=True)
class CurationResult:
    prompts: list[dict]  # PROMPT_SCHEMA rows, sorted by prompt_id
    report: dict  # rows_in, removed{reason: n}, rows_out, per_source{name: {...}}, contaminated_examples


def curate_prompts(rows_by_source: dict[str, list[dict]], cfg: CurationConfig, round_num: int,
                   seen_text_hashes: set[str], eval_texts: list[str], seen_texts: list[str] | None = None
                   ) -> CurationResult:
    """Turn the raw rows of each source into this round's prompt set.

    Args:
        rows_by_source: {source name: rows from read_source}; one entry per source in `cfg.sources`.
        cfg: the curation config (sources with weights and licenses, draw size, dedup/decontam settings).
        round_num: round number; with `cfg.seed` it fixes the weighted draw.
        seen_text_hashes: text hashes of prompts used by earlier rounds of this pipeline.
        eval_texts: prompts of the held-out eval sets, never to be trained on.
        seen_texts: prompts of earlier rounds, for near-duplicate detection across rounds.
    Returns:
        CurationResult with prompt rows sorted by prompt_id and the counts report.
    Raises:
        CurationError if the sources do not match the config, or if no prompt is left.
    """
    _check_source_names(rows_by_source, cfg)
    index = build_decontam_index(eval_texts, cfg.decontam_ngram)
    blocked = keyword_pattern(cfg.blocked_keywords)
    per_source = {s.name: _counts(len(rows_by_source[s.name])) for s in cfg.sources}
    candidates: dict[str, list[dict]] = {s.name: [] for s in cfg.sources}
    hashes_this_round: set[str] = set()
    examples: list[str] = []

    # Config order, then file order: an earlier source wins a cross-source duplicate, whatever the dict order.
    for src in cfg.sources:
        counts = per_source[src.name]
        for row in rows_by_source[src.name]:
            raw = row.get("prompt")
            text = normalize_text(raw) if isinstance(raw, str) else ""
            if not text:
                counts["malformed"] += 1
                continue
            if len(text) < cfg.min_chars:
                counts["too_short"] += 1
                continue
            if cfg.max_chars is not None and len(text) > cfg.max_chars:
                counts["too_long"] += 1
                continue
            if blocked is not None and blocked.search(text):
                counts["keyword"] += 1
                continue
            th = text_hash(text)
            if th in hashes_this_round:
                counts["duplicate_in_round"] += 1
                continue
            hashes_this_round.add(th)
            if cfg.dedup_across_rounds and th in seen_text_hashes:
                counts["seen_in_earlier_round"] += 1
                continue
            if is_contaminated(text, index, cfg.decontam_ngram, cfg.decontam_threshold):
                counts["contaminated"] += 1
                if len(examples) < MAX_CONTAMINATED_EXAMPLES:
                    examples.append(text)
                continue
            candidates[src.name].append(_prompt_row(text, th, row, src))

    if cfg.near_dup_threshold is not None:
        _drop_near_duplicates(candidates, per_source, cfg, seen_texts if cfg.dedup_across_rounds else [])
    quotas = allocate_draw({n: len(c) for n, c in candidates.items()},
                           {s.name: s.weight for s in cfg.sources}, cfg.prompts_per_round)
    prompts: list[dict] = []
    for name, rows in candidates.items():
        prompts.extend(draw_rows(rows, quotas[name], cfg.seed, round_num))
        per_source[name]["not_drawn"] = len(rows) - quotas[name]
        per_source[name]["rows_out"] = quotas[name]
    prompts.sort(key=lambda r: r["prompt_id"])

    report = _report(per_source, examples)
    if report["rows_out"] == 0:
        nonzero = {k: v for k, v in report["removed"].items() if v}
        raise CurationError(
            f"round {round_num}: no prompts left after curation ({report['rows_in']} in, all removed: {nonzero}); "
            "add sources, allow reuse with curation.dedup_across_rounds: false, or lower prompts_per_round"
        )
    return CurationResult(prompts=prompts, report=report)


def _drop_near_duplicates(candidates: dict[str, list[dict]], per_source: dict[str, dict], cfg: CurationConfig,
                          seen_texts: list[str] | None) -> None:
    """Remove (in place) candidates that nearly repeat an earlier candidate or an earlier round's prompt."""
    from tasks.neardup import near_duplicates

    order = [(name, row) for name, rows in candidates.items() for row in rows]  # config order, then file order
    flags = near_duplicates([row["prompt"] for _, row in order], seen_texts or [], cfg.near_dup_threshold)
    for name in candidates:
        candidates[name] = []
    for (name, row), dup in zip(order, flags):
        if dup:
            per_source[name]["near_duplicate"] += 1
        else:
            candidates[name].append(row)


def keyword_pattern(keywords: list[str]) -> re.Pattern | None:
    """One case-insensitive regex matching any keyword as whole words (None when there are none).

    >>> bool(keyword_pattern(["GPT-4", "claude"]).search("As gpt-4 said"))
    True
    >>> bool(keyword_pattern(["claude"]).search("Claudette's answer"))
    False
    """
    words = [k.strip() for k in keywords if k.strip()]
    if not words:
        return None
    return re.compile(r"(?<!\w)(?:" + "|".join(re.escape(w) for w in words) + r")(?!\w)", re.IGNORECASE)


def allocate_draw(available: dict[str, int], weights: dict[str, float], total: int) -> dict[str, int]:
    """How many rows to draw from each source: `total` split by weight, short sources give all they have.

    Water-filling: a source whose weighted share is at least what it has gives everything, and the rest is
    re-split among the others by weight; the last split rounds by largest remainder (ties: first source).
    Exact fractions, so 3:1 of 400 is exactly 300/100 on any machine.

    >>> allocate_draw({"a": 1000, "b": 1000}, {"a": 3.0, "b": 1.0}, 400)
    {'a': 300, 'b': 100}
    >>> allocate_draw({"a": 1000, "b": 10}, {"a": 1.0, "b": 1.0}, 100)
    {'a': 90, 'b': 10}
    """
    quota = {name: 0 for name in available}
    open_ = [name for name, n in available.items() if n > 0]
    left = total
    while open_ and left > 0:
        wsum = sum(Fraction(weights[name]) for name in open_)
        shares = {name: left * Fraction(weights[name]) / wsum for name in open_}
        short = [name for name in open_ if available[name] <= shares[name]]
        if short:
            for name in short:
                quota[name] = available[name]
                left -= available[name]
            open_ = [name for name in open_ if name not in short]
            continue
        # Every remaining source has more than its share: floor each, hand out the leftover units.
        for name in open_:
            quota[name] = int(shares[name])
        leftover = left - sum(quota[name] for name in open_)
        by_remainder = sorted(open_, key=lambda name: shares[name] - quota[name], reverse=True)  # stable sort
        for name in by_remainder[:leftover]:
            quota[name] += 1
        break
    return quota


def draw_rows(rows: list[dict], k: int, seed: int, round_num: int) -> list[dict]:
    """The k rows with the smallest hash of (seed, round, prompt_id).

    A hash rank instead of `random.sample` keeps the draw identical across Python versions and
    independent of row order, and it changes from round to round.
    """
    # hash_obj(["draw", seed, round_num, prompt_id]) spelled out: the same JSON, without json.dumps per row.
    prefix = f'["draw",{int(seed)},{int(round_num)},'
    return sorted(rows, key=lambda r: sha256_bytes((prefix + encode_basestring(r["prompt_id"]) + "]").encode()))[:k]


def ngrams(text: str, n: int) -> set[str]:
    """Word n-grams (space-joined tokens) of the normalised, case-folded text; punctuation is its own token.

    A text with fewer than n tokens gives one gram, the whole text; an empty text gives none.

    >>> sorted(ngrams("What is 2+2?", 3))
    ['+ 2 ?', '2 + 2', 'is 2 +', 'what is 2']
    >>> ngrams("  Hello,   WORLD ", 8)
    {'hello , world'}
    """
    tokens = _TOKEN.findall(normalize_text(text).casefold())
    if not tokens:
        return set()
    if len(tokens) < n:
        return {" ".join(tokens)}
    return {" ".join(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


def build_decontam_index(eval_texts: list[str], n: int) -> set[str]:
    """All n-grams of all eval-set prompts."""
    index: set[str] = set()
    for text in eval_texts:
        index |= ngrams(text, n)
    return index


def is_contaminated(text: str, index: set[str], n: int, threshold: float) -> bool:
    """True when at least `threshold` of the text's distinct n-grams occur in the eval-set index."""
    grams = ngrams(text, n)
    if not grams:
        return False
    return len(grams & index) / len(grams) >= threshold


def to_table(rows: list[dict]) -> pa.Table:
    """Prompt rows as a Parquet-ready table with the fixed PROMPT_SCHEMA (an empty list gives 0 rows)."""
    return pa.Table.from_pylist(rows, schema=PROMPT_SCHEMA)


def _prompt_row(text: str, th: str, row: dict, src: SourceConfig) -> dict:
    return {
        "prompt_id": prompt_id(text, src.name),
        "text_hash": th,
        "prompt": text,
        "answer": row.get("answer"),
        "source": src.name,
        "license": src.license,
        "provenance": stable_json(row.get("provenance") or {}),
        "source_row": row.get("source_row"),
    }


def _counts(rows_in: int) -> dict:
    return {"rows_in": rows_in, "rows_out": 0, **{reason: 0 for reason in REMOVAL_REASONS}}


def _report(per_source: dict[str, dict], examples: list[str]) -> dict:
    removed = {reason: sum(c[reason] for c in per_source.values()) for reason in REMOVAL_REASONS}
    report = {
        "rows_in": sum(c["rows_in"] for c in per_source.values()),
        "removed": removed,
        "rows_out": sum(c["rows_out"] for c in per_source.values()),
        "per_source": per_source,
        "contaminated_examples": examples,
    }
    # Every row is accounted for exactly once, overall and per source.
    assert report["rows_in"] == report["rows_out"] + sum(removed.values()), report
    for name, c in per_source.items():
        assert c["rows_in"] == c["rows_out"] + sum(c[r] for r in REMOVAL_REASONS), (name, c)
    return report


def _check_source_names(rows_by_source: dict[str, list[dict]], cfg: CurationConfig) -> None:
    configured = [s.name for s in cfg.sources]
    missing = [n for n in configured if n not in rows_by_source]
    unknown = [n for n in rows_by_source if n not in configured]
    if missing or unknown:
        raise CurationError(
            f"rows given for sources {sorted(rows_by_source)} but curation.sources is {configured} "
            f"(missing: {missing}, not configured: {unknown}); read every configured source, and only those"
        )


@task(name="curate-prompts")
def curate_task(cfg: FlywheelConfig, round_num: int) -> str:
    """Curate the prompts of round `round_num`; returns the prompt table's artifact id."""
    from storage.catalog import ArtifactRecord
    from storage.ids import sha256_file
    from storage.runtime import open_runtime
    from tasks import common
    from tasks.sources import read_eval_set, read_source

    rt = open_runtime(cfg)
    log = common.get_logger()
    # Inputs are the files' content hashes: an edited source is a new input, a renamed one is not.
    sources = {s.name: sha256_file(Path(s.path)) for s in cfg.curation.sources}
    evals = {e.name: sha256_file(Path(e.path)) for e in cfg.evaluation.eval_sets}
    earlier = rt.catalog.prompt_tables_before(cfg.pipeline, round_num) if cfg.curation.dedup_across_rounds else []
    inputs = {**{f"source:{k}": v for k, v in sources.items()}, **{f"eval:{k}": v for k, v in evals.items()},
              **{f"earlier:{i}": a for i, a in enumerate(earlier)}}
    for s in cfg.curation.sources:
        p = Path(s.path).resolve()
        rt.catalog.register_artifact(
            ArtifactRecord(sources[s.name], "source", p.suffix.lstrip("."), p.as_uri(), p.stat().st_size, None),
            cfg.pipeline, round_num, "source")
    for e in cfg.evaluation.eval_sets:
        p = Path(e.path).resolve()
        rt.catalog.register_artifact(
            ArtifactRecord(evals[e.name], "eval-set", p.suffix.lstrip("."), p.as_uri(), p.stat().st_size, None),
            cfg.pipeline, round_num, "eval-set")

    def compute() -> common.StepOutput:
        rows = {s.name: read_source(s) for s in cfg.curation.sources}
        eval_texts = [r["prompt"] for e in cfg.evaluation.eval_sets for r in read_eval_set(e)]
        seen: set[str] = set()
        seen_texts: list[str] = []
        for artifact_id in earlier:
            table = rt.artifacts.get_table(artifact_id)
            seen.update(table.column("text_hash").to_pylist())
            seen_texts.extend(table.column("prompt").to_pylist())
        result = curate_prompts(rows, cfg.curation, round_num, seen, eval_texts, seen_texts)
        rep = result.report
        log.info("curated %d of %d rows; removed %s", rep["rows_out"], rep["rows_in"],
                 {k: v for k, v in rep["removed"].items() if v})
        ref = rt.artifacts.put_table(to_table(result.prompts), kind="prompts")
        report_ref = rt.artifacts.put_json(rep, kind="curation-report")
        metrics = {"curate/prompts": rep["rows_out"], "curate/rows_in": rep["rows_in"],
                   **{f"curate/removed/{k}": v for k, v in rep["removed"].items()}}
        return common.StepOutput(
            artifacts={"prompts": ref, "report": report_ref},
            summary={"rows_in": rep["rows_in"], "rows_out": rep["rows_out"], "metrics": metrics},
            row_edges=[(r["prompt_id"], sources[r["source"]], ref.id) for r in result.prompts],
        )

    result = common.run_step(
        rt, pipeline=cfg.pipeline, round_num=round_num, step="curate",
        config={"curation": cfg.curation.model_dump(mode="json"), "round": round_num}, inputs=inputs,
        compute=compute, code=common.code_version(__name__, "tasks.sources", "tasks.neardup"),
    )
    return result.outputs["prompts"]


def _main() -> None:
    import argparse
    import json

    from configs import load_config
    from tasks.sources import read_eval_set, read_source

    parser = argparse.ArgumentParser(description="Curate one round's prompts and print the report.")
    parser.add_argument("config", help="pipeline YAML, e.g. configs/demo.yaml")
    parser.add_argument("--round", type=int, default=1, help="round number (seeds the draw)")
    parser.add_argument("--home", default=None, help="FLYWHEEL_HOME that `{home}` in the config expands to")
    args = parser.parse_args()
    cfg = load_config(args.config, args.home)
    rows = {s.name: read_source(s) for s in cfg.curation.sources}
    eval_texts = [r["prompt"] for e in cfg.evaluation.eval_sets for r in read_eval_set(e)]
    result = curate_prompts(rows, cfg.curation, args.round, set(), eval_texts)
    print(json.dumps(result.report, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    _main()
