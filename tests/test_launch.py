"""Training as an `accelerate launch` job: exact command lines, a real 2-process DDP run on CPU (gloo)
whose checkpoint transformers and vLLM load, streamed logs, one clear error on failure, DeepSpeed configs."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from configs.launcher import PACKAGE_ROOT, LauncherConfig, check_deepspeed_config
from trainers.launch import (
    build_launch_command,
    launch_env,
    launcher_identity,
)

SPEC = Path("/runs/x/train_spec.json")
HEAD = [sys.executable, "-m", "accelerate.commands.launch"]
TAIL = ["-m", "trainers.run", "/runs/x/train_spec.json"]
DS_DIR = PACKAGE_ROOT / "configs" / "deepspeed"
DS_FILES = sorted(DS_DIR.glob("*.json"))
SFT_ROWS = [
    {"messages": [{"role": "user", "content": f"What is {a} plus 5?"}, {"role": "assistant", "content": str(a + 5)}]}
    for a in range(10, 42)
]


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
    assert (
        build_launch_command(cfg, SPEC, bf16=False, port=29511)
        == HEAD
        + [
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            "29511",
        ]
        + TAIL
    )
    assert launch_env(cfg) == {"PYTHONUNBUFFERED": "1", "ACCELERATE_USE_CPU": "true"}
    one = LauncherConfig(kind="accelerate", cpu=True)
    assert (
        build_launch_command(one, SPEC, bf16=False)
        == HEAD
        + ["--cpu", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        + TAIL
    )


def test_deepspeed_zero3_with_a_config_file():
    cfg = LauncherConfig(
        kind="accelerate",
        num_processes=8,
        deepspeed_config="configs/deepspeed/zero3.json",
        main_process_port=29500,
        extra_args=["--gpu_ids", "all"],
    )
    assert (
        build_launch_command(cfg, SPEC, bf16=True)
        == HEAD
        + [
            "--use_deepspeed",
            "--deepspeed_config_file",
            str(DS_DIR / "zero3.json"),
            "--num_processes",
            "8",
            "--num_machines",
            "1",
            "--mixed_precision",
            "bf16",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            "29500",
            "--gpu_ids",
            "all",
        ]
        + TAIL
    )
    assert launch_env(cfg) == {"PYTHONUNBUFFERED": "1"}
    identity = launcher_identity(cfg)
    assert identity["deepspeed_config"]["zero_optimization"]["stage"] == 3  # the file's content, not its path
    assert "main_process_port" not in identity


def test_fsdp_on_two_machines():
    cfg = LauncherConfig(
        kind="accelerate",
        num_processes=16,
        num_machines=2,
        machine_rank=1,
        main_process_ip="10.0.0.1",
        main_process_port=29400,
        fsdp=True,
        fsdp_reshard_after_forward=False,
        mixed_precision="fp16",
    )
    assert (
        build_launch_command(cfg, SPEC, bf16=False)
        == HEAD
        + [
            "--use_fsdp",
            "--fsdp_version",
            "2",
            "--fsdp_auto_wrap_policy",
            "TRANSFORMER_BASED_WRAP",
            "--fsdp_state_dict_type",
            "FULL_STATE_DICT",
            "--fsdp_reshard_after_forward",
            "false",
            "--fsdp_offload_params",
            "false",
            "--fsdp_activation_checkpointing",
            "false",
            "--num_processes",
            "16",
            "--num_machines",
            "2",
            "--mixed_precision",
            "fp16",
            "--dynamo_backend",
            "no",
            "--machine_rank",
            "1",
            "--main_process_ip",
            "10.0.0.1",
            "--main_process_port",
            "29400",
        ]
        + TAIL
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"deepspeed_config": "configs/deepspeed/zero3.json", "fsdp": True}, "either deepspeed_config or fsdp"),
        ({"deepspeed_config": "configs/deepspeed/zero3.json", "cpu": True}, "deepspeed_config and fsdp need GPUs"),
        ({"fsdp": True, "cpu": True}, "deepspeed_config and fsdp need GPUs"),
        ({"deepspeed_config": "configs/deepspeed/nope.json"}, "'configs/deepspeed/nope.json' not found (looked at:"),
        (
            {"num_processes": 3, "num_machines": 2, "main_process_ip": "h", "main_process_port": 1},
            "num_processes (3) must be a multiple of num_machines (2)",
        ),
        ({"num_processes": 2, "num_machines": 2}, "needs main_process_ip and main_process_port"),
        ({"machine_rank": 1}, "machine_rank (1) must be below num_machines (1)"),
        ({"kind": "slurm"}, "Input should be 'local' or 'accelerate'"),
        ({"num_procs": 2}, "Extra inputs are not permitted"),
    ],
)
def test_launcher_config_rejects(kwargs, message):
    with pytest.raises(ValidationError) as e:
        LauncherConfig(**kwargs)
    assert message in str(e.value)


def test_a_broken_deepspeed_file_fails_when_the_config_loads(tmp_path):
    bad = tmp_path / "ds.json"
    bad.write_text(
        json.dumps(
            {
                "train_micro_batch_size_per_gpu": "auto",
                "gradient_accumulation_steps": "auto",
                "zero_optimization": {"stage": 3},
            }
        )
    )
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
        "zero_optimization.stage must be 0..3 (got '3')"
    ]
    assert check_deepspeed_config(
        {"train_micro_batch_size_per_gpu": 0, "gradient_accumulation_steps": True, "zero_optimization": {"stage": 1}}
    ) == [
        'train_micro_batch_size_per_gpu must be "auto" or an int >= 1 (got 0)',
        'gradient_accumulation_steps must be "auto" or an int >= 1 (got True)',
    ]
    assert check_deepspeed_config(
        {
            **base,
            "bf16": {"enabled": True},
            "fp16": {"enabled": True},
            "zero_optimization": {"stage": 2, "stage3_max_live_parameters": 1, "offload_optimizer": {"device": "gpu"}},
        }
    ) == [
        "bf16 and fp16 cannot both be enabled",
        "zero_optimization.stage3_max_live_parameters only apply to stage 3 (stage is 2)",
        "zero_optimization.offload_optimizer.device must be none, cpu or nvme (got 'gpu')",
    ]
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
    args = TrainingArguments(
        output_dir="unused", per_device_train_batch_size=4, gradient_accumulation_steps=2, use_cpu=True, report_to=[]
    )
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
