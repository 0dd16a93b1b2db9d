r"""Verifiable reward for math-style prompts: pull the final answer out of free text, compare it exactly.

`"45" == "45.0"`, `"1,234" == "1 234" == "1_234" == "1234"`, `"1/20" == "0.05" == ".05" == "5e-2" ==
"5 \times 10^{-2}" == "\dfrac{1}{20}"`, and small expressions (`2^10`, `\sqrt{16}`, `3/4 + 1/4`) through
sympy. Rational values are compared as exact fractions, never as floats, so rounding cannot turn a wrong
answer into a right one ("0.33" != "1/3"); only irrational values (`\sqrt{2}`) use a 1e-6 relative
tolerance. Plain numbers never import sympy.

Percent: a "%" is part of the value. Without `allow_percent`, "5%" equals only "5%"; with it, a percent on
one side may be read either as the percentage or as the fraction, so "5%" == "5" == "0.05" (but "5" is
still != "0.05": with no "%" anywhere there is nothing to reinterpret).

A reference whose final answer is not a number (an expression, an interval, a set: "1+2x", "(1,2]") goes to
Hugging Face's math-verify instead, which compares such answers symbolically; numbers stay here, where this
module is right more often and about 18x faster (bench/math_verifiers.py has the shared table of cases).

Run the doctests (from the repo root):  python -m pytest --doctest-modules tasks/scoring/verifiers.py
"""

from __future__ import annotations

import math
import re
import threading
from fractions import Fraction

from tasks.scoring.symbolic import MAX_EXPR_CHARS, Number, parse_symbolic

_Value = tuple[Number, bool]  # (number as written, whether it carried a percent sign)

_SIGN = r"(?:(?<![\w)\]}])[-+\u2212])?"  # a sign only where it cannot be a binary minus ("10-3" ends in 3)
# Digit groups must use one separator throughout: "1,000,000", "1 000 000", "1_000_000".
_DIGITS = r"(?:\d{1,3}(?P<sep>[,_ \u2009\u202f\u00a0])\d{3}(?:(?P=sep)\d{3})*(?!\d)|\d+)(?:\.\d+)?|\.\d+"
_EXP_ARG = r"(?:\{\s*[-+\u2212]?\d+\s*\}|[-+\u2212]?\d+)"
_SCALE = rf"(?:[eE][-+]?\d+|\s*(?:[x×·*]|\\times|\\cdot)\s*10\s*\^\s*{_EXP_ARG}|\^\s*{_EXP_ARG})"
_LATEX = r"\\[dt]?frac(?:\{[^{}]+\}\{[^{}]+\}|\d\d)|\\sqrt\{[^{}]+\}|sqrt\([^()]+\)"
# One quantity as written in prose: 45, -1,234.5, 1/20, 5e-2, 5 \times 10^{-2}, 2^10, \frac{1}{2}, 50%.
_QUANTITY_RE = re.compile(rf"{_SIGN}(?:{_LATEX}|(?:{_DIGITS})(?:/\d+(?:\.\d+)?)?{_SCALE}?)(?:\s*\\?%)?")
_PLAIN_RE = re.compile(rf"[-+\u2212]?(?:{_DIGITS})(?:[eE][-+]?\d+)?(?:/(?:{_DIGITS.replace('sep', 'sep2')}))?")
_SEPARATOR_RE = re.compile(r"(?<=\d)[,_ \u2009\u202f\u00a0](?=\d{3})")
_FRAC_RE = re.compile(r"\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}")
_CUE_RE = re.compile(r"(?:\bthe\s+(?:final\s+)?answer\s+is|\banswer\s*:)\s*:?\s*(.+?)(?=\.\s|\.?$|\n)", re.IGNORECASE)
_GSM8K_RE = re.compile(r"####\s*([^\n]+)")
_UNWRAP_RE = re.compile(r"\\(?:text|textbf|mathrm|mbox|operatorname)\s*\{([^{}]*)\}")
_DROP_RE = re.compile(r"\\[()\[\]]|\\[!,;: ]|\\left|\\right|\\displaystyle|\^\s*\{?\\circ\}?|°|\\\$|\$")
_BOXED = "\\boxed"


