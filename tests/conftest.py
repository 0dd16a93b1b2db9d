"""Shared fixtures: a tiny model and the demo data built in-process, a real local S3 server,
Prefect's test harness, and a config factory pointing a pipeline at them."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs.quiet import apply_defaults  # noqa: E402

apply_defaults()

# One engine config for every test, so the whole session shares one vLLM engine (start ~20-30 s).
BUCKET = "flywheel-tests"
ENGINE = {"backend": "vllm", "dtype": "float32", "max_model_len": 128, "cpu_kvcache_gb": 1}
# For tests of a subprocess (`flywheel run`, `serve`) whose subject is not generation: transformers' engine
# costs no vLLM engine start (20-30 s per process on 2 cores). Pass it whole: `generation=HF_GENERATION`.
HF_GENERATION = {"engine": {**ENGINE, "backend": "hf"}, "sampling": {"n": 4, "max_tokens": 8}}


# Test files that mostly wait (the fault battery's 3-minute catalog hold). `make test` runs `pytest -n 2`, and the
# scheduler below sends these files to one worker and everything else, in its usual order, to the other, so the
# suite runs in one process as it does without xdist and the waiting overlaps it instead of adding to its time.
WAITS = ("tests/faults/test_outage_and_reader.py",)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    # Not `--dist loadgroup`: pytest-xdist 3.8 marks a group in `item._nodeid`, which pytest 9 no longer reads.
    from xdist.scheduler import LoadScopeScheduling

    class Beside(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "waits" if nodeid.startswith(WAITS) else "suite"

    return Beside(config, log)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """On the worker of the WAITS files: one thread, lowest priority, for this process and what it starts.
    Two processes of two OpenMP threads each on the 2 cores (torch training beside torch training) slowed both
    several-fold; this way the worker computes in the suite's idle moments and the suite keeps its cores."""
    if item.nodeid.startswith(WAITS) and os.environ.get("PYTEST_XDIST_WORKER") and not _yielding:
        import torch

        os.nice(19)
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)
        _yielding.append(True)


_yielding: list[bool] = []


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from demo.base_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def small_model(tmp_path_factory) -> Path:
    """A model that answers some prompts right when sampling (pass@4 ~ 35 %), so rounds have training data."""
    from demo.base_model import build_base_model

    return build_base_model(
        tmp_path_factory.mktemp("models") / "small", steps=400, batch_size=128, layers=2, progress=False
    )


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> dict[str, Path]:
    from demo.task import write_demo_data

    return write_demo_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    from storage.s3server import LocalS3Server
    from storage.store import open_store

    server = LocalS3Server(tmp_path_factory.mktemp("s3")).start()
    saved = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())
    open_store(f"s3://{BUCKET}", endpoint_url=server.endpoint_url, create_bucket=True).check()
    yield server
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A module's own rclone server, with boto3's credential chain pointed at its keys only."""
    from storage.s3server import LocalS3Server

    with pytest.MonkeyPatch.context() as mp:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            mp.delenv(name, raising=False)
        # No ~/.aws files and no instance metadata lookups: the tests see only the variables set here.
        mp.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        with LocalS3Server(tmp_path_factory.mktemp("s3")) as srv:
            for name, value in srv.env().items():
                mp.setenv(name, value)
            yield srv


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session", autouse=True)
def _close_engines_at_end():
    yield
    from storage.runtime import close_runtimes
    from tasks.generation import close_engines

    close_engines()
    close_runtimes()


@pytest.fixture
def make_config(small_model, demo_data, s3_server, tmp_path):
    """Build a FlywheelConfig for a small pipeline on the demo data; keyword overrides are merged in."""
    from configs import parse_config

    def make(pipeline: str = "t", home: Path | None = None, prefix: str | None = None, **overrides):
        data = {
            "pipeline": pipeline,
            "base_model": str(small_model),
            "home": str(home or tmp_path / "home"),
            # A prefix per test: tests share the server but never each other's artifacts.
            "storage": {"uri": f"s3://{BUCKET}/{prefix or tmp_path.name}", "endpoint_url": s3_server.endpoint_url},
            "curation": {
                "sources": [
                    {
                        "name": "pool",
                        "path": str(demo_data["pool"]),
                        "keep_fields": ["template"],
                        "weight": 9.0,
                        "tags": ["math", "synthetic"],
                    },
                    {
                        "name": "extra",
                        "path": str(demo_data["extra"]),
                        "prompt_field": "question",
                        "answer_field": "solution",
                        "keep_fields": ["origin"],
                        "weight": 1.0,
                        "license": "cc-by-4.0",
                    },
                ],
                "prompts_per_round": 48,
            },
            "generation": {"engine": ENGINE, "sampling": {"n": 4, "max_tokens": 8}},
            "training": {
                "sft": {"epochs": 1, "batch_size": 8, "max_length": 64},
                "dpo": {"batch_size": 8, "max_length": 64, "loss_types": ["sigmoid", "sft"]},
            },
            "evaluation": {"eval_sets": [{"name": "heldout", "path": str(demo_data["heldout"])}], "max_tokens": 8},
        }
        return parse_config(with_overrides(data, overrides))

    return make


def with_overrides(data: dict, overrides: dict) -> dict:
    """`data` with each `a__b__c=value` override set at data["a"]["b"]["c"] (missing sections created)."""
    for key, value in overrides.items():
        section = data
        *parents, leaf = key.split("__")
        for p in parents:
            section = section.setdefault(p, {})
        section[leaf] = value
    return data


def perturbed_copy(model_dir: Path, out: Path, seed: int) -> Path:
    """A copy of `model_dir` with every weight moved by noise: same architecture, other outputs."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    shutil.copytree(model_dir, out)
    model = AutoModelForCausalLM.from_pretrained(out)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    model.save_pretrained(out)
    return out
