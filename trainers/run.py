"""One process of a launched training job: `python -m trainers.run <out_dir>/train_spec.json`.

Every process of the `accelerate launch` job runs this (trainers/launch.py builds the command); by hand:

    accelerate launch --cpu -m trainers.run /path/to/train_spec.json

Each process calls train_sft/train_dpo/train_rl/train_reward, and TRL splits the rows over the processes and syncs
gradients. Only the main process keeps its checkpoint and writes train_result.json, last, so that file
existing means the run finished. On failure a process prints one `flywheel-train-error:` line (the cause,
which the parent puts first in its error) and exits 1.
"""

from __future__ import annotations

from configs.quiet import apply_defaults

apply_defaults()  # before transformers is imported: it reads these once

import functools  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from trainers.job import ERROR_MARKER, RESULT_FILE, TrainSpec  # noqa: E402


def make_logger(rank: int) -> logging.Logger:
    """Logs to stdout as `LEVEL [rank R] message`, the format trainers.launch maps back to log levels."""
    logger = logging.getLogger("flywheel.train")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(f"%(levelname)s [rank {rank}] %(message)s"))
    logger.handlers, logger.propagate = [handler], False
    # The loss a trainer logs is already averaged over all ranks: say it once, from the main process.
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    return logger


def reward_factory(spec: TrainSpec) -> tuple[list, list[float]]:
    """The reward functions and weights of an rl spec, built by the factory it names.

    Resolved by name because the factory lives in the tasks layer, which trainers may not import (the
    import-linter layering); the stage that wrote the spec imports it, so it is in that step's code identity.
    """
    if not spec.rewards:
        raise ValueError("an rl train spec needs `rewards` (its reward functions' factory and scorers)")
    module, _, name = spec.rewards["factory"].partition(":")
    return getattr(importlib.import_module(module), name)(spec.rewards["scorers"])


def train(spec: TrainSpec, rank: int, world_size: int, logger: logging.Logger) -> tuple[Path, dict] | None:
    """Train as this process's part of the job; returns (checkpoint, summary) on the main process, else None."""
    import pyarrow.parquet as pq

    from configs.reward import RewardModelTrainConfig
    from configs.schema import DPOConfig, SFTConfig

    rows = pq.read_table(spec.data).to_pylist()
    if spec.stage == "sft":
        from trainers.sft import train_sft as train_fn

        cfg = SFTConfig.model_validate(spec.stage_config)
    elif spec.stage == "dpo":
        from trainers.dpo import train_dpo as train_fn

        cfg = DPOConfig.model_validate(spec.stage_config)
    elif spec.stage == "rl":
        from configs.rl import RLConfig
        from trainers.grpo import train_rl

        cfg = RLConfig.model_validate(spec.stage_config)
        funcs, weights = reward_factory(spec)
        train_fn = functools.partial(train_rl, reward_funcs=funcs, reward_weights=weights)
    else:
        from trainers.reward import train_reward as train_fn

        cfg = RewardModelTrainConfig.model_validate(spec.stage_config)
    # SFT, DPO and RL save from every process (the reward trainer from the main one only): the other ranks write
    # into scratch dirs of their own, so no two processes ever write (or rmtree) the same checkpoint directory.
    out_dir = Path(spec.out_dir) if rank == 0 else Path(spec.out_dir) / f".rank-{rank:03d}"
    logger.info("%s on %d rows from %s, %d process(es)", spec.stage, len(rows), spec.model_dir, world_size)
    ckpt, summary = train_fn(
        spec.model_dir,
        rows,
        cfg,
        out_dir,
        base_id=spec.base_id,
        seed=spec.seed,
        use_cpu=spec.use_cpu,
        bf16=spec.bf16,
        logger=logger,
        report=spec.report,
    )
    if rank != 0:
        shutil.rmtree(out_dir, ignore_errors=True)
        return None
    from accelerate import PartialState  # the trainer's own (a singleton): how the job actually ran

    state = PartialState()
    summary["launch"] = {
        "world_size": world_size,
        "num_processes": state.num_processes,
        "distributed_type": str(state.distributed_type.value),
        "device": str(state.device),
    }
    return ckpt, summary


def main(spec_path: str) -> int:
    rank, world_size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    logger = make_logger(rank)
    try:
        spec = TrainSpec.model_validate_json(Path(spec_path).read_text())
        out = train(spec, rank, world_size, logger)
        if out is not None:
            ckpt, summary = out
            result = Path(spec.out_dir) / RESULT_FILE
            tmp = result.with_suffix(".tmp")
            tmp.write_text(json.dumps({"checkpoint": str(ckpt), "summary": summary}, indent=2, default=str))
            tmp.replace(result)  # atomic: a reader never sees half a result
        return 0
    except Exception as e:
        logger.error("training failed", exc_info=True)  # full traceback in the run's logs
        first = next((line for line in str(e).splitlines() if line.strip()), "")
        print(f"{ERROR_MARKER}rank {rank}: {type(e).__name__}: {first[:500]}", flush=True)
        return 1
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()  # else torch warns about a leaked process group at exit


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: python -m trainers.run <train_spec.json> (got {sys.argv[1:]})")
    sys.exit(main(sys.argv[1]))
