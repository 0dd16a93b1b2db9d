"""Curation filters, the weighted draw and source reading, on literal inputs with hand-computed counts."""
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from configs.schema import CurationConfig, EvalSetConfig, SourceConfig
from storage.ids import prompt_id, text_hash
from tasks.curate import (PROMPT_SCHEMA, REMOVAL_REASONS, CurationError, allocate_draw, build_decontam_index,
                          curate_prompts, is_contaminated, ngrams, to_table)
from tasks.sources import SourceError, read_eval_set, read_source


def src(name, n=0, **kw):
    """A source config plus n distinct well-formed rows for it."""
    rows = [{"prompt": f"{name} question {i}", "answer": str(i), "provenance": {}, "source_row": i} for i in range(n)]
    return SourceConfig(name=name, path=f"{name}.jsonl", **kw), rows


def cur(sources, **kw):
    return CurationConfig(sources=sources, **kw)


def row(text, i=0):
    return {"prompt": text, "answer": None, "provenance": {"id": i}, "source_row": i}


def assert_identity(report):
    assert report["rows_in"] == report["rows_out"] + sum(report["removed"].values())
    for c in report["per_source"].values():
        assert c["rows_in"] == c["rows_out"] + sum(c[r] for r in REMOVAL_REASONS)


# ---- filters ------------------------------------------------------------------------------------------

EVAL = ["Compute 17 times 23 and explain."]
ROWS = [
    row("What is 2 + 2?", 0),
    row("  what is 2 +   2? ", 1),  # duplicate of row 0 after whitespace folding and case folding
    row("WHAT IS 2 + 2?", 2),  # duplicate
    row("Name a prime above 10.", 3),  # used by an earlier round
    row("compute 17 TIMES 23 and explain.", 4),  # an eval prompt: contaminated
    row("Add 5 and 7.", 5),
    row(None, 6),  # malformed
    row("   \n ", 7),  # malformed: empty after normalisation
]
SEEN = {text_hash("Name a prime above 10.")}


def test_each_filter_counts_exactly():
    cfg = cur([SourceConfig(name="pool", path="p.jsonl", license="cc-by-4.0")], prompts_per_round=10)
    result = curate_prompts({"pool": ROWS}, cfg, 1, SEEN, EVAL)
    rep = result.report
    assert rep["rows_in"] == 8 and rep["rows_out"] == 2
    assert rep["removed"] == {"malformed": 2, "too_short": 0, "too_long": 0, "keyword": 0, "duplicate_in_round": 2,
                              "seen_in_earlier_round": 1, "contaminated": 1, "near_duplicate": 0,
                              "not_drawn": 0}
    assert rep["per_source"]["pool"] == {"rows_in": 8, "rows_out": 2, **rep["removed"]}
    assert rep["contaminated_examples"] == ["compute 17 TIMES 23 and explain."]
    assert_identity(rep)
    by_text = {p["prompt"]: p for p in result.prompts}
    assert set(by_text) == {"What is 2 + 2?", "Add 5 and 7."}  # first occurrence wins, normalised
    p = by_text["What is 2 + 2?"]
    assert p == {"prompt_id": prompt_id("What is 2 + 2?", "pool"), "text_hash": text_hash("what is 2 + 2?"),
                 "prompt": "What is 2 + 2?", "answer": None, "source": "pool", "license": "cc-by-4.0",
                 "provenance": '{"id":0}', "source_row": 0}
    assert [p["prompt_id"] for p in result.prompts] == sorted(p["prompt_id"] for p in result.prompts)


def test_length_and_keyword_filters_count_exactly():
    rows = [row("Hi", 0), row("What is 2 + 2?", 1), row("x" * 50, 2), row("Are you ChatGPT, really?", 3),
            row("Ask claude-3 about it", 4), row("Claudette sings.", 5)]
    cfg = cur([SourceConfig(name="pool", path="p.jsonl")], prompts_per_round=10, min_chars=3, max_chars=40,
              blocked_keywords=["chatgpt", "Claude-3", " "])
    rep = curate_prompts({"pool": rows}, cfg, 1, set(), []).report
    # "Hi" is too short, the 50 x's too long, two rows name a model; "Claudette" is not "claude-3".
    assert {k: v for k, v in rep["removed"].items() if v} == {"too_short": 1, "too_long": 1, "keyword": 2}
    assert rep["rows_out"] == 2
    assert_identity(rep)


