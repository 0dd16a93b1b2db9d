"""The steps of `make gpu-check` that need the flywheel itself, each run by bench/gpu_check.py in a child process.

A child per step, so a hung engine or a CUDA error in one step cannot take the others down, and each step
starts on a GPU the previous one has fully let go of. Every step writes its figures as one JSON object to
`--result` (or `{"error": ...}` and exit 1).

    python bench/gpu_steps.py prepare  --work DIR --result FILE   # instruct data + SmolLM2 conversion (CPU)
    python bench/gpu_steps.py round    --work DIR --result FILE   # one instruct round, vLLM CUDA, bf16
    python bench/gpu_steps.py sft      --work DIR --result FILE   # a DeepSpeed ZeRO-2 SFT launch on every GPU
    python bench/gpu_steps.py generate --work DIR --result FILE   # stage path vs raw vllm.LLM.generate

DIR is shared by the steps: `prepare` fills DIR/home (the round's FLYWHEEL_HOME), the others read it.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml  # noqa: E402

from configs import INSTRUCT_CONFIG, parse_config  # noqa: E402
from configs.schema import FlywheelConfig, TrainingConfig  # noqa: E402

PIPELINE = "gpu-check"
# The instruct demo (configs/instruct.yaml) with what a GPU changes. The demo's sizes are kept: they take
# seconds on a GPU, and the figures stay comparable with the README's CPU ones.
GPU_OVERRIDE = {
    "pipeline": PIPELINE,
    "generation": {
        "engine": {
            "dtype": "bfloat16",
            # The trainer shares the GPU with the (sleeping) engine; half leaves it plenty for 135 M parameters.
            "gpu_memory_utilization": 0.5,
            # Graph capture (and torch.compile) would add tens of seconds to every engine start of an 8-minute check.
            "enforce_eager": True,
        }
    },
    "training": {"use_cpu": False, "bf16": True},
}
ZERO2_CONFIG = "configs/deepspeed/zero2.json"
SFT_ROWS = 1024
SFT_STEP_LINE = re.compile(r"\bsft step (\d+)/(\d+)\b")  # trainers.common.LossLogger's progress line


def merge(base: dict, override: dict) -> dict:
    """`base` with `override` laid over it, mappings merged key by key (neither is modified).

    >>> merge({"a": {"b": 1, "c": 2}, "d": 3}, {"a": {"c": 9}})
    {'a': {'b': 1, 'c': 9}, 'd': 3}
    """
    out = dict(base)
    for k, v in override.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def round_config_data() -> dict:
    """configs/instruct.yaml with GPU_OVERRIDE applied, `{home}` placeholders left in."""
    return merge(yaml.safe_load(INSTRUCT_CONFIG.read_text()), GPU_OVERRIDE)


def gpu_round_config(home: Path) -> FlywheelConfig:
    """The round's config, validated by the real schema, with its home at `home`."""
    return parse_config(round_config_data(), f"{INSTRUCT_CONFIG.name} + gpu-check override", home=str(home))


def write_round_config(home: Path, path: Path) -> Path:
    """Validate the round's config, then write it as YAML at `path` for `flywheel run --config`."""
    gpu_round_config(home)  # a bad override fails here, in one line, not inside the round
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(round_config_data(), sort_keys=False))
    return path


def zero2_training(n_gpus: int) -> TrainingConfig:
    """The SFT launch's training section: accelerate + DeepSpeed ZeRO-2, one process per GPU, bf16."""
    return TrainingConfig.model_validate(
        {
            "use_cpu": False,
            "bf16": True,
            "seed": 0,
            "launcher": {
                "kind": "accelerate",
                "num_processes": n_gpus,
                "deepspeed_config": ZERO2_CONFIG,
                "cpu": False,
            },
            "sft": {"learning_rate": 5.0e-5, "epochs": 1, "batch_size": 16, "max_length": 256},
        }
    )


def sft_rows(n: int) -> list[dict]:
    """`n` SFT rows from the instruct pool. The answer echoes the prompt: only the throughput is measured."""
    from demo.instruct_task import make_prompts

    pool, _ = make_prompts(0)
    rows = []
    for i in range(n):
        text = pool[i % len(pool)]["prompt"]
        rows.append({"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": text}]})
    return rows


