"""Run a training stage as an `accelerate launch` job (DDP, DeepSpeed, FSDP), its output streamed into the logs.

The parent (a Prefect task) writes the rows to parquet and a `TrainSpec` JSON into `out_dir`, launches

    python -m accelerate.commands.launch <launcher flags> -m trainers.run <out_dir>/train_spec.json

and reads back `train_result.json` (checkpoint path + summary), which the main process writes last.
Every line the job prints is forwarded to the logger as it arrives, so the Prefect UI shows a live run.

Build a command without running it:  `build_launch_command(LauncherConfig(...), Path("spec.json"), bf16=False)`
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from configs.launcher import PACKAGE_ROOT, LauncherConfig
from trainers.curves import CurveReport
from trainers.job import DATA_FILE, ERROR_MARKER, RESULT_FILE, SPEC_FILE, TrainSpec

TAIL_LINES = 20
_LEVEL = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL) (?=\[rank \d+\] )")  # trainers.run's log format

Logger = logging.Logger | logging.LoggerAdapter


class LaunchError(RuntimeError):
    """A launched training job failed: its exit code, the causes it reported, and the tail of its output."""

    def __init__(self, message: str, exit_code: int | None, tail: list[str]):
        super().__init__(message)
        self.exit_code, self.tail = exit_code, tail


def build_launch_command(
    cfg: LauncherConfig,
    spec_path: Path,
    *,
    bf16: bool,
    port: int | None = None,
) -> list[str] | None:
    """The argv that trains `spec_path` under `cfg`, or None for `kind: local` (train in-process).

    Args:
        bf16: training.bf16, which `mixed_precision: auto` follows.
        port: rendezvous port when `cfg.main_process_port` is None (`launch_training` picks a free one).
    """
    if cfg.kind == "local":
        return None
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]  # this interpreter: no `accelerate` on PATH needed
    if cfg.deepspeed_config is not None:
        cmd += ["--use_deepspeed", "--deepspeed_config_file", str(cfg.deepspeed_path())]
    elif cfg.fsdp:
        # FULL_STATE_DICT: the checkpoint must be one plain HF directory vLLM loads, not per-rank shards.
        # TRANSFORMER_BASED_WRAP without class names wraps the model's own `_no_split_modules` blocks.
        cmd += [
            "--use_fsdp",
            "--fsdp_version",
            "2",
            "--fsdp_auto_wrap_policy",
            "TRANSFORMER_BASED_WRAP",
            "--fsdp_state_dict_type",
            "FULL_STATE_DICT",
            "--fsdp_reshard_after_forward",
            str(cfg.fsdp_reshard_after_forward).lower(),
            "--fsdp_offload_params",
            str(cfg.fsdp_offload_params).lower(),
            "--fsdp_activation_checkpointing",
            str(cfg.fsdp_activation_checkpointing).lower(),
        ]
    elif cfg.num_processes > 1:
        # torchrun's launcher. Also on CPU: accelerate's --cpu starts a single process unless given an MPI
        # hostfile; the CPU choice reaches the workers through ACCELERATE_USE_CPU (launch_env) -> gloo.
        cmd += ["--multi_gpu"]
    elif cfg.cpu:
        cmd += ["--cpu"]
    mixed = cfg.mixed_precision if cfg.mixed_precision != "auto" else ("bf16" if bf16 else "no")
    # Every value explicit: accelerate otherwise warns, and fills gaps from the machine's default_config.yaml.
    cmd += [
        "--num_processes",
        str(cfg.num_processes),
        "--num_machines",
        str(cfg.num_machines),
        "--mixed_precision",
        mixed,
        "--dynamo_backend",
        "no",
    ]
    if cfg.num_machines > 1:
        cmd += ["--machine_rank", str(cfg.machine_rank), "--main_process_ip", str(cfg.main_process_ip)]
    if cfg.main_process_port is not None or port is not None:
        cmd += ["--main_process_port", str(cfg.main_process_port or port)]
    # Imported, not only named, so that the code every process runs is part of the step's code identity.
    from trainers import run as job

    return cmd + list(cfg.extra_args) + ["-m", job.__name__, str(spec_path)]


def launch_env(cfg: LauncherConfig) -> dict[str, str]:
    """Environment variables the job needs on top of the parent's."""
    env = {"PYTHONUNBUFFERED": "1"}  # lines must reach the pipe as they are printed, not at exit
    if cfg.cpu:
        env["ACCELERATE_USE_CPU"] = "true"  # read by accelerate's state and by TrainingArguments in each worker
    return env


def launcher_identity(cfg: LauncherConfig) -> dict[str, Any]:
    """What of the launcher changes the trained weights: part of a training step's identity.

    Addresses and ports do not; the DeepSpeed file's content does (its path alone could hide an edit).
    `local` ignores every other field, so changing them does not retrain.
    """
    if cfg.kind == "local":
        return {"kind": "local"}
    out = cfg.model_dump(mode="json", exclude={"machine_rank", "main_process_ip", "main_process_port"})
    if cfg.deepspeed_config is not None:
        out["deepspeed_config"] = json.loads(cfg.deepspeed_path().read_text())
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child_env(extra: dict[str, str]) -> dict[str, str]:
    env = {**os.environ, **extra}
    # The job must import this checkout's trainers/configs (not another editable install); never prepend
    # site-packages itself, which would shadow the standard library.
    if PACKAGE_ROOT.name not in ("site-packages", "dist-packages"):
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_ROOT), env.get("PYTHONPATH")) if p)
    return env


