"""`make gpu-check`: prove the GPU path on this machine in one command, and print the figures.

Steps, each a child process with its own timeout (bench/gpu_steps.py holds the flywheel side):
  1. prepare    the instruct demo's data and SmolLM2-135M-Instruct, converted (CPU)
  2. gpu-tests  `pytest -m gpu`
  3. round      one instruct round on the GPU (vLLM CUDA, bf16): `flywheel run` with a GPU override
                of configs/instruct.yaml, its home in a temporary directory
  4. sft-zero2  a DeepSpeed ZeRO-2 SFT launch (accelerate) with one process per GPU
  5. generate   the stage path against raw `vllm.LLM.generate` on the same engine and prompts
A failing step is reported and the later steps still run (those needing `prepare` are skipped without
it); the exit code is 1 if any step did not pass. The table goes to stdout and, as gpu-check.json and
gpu-check.md, to the output folder (--out, else $OUT, else ./gpu-check), with one log per step in logs/.
Without a CUDA GPU it stops at once with exit code 2.

Run:  make gpu-check    (installs the gpu extra into .venv-gpu first)
      .venv-gpu/bin/python bench/gpu_check.py [--out DIR] [--budget-s 460] [--keep-work]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from trainers.launch import stop_group  # stdlib and pydantic only: no torch before the CUDA check

NO_CUDA = "no CUDA GPU: make gpu-check needs one; the CPU suite is make test"
REPO = Path(__file__).resolve().parents[1]
STEPS_SCRIPT = REPO / "bench" / "gpu_steps.py"
# 8 minutes on one H100-class GPU, less what the driver itself takes (torch import, the table).
BUDGET_S = 460.0


@dataclass(frozen=True)
class Step:
    name: str
    timeout_s: float
    what: str
    needs: tuple[str, ...] = ()


# The timeouts add up to less than BUDGET_S, so a run where every step hangs still ends in time.
STEPS = (
    Step("prepare", 75, "instruct data + SmolLM2 conversion (CPU)"),
    Step("gpu-tests", 110, "pytest -m gpu"),
    Step("round", 160, "one instruct round, vLLM CUDA bf16", ("prepare",)),
    Step("sft-zero2", 60, "DeepSpeed ZeRO-2 SFT launch, one process per GPU", ("prepare",)),
    Step("generate", 55, "stage path vs raw vllm.LLM.generate", ("prepare",)),
)

# (label, figure key, step that produces it or None, format). Order: the README table's.
FIGURES = (
    ("engine starts in the round", "engine_starts", "round", "{:d}"),
    ("engine start s", "engine_start_s", "round", "{:.1f}"),
    ("engine sleep s", "sleep_s", "round", "{:.2f}"),
    ("engine wake s", "wake_s", "round", "{:.2f}"),
    ("weight reload s", "reload_s", "round", "{:.2f}"),
    ("generate tokens/s (round)", "round_tok_s", "round", "{:.0f}"),
    ("generate tokens/s (stage path)", "stage_tok_s", "generate", "{:.0f}"),
    ("raw vllm.LLM.generate tokens/s", "raw_tok_s", "generate", "{:.0f}"),
    ("stage / raw", "stage_raw_ratio", "generate", "{:.3f}"),
    ("SFT ZeRO-2 samples/s (training)", "train_samples_s", "sft-zero2", "{:.1f}"),
    ("SFT ZeRO-2 samples/s (whole launch)", "train_samples_s_end_to_end", "sft-zero2", "{:.1f}"),
    ("peak GPU memory GiB (nvidia-smi)", "peak_gpu_gib", None, "{:.1f}"),
    ("peak torch allocated GiB (round process)", "peak_torch_gib", "round", "{:.2f}"),
    ("round wall s", "round_wall_s", "round", "{:.1f}"),
)


def cuda_gpus() -> int:
    """CUDA devices torch sees (0 without torch, CUDA or a visible device)."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def nvidia_smi(field: str) -> list[str] | None:
    """One value per GPU of `nvidia-smi --query-gpu=field`, or None where nvidia-smi is missing or fails."""
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else None


class MemoryPeak:
    """Highest memory used on any one GPU (MiB, nvidia-smi) while the `with` block runs: the whole device, so
    vLLM's engine process and every training process count, which torch's own counters do not see."""

    def __init__(self, every_s: float = 0.5):
        self.every_s, self.peak_mib = every_s, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            used = nvidia_smi("memory.used")
            if used:
                now = max(float(x) for x in used)
                self.peak_mib = now if self.peak_mib is None else max(self.peak_mib, now)
            self._stop.wait(self.every_s)

    def __enter__(self) -> MemoryPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=15)


def _last_line(path: Path) -> str:
    lines = [x.strip() for x in path.read_text(errors="replace").splitlines() if x.strip()] if path.exists() else []
    return lines[-1][:200] if lines else ""


def run_step(step: Step, argv: list[str], log: Path, result: Path | None, timeout_s: float) -> dict:
    """Run one step's command; returns its record (status, seconds, rc, note, peak_mib) and its figures."""
    t = time.perf_counter()
    with open(log, "w") as out, MemoryPeak() as mem:
        proc = subprocess.Popen(
            argv,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,  # one process group per step, so a timeout stops all of it
        )
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            stop_group(proc, term_wait_s=10)
            rc = None
        except BaseException:
            stop_group(proc, term_wait_s=10)
            raise
    rec = {"status": "ok" if rc == 0 else "failed", "seconds": time.perf_counter() - t, "rc": rc}
    rec["peak_mib"] = mem.peak_mib
    try:
        figures = json.loads(result.read_text()) if result is not None and result.exists() else {}
    except ValueError:  # a child killed while writing it
        figures = {"error": f"unreadable result file {result}"}
    error = figures.pop("error", None)
    if rc is None:
        rec.update(status="timeout", note=f"stopped after its {timeout_s:.0f} s timeout")
    elif rc == 5 and step.name == "gpu-tests":
        rec["note"] = "no gpu-marked tests were collected (pytest exit code 5)"
    else:
        rec["note"] = error or _last_line(log)
    return {"record": rec, "figures": figures}


