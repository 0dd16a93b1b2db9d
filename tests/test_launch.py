"""Training as an `accelerate launch` job: exact command lines, a real 2-process DDP run on CPU (gloo)
whose checkpoint transformers and vLLM load, streamed logs, one clear error on failure, DeepSpeed configs."""
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
from pydantic import ValidationError
from safetensors.torch import load_file

from configs.launcher import PACKAGE_ROOT, LauncherConfig, check_deepspeed_config
from configs.schema import EngineConfig, SamplingConfig, SFTConfig
from trainers.launch import (
    LaunchError,
    build_launch_command,
    launch_env,
    launch_training,
    launcher_identity,
    stream_command,
)
from tests.conftest import ENGINE

SPEC = Path("/runs/x/train_spec.json")
HEAD = [sys.executable, "-m", "accelerate.commands.launch"]
TAIL = ["-m", "trainers.run", "/runs/x/train_spec.json"]
DS_DIR = PACKAGE_ROOT / "configs" / "deepspeed"
DS_FILES = sorted(DS_DIR.glob("*.json"))
SFT_ROWS = [{"messages": [{"role": "user", "content": f"What is {a} plus 5?"},
                          {"role": "assistant", "content": str(a + 5)}]} for a in range(10, 42)]


class ListHandler(logging.Handler):
    def __init__(self, on_record=lambda message: None):
        super().__init__()
        self.records: list[tuple[int, str]] = []
        self.on_record = on_record

    def emit(self, record):
        self.records.append((record.levelno, record.getMessage()))
        self.on_record(record.getMessage())


def list_logger(name: str) -> tuple[logging.Logger, ListHandler]:
    logger, handler = logging.getLogger(f"test-launch.{name}"), ListHandler()
    logger.handlers, logger.propagate = [handler], False
    logger.setLevel(logging.DEBUG)
    return logger, handler


# --- command lines (pure) ---------------------------------------------------------------------------------

def test_local_trains_in_process():
    assert build_launch_command(LauncherConfig(), SPEC, bf16=True) is None
    assert launcher_identity(LauncherConfig(num_processes=4)) == {"kind": "local"}  # unused fields: no retrain


