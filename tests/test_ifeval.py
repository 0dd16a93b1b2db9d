"""Instruction-following constraints: one passing and one failing response per checker, table-driven."""

import doctest

import pytest

import tasks.scoring.ifeval
from tasks.scoring.ifeval import CHECKERS, ConstraintResult, check_constraints, ifeval_reward

FIFTY_WORDS = " ".join(["word"] * 50)

CASES = [
    # (constraint, a response that meets it, a response that does not)
    ({"type": "min_words", "value": 50}, FIFTY_WORDS, " ".join(["word"] * 49)),
    ({"type": "max_words", "value": 5}, "one two three four five", "one two three four five six"),
    ({"type": "max_words", "value": 3}, "It's state-of-the-art work.", "It is state of the art."),
    ({"type": "min_sentences", "value": 3}, "One. Two! Three?", "One. Pi is 3.14 today"),
    ({"type": "max_sentences", "value": 2}, "One. Two.", "One. Two. Three."),
    ({"type": "paragraphs", "value": 3}, "First.\n\nSecond.\n***\nThird.", "First.\nStill first.\n\nSecond."),
    ({"type": "paragraphs", "value": 2}, "a\n   \nb\n\n\n", "a\n\nb\n\nc"),
    (
        {"type": "required_keywords", "value": ["data", "Flywheel"]},
        "The flywheel turns DATA into models.",
        "The flywheel turns metadata into models.",
    ),  # "metadata" is not the whole word "data"
    ({"type": "required_keywords", "value": "open source"}, "We like open source.", "We like open-sourced code."),
    ({"type": "keyword_frequency", "value": {"keyword": "cat", "min": 2}}, "Cat and cat.", "A cat and a category."),
    ({"type": "keyword_frequency", "value": {"keyword": "very", "max": 1}}, "It is very good.", "Very, very good."),
    ({"type": "keyword_frequency", "value": {"keyword": "x", "min": 1, "max": 2}}, "x and x", "x, x and x"),
    ({"type": "forbidden_keywords", "value": ["AI"]}, "I SAID it is a model.", "It is an AI, said the AI."),
    ({"type": "json_format"}, '{"a": [1, 2]}', "{'a': 1}"),
    ({"type": "json_format"}, '```json\n{"a": 1}\n```', 'Here it is: {"a": 1}'),
    ({"type": "json_format"}, "  ```\n[1, 2]\n```  ", '```json\n{"a": 1}\n``` and more'),
    ({"type": "all_lowercase"}, "all quiet here, 42.", "all quiet here, Mostly."),
    ({"type": "all_uppercase"}, "LOUD NOISES, 42!", "LOUD noises!"),
    ({"type": "starts_with", "value": "Dear team"}, "  Dear team, hello.", "Hello. Dear team"),
    (
        {"type": "ends_with", "value": "Is there anything else I can help with?"},
        "Done. Is there anything else I can help with?  \n",
        "Is there anything else I can help with? Bye.",
    ),
    ({"type": "ends_with", "value": "P.S."}, "text P.S.", "text p.s."),  # exact: case matters
    ({"type": "no_commas"}, "No commas here.", "One, two."),
    ({"type": "no_commas"}, "Still none.", "Full-width，comma."),
    ({"type": "bullets", "value": 2}, "Intro\n* one\n- two\n\n**Bold** line\n---", "* one\n* two\n+ three"),
    ({"type": "bullets", "value": 1}, "  - indented bullet", "*not a bullet*\n-also not"),
    ({"type": "title"}, "<<A Poem>>\nRoses are red.", "<< >>\nA Poem\nRoses are red."),
    ({"type": "placeholders", "value": 2}, "Dear [name], at [address].", "Dear [name], see [the docs](http://x)."),
]


@pytest.mark.parametrize("constraint,good,bad", CASES, ids=[f"{c['type']}-{i}" for i, (c, _, _) in enumerate(CASES)])
def test_checker_pass_and_fail(constraint, good, bad):
    ok = check_constraints(good, [constraint])
    assert ok == ConstraintResult(True, 1.0, [(constraint["type"], True)], [])
    not_ok = check_constraints(bad, [constraint])
    assert not_ok == ConstraintResult(False, 0.0, [(constraint["type"], False)], [])


