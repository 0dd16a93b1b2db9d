"""Row lineage at scale: how long `Catalog.row_lineage` and `flywheel lineage <row-id>` take on a big catalog.

Builds a catalog with the real schema (storage/catalog.py) holding `--edges` row edges shaped like real
rounds. Per round: prompts point at one of two source files, `--n` completions per prompt point at their
prompt, SFT rows at one completion (a share of them replay an earlier round's SFT row instead, as
tasks/select.py does), DPO pairs at their chosen and rejected completion. Row ids are 20 hex digits and
artifact ids 64, as storage/ids.py makes them; each step's rows live in one artifact of their own and
each step's edges go in with one bulk Arrow insert, as `Catalog.record_step` writes them.

Then, for random training rows (SFT rows and pairs of every round), it times:
  - `Catalog.row_lineage`: a first lookup with the file out of the OS page cache (cold), then `--lookups`
    more with it in the page cache (warm), each opening the file as callers do, then with a connection
    held open (a long-lived process);
  - the `flywheel lineage <row-id> --json` path (flows/cli.py `cmd_lineage`, in this process): it looks the
    id up among artifacts first, then walks the rows.
`--query recursive` times the recursive CTE that row_lineage used before (the same walk in one SQL query),
`levels` the current walk; `both` (the default) times both on one catalog and checks they agree.

Run:  .venv/bin/python bench/lineage.py --edges 10000000
      .venv/bin/python bench/lineage.py --edges 1000000          (a quick run)
Last line: one JSON object with the catalog's bytes per round and the timings in ms.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from storage.artifacts import ArtifactRef  # noqa: E402
from storage.catalog import Catalog, StepRecord  # noqa: E402
from storage.ids import ROW_ID_LEN  # noqa: E402

PIPELINE = "bench"
SFT_SHARE, PAIR_SHARE, REPLAY_SHARE = 0.5, 0.5, 0.1  # of prompts with an SFT row / a pair; of SFT rows replayed

# The query row_lineage ran before the level walk: kept here to measure "before" on the same catalog.
RECURSIVE_SQL = """
WITH RECURSIVE up(row_id, parent_id, artifact_id, depth) AS (
    SELECT child_id, parent_id, artifact_id, 1 FROM row_edges WHERE child_id = ?
    UNION
    SELECT r.child_id, r.parent_id, r.artifact_id, up.depth + 1
    FROM row_edges r JOIN up ON r.child_id = up.parent_id WHERE up.depth < 50)
