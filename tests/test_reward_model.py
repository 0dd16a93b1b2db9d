"""Reward models: TRL RewardTrainer on pairs, the reward-model scorer, and the train-reward step.

The backbone is a 2-layer Llama built here with random weights, which cannot learn addition from 64
pairs. So the rejected answers are sums with a typo (a digit replaced by a letter, "4x" for "45"): a
rule the model can pick up and carry over to held-out problems, while a fresh head scores it at
chance. That tests the plumbing (training, saving, loading, scoring), not reward-model quality.
"""

from __future__ import annotations

import json
import random
import string
import time

import pyarrow as pa
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, LlamaConfig, LlamaForCausalLM

from configs import parse_config
from configs.reward import RewardModelTrainConfig
from configs.scoring import RewardModelScorerConfig
from demo.base_model import build_tokenizer
from storage.artifacts import ArtifactRef
from storage.catalog import StepRecord
from storage.ids import sha256_dir
from tasks.scoring import build_scorer
from tasks.scoring.reward_model import RewardModelScorer
from trainers.reward import train_reward_model
from trainers.reward_encoding import conversation, encode_conversations

PROBLEMS = [(a, b) for a in range(10, 50) for b in range(10, 50)]
random.Random(0).shuffle(PROBLEMS)
TRAIN_CFG = RewardModelTrainConfig(enabled=True, learning_rate=1e-3, epochs=10, batch_size=16, max_length=64)


def make_pair(a: int, b: int, rng: random.Random) -> dict:
    digits = list(str(a + b))
    digits[rng.randrange(len(digits))] = rng.choice(string.ascii_lowercase)
    return {
        "prompt": [{"role": "user", "content": f"What is {a} plus {b}?"}],
        "chosen": [{"role": "assistant", "content": str(a + b)}],
        "rejected": [{"role": "assistant", "content": "".join(digits)}],
    }