def step_command(step: Step, work: Path, result: Path) -> list[str]:
    if step.name == "gpu-tests":
        return [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider"]
    name = "sft" if step.name == "sft-zero2" else step.name
    return [sys.executable, str(STEPS_SCRIPT), name, "--work", str(work), "--result", str(result)]


def cell(figures: dict, key: str, step: str | None, fmt: str) -> str:
    """One table value: formatted, or `n/a`, saying which step failed when that is why it is missing.

    >>> cell({"steps": {"round": {"status": "failed"}}}, "wake_s", "round", "{:.2f}")
    'n/a (round failed)'
    >>> cell({"wake_s": 0.4, "steps": {}}, "wake_s", "round", "{:.2f}")
    '0.40'
    """
    value = figures.get(key)
    if value is None:
        status = figures.get("steps", {}).get(step, {}).get("status") if step else None
        return "n/a" if status in (None, "ok") else f"n/a ({step} {status})"
    return fmt.format(value)


def table_rows(figures: dict) -> list[tuple[str, str]]:
    return [(label, cell(figures, key, step, fmt)) for label, key, step, fmt in FIGURES]


def render_markdown(figures: dict) -> str:
    """The figures and the steps as two Markdown tables, under a line naming the machine."""
    lines = [
        f"gpu-check on {figures.get('gpu', 'an unknown GPU')}, {figures.get('when', '')}, "
        f"{figures.get('total_s', 0):.0f} s in all",
        "",
        "| figure | value |",
        "|---|---|",
        *(f"| {label} | {value} |" for label, value in table_rows(figures)),
        "",
        "| step | status | seconds | peak GPU MiB | note |",
        "|---|---|---|---|---|",
    ]
    for name, s in figures.get("steps", {}).items():
        peak = "n/a" if s.get("peak_mib") is None else f"{s['peak_mib']:.0f}"
        note = str(s.get("note") or "").replace("|", "/")
        lines.append(f"| {name} | {s['status']} | {s.get('seconds', 0):.1f} | {peak} | {note} |")
    return "\n".join(lines) + "\n"


def run_checks(out: Path, work: Path, budget_s: float) -> dict:
    """Every step in order, within `budget_s`; returns the figures (steps included)."""
    t0 = time.perf_counter()
    names = nvidia_smi("name") or []
    figures: dict = {
        "gpu": f"{len(names)} x {names[0]}" if names else f"{cuda_gpus()} CUDA GPU(s)",
        "when": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "steps": {},
    }
    (out / "logs").mkdir(parents=True, exist_ok=True)
    for i, step in enumerate(STEPS, 1):
        left = budget_s - (time.perf_counter() - t0)
        missing = [n for n in step.needs if figures["steps"].get(n, {}).get("status") != "ok"]
        print(f"[{i}/{len(STEPS)}] {step.name}: {step.what}", flush=True)
        if missing or left < 10:
            why = f"needs {', '.join(missing)}" if missing else f"out of the {budget_s:.0f} s budget"
            figures["steps"][step.name] = {"status": "skipped", "seconds": 0.0, "note": why}
            print(f"    skipped: {why}", flush=True)
            continue
        result = work / f"{step.name}.result.json"
        log = out / "logs" / f"{step.name}.log"
        done = run_step(step, step_command(step, work, result), log, result, min(step.timeout_s, left))
        rec = done["record"]
        figures["steps"][step.name] = rec
        figures.update(done["figures"])
        print(f"    {rec['status']} in {rec['seconds']:.1f} s" + (f": {rec['note']}" if rec["status"] != "ok" else ""))
        if rec["status"] != "ok":
            print(f"    log: {log}", flush=True)
    peaks = [s["peak_mib"] for s in figures["steps"].values() if s.get("peak_mib") is not None]
    figures["peak_gpu_gib"] = max(peaks) / 1024 if peaks else None
    torch_mib = figures.get("peak_torch_mib")
    figures["peak_torch_gib"] = torch_mib / 1024 if torch_mib else None
    figures["total_s"] = time.perf_counter() - t0
    return figures


def write_outputs(figures: dict, out: Path) -> tuple[Path, Path]:
    md, js = out / "gpu-check.md", out / "gpu-check.json"
    md.write_text(render_markdown(figures))
    js.write_text(json.dumps({**figures, "table": table_rows(figures)}, indent=2, default=str) + "\n")
    return md, js


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None, help="Output folder (default: $OUT, else ./gpu-check).")
    p.add_argument("--budget-s", type=float, default=BUDGET_S, help="Wall-clock budget of all steps together.")
    p.add_argument("--keep-work", action="store_true", help="Keep the temporary home (models, store, catalog).")
    args = p.parse_args(argv)
    if cuda_gpus() == 0:
        print(NO_CUDA, file=sys.stderr)
        return 2
    out = (args.out or Path(os.environ.get("OUT") or "gpu-check")).resolve()
    work = Path(tempfile.mkdtemp(prefix="flywheel-gpu-check-"))
    try:
        figures = run_checks(out, work, args.budget_s)
    finally:
        if args.keep_work:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    md, js = write_outputs(figures, out)
    print("\n" + render_markdown(figures))
    print(f"written: {md} and {js}")
    failed = [n for n, s in figures["steps"].items() if s["status"] != "ok"]
    if failed:
        print(f"gpu-check: {len(failed)} step(s) did not pass: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
