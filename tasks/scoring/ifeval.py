"""IFEval's verifiable instructions (Zhou et al., 2023), checked by Google's own instruction registry.

Data is in IFEval's format: per prompt an `instruction_id_list`, e.g.
    ["punctuation:no_comma", "length_constraints:number_words"]
and `kwargs`, one dict per instruction, e.g.
    [{}, {"num_words": 100, "relation": "at least"}]
where a None value means "not used" (the Hugging Face copy of the data set lists every key for every
instruction). The checkers are the registry's (PyPI `if-verifiable`, a copy of google-research's
instruction_following_eval); this module is the part a training loop needs around them:

- Bad data never raises. An unknown id (which the library's own loop silently skips), a kwargs list of
  the wrong length, arguments a checker rejects or unreadable JSON become entries in `errors`, and the
  instruction counts as failed, so a typo in a data file shows up in the scores instead of crashing a round.
- Results are deterministic. The registry's `build_description` draws a random value for any argument
  left out (a random word count, keyword, language...), so here every argument a checker takes is required
  and type-checked first; and langdetect, which the language and casing checkers call, is seeded.
- Two checkers need NLTK's punkt data, which tasks.scoring.punkt provides without a download.
- One deliberate difference from IFEval's reference scoring: `keywords:letter_frequency` counts the
  character asked for even when it is not a letter a-z (two IFEval prompts ask for "#" and "!"), where the
  reference code silently counts a random letter instead.

Strict: the response as it is meets the instruction. Loose (IFEval's): so does one of the registry's loose
transformations of it (first and/or last line removed, `*` removed), which forgives a "Sure!" line or
markdown bold around an otherwise compliant answer. An empty response meets nothing.

Run the doctests (from the repo root):  python -m pytest --doctest-modules tasks/scoring/ifeval.py
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import langdetect
from if_verifiable.common import get_loose_transformations
from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT
from if_verifiable.ifeval.instructions_util import LANGUAGE_CODES

from tasks.scoring.punkt import PunktUnavailable, ensure_punkt


@dataclass(frozen=True)
class InstructionCheck:
    instruction_id: str  # e.g. "punctuation:no_comma"
    strict: bool
    loose: bool  # some loose transformation of the response (the response itself among them) passes


@dataclass(frozen=True)
class IFEvalResult:
    """Outcome of checking one response against its prompt's instructions.

    checks: one per instruction, in order; an erroneous one is (id, strict=False, loose=False).
    errors: one message per unknown id, malformed kwargs or unreadable list.
    """

    checks: list[InstructionCheck]
    errors: list[str]

    @property
    def prompt_strict(self) -> bool:
        """Every instruction met strictly, and no errors (vacuously True for no instructions)."""
        return not self.errors and all(c.strict for c in self.checks)

    @property
    def prompt_loose(self) -> bool:
        return not self.errors and all(c.loose for c in self.checks)

    @property
    def strict_fraction(self) -> float:
        """Share of instructions met strictly (1.0 for none, 0.0 for none because of an error)."""
        return self._fraction(sum(c.strict for c in self.checks))

    @property
    def loose_fraction(self) -> float:
        return self._fraction(sum(c.loose for c in self.checks))

    def _fraction(self, met: int) -> float:
        if self.checks:
            return met / len(self.checks)
        return 0.0 if self.errors else 1.0


# Argument names of the registry's checkers, by the kind of value they take. A wrong kind is an error
# here, because the registry would otherwise misread it: a string instead of a keyword list is sorted
# into single letters, a negative count or an empty keyword is replaced by a random one.
_COUNTS = frozenset(
    {
        "num_sentences",
        "num_placeholders",
        "num_bullets",
        "num_highlights",
        "num_sections",
        "num_paragraphs",
        "num_words",
        "nth_paragraph",
        "frequency",
        "let_frequency",
        "capital_frequency",
    }
)
_TEXTS = frozenset({"keyword", "postscript_marker", "section_spliter", "first_word", "prompt_to_repeat", "end_phrase"})
_TEXT_LISTS = frozenset({"keywords", "forbidden_words"})
_RELATIONS = frozenset({"relation", "let_relation", "capital_relation"})  # the registry checks the value itself
_ARG_KINDS = _COUNTS | _TEXTS | _TEXT_LISTS | _RELATIONS | {"letter", "language"}

# The argument of checkers that take the prompt itself, filled from check_instructions' `prompt` (IFBench's
# style; none of IFEval's checkers takes it today, but the library's own loop supports it, so do we).
_PROMPT_ARG = "prompt"

# Checkers that tokenize with NLTK's punkt model (count_sentences; nltk.word_tokenize).
_NEEDS_PUNKT = frozenset({"length_constraints:number_sentences", "change_case:capital_word_frequency"})


def known_instructions() -> list[str]:
    """The registry's instruction ids, sorted.

    >>> len(known_instructions()), known_instructions()[0]
    (25, 'change_case:capital_word_frequency')
    """
    return sorted(INSTRUCTION_DICT)


def required_args(instruction_id: str) -> list[str]:
    """The kwargs an instruction needs (all of its checker's arguments but the prompt), in the registry's order.

    >>> required_args("keywords:frequency"), required_args("punctuation:no_comma")
    (['keyword', 'frequency', 'relation'], [])
    """
    keys = INSTRUCTION_DICT[instruction_id](instruction_id).get_instruction_args_keys()
    return [k for k in keys if k != _PROMPT_ARG]


def check_instructions(
    response: str | None,
    instruction_id_list: Sequence[Any] | str,
    kwargs: Sequence[Any] | str | None = None,
    prompt: str = "",
) -> IFEvalResult:
    """Check `response` against every instruction of its prompt; never raises for bad data.

    Args:
        response: the model's reply (None: empty).
        instruction_id_list: registry ids, or the same list as a JSON string.
        kwargs: one dict per instruction (None values: unused), its JSON string, or None (no arguments).
        prompt: the prompt, for checkers that take it.

    >>> r = check_instructions("Hello, world.", ["punctuation:no_comma", "length_constraints:number_words"],
    ...                        '[{}, {"num_words": 2, "relation": "at least", "keywords": null}]')
    >>> r.checks[0], r.strict_fraction, r.prompt_loose
    (InstructionCheck(instruction_id='punctuation:no_comma', strict=False, loose=False), 0.5, False)
    >>> check_instructions("hi", ["keywords:rhyming"]).errors
    ['instruction 0 (keywords:rhyming): unknown id']
    """
    _seed_langdetect()
    response = response or ""
    ids, error = _load_list(instruction_id_list, "instruction_id_list")
    if error:
        return IFEvalResult([], [error])
    args_list, error = _load_list(kwargs, "kwargs", default=[None] * len(ids))
    if not error and len(args_list) != len(ids):
        error = f"kwargs has {len(args_list)} entries, instruction_id_list {len(ids)}"
    if error:  # which arguments belong to which instruction is unknown: none of them can be checked
        return IFEvalResult([InstructionCheck(_name(i), False, False) for i in ids], [error])
    checks, errors = [], []
    for index, (instruction_id, given) in enumerate(zip(ids, args_list)):
        check, error = _check_one(response, instruction_id, given, prompt)
        checks.append(check)
        if error:
            errors.append(f"instruction {index} ({check.instruction_id}): {error}")
    return IFEvalResult(checks, errors)


def ifeval_reward(
    completions: Sequence[Any],
    instruction_id_list: Sequence[Any],
    kwargs: Sequence[Any],
    prompts: Sequence[Any] | None = None,
    **_: Any,
) -> list[float]:
    """TRL reward function: the share of its prompt's instructions each completion meets (loose).

    TRL passes the data set's columns by name, so IFEval's own `instruction_id_list` and `kwargs` columns
    fit as they are; completions and prompts may be strings or chat message lists.

    >>> ifeval_reward(["no commas here", [{"role": "assistant", "content": "one, two"}]],
    ...               instruction_id_list=[["punctuation:no_comma"]] * 2, kwargs=[[{}]] * 2)
    [1.0, 0.0]
    """
    prompts = [""] * len(completions) if prompts is None else prompts
    return [
        check_instructions(_message_text(c, "assistant"), ids, kw, _message_text(p, "user")).loose_fraction
        for c, ids, kw, p in zip(completions, instruction_id_list, kwargs, prompts, strict=True)
    ]


def _check_one(response: str, instruction_id: Any, given: Any, prompt: str) -> tuple[InstructionCheck, str | None]:
    """(check, error message or None) for one instruction; never raises."""
    name = _name(instruction_id)
    failed = InstructionCheck(name, False, False)
    cls = INSTRUCTION_DICT.get(instruction_id) if isinstance(instruction_id, str) else None
    if cls is None:
        return failed, "unknown id"
    checker = cls(instruction_id)
    keys = checker.get_instruction_args_keys()
    args, error = _arguments([k for k in keys if k != _PROMPT_ARG], given)
    if error:
        return failed, error
    if _PROMPT_ARG in keys:
        args[_PROMPT_ARG] = prompt
    if instruction_id in _NEEDS_PUNKT:
        try:
            ensure_punkt()
        except PunktUnavailable as e:
            return failed, str(e)
    # The registry swaps any `letter` but a-z for a random one, yet IFEval's own prompts ask for "#" and "!"
    # (keys 1122, 1129): build with a placeholder and count the character that was asked for.
    letter = args.pop("letter", None)
    if letter is not None:
        args["letter"] = "a"
    try:
        checker.build_description(**args)
    except Exception as e:  # the registry's own validation (relation values): the data's fault
        return failed, f"arguments rejected: {type(e).__name__}: {e}"
    if letter is not None:
        checker._letter = letter.lower()
    if not response.strip():
        return failed, None
    try:
        strict = bool(checker.check_following(response))
        loose = strict or any(v.strip() and checker.check_following(v) for v in get_loose_transformations(response))
    except Exception as e:  # e.g. a keyword that is not a valid regex: the registry uses keywords as patterns
        return failed, f"check failed: {type(e).__name__}: {e}"
    return InstructionCheck(name, strict, bool(loose)), None


def _arguments(keys: list[str], given: Any) -> tuple[dict[str, Any], str | None]:
    """The build_description arguments `keys` from one kwargs entry (all required), or an error message."""
    if given is None:
        given = {}
    if not isinstance(given, dict):
        return {}, f"kwargs entry must be an object, got {type(given).__name__}"
    given = {k: v for k, v in given.items() if v is not None}
    extra = sorted(set(given) - set(keys))
    if extra:
        return {}, f"unexpected arguments {extra} (it takes {keys or 'none'})"
    missing = [k for k in keys if k not in given]
    if missing:
        return {}, f"missing arguments {missing} (it needs {keys})"
    args = {}
    for key in keys:
        value, problem = _coerce(key, given[key])
        if problem:
            return {}, f"argument {key!r} {problem}, got {given[key]!r}"
        args[key] = value
    if "nth_paragraph" in args and args["nth_paragraph"] > args["num_paragraphs"]:
        return {}, f"nth_paragraph {args['nth_paragraph']} is past num_paragraphs {args['num_paragraphs']}"
    return args, None


def _coerce(key: str, value: Any) -> tuple[Any, str | None]:
    """(value as the checker needs it, or a problem description)."""
    if key in _COUNTS:
        # 3.0 is how a nullable integer column comes back from pandas; True is a data bug, not 1
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return value, "must be a non-negative integer"
        if key == "nth_paragraph" and value == 0:
            return value, "counts from 1"
    elif key in _TEXTS:
        if not isinstance(value, str) or not value.strip():
            return value, "must be a non-empty string"
    elif key in _TEXT_LISTS:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
            return value, "must be a non-empty list of non-empty strings"
    elif key in _RELATIONS:
        if not isinstance(value, str):
            return value, "must be a string"
    elif key == "letter":
        if not isinstance(value, str) or len(value) != 1 or value.isspace():
            return value, "must be one character"
    elif key == "language":
        if value not in LANGUAGE_CODES:
            return value, f"must be one of {sorted(LANGUAGE_CODES)}"
    return value, None


def _name(instruction_id: Any) -> str:
    return instruction_id if isinstance(instruction_id, str) else repr(instruction_id)


def _load_list(value: Any, what: str, default: list[Any] | None = None) -> tuple[list[Any], str | None]:
    """The list itself (parsing JSON text; None or JSON null: `default` where given), or an error message."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            return [], f"{what} is not valid JSON: {e}"
    if value is None and default is not None:
        return default, None
    if isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, list):
        return [], f"{what} must be a list, got {type(value).__name__}"
    return value, None


def _message_text(value: Any, role: str) -> str:
    """A TRL prompt or completion as text: a string, or the last `role` message of a chat message list."""
    if value is None or isinstance(value, str):
        return value or ""
    messages = [m for m in value if isinstance(m, dict)]
    picked = [m for m in messages if m.get("role") == role] or messages
    content = picked[-1].get("content", "") if picked else ""
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, ...]
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def _seed_langdetect() -> None:
    # langdetect samples n-grams with its own RNG, seeded from the OS unless DetectorFactory.seed is set:
    # unseeded, detect("hello") is "fi" or "nl" from one call to the next. A process that chose a seed keeps it.
    if langdetect.DetectorFactory.seed is None:
        langdetect.DetectorFactory.seed = 0