def pairs(start: int, n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [make_pair(a, b, rng) for a, b in PROBLEMS[start : start + n]]


def score_rows(ps: list[dict]) -> list[dict]:
    """Completion rows (chosen, rejected, chosen, ...) in the scorer's input format."""
    return [
        {
            "completion_id": f"{i}-{side}",
            "prompt_id": str(i),
            "prompt": p["prompt"][0]["content"],
            "system": None,
            "completion": p[side][0]["content"],
            "answer": None,
            "provenance": {},
        }
        for i, p in enumerate(ps)
        for side in ("chosen", "rejected")
    ]


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    """A tiny random causal Llama (hidden 64, 2 layers) and a tokenizer trained in-process."""
    tok = build_tokenizer([f"What is {a} plus {b}?" for a, b in PROBLEMS[:200]])
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("rm") / "policy"
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def trained(policy_dir, tmp_path_factory):
    """(reward model dir, metrics) after training on 64 pairs, on one thread (tiny model, shared cores)."""
    out = tmp_path_factory.mktemp("rm") / "reward-model"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        metrics = train_reward_model(pairs(0, 64, seed=0), str(policy_dir), str(out), TRAIN_CFG, base_id="p" * 64)
    finally:
        torch.set_num_threads(threads)
    return out, metrics


def test_training_raises_pair_accuracy_and_saves_a_reward_model(trained, policy_dir):
    rm_dir, m = trained
    assert m["pairs"] == 64 and m["pairs_too_long"] == 0 and m["steps"] == 40  # 64 / 16 x 10 epochs
    assert m["accuracy_after"] > m["accuracy_before"]
    assert m["accuracy_after"] >= 0.9
    assert m["loss"] == pytest.approx(m["loss"]) and m["seconds"] < 30
    model = AutoModelForSequenceClassification.from_pretrained(rm_dir)
    assert model.config.num_labels == 1 and model.config.pad_token_id is not None
    policy, rm = load_file(str(policy_dir / "model.safetensors")), load_file(str(rm_dir / "model.safetensors"))
    assert not torch.equal(policy["model.layers.0.mlp.up_proj.weight"], rm["model.layers.0.mlp.up_proj.weight"])
    info = json.loads((rm_dir / "flywheel_training.json").read_text())
    assert (info["stage"], info["base"]) == ("reward", "p" * 64) and "base" not in info["config"]
    assert (rm_dir / "tokenizer.json").exists()


def test_scorer_by_path_prefers_correct_answers_on_heldout_pairs(trained):
    rm_dir, _ = trained
    heldout = pairs(64, 40, seed=1)
    results = RewardModelScorer(RewardModelScorerConfig(model=str(rm_dir)), {})(score_rows(heldout))
    assert [r.status for r in results] == ["ok"] * 80
    assert results[0].raw == f"{results[0].value:.4f}"
    chosen, rejected = [r.value for r in results[0::2]], [r.value for r in results[1::2]]
    assert sum(chosen) / 40 > sum(rejected) / 40
    assert sum(c > r for c, r in zip(chosen, rejected)) >= 36  # 90 % of held-out pairs ranked right


def test_trained_model_comes_from_the_context(trained):
    rm_dir, _ = trained
    rows = score_rows(pairs(64, 4, seed=1))
    by_path = RewardModelScorer(RewardModelScorerConfig(model=str(rm_dir)), {})
    scorer = build_scorer(RewardModelScorerConfig(name="rm", model="trained"), {"reward_model_dir": str(rm_dir)})
    assert scorer.id == "rm"
    assert [r.value for r in scorer(rows)] == [r.value for r in by_path(rows)]
    assert scorer.version == by_path.version == f"{sha256_dir(rm_dir)}/max_length=512"
    # A stored model's artifact id is its directory hash: passed along, it is used instead of rehashing.
    fast = RewardModelScorer(
        RewardModelScorerConfig(model="trained"),
        {"reward_model_dir": str(rm_dir), "reward_model_id": sha256_dir(rm_dir)},
    )
    assert fast.version == scorer.version


def test_missing_trained_model_is_a_clear_error():
    with pytest.raises(
        ValueError,
        match=r"scoring.scorers\[reward_model\]: model: trained, but this pipeline has not "
        r"trained a reward model yet; enable training.reward_model or give a model path",
    ):
        RewardModelScorer(RewardModelScorerConfig(model="trained"), {})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        RewardModelScorer(RewardModelScorerConfig(model="/nonexistent/rm"), {})


def test_batches_give_the_values_of_single_rows(trained):
    rm_dir, _ = trained
    rows = score_rows(pairs(64, 6, seed=1))
    rows[0] = {**rows[0], "completion": "The answer is " + rows[0]["completion"] + ", since 4 plus 5 is 9."}
    rows[3] = {**rows[3], "system": "Answer with the number only."}
    rows[5] = {**rows[5], "completion": None}  # a broken row is an error status, not an exception
    one = RewardModelScorer(RewardModelScorerConfig(model=str(rm_dir), batch_size=1))(rows)
    many = RewardModelScorer(RewardModelScorerConfig(model=str(rm_dir), batch_size=5))(rows)
    assert [r.status for r in one] == [r.status for r in many] == ["ok"] * 5 + ["error"] + ["ok"] * 6
    assert max(abs(a.value - b.value) for a, b in zip(one, many)) < 1e-4


def test_truncation_keeps_the_end_and_is_counted(trained):
    rm_dir, _ = trained
    rows = score_rows(pairs(64, 2, seed=1))
    rows[0] = {**rows[0], "prompt": "Please tell me. " * 20 + rows[0]["prompt"]}
    scorer = RewardModelScorer(RewardModelScorerConfig(model=str(rm_dir), max_length=16))
    results = scorer(rows)
    assert all(r.status == "ok" for r in results)
    assert scorer.metrics() == {"truncated": 0.25}
    assert scorer.version.endswith("/max_length=16")


def test_encoding_matches_trl_and_handles_system_and_plain_tokenizers(policy_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(policy_dir)
    conv = conversation("What is 2 plus 3?", "5")
    # TRL's RewardTrainer tokenizes conversations with apply_chat_template(tokenize=True): the same ids.
    trl_ids = tok.apply_chat_template(conv, tokenize=True, return_dict=True)["input_ids"]
    assert encode_conversations(tok, [conv]) == [trl_ids]
    # The demo template has no system role: the system prompt is folded into the user turn.
    [with_system] = encode_conversations(tok, [conversation("What is 2 plus 3?", "5", system="Be brief.")])
    text = tok.decode(with_system).replace("<unk>", "\n")  # this tiny vocabulary has no newline
    assert text == "<|user|>Be brief.\n\nWhat is 2 plus 3?<|assistant|>5</s>"
    tok.chat_template = None
    assert encode_conversations(tok, [conv]) == [tok("What is 2 plus 3?\n5")["input_ids"]]


def _record_select(catalog, pipeline: str, round_num: int, pairs_id: str) -> None:
    rec = ArtifactRef(pairs_id, "pairs", "file:///x", 1, 1, "parquet")
    catalog.record_step(
        StepRecord(
            pipeline=pipeline,
            round=round_num,
            step="select",
            identity=f"select-{round_num}",
            inputs={},
            outputs={"pairs": rec},
        )
    )


def test_train_reward_task_stores_the_model_with_lineage(policy_dir, tmp_path):
    from tasks.select import PAIR_SCHEMA
    from tasks.stage import runtime
    from tasks.train_reward import latest_reward_model, reward_model_for, reward_pairs_ids, train_reward_task

    cfg = parse_config(
        {
            "pipeline": "rm",
            "base_model": str(policy_dir),
            "home": str(tmp_path / "home"),
            "storage": {"uri": f"file://{tmp_path / 'store'}"},
            "curation": {"sources": [{"name": "pool", "path": str(tmp_path / "pool.jsonl")}]},
            "evaluation": {"eval_sets": [{"name": "heldout", "path": str(tmp_path / "heldout.jsonl")}]},
        }
    )
    # Until configs/schema.py has training.reward_model, add the section the way the schema will hold it.
    rm_cfg = TRAIN_CFG.model_copy(update={"epochs": 2})
    cfg = cfg.model_copy(update={"training": cfg.training.model_copy(update={"reward_model": rm_cfg})})
    rt = runtime(cfg)
    base_id = rt.artifacts.put_model(policy_dir).id
    rows = [
        {
            **p,
            "row_id": str(i),
            "prompt_id": str(i),
            "chosen_id": "c",
            "rejected_id": "r",
            "margin": 1.0,
            "source": "pool",
            "license": "unknown",
            "tags": [],
        }
        for i, p in enumerate(pairs(0, 32, seed=0))
    ]
    pairs_ids = [
        rt.artifacts.put_table(pa.Table.from_pylist(rows[:16], schema=PAIR_SCHEMA), kind="pairs").id,
        rt.artifacts.put_table(pa.Table.from_pylist(rows[16:], schema=PAIR_SCHEMA), kind="pairs").id,
    ]
    assert train_reward_task.declare(cfg, 2, [], "policy-id").inputs["base"] == "policy-id"
    # A backbone directory is an external input, named by its content: the id the store gives it.
    from_path = cfg.training.model_copy(update={"reward_model": rm_cfg.model_copy(update={"base": str(policy_dir)})})
    base = train_reward_task.declare(cfg.model_copy(update={"training": from_path}), 2, [], "policy-id").inputs["base"]
    assert (base.id, base.kind, base.path) == (base_id, "reward-model-base", policy_dir.resolve())
    _record_select(rt.catalog, "rm", 1, pairs_ids[0])
    assert reward_pairs_ids(rt.catalog, "rm", 2, pairs_ids[1], None) == pairs_ids
    assert reward_pairs_ids(rt.catalog, "rm", 2, pairs_ids[1], 1) == pairs_ids[1:]
    assert latest_reward_model(rt.catalog, "rm", 3) is None

    rt.catalog.start_round("rm", 2, "config-hash", base_id, None)
    t0 = time.perf_counter()
    rm_id = train_reward_task.fn(cfg, 2, pairs_ids, base_id)
    assert time.perf_counter() - t0 < 30
    assert rt.catalog.artifact(rm_id)["kind"] == "reward-model"
    metrics = rt.catalog.rounds("rm")[0]["metrics"]
    assert metrics["reward_model/pairs"] == 32
    assert metrics["reward_model/accuracy_after"] > metrics["reward_model/accuracy_before"]
    step = rt.catalog.steps_of("rm", 2)["train-reward"]
    assert step["status"] == "completed" and step["rows_in"] == 32
    sources = {e["src"] for e in rt.catalog.lineage(rm_id) if e["depth"] == 1}
    assert sources == {base_id, *pairs_ids}
    assert latest_reward_model(rt.catalog, "rm", 3) == rm_id
    assert latest_reward_model(rt.catalog, "rm", 2) is None  # only rounds before the one asking
    assert rm_id == sha256_dir(rt.artifacts.get_model(rm_id))
    assert AutoModelForSequenceClassification.from_pretrained(rt.artifacts.get_model(rm_id)).config.num_labels == 1
    # Read only where a stage reads it: this config has no `model: trained` scorer nor eval set.
    assert reward_model_for(rt.catalog, cfg, 3, "score") is None is reward_model_for(rt.catalog, cfg, 3, "evaluate")
    scored = cfg.scoring.model_copy(update={"scorers": [RewardModelScorerConfig(model="trained")]})
    assert reward_model_for(rt.catalog, cfg.model_copy(update={"scoring": scored}), 3, "score") == rm_id
    # Same pairs, same backbone, same config: the step is reused, not retrained.
    t0 = time.perf_counter()
    assert train_reward_task.fn(cfg, 2, pairs_ids, base_id) == rm_id
    assert time.perf_counter() - t0 < 5
    # Disabled: nothing runs and nothing is recorded.
    disabled = cfg.training.model_copy(update={"reward_model": RewardModelTrainConfig()})
    off = cfg.model_copy(update={"training": disabled})
    assert train_reward_task.fn(off, 3, pairs_ids, base_id) is None
    assert "train-reward" not in rt.catalog.steps_of("rm", 3)
