r"""Small LaTeX/ASCII math expressions (`2^10`, `\sqrt{16}`, `3/4 + 1/4`) evaluated by sympy, safely.

sympy's parse_expr evals its input, and some inputs (10^(10^10)) run for ever in C, so only digits,
arithmetic and sqrt/pi reach it, exponents are capped in size, and each parse has a wall-time limit.
"""

from __future__ import annotations

import math
import re
import signal
import threading
from contextlib import contextmanager
from fractions import Fraction
from functools import lru_cache

Number = Fraction | float  # Fraction when rational (exact), float only for irrational values

MAX_EXPR_CHARS = 100  # longer "answers" are prose, and sympy's cost grows with length
_MAX_EXPONENT_DIGITS = 3  # 10^999 is cheap; 10^(10^10) would hang in C where no signal can interrupt it
_SYMPY_SECONDS = 2.0


@lru_cache(maxsize=4096)
def parse_symbolic(s: str) -> Number | None:
    """A short LaTeX/ASCII expression evaluated by sympy, or None; bounded in length, exponents and time."""
    if len(s) > MAX_EXPR_CHARS:
        return None
    code = _to_python(s)
    # Only digits, arithmetic and sqrt/pi reach sympy: parse_expr evals its input, so nothing else may.
    if code is None or not re.fullmatch(r"[\d\s.+\-*/()]*", re.sub(r"\b(?:sqrt|pi)\b", "", code)):
        return None
    if not re.search(r"\d|\bpi\b", code) or not _powers_are_small(code):
        return None
    import sympy  # deferred: plain numbers never pay for importing sympy
    from sympy.parsing.sympy_parser import auto_number, parse_expr, rationalize

    names = {
        "Integer": sympy.Integer,
        "Float": sympy.Float,
        "Rational": sympy.Rational,
        "sqrt": sympy.sqrt,
        "pi": sympy.pi,
    }
    try:
        with _time_limit(_SYMPY_SECONDS):
            # rationalize turns 0.05 into 1/20, so decimals inside expressions stay exact
            expr = parse_expr(code, local_dict={}, global_dict=names, transformations=(auto_number, rationalize))
            if not getattr(expr, "is_number", False):
                return None
            if expr.is_Rational:
                return Fraction(int(expr.p), int(expr.q))
            value = float(expr)  # complex or infinite (zoo) values raise here
    except Exception:  # noqa: BLE001 - any parse/eval failure (or the time limit) means "not a number"
        return None
    return value if math.isfinite(value) else None


def _to_python(s: str) -> str | None:
    r"""LaTeX-ish math to Python syntax: \frac{a}{b} -> ((a)/(b)), \sqrt{x} -> sqrt(x), ^ -> **, 5 x 10 -> 5*10."""
    s = s.replace("\u2212", "-").replace("×", "*").replace("·", "*").replace("π", "pi")
    s = re.sub(r"\\(?:times|cdot)", "*", s)
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = s.replace("\\pi", "pi")
    for _ in range(10):  # innermost first, so nested \frac{\sqrt{3}}{2} unwraps in a few rounds
        before = s
        s = re.sub(r"\\frac\{([^{}]*)\}\{([^{}]*)\}", r"((\1)/(\2))", s)
        s = re.sub(r"\\sqrt\[(\d{1,2})\]\{([^{}]*)\}", r"((\2)**(1/\1))", s)
        s = re.sub(r"\\sqrt\{([^{}]*)\}", r"sqrt(\1)", s)
        if s == before:
            break
    if "\\" in s:
        return None  # a LaTeX command we do not know
    s = s.replace("{", "(").replace("}", ")").replace("^", "**")
    s = re.sub(r"(?<=[\d.])\s*[xX]\s*(?=10\s*\*\*)", "*", s)  # "5 x 10^-2": x is a times sign only here
    s = re.sub(r"(?<=[\d)])\s*(?=(?:sqrt|pi)\b)", "*", s)  # 2\sqrt{3}, 3\pi
    return s


def _powers_are_small(code: str) -> bool:
    """Every ** has a literal exponent of at most 3 digits (p/q allowed) and a base without a power of its own."""
    digits = f"{{1,{_MAX_EXPONENT_DIGITS}}}"
    exponent = re.compile(
        rf"\s*(?:\(\s*[-+]?\s*\d{digits}(?:\s*/\s*\d{{1,2}})?\s*\)|[-+]?\d{digits}(?![\d.]))"
        r"(?!\s*\*\*)"
    )  # no towers: 2**10**10
    for m in re.finditer(r"\*\*", code):
        if not exponent.match(code, m.end()):
            return False
        base_end = m.start()
        while base_end > 0 and code[base_end - 1].isspace():
            base_end -= 1
        if base_end and code[base_end - 1] == ")":  # (2**999)**999 would still be astronomically large
            depth, i = 0, base_end - 1
            while i >= 0:
                depth += {")": 1, "(": -1}.get(code[i], 0)
                if depth == 0:
                    break
                i -= 1
            if "**" in code[max(i, 0) : base_end]:
                return False
    return True


class _Timeout(Exception):
    pass


@contextmanager
def _time_limit(seconds: float):
    """Raise _Timeout after `seconds` of wall time (SIGALRM), where that is possible.

    Signals only reach the main thread, and an itimer already running belongs to someone else
    (e.g. pytest-timeout), so elsewhere this is a no-op and the length/exponent caps are the guard.
    """
    usable = (
        hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
        and signal.getitimer(signal.ITIMER_REAL)[0] == 0
    )
    if not usable:
        yield
        return

    def on_alarm(signum, frame):
        raise _Timeout(f"sympy took longer than {seconds}s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