SELECT up.*, a.kind, a.round, a.step FROM up LEFT JOIN artifacts a ON a.id = up.artifact_id ORDER BY depth"""


def hex_ids(rng: np.random.Generator, n: int, length: int = ROW_ID_LEN) -> np.ndarray:
    """`n` random lowercase hex ids: sha256 digests are uniform, so random bytes are shaped the same."""
    h = rng.bytes(n * length // 2).hex()
    return np.array([h[i : i + length] for i in range(0, n * length, length)], dtype=object)


def round_edges(rng: np.random.Generator, prompts: int, n: int, sources: list[str], earlier_sft: np.ndarray):
    """One round's steps: step name -> (artifact kind, row ids, parent ids), and this round's fresh SFT rows."""
    p = hex_ids(rng, prompts)
    c = hex_ids(rng, prompts * n)  # completion j of prompt i is c[i * n + j]
    sft_of = rng.choice(prompts, int(prompts * SFT_SHARE), replace=False)
    sft = hex_ids(rng, len(sft_of))
    sft_parent = c[sft_of * n + rng.integers(0, n, len(sft_of))]
    replayed = rng.random(len(sft)) < REPLAY_SHARE if len(earlier_sft) else np.zeros(len(sft), bool)
    sft_parent[replayed] = earlier_sft[rng.integers(0, len(earlier_sft), int(replayed.sum()))]
    pair_of = rng.choice(prompts, int(prompts * PAIR_SHARE), replace=False)
    pairs = hex_ids(rng, len(pair_of))
    chosen, rejected = rng.integers(0, n, len(pair_of)), rng.integers(1, n, len(pair_of))
    rejected = (chosen + rejected) % n  # never the chosen one
    steps = {
        "curate": ("prompts", p, np.array(sources, dtype=object)[rng.integers(0, len(sources), prompts)]),
        "generate": ("completions", c, np.repeat(p, n)),
        "select-sft": ("sft", sft, sft_parent),
        "select-pairs": (
            "pairs",
            np.concatenate([pairs, pairs]),
            np.concatenate([c[pair_of * n + chosen], c[pair_of * n + rejected]]),
        ),
    }
    return steps, sft[~replayed]


def build(path: Path, edges: int, rounds: int, n: int, seed: int) -> tuple[list[dict], np.ndarray]:
    """Write the catalog; returns the per-round sizes and a sample of training row ids."""
    rng = np.random.default_rng(seed)
    per_prompt = 1 + n + SFT_SHARE + 2 * PAIR_SHARE  # edges per prompt in one round
    prompts = int(edges / rounds / per_prompt)
    cat = Catalog(path)
    sources = [hex_ids(rng, 1, 64)[0] for _ in range(2)]
    for i, s in enumerate(sources):
        cat.register_artifact(
            ArtifactRef(s, "source", f"file:///data/source-{i}.jsonl", None, None, "jsonl"), PIPELINE, 1, "source"
        )
    earlier_sft, samples, sizes = np.array([], dtype=object), [], []
    for r in range(1, rounds + 1):
        t0 = time.perf_counter()
        steps, fresh_sft = round_edges(rng, prompts, n, sources, earlier_sft)
        earlier_sft = np.concatenate([earlier_sft, fresh_sft])
        con = duckdb.connect(str(path))
        for name, (kind, rows, parents) in steps.items():
            art = hex_ids(rng, 1, 64)[0]
            ref = ArtifactRef(art, kind, f"file:///store/artifacts/{art[:2]}/{art}", None, len(set(rows)), "parquet")
            cat.record_step(StepRecord(PIPELINE, r, name, f"id-{name}-{r}", {}, {kind: ref}))
            arts = np.full(len(rows), art, dtype=object)
            tbl = pa.table({"child_id": rows, "parent_id": parents, "artifact_id": arts})  # noqa: F841 (read by name)
            con.execute("INSERT INTO row_edges SELECT * FROM tbl")
            if kind in ("sft", "pairs"):
                samples.append(rng.choice(rows, 200))
        t1 = time.perf_counter()
        con.execute("CHECKPOINT")  # what closing the last connection does at the end of a real round
        con.close()
        total = sum(len(rows) for _, rows, _ in steps.values())
        size = path.stat().st_size
        sizes.append(
            {"round": r, "edges": total, "bytes": size, "insert_s": round(t1 - t0, 2)}
            | {"checkpoint_s": round(time.perf_counter() - t1, 2)}
        )
        grown = (size - (sizes[-2]["bytes"] if r > 1 else 0)) / 1e6
        print(f"round {r}: {total:,} edges, catalog {size / 1e6:.0f} MB (+{grown:.0f} MB), {sizes[-1]}", flush=True)
    return sizes, np.concatenate(samples)


def time_ms(fn, ids: list[str]) -> list[float]:
    out = []
    for i in ids:
        t0 = time.perf_counter()
        fn(i)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def summary(ms: list[float]) -> dict[str, float]:
    ms = sorted(ms)
    return {"median_ms": round(statistics.median(ms), 2), "p95_ms": round(ms[int(0.95 * (len(ms) - 1))], 2)}


@contextlib.contextmanager
def walk(query: str):
    """Catalog.row_lineage as `query` says, for every Catalog the process makes (the CLI makes its own)."""
    levels = Catalog.row_lineage
    if query == "recursive":
        Catalog.row_lineage = lambda self, row_id: self._query(RECURSIVE_SQL, [row_id])  # same I/O as before
    try:
        yield
    finally:
        Catalog.row_lineage = levels


def drop_page_cache(path: Path) -> None:
    """Evict the file from the OS page cache (clean pages need no root), so the next read goes to disk."""
    with open(path, "rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def fill_page_cache(path: Path) -> None:
    """Read the whole file once: warm lookups of random ids would otherwise each fault in index pages of
    their own from disk, and time the disk rather than the walk."""
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def run_lookups(path: Path, query: str, ids: list[str]) -> tuple[dict, list[list[dict]]]:
    """A cold first lookup (file not in the OS page cache), then warm ones (file in the page cache): opening
    the file per call as callers do, and with a connection held open."""
    from flows.cli import cmd_lineage

    def cli(row_id: str) -> None:
        with contextlib.redirect_stdout(io.StringIO()):
            cmd_lineage(argparse.Namespace(id=row_id, json=True, home=str(path.parent)))

    with walk(query):
        cat = Catalog(path)
        drop_page_cache(path)
        t0 = time.perf_counter()
        first = cat.row_lineage(ids[0])
        cold = (time.perf_counter() - t0) * 1e3
        fill_page_cache(path)
        out = {
            "cold_first_ms": round(cold, 2),
            "first_depth": max(r["depth"] for r in first),
            "row_lineage": summary(time_ms(cat.row_lineage, ids[1:])),
            "cli_lineage": summary(time_ms(cli, ids[1:])),
        }
        # A long-lived process (a server, a notebook) that keeps a connection open keeps DuckDB's database
        # instance, so each call reuses its buffer pool and loaded index instead of reopening the file.
        held = duckdb.connect(str(path))
        out["row_lineage_held"] = summary(time_ms(cat.row_lineage, ids[1:]))
        chains = [cat.row_lineage(i) for i in ids]
        held.close()
    return out, chains


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--edges", type=int, default=10_000_000, help="row edges in the catalog, over all rounds")
    ap.add_argument("--rounds", type=int, default=10, help="rounds the edges are spread over")
    ap.add_argument("--n", type=int, default=4, help="completions per prompt")
    ap.add_argument("--lookups", type=int, default=50, help="warm lookups timed after the cold one")
    ap.add_argument("--query", choices=["recursive", "levels", "both"], default="both", help="which walk to time")
    ap.add_argument("--dir", type=Path, default=None, help="where to build the catalog (default: a temp dir)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "catalog.duckdb"
        t0 = time.perf_counter()
        sizes, samples = build(path, args.edges, args.rounds, args.n, args.seed)
        build_s = time.perf_counter() - t0
        ids = list(random.Random(args.seed).sample(list(samples), args.lookups + 1))
        growth = [b["bytes"] - a["bytes"] for a, b in zip(sizes, sizes[1:])]
        result = {
            "edges": sum(s["edges"] for s in sizes),
            "rounds": args.rounds,
            "build_s": round(build_s, 1),
            "catalog_bytes": sizes[-1]["bytes"],
            "bytes_per_round": [s["bytes"] for s in sizes],
            "checkpoint_s_per_round": [s["checkpoint_s"] for s in sizes],
            "growth_first_last": [growth[0], growth[-1]] if growth else [],
            "lookups": args.lookups,
        }
        chains = {}
        for q in ["recursive", "levels"] if args.query == "both" else [args.query]:
            result[q], chains[q] = run_lookups(path, q, ids)
            print(f"{q}: {json.dumps(result[q])}", flush=True)
        if args.query == "both":
            key = lambda chain: sorted(map(repr, chain))  # noqa: E731 (the order within one depth is free)
            assert all(key(a) == key(b) for a, b in zip(chains["recursive"], chains["levels"])), "the walks disagree"
            old, new = result["recursive"]["row_lineage"], result["levels"]["row_lineage"]
            result["speedup_median"] = round(old["median_ms"] / new["median_ms"], 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
