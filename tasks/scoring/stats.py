"""Intervals and sampling metrics for eval figures, so a promotion decision can tell signal from noise.

Run the doctests:  python -m pytest --doctest-modules tasks/scoring/stats.py
"""

from __future__ import annotations

import math
from collections import Counter

Z95 = 1.959963984540054  # two-sided 95 %


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (Wilson, 1927): sound at 0 %, 100 % and small n, unlike p ± z·se.

    >>> [round(x, 4) for x in wilson(45, 50)]
    [0.7864, 0.9565]
    >>> wilson(0, 0)
    (0.0, 1.0)
    """
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def difference_lower_bound(p1: float, ci1: tuple[float, float], p2: float, ci2: tuple[float, float]) -> float:
    """Lower 95 % bound of p1 - p2 from the two Wilson intervals (Newcombe, 1998, method 10).

    It treats the two figures as independent samples; a candidate and a policy scored on the same prompts
    are positively correlated, so for them the bound is conservative (the true one is higher).

    >>> round(difference_lower_bound(0.9, wilson(90, 100), 0.7, wilson(70, 100)), 4)
    0.09
    """
    lo1, _ = ci1
    _, hi2 = ci2
    return (p1 - p2) - math.sqrt((p1 - lo1) ** 2 + (hi2 - p2) ** 2)


def pass_at_k(n: int, correct: int, k: int) -> float:
    """Unbiased pass@k from n samples of which `correct` passed (Chen et al., 2021).

    >>> pass_at_k(8, 0, 4), pass_at_k(8, 8, 4), round(pass_at_k(8, 2, 4), 4)
    (0.0, 1.0, 0.7857)
    """
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - correct < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - correct + 1, n + 1))


def majority_correct(answers: list[str | None], is_correct: dict[str, bool]) -> bool:
    """maj@k: the most frequent extracted answer (ties: the first seen) is correct; no answer counts as none.

    >>> majority_correct(["45", "35", "45", None], {"45": True, "35": False})
    True
    """
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return False
    top = max(counts.values())
    winner = next(a for a in answers if a is not None and counts[a] == top)
    return bool(is_correct.get(winner, False))
