"""What an eval set's answers add up to: accuracy or IFEval's four figures, each with its 95 % interval,
and pass@k / maj@k from sampled answers. Pure functions of answers and checks; tasks/evaluate.py runs them.
"""

from __future__ import annotations

from collections import defaultdict

from tasks.scoring.stats import majority_correct, pass_at_k, wilson

IFEVAL_LEVELS = ("prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose")


def proportion(key: str, successes: float, n: int) -> dict[str, float]:
    """{key: share, key/ci_low, key/ci_high, key/n}: a figure and its Wilson interval.

    >>> proportion("accuracy/h", 45, 50)["accuracy/h/ci_low"].__round__(4)
    0.7864
    """
    lo, hi = wilson(successes, n)
    return {key: successes / n if n else float("nan"), f"{key}/ci_low": lo, f"{key}/ci_high": hi, f"{key}/n": float(n)}


def ifeval_metrics(name: str, checked: list, level: str) -> dict[str, float]:
    """IFEval's report for one set: prompt- and instruction-level accuracy, strict and loose, with intervals;
    loose accuracy per instruction type; and `ifeval/<set>` = the configured headline `level`.

    Args:
        checked: one tasks.scoring.ifeval.IFEvalResult per prompt.
    """
    n_prompts = len(checked)
    checks = [c for r in checked for c in r.checks]
    out: dict[str, float] = {}
    out |= proportion(f"ifeval/{name}/prompt_strict", sum(r.prompt_strict for r in checked), n_prompts)
    out |= proportion(f"ifeval/{name}/prompt_loose", sum(r.prompt_loose for r in checked), n_prompts)
    out |= proportion(f"ifeval/{name}/instruction_strict", sum(c.strict for c in checks), len(checks))
    out |= proportion(f"ifeval/{name}/instruction_loose", sum(c.loose for c in checks), len(checks))
    by_type: dict[str, list[bool]] = defaultdict(list)
    for c in checks:
        by_type[c.instruction_id].append(c.loose)
    for kind, held in sorted(by_type.items()):
        out[f"ifeval/{name}/type/{kind}"] = sum(held) / len(held)
    out["ifeval/" + name + "/errors"] = float(sum(len(r.errors) for r in checked))
    for suffix in ("", "/ci_low", "/ci_high", "/n"):
        out[f"ifeval/{name}{suffix}"] = out[f"ifeval/{name}/{level}{suffix}"]
    return out


def sampled_metrics(name: str, passed: list[list[bool]], answers: list[list[str | None]] | None = None) -> dict:
    """pass@k for k = 1, 2, 4, ... up to the samples per prompt; with `answers` (extracted, per sample) also
    maj@k, the majority answer of the first k samples being one that passed.

    >>> sampled_metrics("h", [[True, False], [False, False]])
    {'pass@1/h': 0.25, 'pass@2/h': 0.5}
    """
    n = min((len(p) for p in passed), default=0)
    out: dict[str, float] = {}
    k = 1
    while k <= n:
        out[f"pass@{k}/{name}"] = sum(pass_at_k(n, sum(p[:n]), k) for p in passed) / len(passed)
        if answers is not None:
            maj = [
                majority_correct(a[:k], {x: ok for x, ok in zip(a[:k], p[:k]) if x is not None})
                for a, p in zip(answers, passed)
            ]
            out[f"maj@{k}/{name}"] = sum(maj) / len(maj)
        k *= 2
    return out
