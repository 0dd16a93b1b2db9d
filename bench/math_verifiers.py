r"""Our math answer verifier (tasks.scoring.verifiers.math_equal) against Hugging Face's math-verify.

One table of literal cases, (completion text, reference answer, what a careful human grader says,
category), run through both verifiers. A verifier is "correct" on a case when its verdict equals the
human verdict. Prints a markdown table per category, every case where the two verifiers disagree (and
every case both get wrong), and the time per check of each.

math-verify is called the way its own lighteval tasks call it: the reference is gold, extracted as
LaTeX with \boxed{} first (a bare reference is wrapped in \boxed{}; a GSM8K worked solution is cut to
what follows its last "####", as lighteval's gsm8k prompt function does); the completion is the
prediction, extracted with the default LaTeX + plain-expression configs; then verify(gold, pred).

Ours is run as MathAnswerScorer runs it by default (allow_percent=False); a second column shows
allow_percent=True. A third, "routed", uses ours when the reference is a number and math-verify when it
is not (an expression, interval or set).

Run:  .venv/bin/python bench/math_verifiers.py
"""

from __future__ import annotations

import logging
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.scoring import symbolic  # noqa: E402
from tasks.scoring.verifiers import math_equal, parse_number  # noqa: E402

# (completion, reference, expected verdict, category)
CASES: list[tuple[str, str, bool, str]] = [
    # The demo: "What is 37 plus 8?" -> "45".
    ("45", "45", True, "demo"),
    (" 45", "45", True, "demo"),
    ("45.", "45", True, "demo"),
    ("45\n", "45", True, "demo"),
    ("The answer is 45", "45", True, "demo"),
    ("The answer is 45.", "45", True, "demo"),
    ("37 plus 8 is 45.", "45", True, "demo"),
    ("37 + 8 = 45", "45", True, "demo"),
    ("35", "45", False, "demo"),
    ("The answer is 35.", "45", False, "demo"),
    ("4", "45", False, "demo"),
    ("What is 37 plus 8?", "45", False, "demo"),
    ("37 + 8", "45", False, "demo"),  # restates the sum without answering it
    # A plain number at the end of a sentence.
    ("so it is 45", "45", True, "plain-sentence"),
    ("So she has 12 apples left.", "12", True, "plain-sentence"),
    ("I think the result is 7", "7", True, "plain-sentence"),
    ("Therefore, x equals 9.", "9", True, "plain-sentence"),
    ("so it is 45", "46", False, "plain-sentence"),
    # GSM8K "#### N".
    (
        "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in April and May.\n#### 72",
        "72",
        True,
        "gsm8k",
    ),
    (
        "She earns 12/60 = $0.2 per minute.\nWorking 50 minutes, she earned 0.2 x 50 = $10.\n#### 10",
        "10",
        True,
        "gsm8k",
    ),
    ("He has 5 + 3 = 8 apples.\n#### 9", "8", False, "gsm8k"),  # right working, wrong final answer
    ("#### $18", "18", True, "gsm8k"),
    (
        "The answer is 72",
        "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
        "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72",
        True,
        "gsm8k",
    ),  # the reference is a GSM8K worked solution
    # \boxed{}.
    (r"\boxed{45}", "45", True, "boxed"),
    (r"Thus $x = \boxed{\frac{3}{4}}$.", r"\frac{3}{4}", True, "boxed"),
    (r"The final answer is $\boxed{0.75}$.", r"\frac34", True, "boxed"),
    (r"I first thought \boxed{3}, but that is wrong; the answer is \boxed{5}.", "5", True, "boxed"),
    (r"\boxed{}", "45", False, "boxed"),
    (r"$\boxed{x = 5}$", "5", True, "boxed"),
    (r"\boxed{\sqrt{2}}", r"\sqrt{2}", True, "boxed"),
    (r"\boxed{45 \text{ apples}}", "45", True, "boxed"),
    (r"\boxed{12}", "21", False, "boxed"),
    # Fractions and decimals.
    ("1/2", "0.5", True, "fraction-decimal"),
    ("0.5", r"\frac{1}{2}", True, "fraction-decimal"),
    ("The answer is 3/4.", "0.75", True, "fraction-decimal"),
    (r"\dfrac{1}{20}", "0.05", True, "fraction-decimal"),
    ("0.125", "1/8", True, "fraction-decimal"),
    ("2/4", "1/2", True, "fraction-decimal"),
    ("0.33", "1/3", False, "fraction-decimal"),
    (r"The probability is $\frac{1}{2}$.", "2", False, "fraction-decimal"),
    # Negative numbers.
    ("-3", "-3", True, "negative"),
    ("3", "-3", False, "negative"),
    ("-45", "45", False, "negative"),
    ("The temperature is \u22123 degrees.", "-3", True, "negative"),  # U+2212 minus sign
    ("x = -7", "-7", True, "negative"),
    ("10 - 3 = 7", "7", True, "negative"),  # a binary minus is not a sign
    ("The answer is (-3).", "-3", True, "negative"),
    # Thousands separators.
    ("1,000", "1000", True, "thousands"),
    ("The total is 1,234,567.", "1234567", True, "thousands"),
    ("It costs 2,500 dollars.", "2500", True, "thousands"),
    ("#### 1,000", "1000", True, "thousands"),
    ("1 000 000", "1000000", True, "thousands"),
    ("1,000", "1", False, "thousands"),
    ("The answer is 10,000", "1000", False, "thousands"),
    # Units and currency.
    ("$45", "45", True, "units-currency"),
    ("45 dollars", "45", True, "units-currency"),
    (r"The answer is \$18.00", "18", True, "units-currency"),
    ("It is 45 cm long.", "45", True, "units-currency"),
    ("It takes 3 hours.", "3", True, "units-currency"),
    ("He pays $12.50 in total.", "12.5", True, "units-currency"),
    ("The angle is 90\u00b0.", "90", True, "units-currency"),
    (r"$45\text{ cm}$", "45", True, "units-currency"),
    ("$54", "45", False, "units-currency"),
    # Percent.
    ("25%", "25%", True, "percent"),
    (r"$25\%$", r"25\%", True, "percent"),
    ("25%", "25", True, "percent"),  # GSM8K writes "what percent" answers bare
    ("The discount is 25 percent.", "25", True, "percent"),
    ("50%", "0.5", True, "percent"),
    ("2.5%", "25", False, "percent"),
    ("5%", "50", False, "percent"),
    # Scientific notation.
    ("5e-2", "0.05", True, "scientific"),
    (r"$5 \times 10^{-2}$", "0.05", True, "scientific"),
    (r"The speed is $3 \times 10^8$ m/s.", "300000000", True, "scientific"),
    ("1.2e3", "1200", True, "scientific"),
    (r"$6.02 \times 10^{23}$", r"6.02 \times 10^{23}", True, "scientific"),
    ("5e-3", "0.05", False, "scientific"),
    # Expressions equal under algebra.
    ("$2x+1$", "1+2x", True, "symbolic"),
    ("The answer is 2x+1.", "1+2x", True, "symbolic"),  # ours: right only by luck, see the 2x+5 case
    (r"\boxed{(x+1)^2}", "x^2+2x+1", True, "symbolic"),
    (r"\boxed{\sqrt{8}}", r"2\sqrt{2}", True, "symbolic"),
    ("$2^{10}$", "1024", True, "symbolic"),
    (r"The answer is $\frac{\pi}{2}$.", r"\pi/2", True, "symbolic"),
    (r"\boxed{3\pi}", r"3\pi", True, "symbolic"),
    (r"$\boxed{\frac{\sqrt{3}}{2}}$", r"\frac{\sqrt3}{2}", True, "symbolic"),
    (r"\boxed{2x+2}", "2x+1", False, "symbolic"),
    ("The answer is 2x+5.", "1+2x", False, "symbolic"),
    (r"\boxed{(x+1)^3}", "x^2+2x+1", False, "symbolic"),
    (r"\boxed{x+3}", "x+2", False, "symbolic"),
    (r"\boxed{\frac{\sqrt{3}}{3}}", r"\frac{\sqrt3}{2}", False, "symbolic"),
    # Intervals and sets.
    (r"\boxed{(1, 2]}", "(1,2]", True, "interval-set"),
    (r"\boxed{[1, 2]}", "(1,2)", False, "interval-set"),
    ("The solutions are $x = 2$ and $x = 3$.", "2, 3", True, "interval-set"),
    (r"\boxed{3, 2}", "2, 3", True, "interval-set"),
    (r"\boxed{2}", "2, 3", False, "interval-set"),  # one root missing
    (r"\boxed{3, 5}", "2, 3", False, "interval-set"),
    (r"\boxed{(2, 5]}", "(1,2]", False, "interval-set"),
    (r"\boxed{(-\infty, 3)}", "x < 3", True, "interval-set"),
    # Several numbers in the text: the final answer counts.
    ("First I got 12, then I add 33 to get 45.", "45", True, "multiple-numbers"),
    ("3 + 4 = 7, then 7 * 6 = 42.", "42", True, "multiple-numbers"),
    ("Step 1: 20 apples. Step 2: 25 apples. Total: 45 apples.", "45", True, "multiple-numbers"),
    ("There are 3 boxes with 15 each, so 3 * 15 = 45 in total.", "45", True, "multiple-numbers"),
    ("It is 45... wait, no, it's 46.", "45", False, "multiple-numbers"),
    ("It is 45... wait, no, it's 46.", "46", True, "multiple-numbers"),
    ("Answer: 12. Explanation: 3 times 4 is 12, and 5 more would be 17.", "12", True, "multiple-numbers"),
    # Wrong answers that share digits with the right one.
    ("450", "45", False, "shared-digits"),
    ("4.5", "45", False, "shared-digits"),
    ("54", "45", False, "shared-digits"),
    ("145", "45", False, "shared-digits"),
    ("45.1", "45", False, "shared-digits"),
    ("12", "123", False, "shared-digits"),
    ("The answer is 4500.", "450", False, "shared-digits"),
    # Chatter after the answer.
    ("The answer is 45. I hope this helps!", "45", True, "trailing-chatter"),
    ("45\n\nLet me know if you have other questions.", "45", True, "trailing-chatter"),
    ("**Final Answer:** 45\n\nThis was a fun problem with 2 steps.", "45", True, "trailing-chatter"),
    ("45 is the answer. Step 2 was the hardest.", "45", True, "trailing-chatter"),
    ("The answer is 45. Double-check: 37 + 8 = 45, correct.", "45", True, "trailing-chatter"),
    ("So the total is 45 apples. Have a nice day, and good luck on test 3!", "45", True, "trailing-chatter"),
    # No answer at all.
    ("", "45", False, "no-answer"),
    ("I don't know.", "45", False, "no-answer"),
    ("Let me think about this problem step by step.", "45", False, "no-answer"),
    ("I cannot solve this without more information.", "45", False, "no-answer"),
    ("The answer is blue.", "45", False, "no-answer"),
    ("forty-five", "45", True, "no-answer"),  # a number in words: right, though neither verifier reads words
]

