"""Source stop errors, fingerprints and URIs, source configs and eval sets."""

import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError
from test_sources import _source_error, bad, good, write_jsonl  # noqa: F401  (fixtures and helpers)

from configs.schema import EvalSetConfig, LoadDatasetSpec, SourceConfig
from tasks.curation.sources import (
    SourceError,
    SourceRows,
    read_eval_set,
    read_source,
    source_fingerprint,
    source_uri,
)

# ---- stop errors ------------------------------------------------------------------------------------------


def test_source_errors(tmp_path):
    missing = str(tmp_path / "x.jsonl")
    assert _source_error(SourceConfig(name="pool", path=missing)) == (
        f"source 'pool': file not found: {missing} (fix curation.sources[].path)"
    )
    assert "not a file" in _source_error(SourceConfig(name="pool", path=str(tmp_path)))
    odd = write_jsonl(tmp_path / "pool.json", [{"prompt": "a"}])
    assert "unknown file extension '.json'" in _source_error(SourceConfig(name="pool", path=odd))
    empty = write_jsonl(tmp_path / "empty.jsonl", ["", "  "])
    assert _source_error(SourceConfig(name="pool", path=empty)) == (
        f"source 'pool': {empty} has no rows (fill it, or fix curation.sources[].path)"
    )
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet at all")
    assert "not a readable Parquet file" in _source_error(SourceConfig(name="pool", path=str(junk)))
    empty_pq = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"prompt": pa.array([], pa.string()), "answer": pa.array([], pa.string())}), empty_pq)
    assert f"{empty_pq} has no rows" in _source_error(SourceConfig(name="pool", path=str(empty_pq)))


def test_all_rows_quarantined_is_a_stop_error(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", ['{"prompt": oops}'] * 10 + ["[1]", {"prompt": 3, "answer": "1"}])
    assert _source_error(SourceConfig(name="pool", path=path)) == (
        f"source 'pool': all 12 rows of {path} are malformed (invalid_json 10, not_an_object 1, wrong_type 1; "
        "first: line 1: Expecting value) (fix the file, or the field settings in curation.sources[])"
    )
    long = write_jsonl(tmp_path / "long.jsonl", [{"prompt": "z" * 30, "answer": "1"}])
    assert "all 1 rows of" in _source_error(SourceConfig(name="pool", path=long), max_row_chars=10)


def test_field_missing_from_every_row_names_the_columns(tmp_path):
    path = write_jsonl(tmp_path / "pool.jsonl", [{"text": "a", "label": "1"}, "oops", {"text": "b", "extra": 2}])
    assert _source_error(SourceConfig(name="pool", path=path)) == (
        f"source 'pool': prompt_field 'prompt' not in {path}, which has columns: text, label, extra "
        "(fix curation.sources[].prompt_field)"
    )
    assert "answer_field 'answer' not in" in _source_error(SourceConfig(name="pool", path=path, prompt_field="text"))
    msg = _source_error(
        SourceConfig(name="pool", path=path, prompt_field="text", answer_field="label", keep_fields=["extra", "url"])
    )
    assert "keep_fields ['url'] not in" in msg and msg.endswith("(fix curation.sources[].keep_fields)")
    # a keep field present in one row only is fine: the others get None
    rows = read_source(
        SourceConfig(name="pool", path=path, prompt_field="text", answer_field=None, keep_fields=["extra"])
    ).rows
    assert [r["provenance"] for r in rows] == [{"extra": None}, {"extra": 2}]
    pq_path = tmp_path / "pool.parquet"
    pq.write_table(pa.table({"text": ["a"], "answer": ["1"]}), pq_path)
    assert "which has columns: text, answer (fix curation.sources[].prompt_field)" in _source_error(
        SourceConfig(name="pool", path=str(pq_path))
    )


def test_load_dataset_failure_is_one_line(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    cfg = SourceConfig(name="pool", dataset=LoadDatasetSpec(path="json", data_files=str(tmp_path / "nope.jsonl")))
    msg = _source_error(cfg)
    assert msg.startswith(f"source 'pool': cannot load {source_uri(cfg)}: ")
    assert msg.endswith(
        "(check curation.sources[].dataset, or download the data and set curation.sources[].path to a local file)"
    )


# ---- fingerprint and uri ----------------------------------------------------------------------------------


def test_fingerprint_follows_content_not_name(tmp_path, monkeypatch):
    import datasets
    from datasets import Dataset

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    a = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "p", "answer": "1"}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"prompt": "p", "answer": "1"}])
    c = write_jsonl(tmp_path / "c.jsonl", [{"prompt": "p", "answer": "2"}])
    fp = {n: source_fingerprint(SourceConfig(name="s", path=p)) for n, p in (("a", a), ("b", b), ("c", c))}
    assert fp["a"] == fp["b"] != fp["c"] and len(fp["a"]) == 64
    Dataset.from_list([{"prompt": "p", "answer": "1"}]).save_to_disk(str(tmp_path / "d1"))
    shutil.copytree(tmp_path / "d1", tmp_path / "d2")
    Dataset.from_list([{"prompt": "q", "answer": "1"}]).save_to_disk(str(tmp_path / "d3"))
    dirs = [source_fingerprint(SourceConfig(name="s", path=str(tmp_path / d))) for d in ("d1", "d2", "d3")]
    assert dirs[0] == dirs[1] != dirs[2]
    spec = SourceConfig(name="s", dataset=LoadDatasetSpec(path="json", data_files=c))
    first = source_fingerprint(spec)
    assert first == source_fingerprint(spec) and first != fp["c"]
    write_jsonl(tmp_path / "c.jsonl", [{"prompt": "p", "answer": "3"}])
    assert source_fingerprint(spec) != first
    with pytest.raises(SourceError, match="file not found"):
        source_fingerprint(SourceConfig(name="s", path=str(tmp_path / "gone.jsonl")))