def test_reuse_allowed_when_dedup_across_rounds_is_off():
    cfg = cur([SourceConfig(name="pool", path="p.jsonl")], prompts_per_round=10, dedup_across_rounds=False)
    rep = curate_prompts({"pool": ROWS}, cfg, 1, SEEN, EVAL).report
    assert rep["removed"]["seen_in_earlier_round"] == 0 and rep["rows_out"] == 3


def test_cross_source_duplicate_goes_to_the_first_configured_source():
    cfg = cur([SourceConfig(name="a", path="a.jsonl"), SourceConfig(name="b", path="b.jsonl")])
    rows = {"b": [row("Same text"), row("Only in b", 1)], "a": [row("same   TEXT")]}  # dict order: b first
    result = curate_prompts(rows, cfg, 1, set(), [])
    assert {(p["source"], p["prompt"]) for p in result.prompts} == {("a", "same TEXT"), ("b", "Only in b")}
    assert result.report["per_source"]["b"]["duplicate_in_round"] == 1
    assert_identity(result.report)


def test_contaminated_examples_capped_at_five():
    cfg = cur([SourceConfig(name="pool", path="p.jsonl")], prompts_per_round=10)
    rows = [row(f"eval item {i}", i) for i in range(7)] + [row("clean prompt", 7)]
    rep = curate_prompts({"pool": rows}, cfg, 1, set(), [f"Eval item {i}" for i in range(7)]).report
    assert rep["removed"]["contaminated"] == 7 and rep["rows_out"] == 1
    assert rep["contaminated_examples"] == [f"eval item {i}" for i in range(5)]


def test_ngrams_short_texts_and_punctuation():
    assert ngrams("Hello, World", 8) == {"hello , world"}  # shorter than n: the whole text is one gram
    assert ngrams("", 3) == set() and ngrams("   ", 3) == set()
    assert ngrams("a b c", 3) == {"a b c"}
    assert ngrams("What is 2+2?", 3) == {"what is 2", "is 2 +", "2 + 2", "+ 2 ?"}


def test_is_contaminated_threshold():
    index = build_decontam_index(["x a b c d y"], 3)  # grams: x a b, a b c, b c d, c d y
    # "a b c d e" has grams a b c, b c d, c d e: 2 of 3 in the index
    assert is_contaminated("a b c d e", index, 3, 0.5)
    assert is_contaminated("a b c d e", index, 3, 2 / 3)
    assert not is_contaminated("a b c d e", index, 3, 0.7)
    assert not is_contaminated("", index, 3, 0.1)
    assert is_contaminated("What is 2+2 ?", build_decontam_index(["what is 2 + 2?"], 8), 8, 1.0)


# ---- weighted draw ------------------------------------------------------------------------------------

def test_draw_follows_weights_3_to_1():
    (a, ra), (b, rb) = src("a", 1000, weight=3), src("b", 1000, weight=1)
    rep = curate_prompts({"a": ra, "b": rb}, cur([a, b], prompts_per_round=400), 1, set(), []).report
    assert (rep["per_source"]["a"]["rows_out"], rep["per_source"]["b"]["rows_out"]) == (300, 100)
    assert rep["removed"]["not_drawn"] == 1600 and rep["rows_out"] == 400
    assert_identity(rep)


def test_short_source_share_is_redistributed():
    (a, ra), (b, rb) = src("a", 1000), src("b", 10)
    rep = curate_prompts({"a": ra, "b": rb}, cur([a, b], prompts_per_round=100), 1, set(), []).report
    assert (rep["per_source"]["a"]["rows_out"], rep["per_source"]["b"]["rows_out"]) == (90, 10)
    # 2:1:1 of 100 with b holding 5: b gives 5, then 95 split 2:1 -> 63.33/31.67 -> 63/32 by largest remainder
    assert allocate_draw({"a": 500, "b": 5, "c": 500}, {"a": 2, "b": 1, "c": 1}, 100) == {"a": 63, "b": 5, "c": 32}
    assert allocate_draw({"a": 3, "b": 2}, {"a": 1, "b": 1}, 10) == {"a": 3, "b": 2}  # too few: all of it
    assert allocate_draw({"a": 0, "b": 9}, {"a": 5, "b": 1}, 4) == {"a": 0, "b": 4}
    assert allocate_draw({"a": 9, "b": 9, "c": 9}, {"a": 1, "b": 1, "c": 1}, 4) == {"a": 2, "b": 1, "c": 1}