def extract_answer(text: str) -> str | None:
    r"""The final answer in free text, as written, or None.

    In order of preference: the content of the last \boxed{...}; else what follows the last "#### "
    (GSM8K); else what follows the last "The answer is" / "Answer:"; else the whole text when it is a
    single short expression ("2^10", "(-3)"); else the last quantity in the text.

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
    >>> extract_answer("He lost -3"), extract_answer("Natalia sold 72 clips #### 72"), extract_answer("Answer: 50%")
    ('-3', '72', '50%')
    >>> extract_answer("no digits here") is None
    True
    """
    if not text:
        return None
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed or None  # an empty box is no answer, not a cue to go looking for some other number
    for cue in (_GSM8K_RE, _CUE_RE):
        said = cue.findall(text)
        if said:
            phrase = _clean(said[-1])
            # "The answer is 45 apples" -> 45; "The answer is blue" -> blue
            return _pick(phrase) or phrase or None
    whole = _clean(text)
    if len(whole) <= MAX_EXPR_CHARS and _parse_answer(whole) is not None:
        return whole
    quantities = [m.group(0).strip() for m in _QUANTITY_RE.finditer(text)]
    return quantities[-1] if quantities else None


def math_equal(answer: str, reference: str, *, allow_percent: bool = False) -> bool:
    """Whether the final answer in `answer` (free text) equals `reference` (a bare answer or free text).

    Both sides as numbers when they parse as numbers; otherwise as case-folded text. See the module
    docstring for the percent rule.

    >>> math_equal("The answer is 45.", "45.0"), math_equal(r"\\boxed{\\dfrac{1}{20}}", "5e-2")
    (True, True)
    >>> math_equal("1,234", "1234"), math_equal("2^10", "1024"), math_equal("(-3)", "\u22123")
    (True, True, True)
    >>> math_equal("45", "54"), math_equal("12", "123"), math_equal("", "45"), math_equal("-3", "3")
    (False, False, False, False)
    >>> math_equal("5%", "5"), math_equal("5%", "5", allow_percent=True), math_equal("5%", "0.05", allow_percent=True)
    (False, True, True)
    >>> math_equal("$2x+1$", "1+2x"), math_equal("The answer is 2x+5.", "1+2x"), math_equal(r"\boxed{(2, 5]}", "(1,2]")
    (True, False, False)
    """
    predicted = extract_answer(answer or "")
    if predicted is None or not reference or not reference.strip():
        return False
    final = reference.rsplit("####", 1)[1].strip() if "####" in reference else reference.strip()
    if _norm_text(final) in (_norm_text(predicted), _norm_text(answer)):
        return True  # identical as written ("2, 3" answering "2, 3"), whatever the text means
    if _is_symbolic(final):
        # Reducing "1+2x" to one of its numbers would pass any answer that shares it: compare symbolically.
        return _math_verify_equal(answer, final)
    if _parse_answer(_clean(reference)) is None:
        # A reference may itself be worked text ending in its answer (e.g. GSM8K's "... #### 72").
        reference = extract_answer(reference) or reference
    a, b = _norm_text(predicted), _norm_text(reference)
    if a and a == b:
        return True  # identical as written: equal even when neither side is a number ("2, 3", "blue")
    got, want = _resolve(predicted), _resolve(reference)
    if got is None or want is None:
        return False  # a number against text, or two different texts
    return _values_match(got, want, allow_percent)


_SYMBOLIC_RE = re.compile(r"[a-zA-Z]\w*|[(\[{]|,\s*\S")  # a variable, a bracket, a list: not one number


def _is_symbolic(reference: str) -> bool:
    """A reference that is an expression, interval or set rather than a number or worked text ending in one.

    >>> [_is_symbolic(x) for x in ["45", "1,234", "1+2x", "(1,2]", "2, 3", r"\\frac{1}{2}", "The answer is 7"]]
    [False, False, True, True, True, False, False]
    """
    text = _clean(reference)
    if parse_number(text) is not None or len(text) > MAX_EXPR_CHARS:
        return False
    words = re.findall(r"[a-zA-Z]{2,}", re.sub(r"\\[a-zA-Z]+", "", text))
    return len(words) <= 1 and bool(_SYMBOLIC_RE.search(re.sub(r"\\[a-zA-Z]+", "", text)))


