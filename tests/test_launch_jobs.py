"""Launched training jobs for real: streamed output, collapsed errors, interruption, 2-process DDP, the train task."""

from __future__ import annotations

import json
import logging
import math
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pytest
import torch
from safetensors.torch import load_file
from test_launch import SFT_ROWS, list_logger  # noqa: F401  (fixtures and helpers)

from configs.launcher import LauncherConfig
from configs.schema import EngineConfig, SamplingConfig, SFTConfig
from tests.conftest import ENGINE
from trainers.launch import (
    LaunchError,
    launch_training,
    stream_command,
)

# --- running a job ----------------------------------------------------------------------------------------


def test_stream_command_forwards_each_line_while_the_job_runs(tmp_path):
    """The job blocks until the test's log handler has seen its first line: proof lines arrive live."""
    seen = tmp_path / "seen"
    code = textwrap.dedent(f"""
        import pathlib, sys, time
        print("INFO [rank 0] first")
        for _ in range(200):
            if pathlib.Path({str(seen)!r}).exists():
                break
            time.sleep(0.05)
        print("WARNING [rank 0] second" if pathlib.Path({str(seen)!r}).exists() else "never seen")
        print("plain", file=sys.stderr)
    """)
    logger, handler = list_logger("stream")
    handler.on_record = lambda message: message == "[rank 0] first" and seen.touch()
    stream_command([sys.executable, "-c", code], logger)
    assert handler.records == [
        (logging.INFO, "[rank 0] first"),
        (logging.WARNING, "[rank 0] second"),
        (logging.INFO, "plain"),
    ]


def test_causes_from_many_ranks_collapse():
    from trainers.launch import _group_causes

    assert _group_causes(["rank 3: E: x", "rank 0: E: x", "rank 1: F: y", "odd"]) == [
        "ranks 0, 3: E: x",
        "rank 1: F: y",
        "odd",
    ]


def test_stream_command_failure_is_one_short_error():
    code = (
        "for i in range(40): print('line', i)\nprint('flywheel-train-error: rank 0: ValueError: bad')\n"
        "for i in range(30): print('launcher noise', i)\nraise SystemExit(3)"
    )
    logger, handler = list_logger("fail")
    with pytest.raises(LaunchError) as e:
        stream_command([sys.executable, "-c", code], logger)
    assert e.value.exit_code == 3 and len(handler.records) == 71  # every line still reached the logs
    msg = str(e.value)
    assert msg.startswith("training job failed with exit code 3. Cause:\n  rank 0: ValueError: bad\n")
    # The lines up to and including the cause, not the launcher's noise after it.
    assert e.value.tail == [f"line {i}" for i in range(21, 40)] + ["flywheel-train-error: rank 0: ValueError: bad"]
    assert "| launcher noise" not in msg


def test_stream_command_stops_the_whole_job_when_interrupted():
    """A cancelled task must not leave workers behind: the job's process group goes down with it."""
    code = (
        "import subprocess, sys, time\n"
        "worker = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print(worker.pid, flush=True)\ntime.sleep(60)"
    )

    class Cancelled(Exception):
        pass

    def cancel(message):
        raise Cancelled(message)

    logger, handler = list_logger("cancel")
    handler.on_record = cancel
    with pytest.raises(Cancelled) as e:
        stream_command([sys.executable, "-c", code], logger)
    worker = Path(f"/proc/{int(str(e.value))}/stat")
    for _ in range(100):  # gone, or a zombie waiting for init to reap it
        if not worker.exists() or worker.read_text().split(") ")[1].startswith("Z"):
            break
        time.sleep(0.05)
    else:
        pytest.fail("the job's worker process is still running")


@pytest.fixture(scope="module")
def ddp_run(tiny_model, tmp_path_factory):
    """One real `accelerate launch --multi_gpu --num_processes 2` SFT run on CPU (gloo), ~25 s."""
    logger, handler = list_logger("ddp")
    out = tmp_path_factory.mktemp("ddp")
    ckpt, summary = launch_training(
        LauncherConfig(kind="accelerate", num_processes=2, cpu=True),
        stage="sft",
        model_dir=str(tiny_model),
        base_id="t" * 64,
        data=pa.Table.from_pylist(SFT_ROWS),
        stage_config=SFTConfig(learning_rate=1e-3, batch_size=8, max_length=64),
        out_dir=out,
        seed=0,
        use_cpu=True,
        bf16=False,
        logger=logger,
    )
    return ckpt, summary, handler.records