def test_draw_is_deterministic_and_changes_with_round_and_seed():
    (a, ra), (b, rb) = src("a", 300, weight=2), src("b", 300)
    cfg = cur([a, b], prompts_per_round=60, seed=7)

    def ids(rows_a, round_num, c=cfg):
        return [p["prompt_id"] for p in curate_prompts({"a": rows_a, "b": rb}, c, round_num, set(), []).prompts]

    first = ids(ra, 3)
    assert first == ids(ra, 3) == ids(list(reversed(ra)), 3)  # same seed and round: same ids, whatever the order
    assert set(first) != set(ids(ra, 4))
    assert set(first) != set(ids(ra, 3, cur([a, b], prompts_per_round=60, seed=8)))


# ---- errors and table ---------------------------------------------------------------------------------

def test_nothing_left_raises_with_counts():
    cfg = cur([SourceConfig(name="pool", path="p.jsonl")])
    rows = [row("Old one"), row("old ONE", 1), row(None, 2)]
    with pytest.raises(CurationError) as e:
        curate_prompts({"pool": rows}, cfg, 3, {text_hash("old one")}, [])
    assert str(e.value) == (
        "round 3: no prompts left after curation (3 in, all removed: {'malformed': 1, 'duplicate_in_round': 1, "
        "'seen_in_earlier_round': 1}); add sources, allow reuse with curation.dedup_across_rounds: false, "
        "or lower prompts_per_round")


def test_rows_must_match_configured_sources():
    with pytest.raises(CurationError, match=r"missing: \['pool'\], not configured: \['other'\]"):
        curate_prompts({"other": [row("x")]}, cur([SourceConfig(name="pool", path="p.jsonl")]), 1, set(), [])


def test_to_table_fixed_schema():
    cfg = cur([SourceConfig(name="pool", path="p.jsonl")], prompts_per_round=10)
    table = to_table(curate_prompts({"pool": ROWS}, cfg, 1, SEEN, EVAL).prompts)
    assert table.schema == PROMPT_SCHEMA and table.num_rows == 2
    assert {json.loads(p)["id"] for p in table.column("provenance").to_pylist()} == {0, 5}
    assert to_table([]).schema == PROMPT_SCHEMA


# ---- reading sources ----------------------------------------------------------------------------------

def write_jsonl(path, lines):
    path.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines))
    return str(path)


RECORDS = [
    {"question": "What is 6*7?", "solution": 42, "id": "q1", "url": "u1"},
    {"question": "Half of 5?", "solution": 2.5, "id": "q2", "url": "u2"},
    {"question": 123, "solution": "x", "id": "q3", "url": "u3"},  # not a string: prompt None, not an error
    {"solution": "y", "id": "q4", "url": "u4"},  # no prompt at all
]
EXPECTED = [
    {"prompt": "What is 6*7?", "answer": "42", "provenance": {"id": "q1"}, "source_row": 0},
    {"prompt": "Half of 5?", "answer": "2.5", "provenance": {"id": "q2"}, "source_row": 1},
    {"prompt": None, "answer": "x", "provenance": {"id": "q3"}, "source_row": 2},
    {"prompt": None, "answer": "y", "provenance": {"id": "q4"}, "source_row": 3},
]
MAPPED = dict(prompt_field="question", answer_field="solution", keep_fields=["id"])


