"""Verifiable instruction-following constraints in the spirit of IFEval (Zhou et al., 2023).

Each prompt declares its constraints in the data as a JSON list, e.g.
    [{"type": "min_words", "value": 50}, {"type": "forbidden_keywords", "value": ["AI"]}]
and `check_constraints(response, constraints)` checks every one. Checkers are plain functions
`fn(response, value) -> bool` in `CHECKERS`; a new constraint is one function and one registry line.

Bad data never raises: an unknown type or a malformed value becomes an entry in `errors` and counts as a
failed constraint, so a typo in a data file shows up in the scores instead of crashing a round.

Types and their "value":
    min_words, max_words, min_sentences, max_sentences   int
    paragraphs           int, exactly N (paragraphs are separated by blank lines or a `***` line)
    required_keywords    str or list[str]: each at least once (case-insensitive, whole word)
    keyword_frequency    {"keyword": str, "min": int, "max": int} (at least one of min/max)
    forbidden_keywords   str or list[str]: none of them (case-insensitive, whole word)
    starts_with, ends_with   str: exact phrase at the start/end, ignoring surrounding whitespace
    bullets              int, exactly N markdown bullets ("* ", "- " or "+ " at the start of a line)
    placeholders         int, at least N square-bracket placeholders like [name]
    json_format, all_lowercase, all_uppercase, no_commas, title   no value needed

Run the doctests (from the repo root):  python -m pytest --doctest-modules tasks/scoring/ifeval.py
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ConstraintResult:
    """Outcome of checking one response against its constraints.

    passed: every constraint holds (and there were no errors); vacuously True for no constraints.
    fraction: share of constraints that hold (1.0 for none), a softer reward than `passed`.
    results: (constraint type, held) per constraint, in order; an erroneous one is (type, False).
    errors: one message per unknown type or malformed value (or unreadable constraint list).
    """

    passed: bool
    fraction: float
    results: list[tuple[str, bool]]
    errors: list[str]


class MalformedValue(ValueError):
    """A constraint's value has the wrong shape for its type."""


def check_constraints(response: str, constraints: list[dict] | str) -> ConstraintResult:
    """Check `response` against every constraint (strict: all must hold for `passed`).

    Args:
        response: the model's reply.
        constraints: a list of {"type": ..., "value": ...} dicts, or the same as a JSON string.

    >>> r = check_constraints("Hello there, world.", '[{"type": "min_words", "value": 2}, {"type": "no_commas"}]')
    >>> r.passed, r.fraction, r.results
    (False, 0.5, [('min_words', True), ('no_commas', False)])
    >>> check_constraints("hi", [{"type": "rhyming"}]).errors
    ["constraint 0: unknown type 'rhyming'"]
    """
    response = response or ""
    specs, errors = _load(constraints)
    results: list[tuple[str, bool]] = []
    for i, spec in enumerate(specs):
        kind, ok, error = _check_one(response, spec, i)
        results.append((kind, ok))
        if error:
            errors.append(error)
    held = sum(ok for _, ok in results)
    fraction = held / len(results) if results else (0.0 if errors else 1.0)
    return ConstraintResult(
        passed=not errors and held == len(results), fraction=fraction, results=results, errors=errors
    )


def ifeval_reward(completions: list[str], constraints: list[list[dict] | str], **kwargs) -> list[float]:
    """TRL-style reward function: 1.0 where the completion meets all its constraints, else 0.0.

    >>> ifeval_reward(["one two three", "one"], constraints=[[{"type": "min_words", "value": 3}]] * 2)
    [1.0, 0.0]
    """
    return [1.0 if check_constraints(c, k).passed else 0.0 for c, k in zip(completions, constraints, strict=True)]


def _load(constraints: list[dict] | str) -> tuple[list[Any], list[str]]:
    """The constraint list (parsing JSON text), plus an error when it cannot be read at all."""
    if isinstance(constraints, str):
        try:
            constraints = json.loads(constraints) if constraints.strip() else []
        except json.JSONDecodeError as e:
            return [], [f"constraints are not valid JSON: {e}"]
    if isinstance(constraints, dict):
        constraints = [constraints]  # a single constraint written without the list around it
    if not isinstance(constraints, list):
        return [], [f"constraints must be a list, got {type(constraints).__name__}"]
    return constraints, []


def _check_one(response: str, spec: Any, index: int) -> tuple[str, bool, str | None]:
    """(type, held, error message or None) for one constraint; never raises."""
    if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
        return "invalid", False, f"constraint {index}: expected an object with a string 'type', got {spec!r}"
    kind = spec["type"]
    checker = CHECKERS.get(kind)
    if checker is None:
        return kind, False, f"constraint {index}: unknown type {kind!r}"
    try:
        return kind, bool(checker(response, spec.get("value"))), None
    except MalformedValue as e:
        return kind, False, f"constraint {index} ({kind}): {e}"


