"""`make gpu-check` (bench/gpu_check.py, bench/gpu_steps.py): the parts that run without a GPU.

The refusal without CUDA, the table from a dict of figures (n/a and failed steps), and the two configs the
GPU steps build, validated by the real schema and launcher code. The steps themselves need a CUDA GPU.
"""

from __future__ import annotations

import doctest
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from configs import INSTRUCT_CONFIG, load_config
from configs.launcher import PACKAGE_ROOT
from trainers.launch import build_launch_command

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_under_test", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


gpu_check = _load("gpu_check")
gpu_steps = _load("gpu_steps")


def test_refuses_without_cuda(tmp_path):
    # CUDA_VISIBLE_DEVICES="" hides any GPU, so this test means the same on a GPU machine.
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OUT": str(tmp_path / "out")}
    proc = subprocess.run(
        [sys.executable, str(BENCH / "gpu_check.py")], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == gpu_check.NO_CUDA
    assert "the CPU suite is make test" in gpu_check.NO_CUDA
    assert not (tmp_path / "out").exists()  # stopped at once: no output folder, no work


def test_doctests():
    for module in (gpu_check, gpu_steps):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__


FIGURES = {
    "gpu": "1 x NVIDIA H100 80GB HBM3",
    "when": "2026-01-01 00:00 UTC",
    "total_s": 301.4,
    "steps": {
        "prepare": {"status": "ok", "seconds": 21.0, "peak_mib": 3.0, "note": ""},
        "gpu-tests": {"status": "failed", "seconds": 40.2, "peak_mib": 9000.0, "note": "1 failed | 2 passed"},
        "round": {"status": "timeout", "seconds": 170.0, "peak_mib": 41000.0, "note": "stopped"},
        "sft-zero2": {"status": "ok", "seconds": 50.0, "peak_mib": 7000.0, "note": ""},
        "generate": {"status": "ok", "seconds": 20.2, "peak_mib": None, "note": ""},
    },
    # the round timed out: none of its figures; generate ran but its engine reported no sleep or wake
    "stage_tok_s": 12345.6,
    "raw_tok_s": 13000.0,
    "stage_raw_ratio": 0.94966,
    "train_samples_s": 812.25,
    "train_samples_s_end_to_end": 20.48,
    "peak_gpu_gib": 40.04,
}


def test_table_rows_say_why_a_figure_is_missing():
    rows = dict(gpu_check.table_rows(FIGURES))
    assert rows["engine start s"] == "n/a (round timeout)"
    assert rows["engine wake s"] == "n/a (round timeout)"
    assert rows["round wall s"] == "n/a (round timeout)"
    assert rows["generate tokens/s (stage path)"] == "12346"
    assert rows["raw vllm.LLM.generate tokens/s"] == "13000"
    assert rows["stage / raw"] == "0.950"
    assert rows["SFT ZeRO-2 samples/s (training)"] == "812.2"
    assert rows["SFT ZeRO-2 samples/s (whole launch)"] == "20.5"
    assert rows["peak GPU memory GiB (nvidia-smi)"] == "40.0"
    # a step that passed but did not report a figure: plain n/a
    ok_round = {**FIGURES, "steps": {**FIGURES["steps"], "round": {"status": "ok", "seconds": 90.0}}}
    ok_rows = dict(gpu_check.table_rows({**ok_round, "engine_starts": 1, "engine_start_s": 21.04, "sleep_s": None}))
    assert (ok_rows["engine starts in the round"], ok_rows["engine start s"]) == ("1", "21.0")
    assert (ok_rows["engine sleep s"], ok_rows["engine wake s"]) == ("n/a", "n/a")
    assert [label for label, *_ in gpu_check.FIGURES] == list(rows)


def test_markdown_and_json_outputs(tmp_path):
    md_path, js_path = gpu_check.write_outputs(FIGURES, tmp_path)
    md = md_path.read_text()
    assert md.startswith("gpu-check on 1 x NVIDIA H100 80GB HBM3, 2026-01-01 00:00 UTC, 301 s in all\n")
    assert "| engine sleep s | n/a (round timeout) |" in md
    assert "| raw vllm.LLM.generate tokens/s | 13000 |" in md
    assert "| round | timeout | 170.0 | 41000 | stopped |" in md
    assert "| generate | ok | 20.2 | n/a |  |" in md
    assert "| gpu-tests | failed | 40.2 | 9000 | 1 failed / 2 passed |" in md  # a | in a note keeps the table whole
    data = json.loads(js_path.read_text())
    assert data["steps"]["round"]["status"] == "timeout"
    assert ["stage / raw", "0.950"] in data["table"]


def test_round_config_is_the_instruct_demo_on_a_gpu(tmp_path):
    home = tmp_path / "home"
    cfg = gpu_steps.gpu_round_config(home)
    demo = load_config(INSTRUCT_CONFIG, home=str(home))
    engine = cfg.generation.engine
    assert (engine.backend, engine.dtype, engine.gpu_memory_utilization) == ("vllm", "bfloat16", 0.5)
    assert (cfg.training.use_cpu, cfg.training.bf16, cfg.training.launcher.kind) == (False, True, "local")
    assert cfg.pipeline == "gpu-check" and cfg.home == str(home)
    assert cfg.base_model == str(home / "instruct" / "base-model")
    # everything else is the demo's: same prompts, sampling and training sizes
    assert cfg.curation == demo.curation and cfg.generation.sampling == demo.generation.sampling
    assert cfg.training.sft == demo.training.sft and cfg.evaluation == demo.evaluation
    # the file the round runs `flywheel run --config` on loads to the same config
    path = gpu_steps.write_round_config(home, tmp_path / "round.yaml")
    assert load_config(path, home=str(home)) == cfg


@pytest.mark.parametrize("n_gpus", [1, 8])
def test_zero2_launch_config(n_gpus, tmp_path):
    training = gpu_steps.zero2_training(n_gpus)
    launcher = training.launcher
    assert launcher.deepspeed_path() == (PACKAGE_ROOT / "configs" / "deepspeed" / "zero2.json").resolve()
    assert json.loads(launcher.deepspeed_path().read_text())["zero_optimization"]["stage"] == 2
    port = 29511 if n_gpus > 1 else None  # as launch_training picks one
    cmd = build_launch_command(launcher, tmp_path / "spec.json", bf16=training.bf16, port=port)
    flags = dict(zip(cmd, cmd[1:]))
    assert "--use_deepspeed" in cmd and flags["--deepspeed_config_file"] == str(launcher.deepspeed_path())
    assert (flags["--num_processes"], flags["--mixed_precision"]) == (str(n_gpus), "bf16")
    assert "--multi_gpu" not in cmd  # DeepSpeed's launcher, not plain DDP
    rows = gpu_steps.sft_rows(3)
    assert [m["role"] for m in rows[0]["messages"]] == ["user", "assistant"]


def test_a_failing_or_hung_step_is_reported_and_the_rest_still_run(tmp_path, monkeypatch):
    py = sys.executable
    scripts = {
        "prepare": "import sys; sys.exit(3)",
        "gpu-tests": "import time; time.sleep(60)",
        "generate": "import json, sys; open(sys.argv[1], 'w').write(json.dumps({'raw_tok_s': 99.0}))",
    }
    steps = (
        gpu_check.Step("prepare", 20, "fails"),
        gpu_check.Step("gpu-tests", 1, "hangs"),
        gpu_check.Step("round", 20, "needs prepare", ("prepare",)),
        gpu_check.Step("generate", 20, "writes a figure"),
    )
    monkeypatch.setattr(gpu_check, "STEPS", steps)
    monkeypatch.setattr(gpu_check, "nvidia_smi", lambda field: None)
    monkeypatch.setattr(gpu_check, "step_command", lambda step, work, result: [py, "-c", scripts[step.name], result])
    (tmp_path / "work").mkdir()
    figures = gpu_check.run_checks(tmp_path / "out", tmp_path / "work", budget_s=60)
    status = {name: s["status"] for name, s in figures["steps"].items()}
    assert status == {"prepare": "failed", "gpu-tests": "timeout", "round": "skipped", "generate": "ok"}
    assert figures["steps"]["round"]["note"] == "needs prepare"
    assert figures["steps"]["gpu-tests"]["seconds"] < 15  # stopped at its timeout, not after the sleep
    assert figures["raw_tok_s"] == 99.0 and (tmp_path / "out" / "logs" / "prepare.log").exists()
    assert dict(gpu_check.table_rows(figures))["raw vllm.LLM.generate tokens/s"] == "99"


def test_step_timeouts_fit_the_eight_minute_budget():
    assert sum(s.timeout_s for s in gpu_check.STEPS) <= gpu_check.BUDGET_S < 8 * 60


def test_engine_watch_keeps_timings_of_closed_engines(monkeypatch):
    from tasks.generation.vllm import VLLMEngine

    def fake_init(self, cfg, model_path):  # stands in for a real start: vLLM itself is not needed here
        self.timings = {"start_s": 12.5, "wake_s": 0.5}

    monkeypatch.setattr(VLLMEngine, "__init__", fake_init)
    seen = gpu_steps.watch_engines()
    engine = VLLMEngine(None, "model")
    del engine  # the round closes and drops its engines; the record keeps the object
    figures = gpu_steps.engine_figures([(getattr(e["engine"], "timings", None), e["init_s"]) for e in seen])
    assert figures == {"engine_starts": 1, "engine_start_s": 12.5, "sleep_s": None, "wake_s": 0.5, "reload_s": None}
    # the engine's own shape: one entry per event, an empty list where none happened
    lists = {"start_s": [20.0], "sleep_s": [1.5], "wake_s": [0.75, 0.25], "reload_s": []}
    assert gpu_steps.engine_figures([(lists, 21.0)]) == {
        "engine_starts": 1,
        "engine_start_s": 20.0,
        "sleep_s": 1.5,
        "wake_s": 1.0,
        "reload_s": None,
    }


def test_sft_progress_lines_are_timed():
    import logging

    marks = gpu_steps._StepMarks()
    for message in (
        "[rank 0] sft: launching",
        "[rank 0] sft step 5/64 loss 1.2345",
        "[rank 0] sft step 10/64 loss 1.1",
    ):
        marks.emit(logging.makeLogRecord({"msg": message}))
    assert [(step, of) for _, step, of in marks.marks] == [(5, 64), (10, 64)]