def test_read_jsonl_maps_fields(tmp_path):
    path = write_jsonl(tmp_path / "pool.jsonl", RECORDS[:2] + [""] + RECORDS[2:])  # a blank line is not a row
    assert read_source(SourceConfig(name="pool", path=path, **MAPPED)) == EXPECTED
    assert read_source(SourceConfig(name="pool", path=path, limit=2, **MAPPED)) == EXPECTED[:2]
    nothing = read_source(SourceConfig(name="pool", path=path, prompt_field="question", answer_field=None))
    assert [r["answer"] for r in nothing] == [None] * 4 and nothing[0]["provenance"] == {}


def test_read_parquet_maps_fields(tmp_path):
    path = tmp_path / "pool.parquet"
    pq.write_table(pa.table({"question": ["What is 6*7?", "Half of 5?", None], "solution": [42, 3, None],
                             "id": ["q1", "q2", "q3"]}), path)
    rows = read_source(SourceConfig(name="pool", path=str(path), **MAPPED))
    assert rows == [
        {"prompt": "What is 6*7?", "answer": "42", "provenance": {"id": "q1"}, "source_row": 0},
        {"prompt": "Half of 5?", "answer": "3", "provenance": {"id": "q2"}, "source_row": 1},
        {"prompt": None, "answer": None, "provenance": {"id": "q3"}, "source_row": 2},
    ]
    assert len(read_source(SourceConfig(name="pool", path=str(path), limit=1, **MAPPED))) == 1


def test_format_overrides_extension(tmp_path):
    path = write_jsonl(tmp_path / "pool.txt", [{"prompt": "hi", "answer": "1"}])
    assert read_source(SourceConfig(name="pool", path=path, format="jsonl"))[0]["prompt"] == "hi"


def _source_error(cfg):
    with pytest.raises(SourceError) as e:
        read_source(cfg)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_source_errors(tmp_path):
    missing = str(tmp_path / "x.jsonl")
    assert _source_error(SourceConfig(name="pool", path=missing)) == (
        f"source 'pool': file not found: {missing} (fix curation.sources[].path)")
    assert "not a file" in _source_error(SourceConfig(name="pool", path=str(tmp_path)))
    odd = write_jsonl(tmp_path / "pool.json", [{"prompt": "a"}])
    assert "unknown file extension '.json'" in _source_error(SourceConfig(name="pool", path=odd))
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a"}, {"prompt": "b"}, '{"prompt": oops}'])
    assert _source_error(SourceConfig(name="pool", path=bad)).startswith(
        f"source 'pool': invalid JSON on line 3 of {bad}: ")
    listy = write_jsonl(tmp_path / "list.jsonl", [{"prompt": "a"}, "[1, 2]"])
    assert "line 2" in _source_error(SourceConfig(name="pool", path=listy))
    empty = write_jsonl(tmp_path / "empty.jsonl", [""])
    assert "has no rows" in _source_error(SourceConfig(name="pool", path=empty))
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet at all")
    assert "not a readable Parquet file" in _source_error(SourceConfig(name="pool", path=str(junk)))


def test_missing_fields_name_the_columns(tmp_path):
    path = write_jsonl(tmp_path / "pool.jsonl", [{"text": "a", "label": "1"}, {"text": "b", "extra": 2}])
    assert _source_error(SourceConfig(name="pool", path=path)) == (
        f"source 'pool': prompt_field 'prompt' not in {path}, which has columns: text, label, extra "
        "(fix curation.sources[].prompt_field)")
    assert "answer_field 'answer' not in" in _source_error(SourceConfig(name="pool", path=path, prompt_field="text"))
    msg = _source_error(SourceConfig(name="pool", path=path, prompt_field="text", answer_field="label",
                                     keep_fields=["extra", "url"]))
    assert "keep_fields ['url']" in msg and msg.endswith("(fix curation.sources[].keep_fields)")
    pq_path = tmp_path / "pool.parquet"
    pq.write_table(pa.table({"text": ["a"], "answer": ["1"]}), pq_path)
    assert "which has columns: text, answer (fix curation.sources[].prompt_field)" in _source_error(
        SourceConfig(name="pool", path=str(pq_path)))