def stop_group(proc: subprocess.Popen, term_wait_s: float = 15) -> None:
    """Stop a job's whole process group (accelerate, torchrun, the workers): SIGTERM, then SIGKILL."""
    for sig, wait_s in ((signal.SIGTERM, term_wait_s), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait_s)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def _describe(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"exit code {code} (killed by {name}{', out of memory?' if name == 'SIGKILL' else ''})"
    return f"exit code {code}"


def _group_causes(causes: list[str]) -> list[str]:
    """["rank 1: E: x", "rank 0: E: x"] -> ["ranks 0, 1: E: x"]: eight GPUs failing alike make one line."""
    ranks: dict[str, list[int]] = {}
    for c in causes:
        m = re.match(r"rank (\d+): (.*)", c)
        ranks.setdefault(m.group(2) if m else c, []).extend([int(m.group(1))] if m else [])
    return [
        f"rank{'s' if len(r) > 1 else ''} {', '.join(map(str, sorted(r)))}: {what}" if r else what
        for what, r in ranks.items()
    ]


def stream_command(cmd: list[str], logger: Logger, *, env: dict[str, str] | None = None) -> None:
    """Run `cmd`, forwarding each output line (stdout and stderr) to `logger` as it arrives.

    Lines in trainers.run's format keep their level; anything else (accelerate, torchrun, warnings) is INFO.
    Raises LaunchError with the exit code, the causes the job reported and its last TAIL_LINES lines.
    If this process is interrupted (task cancelled), the job's process group is stopped too.
    """
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    causes: list[str] = []
    first_failure: list[str] = []  # the lines leading up to the first reported cause
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        bufsize=1,
        env=_child_env(env or {}),
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip("\n")
            tail.append(line)
            m = _LEVEL.match(line)  # the record carries the level: keep "[rank R] message" as the text
            logger.log(getattr(logging, m.group(1)) if m else logging.INFO, "%s", line[m.end(1) + 1 :] if m else line)
            if ERROR_MARKER in line and len(causes) < 1024:  # one per rank; bounded all the same
                causes.append(line.split(ERROR_MARKER, 1)[1])
                first_failure = first_failure or list(tail)
        code = proc.wait()
    except BaseException:
        stop_group(proc)
        raise
    if code != 0:
        # After a worker fails, torchrun prints its own traceback and a failure table that says nothing about
        # the cause: show the worker's last lines instead when it reported one (all lines are in the logs).
        lines, where = (first_failure, "up to the first failure") if first_failure else (list(tail), "at the end")
        cause = "".join(f"\n  {c}" for c in _group_causes(causes)) or " none reported (see the output below)"
        raise LaunchError(
            f"training job failed with {_describe(code)}. Cause:{cause}\nLast {len(lines)} lines of its output "
            f"({where}):\n" + "\n".join(f"  | {t}" for t in lines) + f"\ncommand: {shlex.join(cmd)}",
            code,
            lines,
        )


def launch_training(
    cfg: LauncherConfig,
    *,
    stage: Literal["sft", "dpo", "rl", "reward"],
    model_dir: str,
    base_id: str,
    data,
    stage_config: BaseModel,
    out_dir: Path,
    seed: int,
    use_cpu: bool,
    bf16: bool,
    logger: Logger,
    rewards: dict | None = None,
    report: CurveReport | None = None,
) -> tuple[Path, dict]:
    """Train `stage` as a launched job; same contract as train_sft/train_dpo/train_rl/train_reward: (checkpoint
    dir, summary).

    Args:
        base_id: artifact id of the model in `model_dir`, recorded in the checkpoint.
        data: the training rows as a pyarrow Table (written to parquet for the job's processes).
        out_dir: a scratch directory of this step; the checkpoint is written to out_dir/model (a reward
            model to out_dir/reward-model).
        rewards: rl only: the reward functions' factory and scorer configs (TrainSpec.rewards).
        report: where the training curves go (trainers/curves.py; None: nowhere). Its environment is set
            for the job as well as inside each of its processes.
    """
    import pyarrow.parquet as pq

    out_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(data, out_dir / DATA_FILE)
    spec = TrainSpec(
        stage=stage,
        model_dir=model_dir,
        base_id=base_id,
        data=str(out_dir / DATA_FILE),
        stage_config=stage_config.model_dump(mode="json"),
        out_dir=str(out_dir),
        seed=seed,
        use_cpu=use_cpu,
        bf16=bf16,
        rewards=rewards,
        report=report or CurveReport(),
    )
    spec_path = out_dir / SPEC_FILE
    spec_path.write_text(spec.model_dump_json(indent=2))
    port = free_port() if cfg.num_processes > 1 and cfg.num_machines == 1 and cfg.main_process_port is None else None
    cmd = build_launch_command(cfg, spec_path, bf16=bf16, port=port)
    if cmd is None:
        raise ValueError("launch_training needs launcher kind 'accelerate' (kind 'local' trains in-process)")
    logger.info("%s: launching %s", stage, shlex.join(cmd))
    stream_command(cmd, logger, env={**launch_env(cfg), **(report.env if report else {})})
    result_path = out_dir / RESULT_FILE
    if not result_path.is_file():
        raise LaunchError(f"training job exited 0 but wrote no {result_path}", 0, [])
    result = json.loads(result_path.read_text())
    return Path(result["checkpoint"]), result["summary"]