def test_every_checker_has_a_case():
    assert {c["type"] for c, _, _ in CASES} == set(CHECKERS)


MALFORMED = [
    {"type": "min_words"},  # missing value
    {"type": "min_words", "value": "50"},
    {"type": "min_words", "value": -1},
    {"type": "min_words", "value": True},  # a bool is not a count
    {"type": "max_sentences", "value": 2.5},
    {"type": "paragraphs", "value": None},
    {"type": "required_keywords", "value": []},
    {"type": "required_keywords", "value": ["ok", 3]},
    {"type": "forbidden_keywords", "value": {"AI": 1}},
    {"type": "keyword_frequency", "value": {"keyword": "x"}},  # neither min nor max
    {"type": "keyword_frequency", "value": {"keyword": "", "min": 1}},
    {"type": "keyword_frequency", "value": {"keyword": "x", "min": "2"}},
    {"type": "keyword_frequency", "value": 3},
    {"type": "starts_with", "value": ""},
    {"type": "ends_with", "value": 42},
    {"type": "bullets", "value": "2"},
    {"type": "placeholders"},
]


@pytest.mark.parametrize("constraint", MALFORMED)
def test_malformed_value_is_an_error_entry_not_an_exception(constraint):
    result = check_constraints("some response, with [x]", [constraint])
    assert not result.passed and result.fraction == 0.0
    assert result.results == [(constraint["type"], False)]
    assert len(result.errors) == 1 and f"constraint 0 ({constraint['type']})" in result.errors[0]


@pytest.mark.parametrize(
    "spec,message",
    [
        ({"type": "response_language", "value": "fr"}, "unknown type 'response_language'"),
        ({"value": 3}, "string 'type'"),
        ("min_words", "string 'type'"),
        ({"type": 7}, "string 'type'"),
    ],
)
def test_unknown_or_untyped_constraint_is_an_error(spec, message):
    result = check_constraints("hello", [{"type": "no_commas"}, spec])
    assert result.passed is False and result.fraction == 0.5
    assert result.results[0] == ("no_commas", True) and result.results[1][1] is False
    assert len(result.errors) == 1 and message in result.errors[0]


def test_mixed_constraints_give_a_fraction():
    constraints = [
        {"type": "min_words", "value": 3},
        {"type": "no_commas"},
        {"type": "forbidden_keywords", "value": ["AI"]},
        {"type": "ends_with", "value": "Thanks."},
    ]
    result = check_constraints("I am an AI model. Thanks.", constraints)
    assert result.results == [
        ("min_words", True),
        ("no_commas", True),
        ("forbidden_keywords", False),
        ("ends_with", True),
    ]
    assert (result.passed, result.fraction, result.errors) == (False, 0.75, [])


def test_constraints_as_json_text():
    text = '[{"type": "min_words", "value": 2}, {"type": "forbidden_keywords", "value": ["AI"]}]'
    assert check_constraints("two words", text).passed
    assert check_constraints("two words", '{"type": "min_words", "value": 2}').passed  # a bare object
    assert check_constraints("", "").passed  # no constraints: vacuously met


@pytest.mark.parametrize("constraints", ["[{not json", "42", 42, None])
def test_unreadable_constraint_list_is_an_error(constraints):
    result = check_constraints("hello", constraints)
    assert (result.passed, result.fraction, result.results) == (False, 0.0, [])
    assert len(result.errors) == 1


def test_none_response_is_empty_text():
    assert check_constraints(None, [{"type": "max_words", "value": 0}]).passed


def test_reward_function_shape():
    rewards = ifeval_reward(
        ["a b c", "a, b"], constraints=['[{"type": "no_commas"}]', [{"type": "no_commas"}]], prompts=["p", "p"]
    )
    assert rewards == [1.0, 0.0]


def test_docstring_examples():
    assert doctest.testmod(tasks.scoring.ifeval).failed == 0
