"""Curation filters, quarantine accounting, decontamination report and the weighted draw, on literal
inputs with hand-computed counts. Reading files is tested in test_sources.py."""

import json

import pytest

from configs.schema import CurationConfig, SourceConfig
from storage.ids import prompt_id, text_hash
from tasks.curation.decontam import DecontamIndex
from tasks.curation.filters import detect_languages, token_counter
from tasks.curation.inputs import reuse_blocked
from tasks.curation.mixture import allocate_draw
from tasks.curation.prompts import (
    PROMPT_SCHEMA,
    QUARANTINE_SCHEMA,
    REMOVAL_REASONS,
    CurationError,
    EarlierPrompts,
    curate_prompts,
    quarantine_problem,
    quarantine_rows,
    to_table,
)
from tasks.curation.sources import SourceRows

NO_EVAL = DecontamIndex({}, 8, 0.5)
NOTHING_EARLIER = EarlierPrompts()


def row(text, i=0, **extra):
    return {"prompt": text, "system": None, "answer": None, "provenance": {"id": i}, "source_row": i, **extra}


def rows_of(*texts, quarantined=()):
    return SourceRows(rows=[row(t, i) for i, t in enumerate(texts)], quarantined=list(quarantined))


def bad(reason, i, source="pool"):
    return {"source": source, "location": f"line {i + 1}", "reason": reason, "detail": f"{reason} here", "raw": "{...}"}


def src(name, n=0, **kw):
    """A source config plus n distinct well-formed rows for it."""
    return SourceConfig(name=name, path=f"{name}.jsonl", **kw), rows_of(*(f"{name} question {i}" for i in range(n)))


def cur(sources, **kw):
    return CurationConfig(sources=sources, **kw)


def pool(**kw):
    return cur([SourceConfig(name="pool", path="p.jsonl", **kw)], prompts_per_round=10)


def curate(sources, cfg, round_num=1, earlier=NOTHING_EARLIER, index=NO_EVAL, **filters):
    return curate_prompts(sources, cfg, round_num, earlier, index, **filters)


def assert_identity(report):
    assert report["rows_in"] == report["rows_out"] + sum(report["removed"].values())
    for c in report["per_source"].values():
        assert c["rows_in"] == c["rows_out"] + sum(c[r] for r in REMOVAL_REASONS)


def removed(report):
    return {k: v for k, v in report["removed"].items() if v}


# ---- filters ------------------------------------------------------------------------------------------

EVAL = DecontamIndex({"heldout": ["Compute 17 times 23 and explain."]}, 8, 0.5)
TEXTS = [
    "What is 2 + 2?",
    "  what is 2 +   2? ",  # duplicate of row 0 after whitespace folding and case folding
    "WHAT IS 2 + 2?",  # duplicate
    "Name a prime above 10.",  # used by an earlier round
    "compute 17 TIMES 23 and explain.",  # an eval prompt: contaminated
    "Add 5 and 7.",
]
SEEN = EarlierPrompts({text_hash("Name a prime above 10.")}, ["Name a prime above 10."])


def test_each_filter_counts_exactly():
    cfg = cur([SourceConfig(name="pool", path="p.jsonl", license="cc-by-4.0", tags=["math"])], prompts_per_round=10)
    sources = {"pool": rows_of(*TEXTS, quarantined=[bad("invalid_json", 6), bad("empty", 7)])}
    result = curate(sources, cfg, 1, SEEN, EVAL)
    rep = result.report
    assert rep["rows_in"] == 8 and rep["rows_out"] == 2
    assert removed(rep) == {"quarantined": 2, "duplicate_in_round": 2, "seen_in_earlier_round": 1, "contaminated": 1}
    assert rep["per_source"]["pool"] == {"rows_in": 8, "rows_out": 2, **rep["removed"]}
    assert rep["quarantine"] == {"invalid_json": 1, "empty": 1}
    assert_identity(rep)
    by_text = {p["prompt"]: p for p in result.prompts}
    assert set(by_text) == {"What is 2 + 2?", "Add 5 and 7."}  # first occurrence wins, normalised
    assert by_text["What is 2 + 2?"] == {
        "prompt_id": prompt_id("What is 2 + 2?", "pool"),
        "text_hash": text_hash("what is 2 + 2?"),
        "prompt": "What is 2 + 2?",
        "system": None,
        "answer": None,
        "source": "pool",
        "license": "cc-by-4.0",
        "tags": ["math"],
        "provenance": '{"id":0}',
        "source_row": 0,
    }
    assert [p["prompt_id"] for p in result.prompts] == sorted(p["prompt_id"] for p in result.prompts)


