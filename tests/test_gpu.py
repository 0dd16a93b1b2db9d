"""The GPU paths, on a real CUDA device: vLLM sleep/wake serving new weights, memory handed back after
in-process training, and a bf16 round. Skipped on machines without CUDA (CI runs the CPU paths).

Run:  pytest -m gpu tests/test_gpu.py
"""

from __future__ import annotations

import logging
import shutil

import pytest
import torch

from configs.schema import EngineConfig, SamplingConfig, SFTConfig
from tasks.generation import EngineError, close_engine, get_engine, release_accelerator
from tasks.generation.handoff import GIB, free_accelerator_memory
from tasks.generation.hf import HFEngine
from tests.conftest import perturbed_copy

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

PROMPTS = [f"What is {a} plus {b}?" for a, b in [(37, 8), (8, 37), (12, 3), (45, 9), (90, 9), (5, 71)]]
GREEDY = SamplingConfig(n=1, temperature=0.0, max_tokens=8)
# fp32 so that vLLM's greedy tokens can equal transformers' exactly; a small share of the device, so the
# test leaves room for whatever else runs on it.
GPU_ENGINE = {"backend": "vllm", "dtype": "float32", "max_model_len": 128, "gpu_memory_utilization": 0.3}
LOG = logging.getLogger("test_gpu")


@pytest.fixture(autouse=True)
def _others_asleep():
    """Engines of earlier test modules (default gpu_memory_utilization 0.85) sleep first, so these fit."""
    release_accelerator()
    yield


def _greedy(engine, n: int = len(PROMPTS)) -> list[str]:
    return [g[0].text for g in engine.generate(PROMPTS[:n], GREEDY, [0] * n)]


def test_sleep_wake_serves_the_new_weights(tiny_model, tmp_path):
    """One engine start: sleep for 'training', wake with a new checkpoint, greedy output equals transformers'."""
    cfg = EngineConfig(**GPU_ENGINE)
    other = perturbed_copy(tiny_model, tmp_path / "other", seed=1)
    try:
        engine = get_engine(cfg, str(tiny_model))
        assert engine.sleep_mode and not engine.sleeping
        before = _greedy(engine)
        release_accelerator()
        assert engine.sleeping and engine.released_bytes > 0
        with pytest.raises(EngineError, match="asleep"):
            engine.generate(PROMPTS, GREEDY, [0] * len(PROMPTS))

        assert get_engine(cfg, str(other)) is engine
        assert not engine.sleeping and engine.model_path == str(other)
        after = _greedy(engine)
        hf = HFEngine(EngineConfig(backend="hf", dtype="float32"), str(other))
        assert after == [g[0].text for g in hf.generate(PROMPTS, GREEDY, [0] * len(PROMPTS))]
        assert after != before
        # The figures bench/gpu_check.py prints: one start, one sleep, one wake, one reload.
        t = engine.timings
        assert [len(t[k]) for k in ("start_s", "sleep_s", "wake_s", "reload_s")] == [1, 1, 1, 1]
        print({k: [round(v, 3) for v in vs] for k, vs in t.items()})

        release_accelerator()  # and back to the first checkpoint: waking with another reload
        assert get_engine(cfg, str(tiny_model)) is engine and _greedy(engine) == before
    finally:
        close_engine(cfg)


def _mid_model(tiny_model, out):
    """~70 M parameters with the tiny model's tokenizer: training holds ~1 GiB, so a leak stands out."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=4,
        num_attention_heads=16,
        num_key_value_heads=16,
        head_dim=64,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    shutil.copytree(tiny_model, out)
    LlamaForCausalLM(config).save_pretrained(out)
    return out


def test_memory_back_to_baseline_after_in_process_training(tiny_model, tmp_path):
    """After train_sft in this process and the hand-off's free, the memory this process holds is back at the
    baseline within 64 MiB (cuBLAS workspaces stay), and the device's free memory within 256 MiB."""
    from trainers.sft import train_sft

    model = _mid_model(tiny_model, tmp_path / "mid")
    torch.zeros(1, device="cuda")  # the CUDA context exists before the baseline: it stays for the process
    free_accelerator_memory()
    torch.cuda.reset_peak_memory_stats()
    allocated, free = torch.cuda.memory_allocated(), torch.cuda.mem_get_info()[0]
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"What is {a} plus 5?"},
                {"role": "assistant", "content": str(a + 5)},
            ]
        }
        for a in range(16)
    ]
    cfg = SFTConfig(epochs=1, batch_size=4, max_length=64)
    train_sft(str(model), rows, cfg, tmp_path / "out", base_id="b", seed=0, use_cpu=False, bf16=False, logger=LOG)
    peak = torch.cuda.max_memory_allocated() - allocated
    free_accelerator_memory()

    assert peak > GIB // 2, f"training peaked at only {peak / GIB:.2f} GiB: the test would not see a leak"
    left = torch.cuda.memory_allocated() - allocated
    assert left < 64 * 2**20, f"{left / 2**20:.0f} MiB still allocated after training (peak {peak / GIB:.2f} GiB)"
    gone = free - torch.cuda.mem_get_info()[0]
    assert gone < 256 * 2**20, f"the device has {gone / 2**20:.0f} MiB less free than before training"


def test_bf16_round_starts_the_engine_once(make_config, prefect_harness):
    """A whole round (tests/test_round_flow.py's flow) on the GPU with a bf16 engine: generation, in-process
    SFT and DPO with the engine asleep, evaluation after a wake; one engine start."""
    from flows.round import round_flow
    from tasks.generation import _ENGINES
    from tasks.stage import runtime

    engine_cfg = {**GPU_ENGINE, "dtype": "bfloat16"}
    cfg = make_config(generation__engine=engine_cfg, training__use_cpu=False, training__bf16=True)
    try:
        report = round_flow(cfg)
        (row,) = runtime(cfg).catalog.rounds(cfg.pipeline)
        assert row["status"] == "completed" and report.round == 1
        assert 0.0 <= row["metrics"]["eval/accuracy/candidate"] <= 1.0
        engine = _ENGINES[EngineConfig(**engine_cfg).model_dump_json()]
        assert len(engine.timings["start_s"]) == 1, engine.timings  # slept through training, never restarted
        assert len(engine.timings["sleep_s"]) >= 1 and len(engine.timings["wake_s"]) >= 1
        assert not engine.sleeping
    finally:
        close_engine(EngineConfig(**engine_cfg))
