"""How training runs: in this process (`local`), or as an `accelerate launch` job (DDP, DeepSpeed, FSDP).

    training:
      launcher:
        kind: accelerate
        num_processes: 8
        deepspeed_config: configs/deepspeed/zero3.json

A relative `deepspeed_config` is looked up against the directory holding `configs/` (the repo, or
site-packages when installed: the shipped JSON files are package data), then against the working
directory. The file is checked when the config loads (`check_deepspeed_config`), so a typo in it fails
`flywheel validate`, not an hour into a round.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # holds configs/, so "configs/deepspeed/..." resolves


class LauncherConfig(BaseModel):
    # A typo in a YAML key must fail loudly instead of silently using a default.
    model_config = ConfigDict(extra="forbid")

    kind: Literal["local", "accelerate"] = Field(
        "local",
        description="`local`: train inside the Prefect task's process (one device, the demo). "
        "`accelerate`: run `accelerate launch` as a subprocess (DDP, or DeepSpeed/FSDP when set below); "
        "its output streams into the task's logs.",
    )
    num_processes: int = Field(
        1,
        ge=1,
        description="Processes in total over all machines (usually one per GPU). Above 1 this is DDP "
        "unless `deepspeed_config` or `fsdp` is set.",
    )
    num_machines: int = Field(
        1, ge=1, description="Machines in the job; each runs the same launch with its own `machine_rank`."
    )
    machine_rank: int = Field(0, ge=0, description="Rank of this machine (0: the one holding the main process).")
    main_process_ip: str | None = Field(None, description="Address of machine 0 (required when num_machines > 1).")
    main_process_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Rendezvous port (None on one machine: a free port is picked at launch, "
        "so two jobs on a shared machine do not collide on 29500; required when num_machines > 1).",
    )
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field(
        "auto",
        description="accelerate's --mixed_precision. `auto`: `bf16` when training.bf16 is set, else `no`, "
        "so the launcher and the trainer's own bf16 flag cannot disagree.",
    )
    deepspeed_config: str | None = Field(
        None,
        description="DeepSpeed JSON config (e.g. configs/deepspeed/zero3.json): train with DeepSpeed. "
        "None: plain DDP (or FSDP). Relative paths: against the directory holding configs/, then the working dir.",
    )
    fsdp: bool = Field(
        False,
        description="Train with PyTorch FSDP2 instead (full state dict on save, one wrap per "
        "transformer block); the alternative to `deepspeed_config`.",
    )
    fsdp_reshard_after_forward: bool = Field(
        True,
        description="FSDP: free gathered weights after each block's forward (ZeRO-3-like, least memory); "
        "False keeps them until backward (ZeRO-2-like, faster).",
    )
    fsdp_offload_params: bool = Field(False, description="FSDP: keep parameters and gradients in CPU memory.")
    fsdp_activation_checkpointing: bool = Field(False, description="FSDP: recompute activations in backward.")
    cpu: bool = Field(
        False,
        description="Run every process on the CPU (gloo instead of NCCL; DDP only): tests and GPU-less "
        "machines. Keep it equal to training.use_cpu.",
    )
    extra_args: list[str] = Field(
        default_factory=list,
        description="More `accelerate launch` arguments, passed through verbatim before the "
        "training module (e.g. ['--gpu_ids', '0,1']).",
    )

    @model_validator(mode="after")
    def _check(self) -> LauncherConfig:
        if self.deepspeed_config is not None and self.fsdp:
            raise ValueError("set either deepspeed_config or fsdp, not both: they are two ways to shard the model")
        if self.cpu and (self.deepspeed_config is not None or self.fsdp):
            # On CPU accelerate drops both without a word (an FSDP launch on CPU ran as plain DDP).
            raise ValueError(
                "deepspeed_config and fsdp need GPUs (on CPU accelerate silently trains plain DDP): "
                "set cpu: false, or drop them for DDP on CPU"
            )
        if self.num_processes % self.num_machines:
            raise ValueError(
                f"num_processes ({self.num_processes}) must be a multiple of num_machines "
                f"({self.num_machines}): each machine runs the same number of processes"
            )
        if self.machine_rank >= self.num_machines:
            raise ValueError(f"machine_rank ({self.machine_rank}) must be below num_machines ({self.num_machines})")
        if self.num_machines > 1 and (self.main_process_ip is None or self.main_process_port is None):
            raise ValueError(f"num_machines ({self.num_machines}) > 1 needs main_process_ip and main_process_port")
        if self.deepspeed_config is not None:
            path = self.deepspeed_path()
            try:
                data = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"deepspeed_config {path}: not valid JSON: {e}") from None
            problems = check_deepspeed_config(data)
            if problems:
                raise ValueError(f"deepspeed_config {path}: " + "; ".join(problems))
        return self

    def deepspeed_path(self) -> Path:
        """The DeepSpeed JSON file, absolute; raises ValueError naming the places looked at if it is missing."""
        assert self.deepspeed_config is not None
        given = Path(self.deepspeed_config).expanduser()
        tried = [given] if given.is_absolute() else [PACKAGE_ROOT / given, Path.cwd() / given]
        for p in tried:
            if p.is_file():
                return p.resolve()
        raise ValueError(
            f"deepspeed_config {self.deepspeed_config!r} not found (looked at: {', '.join(str(p) for p in tried)})"
        )


# Keys whose "auto" HF Trainer fills from its training args or the model (transformers.integrations.deepspeed);
# "auto" anywhere else reaches DeepSpeed as a string and fails at the first step.
AUTO_KEYS = frozenset(
    {
        "train_micro_batch_size_per_gpu",
        "gradient_accumulation_steps",
        "train_batch_size",
        "gradient_clipping",
        "bf16.enabled",
        "fp16.enabled",
        "optimizer.params.lr",
        "optimizer.params.betas",
        "optimizer.params.eps",
        "optimizer.params.weight_decay",
        "scheduler.params.warmup_min_lr",
        "scheduler.params.warmup_max_lr",
        "scheduler.params.warmup_num_steps",
        "scheduler.params.total_num_steps",
        "zero_optimization.reduce_bucket_size",
        "zero_optimization.stage3_prefetch_bucket_size",
        "zero_optimization.stage3_param_persistence_threshold",
    }
)


def _auto_keys(obj: Any, prefix: str = "") -> list[str]:
    if not isinstance(obj, dict):
        return []
    out = []
    for k, v in obj.items():
        out += [prefix + k] if v == "auto" else _auto_keys(v, f"{prefix}{k}.")
    return out


def _auto_or(value: Any, kind: type | tuple[type, ...], *, minimum: float) -> bool:
    return value == "auto" or (isinstance(value, kind) and not isinstance(value, bool) and value >= minimum)


def check_deepspeed_config(data: Any) -> list[str]:
    """Problems in a DeepSpeed JSON config as HF Trainer uses it ("auto" is filled from the training args).

    A small schema check that needs no `deepspeed` install: the keys this project relies on, their types,
    and settings that are silently ignored or leave a checkpoint vLLM cannot load. Empty list: fine.

    >>> check_deepspeed_config({"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": 1,
    ...                         "zero_optimization": {"stage": 2}})
    []
    >>> check_deepspeed_config({"zero_optimization": {"stage": 4}})  # doctest: +NORMALIZE_WHITESPACE
    ['train_micro_batch_size_per_gpu is required ("auto" or an int >= 1)',
     'gradient_accumulation_steps is required ("auto" or an int >= 1)', 'zero_optimization.stage must be 0..3 (got 4)']
    """
    if not isinstance(data, dict):
        return [f"the top level must be a JSON object (got {type(data).__name__})"]
    out = []
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
        if key not in data:
            out.append(f'{key} is required ("auto" or an int >= 1)')
        elif not _auto_or(data[key], int, minimum=1):
            out.append(f'{key} must be "auto" or an int >= 1 (got {data[key]!r})')
    if "train_batch_size" in data and not _auto_or(data["train_batch_size"], int, minimum=1):
        out.append(f'train_batch_size must be "auto" or an int >= 1 (got {data["train_batch_size"]!r})')
    if "gradient_clipping" in data and not _auto_or(data["gradient_clipping"], (int, float), minimum=0):
        out.append(f'gradient_clipping must be "auto" or a number >= 0 (got {data["gradient_clipping"]!r})')
    stray_auto = [k for k in _auto_keys(data) if k not in AUTO_KEYS]
    if stray_auto:
        out.append(
            f'{", ".join(stray_auto)}: "auto" is not filled in there (HF Trainer fills only batch sizes, '
            "clipping, precision, optimizer/scheduler params and ZeRO bucket sizes): give a value"
        )
    enabled = []
    for key in ("bf16", "fp16"):
        section = data.get(key, {})
        flag = section.get("enabled", False) if isinstance(section, dict) else None
        if flag not in (True, False, "auto"):
            out.append(f'{key} must be an object with enabled: true, false or "auto" (got {section!r})')
        elif flag is True:
            enabled.append(key)
    if len(enabled) == 2:
        out.append("bf16 and fp16 cannot both be enabled")

    zero = data.get("zero_optimization")
    if not isinstance(zero, dict):
        return out + ["zero_optimization is required (an object with a stage)"]
    stage = zero.get("stage")
    if not (isinstance(stage, int) and not isinstance(stage, bool) and 0 <= stage <= 3):
        return out + [f"zero_optimization.stage must be 0..3 (got {stage!r})"]
    if stage < 3:
        # DeepSpeed ignores these below stage 3: a ZeRO-2 file carrying them was copied from a ZeRO-3 one.
        stray = sorted(k for k in zero if k.startswith("stage3_") or k == "offload_param")
        if stray:
            out.append(f"zero_optimization.{', '.join(stray)} only apply to stage 3 (stage is {stage})")
    elif zero.get("stage3_gather_16bit_weights_on_model_save") is not True:
        # Otherwise save_model writes the local shards only: the checkpoint would not load in vLLM.
        out.append(
            "stage 3 needs zero_optimization.stage3_gather_16bit_weights_on_model_save: true "
            "so checkpoints hold the full weights"
        )
    for key in ("offload_optimizer", "offload_param"):
        device = zero.get(key, {}).get("device", "none") if isinstance(zero.get(key, {}), dict) else None
        if device not in ("none", "cpu", "nvme"):
            out.append(f"zero_optimization.{key}.device must be none, cpu or nvme (got {device!r})")
    return out
