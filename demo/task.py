"""The demo's task: add a 1-digit number to a 2-digit number ("What is 37 plus 8?").

Problems are a 2-digit `a` (10..99) and a 1-digit `b` (1..9) in both orders, answer `str(a + b)`:
810 pairs, 1,620 prompts. A problem "needs a carry" when the units add up to 10 or more
(37 + 8, not 32 + 5); 810 prompts do. The held-out eval set is 150 carry prompts (75 pairs, both
orders), chosen from `seed`; every other prompt (1,470, of which 660 carry) is the pool that the
base model's pretraining and the flywheel rounds draw from.

Write the demo's data files:  python -m demo.task --out data/demo [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

TEMPLATE = "plus-v1"  # provenance of the pool rows: which prompt template wrote them
N_HELDOUT_PAIRS = 75  # x 2 orders = 150 held-out prompts

# Plan of extra.parquet (see `make_extra_rows`).
N_EXTRA_VARIANTS = 40  # pool prompts with other whitespace/case: duplicates after normalisation
N_EXTRA_LEAKS = 10  # held-out prompts verbatim: eval leaks for decontamination to catch
N_EXTRA_COPIES = 10  # pool prompts verbatim


def has_carry(a: int, b: int) -> bool:
    """True when adding the 1-digit `b` to `a` carries into the tens (37 + 8: yes; 32 + 5: no)."""
    return a % 10 + b >= 10


def render_prompt(x: int, y: int) -> str:
    return f"What is {x} plus {y}?"


def operands(prompt: str) -> tuple[int, int]:
    """(a, b) of a prompt in either order: operands("What is 8 plus 37?") == (37, 8)."""
    x, y = (int(n) for n in re.findall(r"\d+", prompt))
    return (x, y) if x >= 10 else (y, x)


def _rows_for_pair(a: int, b: int) -> list[dict]:
    answer = str(a + b)
    return [{"prompt": render_prompt(a, b), "answer": answer}, {"prompt": render_prompt(b, a), "answer": answer}]


def make_problems(seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Split all 1,620 prompts into (pool, heldout).

    Args:
        seed: picks the 75 carry pairs of the held-out set; the same seed always gives the same split.

    Returns:
        (pool, heldout): lists of {"prompt": str, "answer": str}. heldout has 150 carry prompts
        (both orders of 75 pairs); pool has the other 1,470. Both are in (a, b) order.
    """
    pairs = [(a, b) for a in range(10, 100) for b in range(1, 10)]
    carry_pairs = [p for p in pairs if has_carry(*p)]
    held = set(random.Random(seed).sample(carry_pairs, N_HELDOUT_PAIRS))
    pool = [row for p in pairs if p not in held for row in _rows_for_pair(*p)]
    heldout = [row for p in pairs if p in held for row in _rows_for_pair(*p)]
    return pool, heldout


def _variant(prompt: str, k: int) -> str:
    """A copy of `prompt` that differs only in whitespace runs and letter case.

    Such copies are the same prompt once whitespace runs are folded and case is folded
    (`storage.ids.text_hash`), so exact dedup must drop them. No space is put before the "?":
    that would be a different text after whitespace folding, not a duplicate.
    """
    words = prompt.split(" ")
    styles = [
        lambda: "  ".join(words),  # double spaces
        lambda: prompt.lower(),
        lambda: prompt.upper(),
        lambda: f"  {prompt}\t",  # leading/trailing whitespace
        lambda: "\t".join(words).lower(),
        lambda: " ".join(words[:2]) + "   " + " ".join(words[2:]),
        lambda: prompt.replace("What", "WHAT").replace("plus", "Plus"),
        lambda: " " + prompt.lower() + "\n",
    ]
    return styles[k % len(styles)]()


def make_extra_rows(pool: list[dict], heldout: list[dict], seed: int = 0) -> list[dict]:
    """Rows of the second source, with its own column names (question, solution, origin).

    Plan (60 rows, shuffled, every `solution` correct):
    - 40 "case-whitespace-variant": distinct pool prompts rewritten with other whitespace and case
      ("what is 37 plus 8?", "What  is  37  plus  8?"). New strings, but duplicates of pool prompts
      after normalisation, so exact dedup has something to drop.
    - 10 "heldout-copy": held-out prompts verbatim, planted eval leaks that decontamination must catch.
    - 10 "pool-copy": other pool prompts verbatim.
    The `origin` column says which is which, so tests and reports can check what curation removed.
    """
    rng = random.Random(f"extra-{seed}")
    picked = rng.sample(pool, N_EXTRA_VARIANTS + N_EXTRA_COPIES)
    variants, copies = picked[:N_EXTRA_VARIANTS], picked[N_EXTRA_VARIANTS:]
    leaks = rng.sample(heldout, N_EXTRA_LEAKS)
    rows = (
        [
            {"question": _variant(r["prompt"], k), "solution": r["answer"], "origin": "case-whitespace-variant"}
            for k, r in enumerate(variants)
        ]
        + [{"question": r["prompt"], "solution": r["answer"], "origin": "heldout-copy"} for r in leaks]
        + [{"question": r["prompt"], "solution": r["answer"], "origin": "pool-copy"} for r in copies]
    )
    rng.shuffle(rows)
    return rows


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


# Malformed lines a real crawl dump has, appended to the pool so every round shows its quarantine at work.
MALFORMED_POOL_LINES = [
    '{"prompt": "What is 41 plus 7?", "answer": "48"',  # truncated: invalid JSON
    '{"prompt": 41, "answer": "48", "template": "plus-v1"}',  # prompt is not text
    '{"prompt": "   ", "answer": "0", "template": "plus-v1"}',  # empty prompt
    '{"answer": "12", "template": "plus-v1"}',  # no prompt field
]


def write_jsonl(path: Path, rows: list[dict], raw_lines: list[str] = ()) -> None:
    tmp = _tmp_path(path)
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        for line in raw_lines:
            f.write(line + "\n")
    os.replace(tmp, path)  # atomic: readers see the old file or the whole new one


def _write_parquet(path: Path, rows: list[dict]) -> None:
    tmp = _tmp_path(path)
    pq.write_table(pa.Table.from_pylist(rows), tmp)
    os.replace(tmp, path)


def write_demo_data(out_dir: Path, seed: int = 0) -> dict[str, Path]:
    """Write the demo's two prompt sources and its held-out eval set into `out_dir`.

    Files:
        pool.jsonl      1,470 rows {"prompt", "answer", "template": "plus-v1"}, then the 4 malformed
                        lines of MALFORMED_POOL_LINES (quarantined by curation)
        extra.parquet   60 rows {"question", "solution", "origin"}: see `make_extra_rows`
        heldout.jsonl   150 rows {"prompt", "answer"}

    Returns:
        {"pool": path, "extra": path, "heldout": path}
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pool, heldout = make_problems(seed)
    paths = {"pool": out_dir / "pool.jsonl", "extra": out_dir / "extra.parquet", "heldout": out_dir / "heldout.jsonl"}
    write_jsonl(paths["pool"], [{**r, "template": TEMPLATE} for r in pool], MALFORMED_POOL_LINES)
    _write_parquet(paths["extra"], make_extra_rows(pool, heldout, seed))
    write_jsonl(paths["heldout"], heldout)
    return paths


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="Directory to write the three files into.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the held-out split and of extra.parquet.")
    args = parser.parse_args()
    for name, path in write_demo_data(args.out, args.seed).items():
        print(f"{name:8s} {path}")