def test_accelerate_on_cpu_with_two_processes():
    cfg = LauncherConfig(kind="accelerate", num_processes=2, cpu=True)
    assert build_launch_command(cfg, SPEC, bf16=False, port=29511) == HEAD + [
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--main_process_port", "29511"] + TAIL
    assert launch_env(cfg) == {"PYTHONUNBUFFERED": "1", "ACCELERATE_USE_CPU": "true"}
    one = LauncherConfig(kind="accelerate", cpu=True)
    assert build_launch_command(one, SPEC, bf16=False) == HEAD + [
        "--cpu", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"
    ] + TAIL


def test_deepspeed_zero3_with_a_config_file():
    cfg = LauncherConfig(kind="accelerate", num_processes=8, deepspeed_config="configs/deepspeed/zero3.json",
                         main_process_port=29500, extra_args=["--gpu_ids", "all"])
    assert build_launch_command(cfg, SPEC, bf16=True) == HEAD + [
        "--use_deepspeed", "--deepspeed_config_file", str(DS_DIR / "zero3.json"),
        "--num_processes", "8", "--num_machines", "1", "--mixed_precision", "bf16", "--dynamo_backend", "no",
        "--main_process_port", "29500", "--gpu_ids", "all"] + TAIL
    assert launch_env(cfg) == {"PYTHONUNBUFFERED": "1"}
    identity = launcher_identity(cfg)
    assert identity["deepspeed_config"]["zero_optimization"]["stage"] == 3  # the file's content, not its path
    assert "main_process_port" not in identity


def test_fsdp_on_two_machines():
    cfg = LauncherConfig(kind="accelerate", num_processes=16, num_machines=2, machine_rank=1,
                         main_process_ip="10.0.0.1", main_process_port=29400, fsdp=True,
                         fsdp_reshard_after_forward=False, mixed_precision="fp16")
    assert build_launch_command(cfg, SPEC, bf16=False) == HEAD + [
        "--use_fsdp", "--fsdp_version", "2", "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
        "--fsdp_state_dict_type", "FULL_STATE_DICT", "--fsdp_reshard_after_forward", "false",
        "--fsdp_offload_params", "false", "--fsdp_activation_checkpointing", "false",
        "--num_processes", "16", "--num_machines", "2", "--mixed_precision", "fp16", "--dynamo_backend", "no",
        "--machine_rank", "1", "--main_process_ip", "10.0.0.1", "--main_process_port", "29400"] + TAIL


@pytest.mark.parametrize("kwargs, message", [
    ({"deepspeed_config": "configs/deepspeed/zero3.json", "fsdp": True}, "either deepspeed_config or fsdp"),
    ({"deepspeed_config": "configs/deepspeed/zero3.json", "cpu": True}, "deepspeed_config and fsdp need GPUs"),
    ({"fsdp": True, "cpu": True}, "deepspeed_config and fsdp need GPUs"),
    ({"deepspeed_config": "configs/deepspeed/nope.json"}, "'configs/deepspeed/nope.json' not found (looked at:"),
    ({"num_processes": 3, "num_machines": 2, "main_process_ip": "h", "main_process_port": 1},
     "num_processes (3) must be a multiple of num_machines (2)"),
    ({"num_processes": 2, "num_machines": 2}, "needs main_process_ip and main_process_port"),
    ({"machine_rank": 1}, "machine_rank (1) must be below num_machines (1)"),
    ({"kind": "slurm"}, "Input should be 'local' or 'accelerate'"),
    ({"num_procs": 2}, "Extra inputs are not permitted"),
])
def test_launcher_config_rejects(kwargs, message):
    with pytest.raises(ValidationError) as e:
        LauncherConfig(**kwargs)
    assert message in str(e.value)


def test_a_broken_deepspeed_file_fails_when_the_config_loads(tmp_path):
    bad = tmp_path / "ds.json"
    bad.write_text(json.dumps({"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
                               "zero_optimization": {"stage": 3}}))
    with pytest.raises(ValidationError, match="stage3_gather_16bit_weights_on_model_save: true"):
        LauncherConfig(kind="accelerate", deepspeed_config=str(bad))
    bad.write_text("{not json")
    with pytest.raises(ValidationError, match="not valid JSON"):
        LauncherConfig(kind="accelerate", deepspeed_config=str(bad))


# --- DeepSpeed configs ------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", DS_FILES, ids=lambda p: p.name)
def test_shipped_deepspeed_configs_pass_the_schema_check(path):
    assert check_deepspeed_config(json.loads(path.read_text())) == []


def test_schema_check_names_each_mistake():
    base = {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": 1}
    assert check_deepspeed_config([]) == ["the top level must be a JSON object (got list)"]
    assert check_deepspeed_config({**base, "zero_optimization": {"stage": "3"}}) == [
        "zero_optimization.stage must be 0..3 (got '3')"]
    assert check_deepspeed_config({"train_micro_batch_size_per_gpu": 0, "gradient_accumulation_steps": True,
                                   "zero_optimization": {"stage": 1}}) == [
        'train_micro_batch_size_per_gpu must be "auto" or an int >= 1 (got 0)',
        'gradient_accumulation_steps must be "auto" or an int >= 1 (got True)']
    assert check_deepspeed_config({**base, "bf16": {"enabled": True}, "fp16": {"enabled": True},
                                   "zero_optimization": {"stage": 2, "stage3_max_live_parameters": 1,
                                                         "offload_optimizer": {"device": "gpu"}}}) == [
        "bf16 and fp16 cannot both be enabled",
        "zero_optimization.stage3_max_live_parameters only apply to stage 3 (stage is 2)",
        "zero_optimization.offload_optimizer.device must be none, cpu or nvme (got 'gpu')"]
    problems = check_deepspeed_config({**base, "zero_optimization": {"stage": 2, "allgather_bucket_size": "auto"}})
    assert len(problems) == 1 and problems[0].startswith('zero_optimization.allgather_bucket_size: "auto" is not')


def test_doctests():
    import doctest

    import configs.launcher

    result = doctest.testmod(configs.launcher)
    assert result.attempted > 0 and result.failed == 0


def _fill_and_parse(data: dict):
    """What HF Trainer does at startup: fill "auto" from the training args and model, then DeepSpeed parses."""
    from deepspeed.runtime.config import DeepSpeedConfig
    from transformers import LlamaConfig, TrainingArguments
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    ds = HfTrainerDeepSpeedConfig(data)
    args = TrainingArguments(output_dir="unused", per_device_train_batch_size=4, gradient_accumulation_steps=2,
                             use_cpu=True, report_to=[])
    ds.trainer_config_process(args)
    ds.trainer_config_finalize(args, type("Model", (), {"config": LlamaConfig(hidden_size=128)})(), 10)
    return DeepSpeedConfig(ds.config)


@pytest.mark.parametrize("path", DS_FILES, ids=lambda p: p.name)
def test_shipped_deepspeed_configs_parse_with_deepspeed(path):
    # deepspeed comes with the `gpu` extra, not the CPU install: there the schema check above is the check.
    pytest.importorskip("deepspeed", reason="deepspeed not installed: the schema check covers these files")
    data = json.loads(path.read_text())
    parsed = _fill_and_parse(data)
    assert parsed.zero_optimization_stage == data["zero_optimization"]["stage"]
    batch = (parsed.train_micro_batch_size_per_gpu, parsed.gradient_accumulation_steps, parsed.train_batch_size)
    assert batch == (4, 2, 8)  # "auto" filled from the training args, world size 1
    if parsed.zero_optimization_stage == 3:
        assert parsed.zero_config.gather_16bit_weights_on_model_save  # full weights in the saved checkpoint
    with pytest.raises(Exception, match="bogus_key"):  # the parser is strict, so passing it means something
        _fill_and_parse({**data, "zero_optimization": {**data["zero_optimization"], "bogus_key": 1}})


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
    assert handler.records == [(logging.INFO, "[rank 0] first"), (logging.WARNING, "[rank 0] second"),
                               (logging.INFO, "plain")]


def test_causes_from_many_ranks_collapse():
    from trainers.launch import _group_causes

    assert _group_causes(["rank 3: E: x", "rank 0: E: x", "rank 1: F: y", "odd"]) == [
        "ranks 0, 3: E: x", "rank 1: F: y", "odd"]


def test_stream_command_failure_is_one_short_error():
    code = "for i in range(40): print('line', i)\nprint('flywheel-train-error: rank 0: ValueError: bad')\n" \
           "for i in range(30): print('launcher noise', i)\nraise SystemExit(3)"
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
    code = ("import subprocess, sys, time\n"
            "worker = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            "print(worker.pid, flush=True)\ntime.sleep(60)")

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
        LauncherConfig(kind="accelerate", num_processes=2, cpu=True), stage="sft", model_dir=str(tiny_model),
        data=pa.Table.from_pylist(SFT_ROWS), stage_config=SFTConfig(learning_rate=1e-3, batch_size=8, max_length=64),
        out_dir=out, seed=0, use_cpu=True, bf16=False, logger=logger,
    )
    return ckpt, summary, handler.records


def test_two_process_ddp_trains_and_reports_its_world(ddp_run, tiny_model):
    ckpt, summary, records = ddp_run
    assert summary["launch"] == {"world_size": 2, "num_processes": 2, "distributed_type": "MULTI_CPU",
                                 "device": "cpu:0"}
    assert summary["steps"] == 2  # 32 rows / (8 per process x 2 processes): the processes split the data
    assert math.isfinite(summary["train_loss"])
    before, after = load_file(str(tiny_model / "model.safetensors")), load_file(str(ckpt / "model.safetensors"))
    assert sum(not torch.equal(before[k], after[k]) for k in before) > 10
    assert not any(p.name.startswith(".rank-") for p in ckpt.parent.iterdir())  # other ranks' scratch is gone

    messages = [m for _, m in records]
    assert any(m.startswith("sft: launching ") and "--num_processes 2" in m for m in messages)
    assert "[rank 0] sft on 32 rows from " + str(tiny_model) + ", 2 process(es)" in messages
    assert any(m.startswith("[rank 0] sft step 2/2 loss ") for m in messages)  # the trainer's own loss lines
    assert not any(m.startswith("[rank 1] sft step") for m in messages)  # said once, by the main process


def test_ddp_checkpoint_loads_in_transformers_and_vllm(ddp_run, tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tasks.engines import get_engine

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
        launch_training(LauncherConfig(kind="accelerate", num_processes=2, cpu=True), stage="sft",
                        model_dir=str(empty), data=pa.Table.from_pylist(SFT_ROWS), stage_config=SFTConfig(),
                        out_dir=tmp_path / "out", seed=0, use_cpu=True, bf16=False, logger=logger)
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
    from storage.runtime import open_runtime
    from tasks.train import train_sft_task

    cfg = parse_config({
        "pipeline": "launch", "base_model": str(tiny_model), "home": str(tmp_path / "home"),
        "storage": {"uri": f"file://{tmp_path / 'store'}"},
        "curation": {"sources": [{"name": "pool", "path": str(demo_data["pool"])}]},
        "evaluation": {"eval_sets": [{"name": "heldout", "path": str(demo_data["heldout"])}]},
        "training": {"sft": {"epochs": 1, "batch_size": 8, "max_length": 64, "learning_rate": 1e-3}},
    })

    def with_launcher(launcher: LauncherConfig):
        # model_copy: works before and after TrainingConfig has its `launcher` field.
        return cfg.model_copy(update={"training": cfg.training.model_copy(update={"launcher": launcher})})

    rt = open_runtime(cfg)
    data_id = rt.artifacts.put_table(pa.Table.from_pylist(SFT_ROWS), kind="sft").id
    policy_id = rt.artifacts.put_model(tiny_model).id
    ddp = with_launcher(LauncherConfig(kind="accelerate", num_processes=2, cpu=True))
    trained = train_sft_task.fn(ddp, 0, policy_id, data_id)
    summary = rt.artifacts.get_json(rt.artifacts.read_link("runs/launch/round-0000/train-sft/summary.json").id)
    assert trained != policy_id and summary["launch"]["world_size"] == 2 and summary["rows_in"] == 32
    assert summary["metrics"]["train/sft_steps"] == 2
    assert train_sft_task.fn(ddp, 0, policy_id, data_id) == trained  # same identity: reused, no launch
    assert train_sft_task.fn(with_launcher(LauncherConfig()), 0, policy_id, data_id) not in (trained, policy_id)
