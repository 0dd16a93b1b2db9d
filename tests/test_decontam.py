"""Decontamination index: hand-computed overlaps, attribution, the batch path against the exact one."""

from __future__ import annotations

import random
import re
import unicodedata

import pytest

import tasks.curation.decontam as decontam
from storage.ids import normalize_text
from tasks.curation.decontam import DecontamIndex, Match, decontaminate_rows, tokens

GSM = [
    "Natalia sold clips to 48 of her friends in April, and then half as many in May.",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting.",
]
ARITH = ["What is 2+2?", "Compute 17 times 23 and explain each step of your work."]
EVALS = {"gsm": GSM, "arith": ARITH}


@pytest.fixture(scope="module")
def index() -> DecontamIndex:
    return DecontamIndex(EVALS, n=8, threshold=0.5)


# ---- hand-computed cases --------------------------------------------------------------------------------------


def test_exact_leak(index):
    assert index.match(GSM[1]) == Match("gsm", 1, 1.0)
    assert index.match(ARITH[1]) == Match("arith", 1, 1.0)


@pytest.mark.parametrize(
    "text",
    [
        "NATALIA SOLD CLIPS TO 48 OF HER FRIENDS IN APRIL, AND THEN HALF AS MANY IN MAY.",  # case
        "  Natalia sold clips\tto 48 of her\n\nfriends in April,   and then half as many in May. ",  # whitespace
        "Natalia sold clips to 48 of her friends in April , and then half as many in May .",  # punctuation spacing
    ],
)
def test_leak_with_changed_case_whitespace_punctuation(index, text):
    assert index.match(text) == Match("gsm", 0, 1.0)


def test_punctuation_spacing_short_prompt(index):
    assert tokens("What is 2+2?") == tokens("what is 2 + 2 ?") == ["what", "is", "2", "+", "2", "?"]
    assert index.match("what is 2 + 2 ?") == Match("arith", 0, 1.0)


def test_nfc_and_nfd_forms_match():
    eval_text = "Combien coûte un café crème à Zürich, en francs suisses, ce matin ?"
    nfc, nfd = unicodedata.normalize("NFC", eval_text), unicodedata.normalize("NFD", eval_text)
    assert nfc != nfd
    for stored, query in ((nfc, nfd), (nfd, nfc)):
        idx = DecontamIndex({"fr": [stored]}, n=8)
        assert idx.match(query.upper()) == Match("fr", 0, 1.0)
        assert idx.match_many([query, "rien à voir"]) == [Match("fr", 0, 1.0), None]


def test_short_texts_are_one_gram_and_match_only_an_identical_short_item(index):
    # "What is 2+2?" has 6 tokens < 8: its only gram is the whole sequence.
    assert index.match("WHAT is 2+2 ?") == Match("arith", 0, 1.0)
    assert index.match("What is 2+3?") is None  # a different 6-token gram
    assert index.match("What is 2+2? Tell me.") is None  # 9 tokens: 8-grams, never the 6-token gram
    assert index.match("Natalia sold clips") is None  # shorter than n, and no short item equals it
    assert index.match("") is None and index.match(" ?! ") is None


def test_long_completion_quoting_a_whole_eval_prompt(index):
    # 40 filler tokens + the 16-token GSM[0] + 20 more: a fraction-of-T rule would see 9/69 of T's
    # grams in the eval set; the overlap coefficient sees all 9 of the item's grams: 9 / min(69, 9) = 1.
    filler = " ".join(f"w{i}" for i in range(40))
    completion = f"{filler} As the problem says: {GSM[0]} {' '.join(f'v{i}' for i in range(16))}"
    m = index.match(completion)
    assert m == Match("gsm", 0, 1.0)