def test_source_uri(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert source_uri(SourceConfig(name="s", path="data/x.jsonl")) == f"file://{tmp_path.resolve()}/data/x.jsonl"
    hub = LoadDatasetSpec(path="openai/gsm8k", name="main", split="test", revision="abc123")
    assert source_uri(SourceConfig(name="s", dataset=hub)) == (
        "hf://datasets/openai/gsm8k?name=main&split=test&revision=abc123"
    )
    local = LoadDatasetSpec(path="json", data_files="/d/x.jsonl")
    assert source_uri(SourceConfig(name="s", dataset=local)) == "hf://datasets/json?split=train&data_files=/d/x.jsonl"


# ---- config and eval sets ---------------------------------------------------------------------------------


def test_source_config_needs_exactly_one_of_path_and_dataset():
    with pytest.raises(ValidationError, match="source 'pool': set exactly one of path .* got neither"):
        SourceConfig(name="pool")
    with pytest.raises(ValidationError, match="got both"):
        SourceConfig(name="pool", path="p.jsonl", dataset={"path": "json", "data_files": "p.jsonl"})
    with pytest.raises(ValidationError, match=r"format \('csv'\) applies to path only"):
        SourceConfig(name="pool", dataset={"path": "openai/gsm8k", "name": "main"}, format="csv")
    cfg = SourceConfig(
        name="pool",
        dataset={"path": "json", "data_files": {"train": ["a.jsonl", "b.jsonl"]}},
        tags=["math", "synthetic"],
    )
    assert cfg.dataset.split == "train" and cfg.tags == ["math", "synthetic"]
    assert SourceConfig.model_validate(cfg.model_dump(mode="json")) == cfg


def test_source_rows_counts():
    assert SourceRows(rows=[{}, {}], quarantined=[{}]).rows_in == 3


def test_read_eval_set(tmp_path):
    path = write_jsonl(tmp_path / "heldout.jsonl", [{"q": "1+1?", "a": 2}, {"q": "Half of 3?", "a": "1.5"}])
    rows = read_eval_set(EvalSetConfig(path=path, prompt_field="q", answer_field="a"))
    assert rows == [{"prompt": "1+1?", "answer": "2"}, {"prompt": "Half of 3?", "answer": "1.5"}]
    bad_path = write_jsonl(
        tmp_path / "bad.jsonl", [{"prompt": "ok", "answer": "1"}, "", {"prompt": " ", "answer": "2"}]
    )
    with pytest.raises(SourceError, match=r"^eval set 'heldout': line 3 of .*'prompt' must be a non-empty string"):
        read_eval_set(EvalSetConfig(path=bad_path))
    pq_path = tmp_path / "heldout.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b"], "answer": ["1", None]}), pq_path)
    with pytest.raises(SourceError, match=r"row 1 \(0-based\) of .*'answer' must be a non-empty string or a number"):
        read_eval_set(EvalSetConfig(path=str(pq_path)))
    with pytest.raises(SourceError, match=r"file not found: .* \(fix evaluation.eval_sets\[\].path\)$"):
        read_eval_set(EvalSetConfig(path=str(tmp_path / "nope.jsonl")))
    invalid = write_jsonl(tmp_path / "invalid.jsonl", [{"prompt": "a", "answer": "1"}, '{"prompt": oops}'])
    with pytest.raises(SourceError, match=r"^eval set 'heldout': invalid JSON on line 2 of .*: Expecting value"):
        read_eval_set(EvalSetConfig(path=invalid))


def test_eval_set_with_bad_bytes_is_a_clear_error(tmp_path):
    path = write_jsonl(
        tmp_path / "heldout.jsonl", [{"prompt": "a", "answer": "1"}, b'{"prompt": "\xff", "answer": "2"}']
    )
    with pytest.raises(SourceError) as e:
        read_eval_set(EvalSetConfig(path=path))
    assert str(e.value) == (
        f"eval set 'heldout': line 2 of {path} is not valid UTF-8 (invalid start byte at byte 12) "
        "(fix the file: one JSON object per line)"
    )
    csv_path = tmp_path / "heldout.csv"
    csv_path.write_bytes(b"prompt,answer\r\nok?,1\r\n\xff?,2\r\n")
    with pytest.raises(SourceError) as e:
        read_eval_set(EvalSetConfig(path=str(csv_path)))
    assert (
        str(e.value) == f"eval set 'heldout': line 3 of {csv_path} is not valid UTF-8 (field 'prompt') (fix the file)"
    )