_TIMING_PASSES = 3


def ours(completion: str, reference: str, allow_percent: bool = False) -> bool:
    return math_equal(completion, reference, allow_percent=allow_percent)


def _math_verify():
    """math-verify's parse/verify and the two extraction settings (imported lazily: it pulls in sympy and antlr)."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    gold_config = (LatexExtractionConfig(boxed_match_priority=0),)
    pred_config = (LatexExtractionConfig(), ExprExtractionConfig())
    return parse, verify, gold_config, pred_config


def math_verify_equal(completion: str, reference: str) -> bool:
    """verify(gold, pred) with the reference as gold and the completion as the prediction."""
    parse, verify, gold_config, pred_config = _math_verify()
    ref = _final_reference(reference)
    gold = parse(ref if "\\boxed" in ref or "$" in ref else f"\\boxed{{{ref}}}", gold_config)
    if not gold:
        gold = parse(ref, pred_config)
    pred = parse(completion, pred_config)
    return bool(gold) and bool(pred) and verify(gold, pred)


def _final_reference(reference: str) -> str:
    """The answer part of a reference: what follows the last "####" of a GSM8K worked solution, else all of it."""
    return reference.rsplit("####", 1)[1].strip() if "####" in reference else reference.strip()


def routed(completion: str, reference: str) -> bool:
    """Ours for a numeric reference, math-verify for anything else (expressions, intervals, sets)."""
    if _numeric_reference(reference):
        return ours(completion, reference)
    return math_verify_equal(completion, reference)


def _numeric_reference(reference: str) -> bool:
    return parse_number(_final_reference(reference)) is not None


def _time_us(fn, passes: int, cases: list[tuple[str, str, bool, str]]) -> float:
    start = time.perf_counter()
    for _ in range(passes):
        symbolic.parse_symbolic.cache_clear()  # every pass parses afresh, as new completions would
        for completion, reference, _, _ in cases:
            fn(completion, reference)
    return (time.perf_counter() - start) / (passes * len(cases)) * 1e6


def run(timing_passes: int = _TIMING_PASSES) -> dict:
    """Verdicts of each verifier on every case, per-category counts, disagreements and µs per check."""
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # its "no prediction extracted" warnings
    rows = []
    for completion, reference, expected, category in CASES:
        rows.append(
            {
                "completion": completion,
                "reference": reference,
                "expected": expected,
                "category": category,
                "ours": ours(completion, reference),
                "ours_percent": ours(completion, reference, allow_percent=True),
                "math_verify": math_verify_equal(completion, reference),
                "routed": routed(completion, reference),
            }
        )
    by_category: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for row in rows:
        for key in ("all", row["category"]):
            counts = by_category[key]
            counts["cases"] += 1
            for name in ("ours", "ours_percent", "math_verify", "routed"):
                counts[name] += row[name] == row["expected"]
    disagreements = [r for r in rows if r["ours"] != r["math_verify"]]
    both_wrong = [r for r in rows if r["ours"] == r["math_verify"] != r["expected"]]
    numeric = [case for case in CASES if _numeric_reference(case[1])]
    timing = {"numeric_cases": len(numeric)}
    for name, fn in (("ours", ours), ("math_verify", math_verify_equal), ("routed", routed)):
        timing[f"{name}_us"] = _time_us(fn, timing_passes, CASES)
        timing[f"{name}_numeric_us"] = _time_us(fn, timing_passes, numeric)
    order = [c for c in dict.fromkeys(r["category"] for r in rows)] + ["all"]
    return {
        "rows": rows,
        "by_category": {c: dict(by_category[c]) for c in order},
        "disagreements": disagreements,
        "both_wrong": both_wrong,
        "timing": timing,
    }


def _verdict(ok: bool) -> str:
    return "right" if ok else "wrong"


def _case_table(rows: list[dict]) -> list[str]:
    lines = ["| category | completion | reference | human | ours | math-verify |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['category']} | `{r['completion']!r}` | `{r['reference']!r}` | {r['expected']} "
            f"| {r['ours']} ({_verdict(r['ours'] == r['expected'])}) "
            f"| {r['math_verify']} ({_verdict(r['math_verify'] == r['expected'])}) |"
        )
    return lines


def report(result: dict) -> str:
    lines = [
        "| category | cases | ours correct | ours, allow_percent | math-verify correct | routed correct |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for category, c in result["by_category"].items():
        name = f"**{category}**" if category == "all" else category
        lines.append(
            f"| {name} | {c['cases']} | {c['ours']} | {c['ours_percent']} | {c['math_verify']} | {c['routed']} |"
        )
    lines += ["", f"Disagreements ({len(result['disagreements'])}):", ""]
    lines += _case_table(result["disagreements"])
    lines += ["", f"Both wrong ({len(result['both_wrong'])}):", ""]
    lines += _case_table(result["both_wrong"])
    t = result["timing"]
    lines += [
        "",
        f"Timing, mean µs per check over {_TIMING_PASSES} passes: all {len(CASES)} cases: ours {t['ours_us']:.0f}, "
        f"math-verify {t['math_verify_us']:.0f} ({t['math_verify_us'] / t['ours_us']:.0f}x), "
        f"routed {t['routed_us']:.0f}; the {t['numeric_cases']} with a numeric reference: "
        f"ours {t['ours_numeric_us']:.0f}, math-verify {t['math_verify_numeric_us']:.0f} "
        f"({t['math_verify_numeric_us'] / t['ours_numeric_us']:.0f}x), routed {t['routed_numeric_us']:.0f}.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(run()))
