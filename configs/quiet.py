"""Offline, quiet defaults for the command line and benchmarks; anything set in the environment wins."""

from __future__ import annotations

import os

DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "VLLM_LOGGING_LEVEL": "ERROR",
    "VLLM_CONFIGURE_LOGGING": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",  # per-map bars drown the stage logs
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # per-checkpoint load/save bars, dozens per round
}


def apply_defaults() -> None:
    """Must run before transformers, datasets or vLLM are imported: they read these once."""
    import logging

    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per judge request otherwise