def test_partial_overlap_below_and_above_threshold():
    idx = DecontamIndex({"e": ["e1 e2 e3 e4 e5 e6 e7 e8 e9"]}, n=3, threshold=0.5)  # 7 grams
    # shared: e1e2e3 e2e3e4 e3e4e5 = 3 of min(7 text grams, 7) -> 3/7 = 0.43 < 0.5
    assert idx.match("e1 e2 e3 e4 e5 x y z w") is None
    # shared: e1e2e3 e2e3e4 e3e4e5 e4e5e6 = 4 of min(7, 7) -> 4/7 = 0.57 >= 0.5
    assert idx.match("e1 e2 e3 e4 e5 e6 x y z") == Match("e", 0, 4 / 7)
    # A short prompt that is mostly the item: 4 grams, 3 shared (e2e3e4 e3e4e5 e4e5e6) -> 3 / min(4, 7) = 0.75
    assert idx.match("e2 e3 e4 e5 e6 x") == Match("e", 0, 0.75)
    # Exactly at the threshold counts: 2 grams shared of min(4, 7) -> 0.5
    assert idx.match("e2 e3 e4 e5 x y") == Match("e", 0, 0.5)


def test_attribution_best_overlap_then_first_eval_set_then_lowest_row():
    idx = DecontamIndex({"a": ["x", "p q r s t u", "p q r s t u"], "b": ["p q r s t u", "p q r s t v w"]}, n=3)
    assert idx.match("p q r s t u") == Match("a", 1, 1.0)  # equal overlaps: first set, then lowest row
    # "p q r s t v w": a[1] shares pqr qrs rst (3 of min(5, 4) = 0.75); b[1] shares all 5 -> b wins
    assert idx.match("p q r s t v w") == Match("b", 1, 1.0)
    assert idx.match("X") == Match("a", 0, 1.0)


def test_empty_index_matches_nothing():
    for idx in (DecontamIndex({}), DecontamIndex({"blank": ["", "   "], "none": []})):
        assert idx.empty and idx.match("anything at all") is None and idx.match("") is None
        assert idx.match_many(["a", "", "b c d e f g h i j"]) == [None, None, None]
    assert not DecontamIndex({"x": ["hi"]}).empty
    assert DecontamIndex({"blank": [""], "x": ["hi"]}).eval_set_names == ("blank", "x")


def test_invalid_settings():
    for kwargs in ({"n": 0}, {"threshold": 0.0}, {"threshold": 1.5}):
        with pytest.raises(ValueError, match="need n >= 1 and 0 < threshold <= 1"):
            DecontamIndex({"e": ["a"]}, **kwargs)


# ---- batch path == exact path -----------------------------------------------------------------------------

WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "mat",
    "2",
    "+",
    "?",
    ",",
    "Café",
    "cafe\u0301",
    "日本語",
    "x_y",
    "٣",
    "ﬁne",
    "Straße",
    "\u0301",
    "\x00",
    "\x01",
    "\ud800",
    "a" * 40,
    "a" * 41,
    "b" * 9,
    "\u00a0",
    "\x1c",
    "é!",
]


def _random_text(rng: random.Random, evals: list[str]) -> str:
    if evals and rng.random() < 0.3:  # an eval text, cut, padded and re-spaced
        toks = tokens(rng.choice(evals))
        lo = rng.randrange(len(toks) + 1)
        toks = (
            [rng.choice(WORDS) for _ in range(rng.randint(0, 3))]
            + toks[lo:]
            + [rng.choice(WORDS) for _ in range(rng.randint(0, 3))]
        )
    else:
        toks = [rng.choice(WORDS) for _ in range(rng.randint(0, 14))]
    text = "".join(t + rng.choice([" ", "", "  ", "\n"]) for t in toks)
    return rng.choice([text, text.upper(), unicodedata.normalize("NFD", text), " " + text])


@pytest.mark.parametrize("n, threshold, batch", [(3, 0.5, 7), (4, 0.3, 1024), (1, 0.8, 5), (8, 0.5, 64)])
def test_match_many_equals_match_on_random_texts(monkeypatch, n, threshold, batch):
    monkeypatch.setattr(decontam, "_BATCH", batch)  # several batches, and texts at batch boundaries
    rng = random.Random(n)
    evals = {"s1": [_random_text(rng, []) for _ in range(25)], "s2": [_random_text(rng, []) for _ in range(25)]}
    idx = DecontamIndex(evals, n=n, threshold=threshold)
    texts = [_random_text(rng, evals["s1"] + evals["s2"]) for _ in range(400)]
    expected = [idx.match(t) for t in texts]
    assert idx.match_many(texts) == expected
    assert sum(m is not None for m in expected) >= 10  # the case exercises matches, not just clean texts
    normalized = [normalize_text(t) for t in texts]
    assert idx.match_many(normalized, normalized=True) == [idx.match(t, normalized=True) for t in normalized]


