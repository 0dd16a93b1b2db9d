"""Curation speed on synthetic prompts with planted exact duplicates, near duplicates and eval leaks.

Measures, in one run and side by side:
  - normalise + exact dedup + decontamination (the curate stage with near-dup off) vs a straightforward
    baseline (a Python set of n-gram tuples per row, no shared index tricks);
  - near-duplicate detection (tasks.curation.neardup) vs a pure-Python MinHash baseline (one hash call per
    shingle and permutation), timed on a sample and reported per row.

Run:  .venv/bin/python bench/curate.py --rows 1000000
Last line: one JSON object with rows, exact_decontam_rows_per_s, near_dup_rows_per_s, the baseline_*
figures, the ratios, and peak_rss_mb.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs.schema import CurationConfig, SourceConfig  # noqa: E402
from storage.ids import normalize_text  # noqa: E402
from tasks.curation.decontam import DecontamIndex  # noqa: E402
from tasks.curation.neardup import near_duplicates  # noqa: E402
from tasks.curation.prompts import EarlierPrompts, curate_prompts  # noqa: E402
from tasks.curation.sources import SourceRows  # noqa: E402

WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at which but have an "
    "they you were her she there been one all we their has would when what so if no more out up about who "
    "can time them some could into than then its only other new like two may first way also any these "
    "how our over such most after where many well even back made through much before must right"
).split()


def synthetic(rows: int, seed: int = 0) -> tuple[list[dict], list[str], dict[str, int]]:
    """Prompts of 8-20 random words; 5 % exact copies (case/space changed), 2 % near copies, 0.1 % eval leaks."""
    rng = random.Random(seed)
    evals = [" ".join(rng.choice(WORDS) for _ in range(12)) + f" eval{i}" for i in range(1000)]
    out, planted = [], {"exact": 0, "near": 0, "leak": 0}
    for i in range(rows):
        r = rng.random()
        if i > 100 and r < 0.05:
            text, planted["exact"] = "  " + out[rng.randrange(i)]["prompt"].upper() + " ", planted["exact"] + 1
        elif i > 100 and r < 0.07:
            words = out[rng.randrange(i)]["prompt"].split()
            words.insert(rng.randrange(len(words)), rng.choice(WORDS))
            text, planted["near"] = " ".join(words), planted["near"] + 1
        elif r < 0.071:
            text, planted["leak"] = rng.choice(evals), planted["leak"] + 1
        else:
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 20))) + f" q{i}"
        out.append({"prompt": text, "system": None, "answer": None, "provenance": {}, "source_row": i})
    return out, evals, planted


def baseline_exact_decontam(rows: list[dict], evals: list[str], n: int = 8) -> int:
    """Straightforward: normalise, a set of texts, a set of n-gram tuples per eval prompt, any overlap drops."""
    eval_grams = set()
    for e in evals:
        w = e.lower().split()
        eval_grams.update(tuple(w[i : i + n]) for i in range(max(len(w) - n + 1, 1)))
    seen, kept = set(), 0
    for r in rows:
        text = normalize_text(r["prompt"]).lower()
        if text in seen:
            continue
        seen.add(text)
        w = text.split()
        grams = [tuple(w[i : i + n]) for i in range(max(len(w) - n + 1, 1))]
        if sum(g in eval_grams for g in grams) / len(grams) >= 0.5:
            continue
        kept += 1
    return kept


def baseline_minhash(texts: list[str], num_perm: int = 64, threshold: float = 0.8) -> int:
    """Pure-Python MinHash + LSH buckets: one hash per shingle and permutation."""
    perms = [
        (random.Random(p).randrange(1, 1 << 31), random.Random(p + 999).randrange(1 << 31)) for p in range(num_perm)
    ]
    buckets: dict = {}
    dups = 0
    for t in texts:
        w = t.lower().split()
        sh = [zlib.crc32(" ".join(w[i : i + 3]).encode()) for i in range(max(len(w) - 2, 1))]
        sig = [min((a * h + b) % ((1 << 61) - 1) & 0xFFFFFFFF for h in sh) for a, b in perms]
        keys = [(band, tuple(sig[band * 4 : band * 4 + 4])) for band in range(16)]
        cands = {c for k in keys for c in buckets.get(k, ())}
        if any(sum(x == y for x, y in zip(sig, c)) / num_perm >= threshold for c in cands):
            dups += 1
            continue
        for k in keys:
            buckets.setdefault(k, []).append(tuple(sig))
    return dups


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--baseline-sample", type=int, default=50_000, help="rows timed for the pure-Python MinHash")
    args = p.parse_args()
    rows, evals, planted = synthetic(args.rows)
    print(f"{args.rows} rows; planted {planted}", flush=True)

    cfg = CurationConfig(
        sources=[SourceConfig(name="s", path="s.jsonl")], prompts_per_round=args.rows, near_dup_threshold=None
    )
    t0 = time.perf_counter()  # the eval index is built inside the timed span: it is part of the stage
    index = DecontamIndex({"bench": evals}, cfg.decontam_ngram, cfg.decontam_threshold)
    rep = curate_prompts({"s": SourceRows(rows=rows, quarantined=[])}, cfg, 1, EarlierPrompts(), index).report
    exact_s = time.perf_counter() - t0
    print(f"exact dedup + decontamination: {args.rows / exact_s:,.0f} rows/s  removed {rep['removed']}", flush=True)
    t0 = time.perf_counter()
    baseline_exact_decontam(rows, evals)
    base_exact_s = time.perf_counter() - t0

    texts = [r["prompt"] for r in rows]
    t0 = time.perf_counter()
    flags = near_duplicates(texts, threshold=0.8)
    near_s = time.perf_counter() - t0
    print(f"near-dup: {args.rows / near_s:,.0f} rows/s, flagged {sum(flags)}", flush=True)
    sample = texts[: args.baseline_sample]
    t0 = time.perf_counter()
    baseline_minhash(sample)
    base_near_rate = len(sample) / (time.perf_counter() - t0)

    result = {
        "rows": args.rows,
        "planted": planted,
        "removed": rep["removed"],
        "near_dup_flagged": sum(flags),
        "exact_decontam_rows_per_s": round(args.rows / exact_s),
        "baseline_exact_decontam_rows_per_s": round(args.rows / base_exact_s),
        "near_dup_rows_per_s": round(args.rows / near_s),
        "baseline_near_dup_rows_per_s": round(base_near_rate),
        "exact_decontam_ratio": round(base_exact_s / exact_s, 2),
        "near_dup_ratio": round((args.rows / near_s) / base_near_rate, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
