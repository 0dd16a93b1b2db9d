"""Checks that run before a round does any heavy work: each failure is one line saying what to fix.

Nothing is written to the catalog or the store before these pass, so a bad config never leaves a
half-registered round behind.
"""

from __future__ import annotations

from pathlib import Path

from configs.schema import FlywheelConfig
from tasks.stage import INPUT_ERROR_NAMES, PreflightError, check_file, check_model_dir

PREFLIGHT_ROWS = 1000  # enough that a few malformed first lines do not look like a broken file


def preflight(cfg: FlywheelConfig, *, need_base_model: bool) -> None:
    """Cheap checks of every input a round reads (sources, eval sets, base model).

    Sources are opened and their first rows read, so a wrong field name fails here, not mid-round
    (a few malformed rows among them are quarantined later, not an error here).
    """
    from tasks.curation.sources import read_eval_set, read_source

    for i, s in enumerate(cfg.curation.sources):
        if s.path is not None:
            suffixes = (".jsonl", ".parquet", ".csv") if s.format == "auto" else ()
            check_file(s.path, f"curation.sources[{i}] ({s.name})", suffixes, allow_dir=True)
        read_source(s.model_copy(update={"limit": min(s.limit or PREFLIGHT_ROWS, PREFLIGHT_ROWS)}))
    for i, e in enumerate(cfg.evaluation.eval_sets):
        check_file(e.path, f"evaluation.eval_sets[{i}] ({e.name})", (".jsonl", ".parquet"))
        read_eval_set(e)
    if need_base_model:
        check_model_dir(cfg.base_model, "base_model")
    for i, m in enumerate(cfg.generation.committee):
        check_model_dir(m.model, f"generation.committee[{i}] ({m.name})")
    for i, s in enumerate(cfg.scoring.scorers):
        check_scorer(s, f"scoring.scorers[{i}] ({s.id})")


def check_scorer(s, what: str) -> None:
    """A judge endpoint answers and a scorer's model directory exists, before hours of generation."""
    if s.kind == "judge" and s.judge.backend == "openai":
        from tasks.generation.openai import ChatClient, EndpointError

        try:
            ChatClient(s.judge.base_url, s.judge.model, s.judge.api_key_env, min(s.judge.timeout_s, 20.0), 1).check()
        except EndpointError as e:
            raise PreflightError(f"{what}: {e}") from None
    elif s.kind == "judge":
        check_model_dir(s.judge.model, f"{what} judge.model")
    elif s.kind == "reward_model" and s.model.startswith(("/", "./", "../", "~")):  # a local path, not a hub id
        check_model_dir(str(Path(s.model).expanduser()), f"{what} model")


class QuietInputErrors:
    """Logging filter: input errors are reported as their one-line message, without a traceback.

    Prefect logs every failed task or flow with its traceback; for a missing file or a wrong field name
    that buries the one line that says what to fix.
    """

    def filter(self, record) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and type(exc).__name__ in INPUT_ERROR_NAMES:
            record.exc_info, record.exc_text = None, None
        return True


def quiet_input_errors() -> None:
    import logging

    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logging.getLogger(name).addFilter(QuietInputErrors())
