"""Scratch directories of a killed process are removed by the next one; a live process's are kept."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from storage.scratch import process_scratch, sweep

ROOT = Path(__file__).resolve().parents[1]


def _holder(root: Path) -> tuple[subprocess.Popen, Path]:
    code = (
        "import time\nfrom pathlib import Path\nfrom storage.scratch import process_scratch\n"
        f"d = process_scratch(Path({str(root)!r}))\n(d / 'weights.bin').write_bytes(b'x' * 1_000_000)\n"
        "print(d, flush=True)\ntime.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    return proc, Path(proc.stdout.readline().strip())


def test_a_killed_processs_scratch_is_swept_and_a_live_ones_is_kept(tmp_path):
    root = tmp_path / "tmp"
    dead, dead_dir = _holder(root)
    live, live_dir = _holder(root)
    try:
        dead.kill()
        dead.wait()
        assert (dead_dir / "weights.bin").is_file()
        assert sweep(root) == 1_000_000
        assert not dead_dir.exists() and not dead_dir.with_suffix(".lock").exists()
        assert (live_dir / "weights.bin").is_file()
        mine = process_scratch(root)
        assert mine.parent == root.resolve() and mine.is_dir()
        assert sorted(p.name for p in root.iterdir()) == sorted(
            [live_dir.name, f"{live_dir.name}.lock", mine.name, f"{mine.name}.lock"]
        )
        assert sweep(root) == 0, "its own directory is never swept"
    finally:
        live.kill()
        live.wait()
