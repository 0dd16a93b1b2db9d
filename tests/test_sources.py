"""Reading prompt sources and eval sets: real files in tmp_path, hand-checked rows and quarantine entries."""

import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from configs.schema import LoadDatasetSpec, SourceConfig
from tasks.curation.sources import (
    QUARANTINE_REASONS,
    SourceError,
    read_source,
)


def write_jsonl(path, lines):
    """Dicts become JSON lines; str lines are written as they are; bytes lines as raw bytes."""
    data = b"".join(
        (ln if isinstance(ln, bytes) else (ln if isinstance(ln, str) else json.dumps(ln)).encode()) + b"\n"
        for ln in lines
    )
    path.write_bytes(data)
    return str(path)


def good(prompt, answer, i, system=None, **provenance):
    return {"prompt": prompt, "system": system, "answer": answer, "provenance": provenance, "source_row": i}


def bad(location, reason, detail, raw, source="pool"):
    return {"source": source, "location": location, "reason": reason, "detail": detail, "raw": raw}


def _source_error(cfg, **kw):
    with pytest.raises(SourceError) as e:
        read_source(cfg, **kw)
    assert "\n" not in str(e.value)
    return str(e.value)


# ---- field mapping (JSONL, Parquet, CSV, save_to_disk, load_dataset) --------------------------------------

RECORDS = [
    {"question": "What is 6*7?", "solution": 42, "id": "q1", "url": "u1"},
    {"question": "Half of 5?", "solution": 2.5, "id": "q2", "url": "u2"},
    {"question": 123, "solution": "x", "id": "q3", "url": "u3"},  # not a string
    {"solution": "y", "id": "q4", "url": "u4"},  # no prompt at all
]
MAPPED = dict(prompt_field="question", answer_field="solution", keep_fields=["id"])


def test_read_jsonl_maps_fields_and_quarantines(tmp_path):
    path = write_jsonl(tmp_path / "pool.jsonl", RECORDS[:2] + [""] + RECORDS[2:])  # a blank line is not a row
    got = read_source(SourceConfig(name="pool", path=path, **MAPPED))
    assert got.rows == [good("What is 6*7?", "42", 0, id="q1"), good("Half of 5?", "2.5", 1, id="q2")]
    assert got.quarantined == [
        bad("line 4", "wrong_type", "field 'question' is an int, expected a string", json.dumps(RECORDS[2])),
        bad("line 5", "missing_field", "field 'question' is missing", json.dumps(RECORDS[3])),
    ]
    assert got.rows_in == 4
    # limit counts quarantined rows too (the blank line is not one)
    three = read_source(SourceConfig(name="pool", path=path, limit=3, **MAPPED))
    assert (len(three.rows), [q["location"] for q in three.quarantined], three.rows_in) == (2, ["line 4"], 3)
    one = read_source(SourceConfig(name="pool", path=path, limit=1, **MAPPED))
    assert (one.rows, one.quarantined) == ([good("What is 6*7?", "42", 0, id="q1")], [])
    no_answer = read_source(SourceConfig(name="pool", path=path, prompt_field="question", answer_field=None))
    assert [r["answer"] for r in no_answer.rows] == [None, None] and no_answer.rows[0]["provenance"] == {}


def test_read_parquet_maps_fields_and_quarantines(tmp_path):
    path = tmp_path / "pool.parquet"
    pq.write_table(
        pa.table(
            {
                "question": ["What is 6*7?", "Half of 5?", None, "Twice 4?", "Inf?"],
                "solution": [42.0, 3.0, None, float("nan"), float("inf")],
                "id": ["q1", "q2", "q3", "q4", "q5"],
                "unused": [1, 2, 3, 4, 5],
            }
        ),
        path,
    )
    got = read_source(SourceConfig(name="pool", path=str(path), **MAPPED))
    assert got.rows == [good("What is 6*7?", "42.0", 0, id="q1"), good("Half of 5?", "3.0", 1, id="q2")]
    # only the configured columns are read, so `unused` is not in the raw text
    assert got.quarantined == [
        bad(
            "row 2 (0-based)",
            "missing_field",
            "field 'question' is null",
            '{"question": null, "solution": null, "id": "q3"}',
        ),
        bad(
            "row 3 (0-based)",
            "missing_field",
            "field 'solution' is NaN",
            '{"question": "Twice 4?", "solution": NaN, "id": "q4"}',
        ),
        bad(
            "row 4 (0-based)",
            "wrong_type",
            "field 'solution' is a float (inf), expected a string or a finite number",
            '{"question": "Inf?", "solution": Infinity, "id": "q5"}',
        ),
    ]
    limited = read_source(SourceConfig(name="pool", path=str(path), limit=3, **MAPPED))
    assert (len(limited.rows), len(limited.quarantined)) == (2, 1)


def test_format_overrides_extension(tmp_path):
    path = write_jsonl(tmp_path / "pool.txt", [{"prompt": "hi", "answer": "1"}])
    assert read_source(SourceConfig(name="pool", path=path, format="jsonl")).rows[0]["prompt"] == "hi"


