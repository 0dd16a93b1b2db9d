"""The round's prompt mixture: how many rows each source gives, which rows, and what was actually drawn.

Pure functions with exact arithmetic; `tasks.curate` calls them once per round.
Tests: python -m pytest tests/test_curate.py -q -k "draw or mixture"
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from storage.ids import hash_obj


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
    """The k rows with the smallest draw key (see `draw_keys`), smallest first.

    A hash rank instead of `random.sample` keeps the draw identical across Python versions and
    independent of row order, and it changes from round to round.
    """
    if not rows or k <= 0:
        return []
    keys = draw_keys([r["prompt_id"] for r in rows], seed, round_num)
    order = np.argsort(keys, kind="stable")[:k]
    return [rows[i] for i in order]


def draw_keys(prompt_ids: list[str], seed: int, round_num: int) -> np.ndarray:
    """A pseudo-random uint64 per prompt id, fixed by (seed, round): the splitmix64 finaliser of the id's
    first 64 bits xor a per-round key. Vectorised, because curation ranks millions of prompts; prompt ids
    are already uniform hashes, so mixing them (rather than hashing again) is enough.

    >>> [int(x) % 1000 for x in draw_keys(["00ff00ff00ff00ff00ff", "0123456789abcdef0123"], 0, 1)]
    [504, 92]
    """
    x = np.fromiter((int(p[:16], 16) for p in prompt_ids), dtype=np.uint64, count=len(prompt_ids))
    x ^= np.uint64(int(hash_obj(["draw", int(seed), int(round_num)], 16), 16))
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def mixture_report(weights: dict[str, float], available: dict[str, int], drawn: dict[str, int]) -> dict[str, dict]:
    """Per source: the configured weight and share, what was left after filtering, and what was drawn.

    Shares are fractions of the round's total; a source with fewer rows than its share shows a drawn
    share below its target, which is the first thing to look at when a mixture looks off.

    >>> mixture_report({"a": 3.0, "b": 1.0}, {"a": 500, "b": 40}, {"a": 300, "b": 40})["b"]
    {'weight': 1.0, 'target_share': 0.25, 'available': 40, 'drawn': 40, 'drawn_share': 0.1176}
    """
    wsum = sum(weights.values())
    total = sum(drawn.values())
    return {
        name: {
            "weight": weights[name],
            "target_share": round(weights[name] / wsum, 4),
            "available": available[name],
            "drawn": drawn[name],
            "drawn_share": round(drawn[name] / total, 4) if total else 0.0,
        }
        for name in weights
    }