def test_vectorised_tokens_agree_with_the_regex():
    # The prefilter must see the same tokens as `tokens`: same count, and a token hashes alike in any context.
    rng = random.Random(0)
    alphabet = "ab_9 \t\n\x1c\u00a0\u2003.,?!+é\u0301日本\U0001f600٣ßİ\ud800"
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))).casefold()
        toks = re.findall(r"\w+|[^\w\s]", text)
        hashes, sep = decontam._token_hashes("\x00" + text + "\x00")
        assert len(hashes) == len(toks) + 2 and sep.tolist() == [0, len(toks) + 1]
        alone = [int(decontam._token_hashes(t)[0][0]) for t in toks]
        assert hashes[1:-1].tolist() == alone


def test_planted_leaks_found_in_bulk():
    rng = random.Random(1)
    vocab = [f"w{i}" for i in range(2000)]
    evals = {"e": [" ".join(rng.choices(vocab, k=rng.randint(8, 25))) + "?" for _ in range(200)]}
    idx = DecontamIndex(evals, n=8)
    texts = [" ".join(rng.choices(vocab, k=rng.randint(8, 30))) for _ in range(5000)]
    planted = {i: rng.randrange(200) for i in rng.sample(range(5000), 50)}
    for i, j in planted.items():
        texts[i] = "Q: " + evals["e"][j].upper().replace("?", " ? ") + " A:"
    found = {i: m.eval_index for i, m in enumerate(idx.match_many(texts)) if m is not None}
    assert found == planted


# ---- training rows ------------------------------------------------------------------------------------------


def test_decontaminate_rows_counts_and_examples(index):
    rows = [
        {"id": 0, "source": "web", "prompt": "Tell me a joke.", "completion": "Why did the chicken cross?"},
        {"id": 1, "source": "web", "prompt": "Solve it.", "completion": f"Sure. {ARITH[1]} Then 391."},
        {"id": 2, "source": "mix", "prompt": GSM[0].lower(), "completion": "72"},
        {"id": 3, "source": "web", "prompt": "what is 2 + 2 ?", "completion": GSM[1]},  # two leaks: one row
        {"id": 4, "source": "mix", "prompt": "A clean question?", "completion": "A clean answer."},
    ]
    kept, report = decontaminate_rows(rows, lambda r: [r["prompt"], r["completion"]], index, max_examples=2)
    assert [r["id"] for r in kept] == [0, 4]
    assert (report["rows_in"], report["rows_out"], report["removed"]) == (5, 2, 3)
    # Row 3's two matches both have overlap 1.0: the first text (the arith prompt) is the one reported.
    assert report["per_eval_set"] == {"gsm": 1, "arith": 2}
    assert report["per_eval_set_source"] == {"gsm": {"mix": 1}, "arith": {"web": 2}}
    assert report["examples"] == [
        {"eval_set": "arith", "eval_index": 1, "overlap": 1.0, "text": f"Sure. {ARITH[1]} Then 391."},
        {"eval_set": "gsm", "eval_index": 0, "overlap": 1.0, "text": GSM[0].lower()},
    ]


def test_decontaminate_rows_nothing_to_remove_and_long_example_cut():
    idx = DecontamIndex({"e": ["one two three four five six seven eight"], "f": []}, n=8)
    kept, report = decontaminate_rows([{"t": "clean"}], lambda r: [r["t"]], idx)
    assert kept == [{"t": "clean"}] and report["removed"] == 0 and report["per_eval_set"] == {"e": 0, "f": 0}
    long_text = "one two three four five six seven eight " + "pad " * 200
    kept, report = decontaminate_rows([{"t": long_text}], lambda r: [r["t"]], idx)
    assert kept == [] and report["examples"][0]["text"] == long_text[:300]
    assert report["per_eval_set_source"] == {"e": {"unknown": 1}, "f": {}}