def test_csv_save_to_disk_and_load_dataset_read_alike(tmp_path, monkeypatch):
    """The same three rows as CSV, a save_to_disk directory and load_dataset("json", data_files=...)."""
    import datasets
    from datasets import Dataset, DatasetDict

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    records = [
        {"q": "What is 1 plus 2?", "a": "3", "tag": "x"},
        {"q": "What is 4 plus 4?", "a": "8", "tag": "y"},
        {"q": "", "a": "0", "tag": "z"},
    ]
    with open(tmp_path / "s.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["q", "a", "tag"])
        w.writeheader()
        w.writerows(records)
    Dataset.from_list(records).save_to_disk(str(tmp_path / "saved"))
    DatasetDict({"test": Dataset.from_list(records)}).save_to_disk(str(tmp_path / "dict"))
    write_jsonl(tmp_path / "s.jsonl", records)
    rows = [good("What is 1 plus 2?", "3", 0, tag="x"), good("What is 4 plus 4?", "8", 1, tag="y")]
    fields = dict(prompt_field="q", answer_field="a", keep_fields=["tag"])
    spec = LoadDatasetSpec(path="json", data_files=str(tmp_path / "s.jsonl"))
    for where, loc in (
        (dict(path=str(tmp_path / "s.csv")), "line 4"),
        (dict(path=str(tmp_path / "saved")), None),
        (dict(dataset=spec), None),
    ):
        got = read_source(SourceConfig(name="s", **where, **fields))
        assert got.rows == rows, where
        assert [(q["location"], q["reason"], q["detail"]) for q in got.quarantined] == [
            (loc or "row 2 (0-based)", "empty", "field 'q' is empty or whitespace")
        ], where
        assert got.quarantined[0]["raw"] == '{"q": "", "a": "0", "tag": "z"}'
        limited = read_source(SourceConfig(name="s", limit=2, **where, **fields))
        assert (limited.rows, limited.quarantined) == (rows, [])
    assert _source_error(SourceConfig(name="s", path=str(tmp_path / "dict"), **fields)).startswith(
        f"source 's': {tmp_path / 'dict'} is a DatasetDict without a 'train' split (splits: test)"
    )
    assert "prompt_field 'question' not in " in _source_error(
        SourceConfig(name="s", path=str(tmp_path / "s.csv"), prompt_field="question", answer_field="a")
    )
    assert "which has columns: q, a, tag" in _source_error(
        SourceConfig(name="s", dataset=spec, prompt_field="question", answer_field="a")
    )


def test_csv_undecodable_short_and_empty_rows(tmp_path):
    path = tmp_path / "s.csv"
    path.write_bytes(b'q,a\r\nWhat is 1 plus 2?,3\r\ncaf\xe9 au lait?,4\r\n"  ",0\r\nOnly a prompt\r\nLast?,5\r\n')
    got = read_source(SourceConfig(name="s", path=str(path), prompt_field="q", answer_field="a"))
    assert got.rows == [good("What is 1 plus 2?", "3", 0), good("Last?", "5", 4)]
    assert got.quarantined == [
        bad("line 3", "undecodable", "not valid UTF-8 (field 'q')", '{"q": "caf\\xe9 au lait?", "a": "4"}', "s"),
        bad("line 4", "empty", "field 'q' is empty or whitespace", '{"q": "  ", "a": "0"}', "s"),
        bad("line 5", "missing_field", "field 'a' is null", '{"q": "Only a prompt", "a": null}', "s"),
    ]
    assert pa.Table.from_pylist(got.quarantined + got.rows).num_rows == 5  # no surrogates left anywhere


# ---- every quarantine reason ------------------------------------------------------------------------------


def test_each_quarantine_reason_with_location_and_detail(tmp_path):
    lines = [
        {"prompt": "What is 1+1?", "answer": "2"},  # line 1: good
        b'{"prompt": "caf\xe9"}',  # line 2: latin-1 byte
        '{"prompt": oops}',  # line 3
        "[1, 2]",  # line 4
        {"answer": "3"},  # line 5
        {"prompt": None, "answer": "1"},  # line 6
        {"prompt": 7, "answer": "1"},  # line 7
        {"prompt": "  \n ", "answer": "1"},  # line 8
        {"prompt": "x" * 50, "answer": "1"},  # line 9: over max_row_chars=40
        {"prompt": "ok?", "answer": True},  # line 10
        {"prompt": "ok?"},  # line 11
        '{"prompt": "bad \\ud800 x", "answer": "1"}',  # line 12: a lone surrogate escape
        "",  # line 13: blank, not a row
        {"prompt": "Last one", "answer": 4},  # line 14
        '{"prompt": "Smile \\ud83d\\ude00", "answer": "5"}',  # line 15: a valid surrogate pair
    ]
    path = write_jsonl(tmp_path / "pool.jsonl", lines)
    got = read_source(SourceConfig(name="pool", path=path), max_row_chars=40)
    assert got.rows == [good("What is 1+1?", "2", 0), good("Last one", "4", 12), good("Smile \U0001f600", "5", 13)]
    assert got.quarantined == [
        bad(
            "line 2", "undecodable", "not valid UTF-8 (invalid continuation byte at byte 15)", '{"prompt": "caf\\xe9"}'
        ),
        bad("line 3", "invalid_json", "Expecting value", '{"prompt": oops}'),
        bad("line 4", "not_an_object", "a list, not an object", "[1, 2]"),
        bad("line 5", "missing_field", "field 'prompt' is missing", '{"answer": "3"}'),
        bad("line 6", "missing_field", "field 'prompt' is null", '{"prompt": null, "answer": "1"}'),
        bad("line 7", "wrong_type", "field 'prompt' is an int, expected a string", '{"prompt": 7, "answer": "1"}'),
        bad("line 8", "empty", "field 'prompt' is empty or whitespace", '{"prompt": "  \\n ", "answer": "1"}'),
        bad(
            "line 9",
            "over_length",
            "prompt is 50 characters, over max_row_chars (40)",
            json.dumps({"prompt": "x" * 50, "answer": "1"}),
        ),
        bad(
            "line 10",
            "wrong_type",
            "field 'answer' is a bool, expected a string or a finite number",
            '{"prompt": "ok?", "answer": true}',
        ),
        bad("line 11", "missing_field", "field 'answer' is missing", '{"prompt": "ok?"}'),
        bad(
            "line 12",
            "undecodable",
            "not valid Unicode (a \\u escape of a lone surrogate)",
            '{"prompt": "bad \\ud800 x", "answer": "1"}',
        ),
    ]
    counts = {r: sum(q["reason"] == r for q in got.quarantined) for r in QUARANTINE_REASONS}
    assert counts == {
        "undecodable": 2,
        "invalid_json": 1,
        "not_an_object": 1,
        "missing_field": 3,
        "wrong_type": 2,
        "empty": 1,
        "over_length": 1,
    }
    assert got.rows_in == 14
    assert pa.Table.from_pylist(got.quarantined).num_rows == 11  # valid UTF-8 throughout: the artifact can store it
    # without max_row_chars the long prompt is a good row, in file order
    assert [r["source_row"] for r in read_source(SourceConfig(name="pool", path=path)).rows] == [0, 8, 12, 13]


def test_raw_is_truncated(tmp_path):
    path = write_jsonl(tmp_path / "pool.jsonl", [{"prompt": "ok", "answer": "1"}, {"prompt": "y" * 5000}])
    q = read_source(SourceConfig(name="pool", path=path)).quarantined
    assert q[0]["reason"] == "missing_field" and q[0]["raw"] == '{"prompt": "' + "y" * 988


# ---- chat messages ----------------------------------------------------------------------------------------


def test_messages_field(tmp_path):
    def chat(*turns):
        return [{"role": r, "content": c} for r, c in turns]

    lines = [
        {
            "messages": chat(
                ("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello"), ("user", "2+2?"), ("system", "ignored")
            ),
            "answer": "4",
        },
        {"messages": chat(("user", "Only turn")), "answer": "x"},
        {"messages": chat(("system", "S"), ("assistant", "A")), "answer": "x"},
        {"messages": chat(("user", "Earlier"), ("user", " ")), "answer": "x"},
        {"messages": "Hi there", "answer": "x"},
        {"messages": [{"role": "user", "content": 5}], "answer": "x"},
        {"messages": [["user", "hi"]], "answer": "x"},
        {"answer": "x"},
    ]
    path = write_jsonl(tmp_path / "chat.jsonl", lines)
    got = read_source(SourceConfig(name="chat", path=path, messages_field="messages"))  # no `prompt` in the file
    assert got.rows == [good("2+2?", "4", 0, system="Be brief."), good("Only turn", "x", 1)]
    assert [(q["location"], q["reason"], q["detail"]) for q in got.quarantined] == [
        ("line 3", "empty", "field 'messages' has no user turn"),
        ("line 4", "empty", "field 'messages': the last user turn is empty or whitespace"),
        ("line 5", "wrong_type", "field 'messages' is a string, expected a list of {role, content} messages"),
        ("line 6", "wrong_type", "field 'messages': message 0 content is an int, expected a string"),
        ("line 7", "wrong_type", "field 'messages': message 0 is a list, expected {role, content}"),
        ("line 8", "missing_field", "field 'messages' is missing"),
    ]
    # Parquet stores a chat as list<struct<role, content>>
    pq_path = tmp_path / "chat.parquet"
    pq.write_table(pa.table({"conv": [chat(("system", "S"), ("user", "Q?"))], "answer": ["1"]}), pq_path)
    assert read_source(SourceConfig(name="chat", path=str(pq_path), messages_field="conv")).rows == [
        good("Q?", "1", 0, system="S")
    ]
    assert _source_error(SourceConfig(name="chat", path=str(pq_path), messages_field="msgs")) == (
        f"source 'chat': messages_field 'msgs' not in {pq_path}, which has columns: conv, answer "
        "(fix curation.sources[].messages_field)"
    )
