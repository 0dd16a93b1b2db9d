"""Tests of the demo's data (demo.task) and base model builder (demo.base_model). Runs in seconds."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from demo.base_model import BUILD_FILE, build_base_model, build_tiny_model, build_tokenizer
from demo.task import MALFORMED_POOL_LINES, has_carry, make_problems, operands, write_demo_data


def normalize(text: str) -> str:
    """Whitespace runs folded, case folded: the form exact dedup compares prompts in."""
    return " ".join(text.split()).casefold()


# --- demo.task ------------------------------------------------------------------------------


def test_has_carry_and_operands():
    assert has_carry(37, 8) and has_carry(91, 9) and has_carry(11, 9)
    assert not has_carry(32, 5) and not has_carry(10, 9) and not has_carry(90, 1)
    assert operands("What is 37 plus 8?") == (37, 8)
    assert operands("What is 8 plus 37?") == (37, 8)


def test_problem_counts():
    pool, heldout = make_problems()
    # 90 two-digit a x 9 one-digit b = 810 pairs, both orders = 1,620 prompts; 405 pairs carry.
    assert len(pool) + len(heldout) == 1620
    assert len(heldout) == 150
    assert len(pool) == 1470
    assert sum(has_carry(*operands(r["prompt"])) for r in pool) == 810 - 150
    assert len({r["prompt"] for r in pool + heldout}) == 1620
    assert {"prompt": "What is 37 plus 8?", "answer": "45"} in pool + heldout


def test_heldout_is_carry_disjoint_and_has_both_orders():
    pool, heldout = make_problems()
    assert all(has_carry(*operands(r["prompt"])) for r in heldout)
    assert not {r["prompt"] for r in heldout} & {r["prompt"] for r in pool}
    # Every held-out pair appears in both orders, and no pair is split between heldout and pool.
    held_pairs = [operands(r["prompt"]) for r in heldout]
    assert all(held_pairs.count(p) == 2 for p in held_pairs)
    assert len(set(held_pairs)) == 75
    assert not set(held_pairs) & {operands(r["prompt"]) for r in pool}
    for r in heldout:
        a, b = operands(r["prompt"])
        assert r["answer"] == str(a + b)
        assert r["prompt"] in (f"What is {a} plus {b}?", f"What is {b} plus {a}?")


def test_split_is_deterministic_in_seed():
    assert make_problems(0) == make_problems(0)
    assert make_problems(0)[1] != make_problems(1)[1]


def test_write_demo_data(tmp_path):
    paths = write_demo_data(tmp_path / "data")
    assert set(paths) == {"pool", "extra", "heldout"}
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["extra.parquet", "heldout.jsonl", "pool.jsonl"]

    lines = paths["pool"].read_text().splitlines()
    assert lines[-4:] == MALFORMED_POOL_LINES  # the planted malformed rows come last
    pool_rows = [json.loads(line) for line in lines[:-4]]
    held_rows = [json.loads(line) for line in paths["heldout"].read_text().splitlines()]
    assert len(pool_rows) == 1470 and len(held_rows) == 150
    assert pool_rows[0] == {"prompt": "What is 10 plus 1?", "answer": "11", "template": "plus-v1"}
    assert set(held_rows[0]) == {"prompt", "answer"}


def test_extra_parquet_plants_duplicates_and_leaks(tmp_path):
    paths = write_demo_data(tmp_path)
    table = pq.read_table(paths["extra"])
    assert table.column_names == ["question", "solution", "origin"]
    rows = table.to_pylist()
    pool, heldout = make_problems()
    pool_raw, held_raw = {r["prompt"] for r in pool}, {r["prompt"] for r in heldout}
    pool_norm = {normalize(p) for p in pool_raw}

    by_origin: dict[str, list[dict]] = {}
    for r in rows:
        by_origin.setdefault(r["origin"], []).append(r)
    assert {k: len(v) for k, v in by_origin.items()} == {
        "case-whitespace-variant": 40,
        "heldout-copy": 10,
        "pool-copy": 10,
    }
    variants = [r["question"] for r in by_origin["case-whitespace-variant"]]
    assert not set(variants) & pool_raw  # new-looking strings ...
    assert all(normalize(q) in pool_norm for q in variants)  # ... that are pool prompts after normalisation
    assert len({normalize(q) for q in variants}) == 40  # of 40 different pool prompts
    assert all(r["question"] in held_raw for r in by_origin["heldout-copy"])  # the planted eval leaks
    assert all(r["question"] in pool_raw for r in by_origin["pool-copy"])
    for r in rows:
        a, b = operands(r["question"])
        assert r["solution"] == str(a + b)


# --- demo.base_model: tokenizer -------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    pool, _ = make_problems()
    return build_tokenizer([r["prompt"] for r in pool])


def test_tokenizer_splits_digits(tokenizer):
    ids = tokenizer("What is 37 plus 8?", add_special_tokens=False)["input_ids"]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens == ["What", "▁is", "▁", "3", "7", "▁plus", "▁", "8", "?"]
    assert tokenizer.decode(ids) == "What is 37 plus 8?"
    assert tokenizer.convert_ids_to_tokens(tokenizer("108", add_special_tokens=False)["input_ids"]) == ["1", "0", "8"]
    # Text outside the training corpus still encodes and decodes (printable ASCII is in the vocabulary).
    assert tokenizer.decode(tokenizer("WHAT is  90 Plus 9 ?", add_special_tokens=False)["input_ids"]) == (
        "WHAT is  90 Plus 9 ?"
    )


def test_tokenizer_special_tokens(tokenizer):
    assert (tokenizer.eos_token, tokenizer.pad_token, tokenizer.bos_token) == ("</s>", "<pad>", "<|user|>")
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    for special in ("<|user|>", "<|assistant|>", "</s>", "<pad>"):
        assert tokenizer.convert_ids_to_tokens(tokenizer(special, add_special_tokens=False)["input_ids"]) == [special]
    assert tokenizer("1", add_special_tokens=True)["input_ids"] == tokenizer("1", add_special_tokens=False)["input_ids"]


def test_chat_template(tokenizer):
    user = [{"role": "user", "content": "What is 37 plus 8?"}]
    full = user + [{"role": "assistant", "content": "45"}]
    assert tokenizer.apply_chat_template(full, tokenize=False) == "<|user|>What is 37 plus 8?<|assistant|>45</s>"
    assert tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True) == (
        "<|user|>What is 37 plus 8?<|assistant|>"
    )
    # TRL (prompt/completion, DPO) cuts the completion off where these token sequences diverge: the
    # prompt must be an exact prefix, so the completion tokens are exactly "45</s>".
    prompt_ids = tokenizer.apply_chat_template(user, add_generation_prompt=True, return_dict=True)["input_ids"]
    full_ids = tokenizer.apply_chat_template(full, return_dict=True)["input_ids"]
    assert full_ids[: len(prompt_ids)] == prompt_ids
    assert tokenizer.decode(full_ids[len(prompt_ids) :]) == "45</s>"


# --- demo.base_model: model -----------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def test_tiny_model_loads_and_generates(tiny_dir):
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim, cfg.num_hidden_layers) == (128, 2, 64, 2)
    assert cfg.tie_word_embeddings and model.dtype == torch.float32
    assert cfg.eos_token_id == tok.eos_token_id and cfg.pad_token_id == tok.pad_token_id
    assert (tiny_dir / "model.safetensors").exists()

    text = tok.apply_chat_template(
        [{"role": "user", "content": "What is 37 plus 8?"}], add_generation_prompt=True, tokenize=False
    )
    enc = tok(text, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**enc, max_new_tokens=6, do_sample=False)
    assert out.shape[0] == 1 and enc["input_ids"].shape[1] < out.shape[1] <= enc["input_ids"].shape[1] + 6
    assert isinstance(tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True), str)


def test_build_record_and_no_leftovers(tiny_dir):
    record = json.loads((tiny_dir / BUILD_FILE).read_text())
    assert record["params"]["steps"] == 60 and record["params"]["layers"] == 2
    assert record["vocab_size"] == len(AutoTokenizer.from_pretrained(tiny_dir))
    assert [p.name for p in tiny_dir.parent.iterdir()] == ["model"]  # no temp directories left behind


def test_build_cache_returns_at_once(tiny_dir):
    mtime = (tiny_dir / "model.safetensors").stat().st_mtime_ns
    started = time.perf_counter()
    assert build_tiny_model(tiny_dir) == tiny_dir
    assert time.perf_counter() - started < 0.5
    assert (tiny_dir / "model.safetensors").stat().st_mtime_ns == mtime


def test_build_with_other_params_replaces_model(tmp_path):
    out = build_base_model(tmp_path / "m", steps=2, batch_size=4, layers=1, progress=False)
    first = json.loads((out / BUILD_FILE).read_text())["params"]
    build_base_model(out, steps=3, batch_size=4, layers=1, progress=False)
    assert json.loads((out / BUILD_FILE).read_text())["params"] == {**first, "steps": 3}
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_build_refuses_to_replace_foreign_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(FileExistsError):
        build_tiny_model(tmp_path)
