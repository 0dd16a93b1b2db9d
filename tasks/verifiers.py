r"""Verifiable reward for math-style prompts: pull the final answer out of free text, compare it exactly.

Plain Python (fractions), no sympy: `"45" == "45.0" == "45.00"`, `"1,234" == "1234"`, `"1/20" == "0.05"`,
`\frac{1}{20}` too. Numbers are compared as exact fractions, never as floats, so "0.1 + 0.2" style
rounding cannot turn a wrong answer into a right one.

Run the doctests (from the repo root):  python -m pytest --doctest-modules tasks/verifiers.py
"""
from __future__ import annotations

import re
from fractions import Fraction

# A number as people write it: optional sign, thousands separators, decimals, an optional /denominator.
# The sign counts only where it cannot be a binary minus ("10-3" ends in 3, not -3).
_NUMBER = (
    r"(?:(?<![\w)\]}])[-+\u2212])?"  # sign (\u2212 is the typographic minus)
    r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)"  # 1,234,567 or 1234567
    r"(?:\.\d+)?"  # decimals
    r"(?:/\d+(?:\.\d+)?)?"  # fraction 1/20
)
_NUMBER_RE = re.compile(_NUMBER)
_FULL_NUMBER_RE = re.compile(rf"\s*({_NUMBER})\s*")
_ANSWER_IS_RE = re.compile(r"\bthe\s+(?:final\s+)?answer\s+is\s*:?\s*(.+?)(?=\.\s|\.?$|\n)", re.IGNORECASE)
_FRAC_RE = re.compile(r"^\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}$")
_BOXED = "\\boxed"


def extract_answer(text: str) -> str | None:
    r"""The final answer in free text, as written, or None.

    In order of preference: the content of the last \boxed{...}; else what follows the last
    "The answer is"; else the last number in the text.

    >>> extract_answer(r"so x = \boxed{45}.")
    '45'
    >>> extract_answer(r"\boxed{\frac{1}{20}}")
    '\\frac{1}{20}'
    >>> extract_answer("3 + 4 = 7, so the answer is 1,234. Check: 9")
    '1,234'
    >>> extract_answer("The answer is blue.")
    'blue'
    >>> extract_answer("We owe -3.5 dollars, 10-3 = 7")
    '7'
    >>> extract_answer("He lost -3")
    '-3'
    >>> extract_answer("no digits here") is None
    True
    """
    if not text:
        return None
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed or None  # an empty box is no answer, not a cue to go looking for some other number
    said = _ANSWER_IS_RE.findall(text)
    if said:
        phrase = said[-1].strip().strip("$").strip()
        number = _NUMBER_RE.search(phrase)
        # "The answer is 45 apples" -> 45; "The answer is blue" -> blue
        return number.group(0) if number else (phrase or None)
    numbers = _NUMBER_RE.findall(text)
    return numbers[-1] if numbers else None


def math_equal(answer: str, reference: str) -> bool:
    """Whether the final answer in `answer` (free text) equals `reference`.

    Both sides as exact numbers when they parse as numbers; otherwise as case-folded text.

    >>> math_equal("The answer is 45.", "45.0")
    True
    >>> math_equal("1,234", "1234"), math_equal("1/20", "0.05"), math_equal("-3", "-3")
    (True, True, True)
    >>> math_equal("45", "54"), math_equal("4", "45"), math_equal("", "45"), math_equal("-3", "3")
    (False, False, False, False)
    """
    predicted = extract_answer(answer or "")
    if predicted is None or reference is None:
        return False
    got, want = _as_number(predicted), parse_number(reference)
    if want is None:
        # A reference may itself be worked text ending in its answer (e.g. GSM8K's "... #### 72").
        want = _as_number(extract_answer(reference) or "")
    if got is not None and want is not None:
        return got == want
    if got is None and want is None:
        a, b = _norm_text(predicted), _norm_text(reference)
        return bool(a) and a == b
    return False


def parse_number(text: str) -> Fraction | None:
    r"""`text` as an exact number when the whole of it is one, else None.

    Accepts signs, thousands separators, decimals, a/b, \frac{a}{b}, and surrounding $ or a trailing %
    or period.

    >>> parse_number("45.00"), parse_number("-1,234"), parse_number(r"\dfrac{1}{20}"), parse_number("$7.")
    (Fraction(45, 1), Fraction(-1234, 1), Fraction(1, 20), Fraction(7, 1))
    >>> parse_number("45 apples") is None, parse_number("1/0") is None
    (True, True)
    """
    s = text.strip().replace("\\$", "").replace("\\%", "").strip("$% ").rstrip(".").strip()
    frac = _FRAC_RE.match(s)
    if frac:
        num, den = parse_number(frac.group(1)), parse_number(frac.group(2))
        return num / den if num is not None and den else None
    full = _FULL_NUMBER_RE.fullmatch(s)
    if not full:
        return None
    value = full.group(1).replace(",", "").replace("\u2212", "-")
    num_text, _, den_text = value.partition("/")
    num = Fraction(num_text)
    if not den_text:
        return num
    den = Fraction(den_text)
    return num / den if den else None


def math_answer_reward(completions: list[str], answer: list[str], **kwargs) -> list[float]:
    """TRL-style reward function: 1.0 where the completion's final answer equals the reference, else 0.0.

    >>> math_answer_reward(["so 2+2 = 4", "it is 5"], answer=["4", "4"])
    [1.0, 0.0]
    """
    return [1.0 if math_equal(c, a) else 0.0 for c, a in zip(completions, answer, strict=True)]


def _as_number(text: str) -> Fraction | None:
    """The whole text as a number, else its last number (\\boxed{x = 5} -> 5), else None."""
    value = parse_number(text)
    if value is None:
        numbers = _NUMBER_RE.findall(text)
        value = parse_number(numbers[-1]) if numbers else None
    return value


def _last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...}, with nested braces balanced; None if there is none (or unbalanced)."""
    start = text.rfind(_BOXED)
    while start != -1:
        i = start + len(_BOXED)
        while i < len(text) and text[i].isspace():
            i += 1
        if i < len(text) and text[i] == "{":
            depth = 0
            for j in range(i, len(text)):
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                if depth == 0:
                    return text[i + 1:j].strip()
        start = text.rfind(_BOXED, 0, start)  # unbalanced or brace-less: try an earlier one
    return None


def _norm_text(text: str) -> str:
    return " ".join(text.strip().strip("$").rstrip(".").casefold().split())