def test_read_eval_set(tmp_path):
    path = write_jsonl(tmp_path / "heldout.jsonl", [{"q": "1+1?", "a": 2}, {"q": "Half of 3?", "a": "1.5"}])
    rows = read_eval_set(EvalSetConfig(path=path, prompt_field="q", answer_field="a"))
    assert rows == [{"prompt": "1+1?", "answer": "2"}, {"prompt": "Half of 3?", "answer": "1.5"}]
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "ok", "answer": "1"}, "", {"prompt": " ", "answer": "2"}])
    with pytest.raises(SourceError, match=r"^eval set 'heldout': line 3 of .*'prompt' must be a non-empty string"):
        read_eval_set(EvalSetConfig(path=bad))
    pq_path = tmp_path / "heldout.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b"], "answer": ["1", None]}), pq_path)
    with pytest.raises(SourceError, match=r"row 1 \(0-based\) of .*'answer' must be a non-empty string or a number"):
        read_eval_set(EvalSetConfig(path=str(pq_path)))
    with pytest.raises(SourceError, match=r"file not found: .* \(fix evaluation.eval_sets\[\].path\)$"):
        read_eval_set(EvalSetConfig(path=str(tmp_path / "nope.jsonl")))


def test_docstring_examples():
    import doctest

    import tasks.curate

    assert doctest.testmod(tasks.curate).failed == 0


def test_near_duplicates_within_the_round_and_of_earlier_rounds():
    rows = [row("Explain how a rainbow forms after the rain stops", 0),
            row("explain how a rainbow forms after the rain stops!!", 1),  # exact after normalisation? no: "!!"
            row("Explain how a rainbow forms after the rain stops, please", 2),  # near: one word more
            row("Write a haiku about the sea at night and the moon", 3),
            row("Name three prime numbers larger than one hundred", 4)]
    earlier = ["Write a haiku about the sea at night and the moon."]  # round 1 used it, punctuation aside
    cfg = cur([SourceConfig(name="pool", path="p.jsonl")], prompts_per_round=10, near_dup_threshold=0.6)
    result = curate_prompts({"pool": rows}, cfg, 2, set(), [], earlier)
    assert result.report["removed"]["near_duplicate"] == 3
    assert sorted(p["source_row"] for p in result.prompts) == [0, 4]
    assert_identity(result.report)
    off = cur([SourceConfig(name="pool", path="p.jsonl")], prompts_per_round=10, near_dup_threshold=None)
    assert curate_prompts({"pool": rows}, off, 2, set(), [], earlier).report["rows_out"] == 5


def test_csv_and_save_to_disk_sources(tmp_path):
    """The same three rows as CSV and as a datasets.save_to_disk directory read alike."""
    import csv

    from datasets import Dataset, DatasetDict

    rows = [{"q": "What is 1 plus 2?", "a": "3", "tag": "x"}, {"q": "What is 4 plus 4?", "a": "8", "tag": "y"},
            {"q": "", "a": "0", "tag": "z"}]
    with open(tmp_path / "s.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["q", "a", "tag"])
        w.writeheader()
        w.writerows(rows)
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    DatasetDict({"test": Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "dict"))
    expected = [{"prompt": "What is 1 plus 2?", "answer": "3", "provenance": {"tag": "x"}, "source_row": 0},
                {"prompt": "What is 4 plus 4?", "answer": "8", "provenance": {"tag": "y"}, "source_row": 1},
                {"prompt": None, "answer": "0", "provenance": {"tag": "z"}, "source_row": 2}]
    for path in (tmp_path / "s.csv", tmp_path / "saved"):
        cfg = SourceConfig(name="s", path=str(path), prompt_field="q", answer_field="a", keep_fields=["tag"])
        assert read_source(cfg) == expected, path
    assert len(read_source(SourceConfig(name="s", path=str(tmp_path / "s.csv"), prompt_field="q", answer_field="a",
                                        limit=2))) == 2
    with pytest.raises(SourceError, match="DatasetDict without a 'train' split \\(splits: test\\)"):
        read_source(SourceConfig(name="s", path=str(tmp_path / "dict"), prompt_field="q", answer_field="a"))
    with pytest.raises(SourceError, match="prompt_field 'question' not in .*s.csv, which has columns: q, a, tag"):
        read_source(SourceConfig(name="s", path=str(tmp_path / "s.csv"), prompt_field="question", answer_field="a"))
