"""Row lineage on the DuckLake catalog against the DuckDB file, side by side on the same edges.

The same rounds as bench/lineage.py (its `round_edges`), written through `Catalog.record_step` into both
backends: a DuckDB file (an ART index on row_edges.child_id) and DuckLake with SQLite metadata and local
Parquet data (no index: each lookup reads the row groups whose child-id range holds the id, which
record_step's sorted inserts and storage/catalog_lake.py's small row groups keep few). Then, for random
training rows, it times `Catalog.row_lineage` with each catalog held open by the process (DuckLake's
extension loading and attach, ~1.5 s, is paid once per process), checks both give the same chains, and
prints the ratio.

Run:  .venv/bin/python bench/lineage_lake.py --edges 1000000 [--compact]
Last line: one JSON object with the per-backend medians (ms) and lake_over_duckdb.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.lineage import PAIR_SHARE, PIPELINE, SFT_SHARE, hex_ids, round_edges, summary, time_ms  # noqa: E402
from storage.artifacts import ArtifactRef  # noqa: E402
from storage.catalog import Catalog, StepRecord  # noqa: E402
from storage.catalog_lake import ALIAS, LakeSpec  # noqa: E402


def store_bytes(cat: Catalog) -> int:
    """What the catalog keeps in the store: the DuckDB file (copied whole after every round, flows/round.py),
    or the lake's Parquet files (each round adds its own)."""
    if cat.lake is None:
        return sum(p.stat().st_size for p in (cat.path, cat.path.with_name(cat.path.name + ".wal")) if p.exists())
    return sum(f.stat().st_size for f in Path(cat.lake.spec.data_path).rglob("*.parquet"))


def build(cats: dict[str, Catalog], edges: int, rounds: int, n: int, seed: int) -> tuple[dict, np.ndarray, dict]:
    """The same rounds into every catalog; returns the seconds each took, a sample of training row ids, and
    per round the bytes each catalog puts in the store (the whole DuckDB file; the lake's new Parquet)."""
    rng = np.random.default_rng(seed)
    prompts = int(edges / rounds / (1 + n + SFT_SHARE + 2 * PAIR_SHARE))
    sources = [hex_ids(rng, 1, 64)[0] for _ in range(2)]
    seconds = dict.fromkeys(cats, 0.0)
    for cat in cats.values():
        for i, s in enumerate(sources):
            ref = ArtifactRef(s, "source", f"file:///data/source-{i}.jsonl", None, None, "jsonl")
            cat.register_artifact(ref, PIPELINE, 1, "source")
    earlier_sft, samples = np.array([], dtype=object), []
    per_round: dict[str, list[int]] = {k: [] for k in cats}
    for r in range(1, rounds + 1):
        before = {k: store_bytes(c) for k, c in cats.items()}
        steps, fresh = round_edges(rng, prompts, n, sources, earlier_sft)
        earlier_sft = np.concatenate([earlier_sft, fresh])
        for step, (kind, rows, parents) in steps.items():
            art = hex_ids(rng, 1, 64)[0]
            ref = ArtifactRef(art, kind, f"file:///store/artifacts/{art[:2]}/{art}", None, len(set(rows)), "parquet")
            rec = StepRecord(PIPELINE, r, step, f"id-{step}-{r}", {}, {kind: ref})
            rec.row_edges = list(zip(rows, parents, [art] * len(rows)))
            for name, cat in cats.items():
                t0 = time.perf_counter()
                cat.record_step(rec)
                seconds[name] += time.perf_counter() - t0
            if kind in ("sft", "pairs"):
                samples.append(rng.choice(rows, 200))
        for k, c in cats.items():
            per_round[k].append(store_bytes(c) if c.lake is None else store_bytes(c) - before[k])
        sent = ", ".join(f"{k} {v[-1] / 1e6:.1f} MB" for k, v in per_round.items())
        print(f"round {r}: {', '.join(f'{k} {v:.1f} s' for k, v in seconds.items())}; to the store: {sent}", flush=True)
    return {k: round(v, 1) for k, v in seconds.items()}, np.concatenate(samples), per_round


def compact_and_time(cat: Catalog, ids: list[str]) -> dict:
    """Sort row_edges by child id, merge its files into as few as DuckLake's target size allows, time again."""
    before = [cat.row_lineage(i) for i in ids[:10]]
    db, t0 = cat.lake.db, time.perf_counter()
    db.execute(f"ALTER TABLE {ALIAS}.row_edges SET SORTED BY (child_id ASC)")
    db.execute(f"CALL ducklake_merge_adjacent_files('{ALIAS}', 'row_edges')")
    merge_s = time.perf_counter() - t0
    (files, size) = db.execute(
        f"SELECT count(*), sum(data_file_size_bytes) FROM ducklake_list_files('{ALIAS}', 'row_edges')"
    ).fetchone()
    assert [cat.row_lineage(i) for i in ids[:10]] == before, "compaction changed a lineage"
    cat.row_lineage(ids[0])
    return {"merge_s": round(merge_s, 1), "files": files, "bytes": size, **summary(time_ms(cat.row_lineage, ids))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--edges", type=int, default=1_000_000, help="row edges in each catalog, over all rounds")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--n", type=int, default=4, help="completions per prompt")
    ap.add_argument("--lookups", type=int, default=50)
    ap.add_argument("--dir", type=Path, default=None, help="where to build the catalogs (default: a temp dir)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--compact",
        action="store_true",
        help="then sort row_edges by child_id, merge its files (ducklake_merge_adjacent_files) and time again",
    )
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        lake = LakeSpec(f"sqlite:{root / 'catalog.sqlite'}", f"{root / 'lake'}/")
        cats = {"duckdb": Catalog(root / "catalog.duckdb"), "ducklake": Catalog(root / "catalog.sqlite", lake=lake)}
        build_s, samples, per_round = build(cats, args.edges, args.rounds, args.n, args.seed)
        ids = random.Random(args.seed).sample(list(samples), args.lookups)
        held = duckdb.connect(str(root / "catalog.duckdb"))  # the DuckDB file held open too: like for like
        result = {"edges": args.edges, "rounds": args.rounds, "build_s": build_s, "lookups": args.lookups}
        result["store_bytes_per_round"] = per_round
        for name, cat in cats.items():
            cat.row_lineage(ids[0])  # warm: the first call reads the file's footer and metadata
            result[name] = summary(time_ms(cat.row_lineage, ids))
            print(f"{name}: {json.dumps(result[name])}", flush=True)
        key = lambda chain: sorted(map(repr, chain))  # noqa: E731 (the order within one depth is free)
        assert all(key(cats["duckdb"].row_lineage(i)) == key(cats["ducklake"].row_lineage(i)) for i in ids[:10])
        files = list((root / "lake").rglob("*.parquet"))
        result["lake_parquet_files"] = len(files)
        result["lake_bytes"] = store_bytes(cats["ducklake"])
        result["lake_over_duckdb"] = round(result["ducklake"]["median_ms"] / result["duckdb"]["median_ms"], 2)
        if args.compact:
            result["compacted"] = compact_and_time(cats["ducklake"], ids)
            print(f"ducklake compacted: {json.dumps(result['compacted'])}", flush=True)
        held.close()
        cats["ducklake"].close()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