def step_rate(marks: list[tuple[float, int, int]], samples: float) -> float | None:
    """Samples/s between the first and last (time, step, of steps) progress marks; None with fewer than two.

    `samples` is what the whole run trains on (rows x epochs), spread evenly over its steps: the per-step
    count is left to the trainer (devices, accumulation, a short last batch). Timing between marks leaves
    out process start, model load and checkpoint save.

    >>> step_rate([(10.0, 5, 50), (12.0, 10, 50), (14.0, 15, 50)], 800)
    40.0
    >>> step_rate([(10.0, 5, 50)], 800) is None
    True
    """
    if len(marks) < 2 or marks[-1][0] <= marks[0][0]:
        return None
    (t0, s0, total), (t1, s1, _) = marks[0], marks[-1]
    return (s1 - s0) / total * samples / (t1 - t0)


def engine_figures(engines: list[tuple[object, float]]) -> dict:
    """Start, sleep and wake seconds over the engines a round created, read defensively.

    Args:
        engines: (the engine's `timings` attribute or None, seconds its constructor took) per engine.
    Returns:
        engine_starts; engine_start_s (the engine's own start_s, else the constructor's time); sleep_s, wake_s
        and reload_s (None when no engine reports them). A value may be a number or a list of numbers (summed).

    >>> engine_figures([({"start_s": 20.0, "sleep_s": [0.5, 0.25]}, 21.0), (None, 3.0)])
    {'engine_starts': 2, 'engine_start_s': 23.0, 'sleep_s': 0.75, 'wake_s': None, 'reload_s': None}
    """

    def seconds(v: object) -> float | None:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
        if isinstance(v, (list, tuple)) and v and all(isinstance(x, (int, float)) for x in v):
            return float(sum(v))
        return None

    def total(key: str, fallback: list[float | None]) -> float | None:
        values = [seconds(t.get(key)) if isinstance(t, dict) else None for t, _ in engines]
        values = [v if v is not None else f for v, f in zip(values, fallback)]
        return sum(v for v in values if v is not None) if any(v is not None for v in values) else None

    return {
        "engine_starts": len(engines),
        "engine_start_s": total("start_s", [init_s for _, init_s in engines]),
        "sleep_s": total("sleep_s", [None] * len(engines)),
        "wake_s": total("wake_s", [None] * len(engines)),
        "reload_s": total("reload_s", [None] * len(engines)),
    }


def watch_engines() -> list[dict]:
    """Record every VLLMEngine created from now on in this process, with its constructor's seconds.

    The round closes its engines before it returns; the objects recorded here keep their `timings`.
    """
    from tasks.generation.vllm import VLLMEngine

    seen: list[dict] = []
    init = VLLMEngine.__init__

    def timed_init(self, *args, **kwargs):
        t = time.perf_counter()
        init(self, *args, **kwargs)
        seen.append({"engine": self, "init_s": time.perf_counter() - t})

    VLLMEngine.__init__ = timed_init
    return seen


def prepare(work: Path) -> dict:
    from demo.instruct_task import write_instruct_data
    from demo.smollm2 import convert_base_model

    cfg = gpu_round_config(work / "home")
    t = time.perf_counter()
    write_instruct_data(work / "home" / "instruct" / "data")
    convert_base_model(Path(cfg.base_model))
    return {"prepare_s": time.perf_counter() - t}


def run_round(work: Path) -> dict:
    import os

    import torch

    home = work / "home"
    os.environ["FLYWHEEL_HOME"] = str(home)  # as `flywheel demo` does: children find the same home
    cfg_path = write_round_config(home, work / "gpu-check-round.yaml")
    engines = watch_engines()
    from flows.cli import main as flywheel
    from storage.catalog import Catalog

    # No CUDA call before the round: vLLM would have to fall back to spawning its engine process.
    t = time.perf_counter()
    rc = flywheel(["--home", str(home), "run", "--config", str(cfg_path), "--rounds", "1"])
    wall = time.perf_counter() - t
    if rc != 0:
        raise RuntimeError(f"flywheel run exited with {rc}")
    rounds = Catalog(home / "catalog.duckdb").rounds(PIPELINE)
    last = rounds[-1] if rounds else {}
    metrics = last.get("metrics") or {}
    return {
        **engine_figures([(getattr(e["engine"], "timings", None), e["init_s"]) for e in engines]),
        "round_wall_s": wall,
        "round_status": last.get("status"),
        "round_tok_s": metrics.get("generate/tokens_per_s"),
        # The trainer runs in this process; vLLM's engine core is a child, so only nvidia-smi sees all of it.
        "peak_torch_mib": torch.cuda.max_memory_allocated() / 2**20,
        "round_steps_s": {k: s.get("duration_s") for k, s in (last.get("steps") or {}).items()},
    }