# --- value validation ---------------------------------------------------------------------------


def _count(value: Any, what: str = "value") -> int:
    # bool is an int in Python, but {"value": true} for a word count is a data bug
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MalformedValue(f"{what} must be a non-negative integer, got {value!r}")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise MalformedValue(f"value must be a non-empty string, got {value!r}")
    return value.strip()


def _words_list(value: Any) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(k, str) and k.strip() for k in items):
        raise MalformedValue(f"value must be a keyword or a non-empty list of keywords, got {value!r}")
    return [k.strip() for k in items]


# --- measurements -------------------------------------------------------------------------------


def count_words(text: str) -> int:
    """Words as runs of letters/digits, keeping "don't" and "state-of-the-art" whole.

    >>> count_words("It's a state-of-the-art model, isn't it?")
    6
    """
    return len(re.findall(r"\w+(?:['’-]\w+)*", text))


def count_sentences(text: str) -> int:
    """Sentences end in . ! or ? followed by whitespace or the end ("3.5" is not a break).

    A heuristic: abbreviations such as "e.g. " count as breaks, as they do in most simple splitters.

    >>> count_sentences("One. Two? Three! Pi is 3.14")
    4
    """
    return sum(1 for part in re.split(r"[.!?]+(?:\s+|$)", text) if re.search(r"\w", part))


def count_paragraphs(text: str) -> int:
    """Non-empty blocks separated by blank lines or a line holding only `***` (IFEval's divider).

    >>> count_paragraphs("a\\n\\nb\\n***\\nc")
    3
    """
    text = re.sub(r"(?m)^[ \t]*\*\*\*[ \t]*$", "", text)
    return sum(1 for block in re.split(r"\n[ \t]*\n", text) if block.strip())


def _keyword_hits(text: str, keyword: str) -> int:
    # whole word: "AI" matches "AI," but not "SAID"; lookarounds also work for multi-word phrases
    return len(re.findall(rf"(?<!\w){re.escape(keyword)}(?!\w)", text, flags=re.IGNORECASE))


def _strip_json_fence(text: str) -> str:
    fenced = re.fullmatch(r"```(?:json)?[ \t]*\n?(.*?)\n?```", text.strip(), flags=re.DOTALL | re.IGNORECASE)
    return fenced.group(1) if fenced else text


# --- checkers: fn(response, value) -> bool ------------------------------------------------------


def _keyword_frequency(text: str, value: Any) -> bool:
    if not isinstance(value, dict) or not ({"min", "max"} & value.keys()):
        raise MalformedValue(f"value must be {{'keyword': str, 'min': int, 'max': int}}, got {value!r}")
    hits = _keyword_hits(text, _text(value.get("keyword")))
    low = _count(value["min"], "min") if "min" in value else 0
    high = _count(value["max"], "max") if "max" in value else hits
    return low <= hits <= high


def _json_format(text: str, value: Any) -> bool:
    try:
        json.loads(_strip_json_fence(text))
    except json.JSONDecodeError:
        return False
    return True


CHECKERS: dict[str, Callable[[str, Any], bool]] = {
    "min_words": lambda t, v: count_words(t) >= _count(v),
    "max_words": lambda t, v: count_words(t) <= _count(v),
    "min_sentences": lambda t, v: count_sentences(t) >= _count(v),
    "max_sentences": lambda t, v: count_sentences(t) <= _count(v),
    "paragraphs": lambda t, v: count_paragraphs(t) == _count(v),
    "required_keywords": lambda t, v: all(_keyword_hits(t, k) for k in _words_list(v)),
    "keyword_frequency": _keyword_frequency,
    "forbidden_keywords": lambda t, v: not any(_keyword_hits(t, k) for k in _words_list(v)),
    "json_format": _json_format,
    "all_lowercase": lambda t, v: t == t.lower(),  # IFEval's rule: no uppercase letters at all
    "all_uppercase": lambda t, v: t == t.upper(),
    "starts_with": lambda t, v: t.strip().startswith(_text(v)),
    "ends_with": lambda t, v: t.strip().endswith(_text(v)),
    "no_commas": lambda t, v: "," not in t and "，" not in t,  # the full-width comma is a comma too
    # "* " / "- " / "+ " starting a line; "**bold**" and "---" rules are not bullets
    "bullets": lambda t, v: len(re.findall(r"(?m)^[ \t]*[*+-][ \t]+\S", t)) == _count(v),
    "title": lambda t, v: re.search(r"<<[^<>\n]*\w[^<>\n]*>>", t) is not None,
    # [name] but not a markdown link's [text](url)
    "placeholders": lambda t, v: len(re.findall(r"\[[^\[\]\n]*\w[^\[\]\n]*\](?!\()", t)) >= _count(v),
}