def _math_verify_equal(answer: str, reference: str) -> bool:
    """math-verify's verdict, the reference parsed as the gold answer (as its own lighteval tasks do)."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    # Its timeouts use SIGALRM, which only the main thread may set; elsewhere the length cap above guards.
    limit = 5 if threading.current_thread() is threading.main_thread() else None
    try:
        boxed = reference if _BOXED in reference or "$" in reference else f"\\boxed{{{reference}}}"
        gold = parse(boxed, (LatexExtractionConfig(boxed_match_priority=0),), parsing_timeout=limit)
        pred = parse(answer, (LatexExtractionConfig(), ExprExtractionConfig()), parsing_timeout=limit)
        return bool(gold) and bool(pred) and bool(verify(gold, pred, timeout_seconds=limit))
    except Exception:  # noqa: BLE001 - an unparsable answer is a wrong answer, never a crashed round
        return False


def parse_number(text: str) -> Number | None:
    r"""`text` as a number when the whole of it is one (a percent sign is dropped), else None.

    Accepts signs, digit-group separators, decimals, exponents, a/b, \frac{a}{b}, and expressions
    such as 2^10 or \sqrt{2}; surrounding $ and a trailing period are ignored.

    >>> parse_number("45.00"), parse_number("-1,234"), parse_number(r"\dfrac{1}{20}"), parse_number("$7.")
    (Fraction(45, 1), Fraction(-1234, 1), Fraction(1, 20), Fraction(7, 1))
    >>> parse_number("45 apples") is None, parse_number("1/0") is None
    (True, True)
    """
    value = _parse_answer(_clean(text))
    return value[0] if value else None


def math_answer_reward(completions: list[str], answer: list[str], **kwargs) -> list[float]:
    """TRL-style reward function: 1.0 where the completion's final answer equals the reference, else 0.0.

    >>> math_answer_reward(["so 2+2 = 4", "it is 5"], answer=["4", "4"])
    [1.0, 0.0]
    """
    allow_percent = bool(kwargs.get("allow_percent", False))
    return [
        1.0 if math_equal(c, a, allow_percent=allow_percent) else 0.0 for c, a in zip(completions, answer, strict=True)
    ]


def _values_match(got: _Value, want: _Value, allow_percent: bool) -> bool:
    (x, x_pct), (y, y_pct) = got, want
    if x_pct == y_pct:
        return _close(x, y)
    if not allow_percent:
        return False
    # exactly one side says "%": it may mean the percentage itself (5) or the fraction (0.05)
    pct, other = (x, y) if x_pct else (y, x)
    return _close(pct, other) or _close(pct / 100, other)


def _close(x: Number, y: Number) -> bool:
    if isinstance(x, Fraction) and isinstance(y, Fraction):
        return x == y
    try:
        return math.isclose(float(x), float(y), rel_tol=1e-6, abs_tol=1e-12)
    except OverflowError:
        return False


def _resolve(answer: str) -> _Value | None:
    """The value of an extracted answer: the whole of it, else the part after "=", else its first quantity."""
    picked = _pick(_clean(answer))
    return _parse_answer(picked) if picked else None


def _pick(phrase: str) -> str | None:
    """The part of `phrase` that is the answer: all of it, the right side of its last "=", or its first quantity."""
    if _parse_answer(phrase) is not None:
        return phrase
    if "=" in phrase:
        phrase = _clean(phrase.rsplit("=", 1)[1])  # "x = 5" -> 5; "3 + 4 = 7" -> 7
        if _parse_answer(phrase) is not None:
            return phrase
    quantity = _QUANTITY_RE.search(phrase)
    return quantity.group(0).strip() if quantity else None


def _parse_answer(text: str) -> _Value | None:
    """`text` (already cleaned) as (number, has_percent), or None when it is not a single number/expression."""
    s = text.strip()
    percent = s.endswith("%")
    if percent:
        s = s[:-1].rstrip()
    if not s:
        return None
    number = _parse_plain(s)
    if number is None and not _PLAIN_RE.fullmatch(s):  # a plain x/0 stays None rather than going to sympy
        frac = _FRAC_RE.fullmatch(s)
        if frac:
            num, den = _parse_plain(frac.group(1)), _parse_plain(frac.group(2))
            number = num / den if num is not None and den else None
        if number is None:
            number = parse_symbolic(s)
    return (number, percent) if number is not None else None


def _parse_plain(s: str) -> Fraction | None:
    """Fast path without sympy: -1,234.5, .05, 5E-02, 1/20, (-3)."""
    if s.startswith("(") and s.endswith(")"):
        s = s[1:-1].strip()
    if not _PLAIN_RE.fullmatch(s):
        return None
    num_text, _, den_text = _SEPARATOR_RE.sub("", s).replace("\u2212", "-").partition("/")
    num = Fraction(num_text)
    if not den_text:
        return num
    den = Fraction(den_text)
    return num / den if den else None


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
                    return text[i + 1 : j].strip()
        start = text.rfind(_BOXED, 0, start)  # unbalanced or brace-less: try an earlier one
    return None


def _clean(text: str) -> str:
    r"""Drop math delimiters ($, \( \), \[ \]), spacing commands, \text{} wrappers, degrees and a final period."""
    s = _UNWRAP_RE.sub(r"\1", text)
    s = _DROP_RE.sub("", s).replace("\\%", "%")
    return s.strip().strip("*").strip().rstrip(".").strip()


def _norm_text(text: str) -> str:
    return " ".join(_clean(text).casefold().split())