def test_length_and_keyword_filters_count_exactly():
    sources = {
        "pool": rows_of(
            "Hi", "What is 2 + 2?", "x" * 50, "Are you ChatGPT, really?", "Ask claude-3 about it", "Claudette sings."
        )
    }
    cfg = cur(
        [SourceConfig(name="pool", path="p.jsonl")],
        prompts_per_round=10,
        min_chars=3,
        max_chars=40,
        blocked_keywords=["chatgpt", "Claude-3", " "],
    )
    rep = curate(sources, cfg).report
    # "Hi" is too short, the 50 x's too long, two rows name a model; "Claudette" is not "claude-3".
    assert removed(rep) == {"too_short": 1, "too_long": 1, "keyword": 2}
    assert rep["rows_out"] == 2
    assert_identity(rep)


def test_token_length_filter_uses_the_given_counter():
    words = lambda texts: [len(t.split()) for t in texts]  # noqa: E731  # a tokenizer where a word is a token
    sources = {"pool": rows_of("one", "one two", "one two three", "one two three four", "a b c d e f")}
    cfg = cur([SourceConfig(name="pool", path="p.jsonl")], prompts_per_round=10, min_tokens=2, max_tokens=4)
    result = curate(sources, cfg, count_tokens=words)
    assert removed(result.report) == {"too_few_tokens": 1, "too_many_tokens": 1}
    assert sorted(p["source_row"] for p in result.prompts) == [1, 2, 3]
    with pytest.raises(CurationError, match="min_tokens/max_tokens are set but no tokenizer"):
        curate(sources, cfg)