def test_two_process_ddp_trains_and_reports_its_world(ddp_run, tiny_model):
    ckpt, summary, records = ddp_run
    assert summary["launch"] == {
        "world_size": 2,
        "num_processes": 2,
        "distributed_type": "MULTI_CPU",
        "device": "cpu:0",
    }
    assert summary["steps"] == 2  # 32 rows / (8 per process x 2 processes): the processes split the data
    assert math.isfinite(summary["train_loss"])
    before, after = load_file(str(tiny_model / "model.safetensors")), load_file(str(ckpt / "model.safetensors"))
    assert sum(not torch.equal(before[k], after[k]) for k in before) > 10
    assert not any(p.name.startswith(".rank-") for p in ckpt.parent.iterdir())  # other ranks' scratch is gone
    assert json.loads((ckpt / "flywheel_training.json").read_text())["base"] == "t" * 64  # the spec carries the id

    messages = [m for _, m in records]
    assert any(m.startswith("sft: launching ") and "--num_processes 2" in m for m in messages)
    assert "[rank 0] sft on 32 rows from " + str(tiny_model) + ", 2 process(es)" in messages
    assert any(m.startswith("[rank 0] sft step 2/2 loss ") for m in messages)  # the trainer's own loss lines
    assert not any(m.startswith("[rank 1] sft step") for m in messages)  # said once, by the main process


def test_ddp_checkpoint_loads_in_transformers_and_vllm(ddp_run, tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tasks.generation import get_engine

    ckpt, _, _ = ddp_run
    model, tok = AutoModelForCausalLM.from_pretrained(ckpt), AutoTokenizer.from_pretrained(ckpt)
    ids = tok("What is 12 plus 5?", return_tensors="pt").input_ids
    assert model.generate(ids, max_new_tokens=4, do_sample=False).shape[1] > ids.shape[1]

    engine = get_engine(EngineConfig(**ENGINE), str(ckpt))
    out = engine.generate(["What is 12 plus 5?"], SamplingConfig(n=1, temperature=0.0, max_tokens=8), [0])
    assert out[0][0].num_tokens > 0 and out[0][0].text
    get_engine(EngineConfig(**ENGINE), str(tiny_model))  # back to the shared model for later tests


def test_a_failing_launch_raises_one_clear_error(tmp_path):
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    logger, handler = list_logger("bad")
    with pytest.raises(LaunchError) as e:
        launch_training(
            LauncherConfig(kind="accelerate", num_processes=2, cpu=True),
            stage="sft",
            model_dir=str(empty),
            base_id="e" * 64,
            data=pa.Table.from_pylist(SFT_ROWS),
            stage_config=SFTConfig(),
            out_dir=tmp_path / "out",
            seed=0,
            use_cpu=True,
            bf16=False,
            logger=logger,
        )
    msg = str(e.value)
    # The workers' cause on the second line: both ranks failed alike, so one line says so.
    assert e.value.exit_code == 1 and msg.startswith("training job failed with exit code 1. Cause:\n  ranks 0, 1: ")
    assert f"Error: Unrecognized model in {empty}" in msg.splitlines()[1]
    assert len(msg.splitlines()) < 30 and e.value.__cause__ is None and e.value.__context__ is None
    assert any("Traceback" in m for _, m in handler.records)  # the full traceback is in the logs instead


def test_train_task_launches_and_the_launcher_enters_the_identity(tiny_model, demo_data, tmp_path):
    """train-sft through `training.launcher`: a 2-process job, reused when rerun, retrained in-process when
    the launcher changes (2 processes see a global batch twice as large: not the same training)."""
    from configs import parse_config
    from tasks.stage import runtime
    from tasks.train import train_sft_task

    cfg = parse_config(
        {
            "pipeline": "launch",
            "base_model": str(tiny_model),
            "home": str(tmp_path / "home"),
            "storage": {"uri": f"file://{tmp_path / 'store'}"},
            "curation": {"sources": [{"name": "pool", "path": str(demo_data["pool"])}]},
            "evaluation": {"eval_sets": [{"name": "heldout", "path": str(demo_data["heldout"])}]},
            "training": {"sft": {"epochs": 1, "batch_size": 8, "max_length": 64, "learning_rate": 1e-3}},
        }
    )

    def with_launcher(launcher: LauncherConfig):
        # model_copy: works before and after TrainingConfig has its `launcher` field.
        return cfg.model_copy(update={"training": cfg.training.model_copy(update={"launcher": launcher})})

    rt = runtime(cfg)
    data_id = rt.artifacts.put_table(pa.Table.from_pylist(SFT_ROWS), kind="sft").id
    policy_id = rt.artifacts.put_model(tiny_model).id
    ddp = with_launcher(LauncherConfig(kind="accelerate", num_processes=2, cpu=True))
    trained = train_sft_task.fn(ddp, 0, policy_id, data_id)
    summary = rt.artifacts.get_json(rt.artifacts.read_link("runs/launch/round-0000/train-sft/summary.json").id)
    assert trained != policy_id and summary["launch"]["world_size"] == 2 and summary["rows_in"] == 32
    assert summary["metrics"]["train/sft_steps"] == 2
    assert train_sft_task.fn(ddp, 0, policy_id, data_id) == trained  # same identity: reused, no launch
    assert train_sft_task.fn(with_launcher(LauncherConfig()), 0, policy_id, data_id) not in (trained, policy_id)