class _StepMarks(logging.Handler):
    """Keeps (arrival time, step) of the job's progress lines, which stream_command forwards as they come."""

    def __init__(self):
        super().__init__()
        self.marks: list[tuple[float, int, int]] = []

    def emit(self, record):
        m = SFT_STEP_LINE.search(record.getMessage())
        if m:
            self.marks.append((time.perf_counter(), int(m.group(1)), int(m.group(2))))


def run_sft(work: Path) -> dict:
    import pyarrow as pa
    import torch

    from trainers.launch import launch_training

    n_gpus = torch.cuda.device_count()
    training = zero2_training(n_gpus)
    rows = sft_rows(SFT_ROWS)
    logger = logging.getLogger("gpu-check.sft")
    marks = _StepMarks()
    logger.addHandler(marks)
    logger.addHandler(logging.StreamHandler(sys.stdout))  # the job's output, into this step's log
    logger.setLevel(logging.INFO)
    t = time.perf_counter()
    _, summary = launch_training(
        training.launcher,
        stage="sft",
        model_dir=str(gpu_round_config(work / "home").base_model),
        base_id="gpu-check-base",
        data=pa.Table.from_pylist(rows),
        stage_config=training.sft,
        out_dir=work / "sft",
        seed=training.seed,
        use_cpu=training.use_cpu,
        bf16=training.bf16,
        logger=logger,
    )
    wall = time.perf_counter() - t
    samples = len(rows) * training.sft.epochs
    return {
        "sft_gpus": n_gpus,
        "sft_rows": len(rows),
        "sft_steps": summary.get("steps"),
        "sft_final_loss": summary.get("final_loss"),
        "sft_launch": summary.get("launch"),
        "sft_wall_s": wall,
        "train_samples_s": step_rate(marks.marks, samples),
        "train_samples_s_end_to_end": samples / wall,
    }


def run_generate(work: Path, repeats: int = 2) -> dict:
    """bench/generate.py's comparison, on the round's engine settings (bf16) and the prompts a round draws from.

    The stage path and raw `vllm.LLM.generate` alternate on one engine, so warm-up and noise fall on both.
    """
    import vllm

    from demo.instruct_task import make_prompts
    from tasks.generate import generate_completions
    from tasks.generation import close_engines, get_engine, render_prompts

    cfg = gpu_round_config(work / "home")
    pool, _ = make_prompts(0)
    prompts = [
        {"prompt_id": f"p{i}", "prompt": r["prompt"], "source": "bench", "license": "apache-2.0"}
        for i, r in enumerate(pool[: cfg.curation.prompts_per_round])
    ]
    params = cfg.generation.sampling
    t = time.perf_counter()
    engine = get_engine(cfg.generation.engine, cfg.base_model)
    start_s = time.perf_counter() - t
    texts = render_prompts(engine.tokenizer, [x["prompt"] for x in prompts])
    raw_params = vllm.SamplingParams(
        n=params.n, temperature=params.temperature, top_p=params.top_p, max_tokens=params.max_tokens
    )
    totals = {"stage": [0.0, 0], "raw": [0.0, 0]}
    for r in range(repeats):
        t = time.perf_counter()
        rows = generate_completions(engine, prompts, params, "bench-model", r + 1)
        totals["stage"][0] += time.perf_counter() - t
        totals["stage"][1] += sum(x["num_tokens"] for x in rows)
        t = time.perf_counter()
        outs = engine.llm.generate(texts, raw_params, use_tqdm=False)
        totals["raw"][0] += time.perf_counter() - t
        totals["raw"][1] += sum(len(o.token_ids) for out in outs for o in out.outputs)
    close_engines()
    stage, raw = (tokens / seconds for seconds, tokens in totals.values())
    return {
        "bench_engine_start_s": start_s,
        "bench_prompts": len(prompts),
        "stage_tok_s": stage,
        "raw_tok_s": raw,
        "stage_raw_ratio": stage / raw,
    }


STEPS = {"prepare": prepare, "round": run_round, "sft": run_sft, "generate": run_generate}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("step", choices=sorted(STEPS))
    p.add_argument("--work", type=Path, required=True, help="Working directory shared by the steps.")
    p.add_argument("--result", type=Path, required=True, help="Where this step writes its figures (JSON).")
    args = p.parse_args()
    try:
        figures = STEPS[args.step](args.work)
    except BaseException as e:
        first = next((line for line in str(e).splitlines() if line.strip()), "")
        args.result.write_text(json.dumps({"error": f"{type(e).__name__}: {first[:300]}"}))
        raise
    args.result.write_text(json.dumps(figures, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