def test_token_counter_counts_with_the_model_tokenizer(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    texts = ["What is 12 plus 7?", "", "a much longer prompt " * 20]
    assert token_counter(str(tiny_model))(texts) == [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    assert token_counter(str(tiny_model))(texts)[1] == 0


def test_language_filter_keeps_configured_languages_and_unjudged_short_texts():
    langs = {"Hello there, how are you": "en", "Bonjour, comment allez-vous": "fr", "12 + 7": None}
    sources = {"pool": rows_of(*langs)}
    cfg = cur([SourceConfig(name="pool", path="p.jsonl")], prompts_per_round=10, languages=["en", "de"])
    result = curate(sources, cfg, detect_languages=lambda texts: [langs[t] for t in texts])
    assert removed(result.report) == {"language": 1}
    assert sorted(p["prompt"] for p in result.prompts) == ["12 + 7", "Hello there, how are you"]


def test_detect_languages_with_py3langid():
    texts = [
        "The weather is lovely today and we are going to the park.",
        "Le temps est magnifique aujourd'hui et nous allons au parc.",
        "Das Wetter ist heute schön und wir gehen in den Park.",
        "What is 12 + 7?",
    ]
    assert detect_languages(texts, min_letters=20) == ["en", "fr", "de", None]


def test_reuse_after_k_rounds():
    # A prompt drawn in round r0 is blocked in round r while r - r0 < K; None blocks forever, 1 never.
    assert [reuse_blocked(r0, 5, None) for r0 in (1, 4)] == [True, True]
    assert [reuse_blocked(r0, 5, 3) for r0 in (1, 2, 3, 4)] == [False, False, True, True]
    assert [reuse_blocked(r0, 5, 1) for r0 in (1, 4)] == [False, False]


def test_cross_source_duplicate_goes_to_the_first_configured_source():
    cfg = cur([SourceConfig(name="a", path="a.jsonl"), SourceConfig(name="b", path="b.jsonl")])
    sources = {"b": rows_of("Same text", "Only in b"), "a": rows_of("same   TEXT")}  # dict order: b first
    result = curate(sources, cfg)
    assert {(p["source"], p["prompt"]) for p in result.prompts} == {("a", "same TEXT"), ("b", "Only in b")}
    assert result.report["per_source"]["b"]["duplicate_in_round"] == 1
    assert_identity(result.report)


def test_near_duplicates_within_the_round_and_of_earlier_rounds():
    sources = {
        "pool": rows_of(
            "Explain how a rainbow forms after the rain stops",
            "explain how a rainbow forms after the rain stops!!",  # not exact ("!!"), but nearly the same
            "Explain how a rainbow forms after the rain stops, please",  # near: one word more
            "Write a haiku about the sea at night and the moon",
            "Name three prime numbers larger than one hundred",
        )
    }
    earlier = EarlierPrompts(set(), ["Write a haiku about the sea at night and the moon."])  # punctuation aside
    cfg = cur([SourceConfig(name="pool", path="p.jsonl")], prompts_per_round=10, near_dup_threshold=0.6)
    result = curate(sources, cfg, 2, earlier)
    assert result.report["removed"]["near_duplicate"] == 3
    assert sorted(p["source_row"] for p in result.prompts) == [0, 4]
    assert_identity(result.report)
    off = cur([SourceConfig(name="pool", path="p.jsonl")], prompts_per_round=10, near_dup_threshold=None)
    assert curate(sources, off, 2, earlier).report["rows_out"] == 5


# ---- decontamination ----------------------------------------------------------------------------------


def test_planted_leaks_are_all_removed_and_reported_per_eval_set_and_source():
    evals = {
        "gsm": [
            "Natalia sold clips to 48 of her friends in April, and then half as many in May.",
            "Weng earns 12 dollars an hour for babysitting. Yesterday she did 50 minutes.",
        ],
        "arith": ["What is 37 plus 8 when you add them together carefully?"],
    }
    index = DecontamIndex(evals, 8, 0.5)
    leaks_a = [
        "natalia SOLD clips to 48 of her friends in april , and then half as many in may",  # case, spacing
        "Weng earns 12 dollars an hour for babysitting.Yesterday she did 50 minutes!",
    ]  # punctuation
    leaks_b = ["What   is 37 plus 8 when you add them together carefully ?"]  # whitespace
    clean = ["Natalia bought 3 apples.", "A question about babysitting rates in general, nothing more."]
    cfg = cur([SourceConfig(name="a", path="a.jsonl"), SourceConfig(name="b", path="b.jsonl")], prompts_per_round=10)
    result = curate({"a": rows_of(*leaks_a, *clean), "b": rows_of(*leaks_b)}, cfg, index=index)
    assert removed(result.report) == {"contaminated": 3}
    assert sorted(p["prompt"] for p in result.prompts) == sorted(clean)
    d = result.decontamination
    assert (d["stage"], d["ngram"], d["threshold"], d["checked"], d["removed"]) == ("prompts", 8, 0.5, 5, 3)
    assert d["by_eval_set"] == {"gsm": {"a": 2}, "arith": {"b": 1}}
    assert [(e["eval_set"], e["eval_index"], e["source"]) for e in d["examples"]] == [
        ("gsm", 0, "a"),
        ("gsm", 1, "a"),
        ("arith", 0, "b"),
    ]
    assert [e["overlap"] for e in d["examples"]] == [1.0, 0.875, 1.0]  # "!" for "." changes 1 of 8 grams


def test_decontamination_examples_capped_at_five_per_eval_set():
    index = DecontamIndex({"e": [f"Eval item number {i}" for i in range(7)]}, 8, 0.5)
    result = curate(
        {"pool": rows_of(*(f"eval item number {i}" for i in range(7)), "clean prompt")}, pool(), index=index
    )
    assert result.report["removed"]["contaminated"] == 7 and result.report["rows_out"] == 1
    assert result.decontamination["by_eval_set"] == {"e": {"pool": 7}}
    assert [e["text"] for e in result.decontamination["examples"]] == [f"eval item number {i}" for i in range(5)]


# ---- quarantine ---------------------------------------------------------------------------------------


def test_quarantine_fraction_stops_with_counts_per_reason():
    cfg = cur(
        [SourceConfig(name="good", path="g.jsonl"), SourceConfig(name="bad", path="b.jsonl")],
        max_quarantine_fraction=0.25,
    )
    ok = rows_of("a", "b", "c", quarantined=[bad("empty", 3, "good")])  # 1 of 4: exactly 25 %, allowed
    broken = rows_of(
        "a", quarantined=[bad("invalid_json", 1, "bad"), bad("invalid_json", 2, "bad"), bad("wrong_type", 3, "bad")]
    )
    assert quarantine_problem({"good": ok, "bad": rows_of("x")}, cfg) is None
    assert quarantine_problem({"good": ok, "bad": broken}, cfg) == (
        "source 'bad': 3 of 4 rows malformed (75.0% > curation.max_quarantine_fraction 25.0%; invalid_json 2, "
        "wrong_type 1; first: line 2: invalid_json here)"
    )
    rows = quarantine_rows({"good": ok, "bad": broken})
    assert [(q["source"], q["reason"]) for q in rows] == [
        ("good", "empty"),
        ("bad", "invalid_json"),
        ("bad", "invalid_json"),
        ("bad", "wrong_type"),
    ]
    assert set(rows[0]) == set(QUARANTINE_SCHEMA.names)


# ---- weighted draw and mixture ------------------------------------------------------------------------


def test_draw_follows_weights_3_to_1_and_reports_the_mixture():
    (a, ra), (b, rb) = src("a", 1000, weight=3), src("b", 1000, weight=1)
    rep = curate({"a": ra, "b": rb}, cur([a, b], prompts_per_round=400)).report
    assert (rep["per_source"]["a"]["rows_out"], rep["per_source"]["b"]["rows_out"]) == (300, 100)
    assert rep["removed"]["not_drawn"] == 1600 and rep["rows_out"] == 400
    assert rep["mixture"] == {
        "a": {"weight": 3.0, "target_share": 0.75, "available": 1000, "drawn": 300, "drawn_share": 0.75},
        "b": {"weight": 1.0, "target_share": 0.25, "available": 1000, "drawn": 100, "drawn_share": 0.25},
    }
    assert_identity(rep)


def test_short_source_share_is_redistributed():
    (a, ra), (b, rb) = src("a", 1000), src("b", 10)
    rep = curate({"a": ra, "b": rb}, cur([a, b], prompts_per_round=100)).report
    assert (rep["per_source"]["a"]["rows_out"], rep["per_source"]["b"]["rows_out"]) == (90, 10)
    assert rep["mixture"]["b"]["target_share"] == 0.5 and rep["mixture"]["b"]["drawn_share"] == 0.1
    # 2:1:1 of 100 with b holding 5: b gives 5, then 95 split 2:1 -> 63.33/31.67 -> 63/32 by largest remainder
    assert allocate_draw({"a": 500, "b": 5, "c": 500}, {"a": 2, "b": 1, "c": 1}, 100) == {"a": 63, "b": 5, "c": 32}
    assert allocate_draw({"a": 3, "b": 2}, {"a": 1, "b": 1}, 10) == {"a": 3, "b": 2}  # too few: all of it
    assert allocate_draw({"a": 0, "b": 9}, {"a": 5, "b": 1}, 4) == {"a": 0, "b": 4}
    assert allocate_draw({"a": 9, "b": 9, "c": 9}, {"a": 1, "b": 1, "c": 1}, 4) == {"a": 2, "b": 1, "c": 1}


def test_draw_is_deterministic_and_changes_with_round_and_seed():
    (a, ra), (b, rb) = src("a", 300, weight=2), src("b", 300)
    cfg = cur([a, b], prompts_per_round=60, seed=7)

    def ids(rows_a, round_num, c=cfg):
        return [p["prompt_id"] for p in curate({"a": rows_a, "b": rb}, c, round_num).prompts]

    first = ids(ra, 3)
    reversed_a = SourceRows(rows=list(reversed(ra.rows)), quarantined=[])
    assert first == ids(ra, 3) == ids(reversed_a, 3)  # same seed and round: same ids, whatever the order
    assert set(first) != set(ids(ra, 4))
    assert set(first) != set(ids(ra, 3, cur([a, b], prompts_per_round=60, seed=8)))


# ---- errors and table ---------------------------------------------------------------------------------


def test_nothing_left_raises_with_counts():
    sources = {"pool": rows_of("Old one", "old ONE", quarantined=[bad("empty", 2)])}
    with pytest.raises(CurationError) as e:
        curate(sources, pool(), 3, EarlierPrompts({text_hash("old one")}))
    assert str(e.value) == (
        "round 3: no prompts left after curation (3 in, all removed: {'quarantined': 1, 'duplicate_in_round': 1, "
        "'seen_in_earlier_round': 1}); add sources, allow reuse with curation.reuse_after_rounds, "
        "or relax the filters"
    )


def test_rows_must_match_configured_sources():
    with pytest.raises(CurationError, match=r"missing: \['pool'\], not configured: \['other'\]"):
        curate({"other": rows_of("x")}, pool())


def test_to_table_fixed_schema():
    result = curate({"pool": rows_of(*TEXTS)}, pool(tags=["a", "b"]), 1, SEEN, EVAL)
    table = to_table(result.prompts)
    assert table.schema == PROMPT_SCHEMA and table.num_rows == 2
    assert {json.loads(p)["id"] for p in table.column("provenance").to_pylist()} == {0, 5}
    assert table.column("tags").to_pylist() == [["a", "b"], ["a", "b"]]
    assert to_table([]).schema == PROMPT_SCHEMA


def test_docstring_examples():
    import doctest

    import tasks.curation.filters
    import tasks.curation.inputs
    import tasks.curation.mixture
    import tasks.curation.prompts

    for module in (tasks.curation.prompts, tasks.curation.inputs, tasks.curation.mixture, tasks.curation.filters):
        assert doctest.testmod(module).failed == 0, module.__name__


def test_draw_keys_are_splitmix64_of_the_prompt_id():
    """The vectorised keys equal a plain-Python splitmix64 finaliser (uint64 wrap-around included)."""
    from storage.ids import hash_obj
    from tasks.curation.mixture import draw_keys

    mask = (1 << 64) - 1

    def reference(pid, seed, round_num):
        x = int(pid[:16], 16) ^ int(hash_obj(["draw", seed, round_num], 16), 16)
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
        return x ^ (x >> 31)

    pids = [prompt_id(f"question {i}", "s") for i in range(200)] + ["ffffffffffffffffffff"]
    assert [int(k) for k in draw_keys(pids, 3, 7)] == [reference(p, 3, 7) for p in pids]
