"""Replay: train on this round's selection plus the best rows of earlier rounds (Llama 2's fix for the
regressions of its later RLHF rounds, which had forgotten what earlier rounds taught).

A replayed row is a copy of an earlier round's SFT row or DPO pair under a new row id, with the earlier
row as its parent in the row lineage and `replay_of` naming it. Rows of prompts that this round already
selected are never replayed, nor is one prompt replayed twice: a prompt's best row stands for it, the highest
reward (SFT) or margin (pairs), the newer round on a tie. The best rows go first.
"""

from __future__ import annotations

import math

from storage import ids


def replay_rows(
    kind: str,
    current: list[dict],
    earlier: list[list[dict]],
    round_num: int,
    share: float,
    cap: int,
    floor: int = 0,
) -> list[dict]:
    """Rows of earlier rounds to add to this round's `current` rows.

    Args:
        kind: "sft" (ranked by `reward`) or "pairs" (ranked by `margin`).
        earlier: each earlier round's rows, newest round first.
        share: replayed rows per row selected this round; `floor` replayed rows are allowed even when this
            round selected few (a round with a poor yield still trains on what the loop learned).
        cap: at most this many replayed rows.

    >>> now = [{"row_id": "a", "prompt_id": "p1", "reward": 1.0}]
    >>> r2 = [{"row_id": "b", "prompt_id": "p1", "reward": 1.0}, {"row_id": "c", "prompt_id": "p2", "reward": .5}]
    >>> r1 = [{"row_id": "d", "prompt_id": "p2", "reward": 1.0}, {"row_id": "e", "prompt_id": "p3", "reward": 1.0}]
    >>> [(r["replay_of"], r["row_id"] != r["replay_of"]) for r in replay_rows("sft", now, [r2, r1], 3, 2.0, 10)]
    [('d', True), ('e', True)]
    """
    budget = min(cap, max(math.floor(share * len(current)), floor))
    if budget <= 0:
        return []
    key = "reward" if kind == "sft" else "margin"
    taken = {r["prompt_id"] for r in current}
    candidates = [(age, row) for age, rows in enumerate(earlier) for row in rows if row["prompt_id"] not in taken]
    candidates.sort(key=lambda ar: (-float(ar[1][key] or 0.0), ar[0], ar[1]["row_id"]))
    ranked, seen = [], set()
    for age, row in candidates:
        if row["prompt_id"] not in seen:
            seen.add(row["prompt_id"])
            ranked.append((age, row))
    return [
        {
            **row,
            "row_id": ids.hash_obj(["replay", kind, round_num, row["row_id"]], ids.ROW_ID_LEN),
            "replay_of": row["row_id"],
        }
        for _, row in ranked[:budget]
    ]
