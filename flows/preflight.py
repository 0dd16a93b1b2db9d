"""Checks that run before a round does any heavy work: each failure is one line saying what to fix.

Nothing is written to the catalog or the store before these pass, so a bad config never leaves a
half-registered round behind.
"""

from __future__ import annotations

import json
from pathlib import Path

from configs.schema import FlywheelConfig
from configs.scoring import JudgeEndpointConfig
from tasks.stage import PreflightError, check_file, check_model_dir, is_input_error

PREFLIGHT_ROWS = 1000  # enough that a few malformed first lines do not look like a broken file


def preflight(cfg: FlywheelConfig, *, need_base_model: bool) -> None:
    """Cheap checks of every input a round reads or calls (sources, eval sets and their judges and reward
    models, the base model, committee models, scorers).

    Sources are opened and their first rows read, so a wrong field name fails here, not mid-round
    (a few malformed rows among them are quarantined later, not an error here).
    """
    from tasks.curation.sources import read_eval_set, read_source
    from tasks.curation.store_inputs import fetched, is_s3

    for i, s in enumerate(cfg.curation.sources):
        if s.path is not None and not is_s3(s.path):  # an s3:// object is checked by fetching it
            suffixes = (".jsonl", ".parquet", ".csv") if s.format == "auto" else ()
            check_file(s.path, f"curation.sources[{i}] ({s.name})", suffixes, allow_dir=True)
        local = fetched(cfg, s.path, f"curation.sources[{i}].path ({s.name})")
        read_source(s.model_copy(update={"limit": min(s.limit or PREFLIGHT_ROWS, PREFLIGHT_ROWS)}), local=local)
    for i, e in enumerate(cfg.evaluation.eval_sets):
        what = f"evaluation.eval_sets[{i}] ({e.name})"
        if not is_s3(e.path):
            check_file(e.path, what, (".jsonl", ".parquet"))
        read_eval_set(e, fetched(cfg, e.path, f"evaluation.eval_sets[{i}].path ({e.name})"))
        # The judge and reward model run only after generation and training: a typo there costs hours.
        if e.metric == "win_rate":
            check_judge(e.judge, f"{what} judge", f"{what} judge.model")
        elif e.metric == "reward":
            check_reward_model(e.reward_model, f"{what} reward_model")
    if need_base_model:
        check_model_dir(cfg.base_model, "base_model", chat=True)
        check_context(cfg.base_model, "base_model", cfg.generation.engine.max_model_len)
    rm = cfg.training.reward_model
    if rm.enabled and rm.base != "policy":  # trained after select: a typo would cost a round's generation
        check_model_dir(rm.base, "training.reward_model.base")
    for i, m in enumerate(cfg.generation.committee):
        check_model_dir(m.model, f"generation.committee[{i}] ({m.name})", chat=True)
        check_context(m.model, f"generation.committee[{i}] ({m.name})", cfg.generation.engine.max_model_len)
    for i, s in enumerate(cfg.scoring.scorers):
        check_scorer(s, f"scoring.scorers[{i}] ({s.id})")


def check_context(model: str, what: str, max_model_len: int) -> None:
    """generation.engine.max_model_len fits the model's positions; past them vLLM refuses mid-round."""
    try:
        config = json.loads((Path(model).expanduser() / "config.json").read_text())
        positions = config.get("max_position_embeddings")
    except (OSError, ValueError, AttributeError):
        return  # check_model_dir has judged the directory; a config without the key is not ours to judge
    # RoPE scaling stretches the context past max_position_embeddings: vLLM's own derivation then decides.
    if isinstance(positions, int) and not config.get("rope_scaling") and max_model_len > positions:
        raise PreflightError(
            f"generation.engine.max_model_len ({max_model_len}) is longer than {what}'s context "
            f"(max_position_embeddings {positions} in {model}/config.json): lower max_model_len to {positions} "
            "or less"
        )


def check_scorer(s, what: str) -> None:
    """A judge endpoint answers and a scorer's model directory exists, before hours of generation."""
    if s.kind == "judge":
        check_judge(s.judge, what, f"{what} judge.model")
    elif s.kind == "reward_model":
        check_reward_model(s.model, f"{what} model")


def check_judge(judge: JudgeEndpointConfig, what: str, model_what: str) -> None:
    """An OpenAI-compatible judge answers a 1-token request; a local one is a model with a chat template
    (its prompts are rendered with it)."""
    if judge.backend == "openai":
        from tasks.generation.openai import ChatClient, EndpointError

        try:
            ChatClient(judge.base_url, judge.model, judge.api_key_env, min(judge.timeout_s, 20.0), 1).check()
        except EndpointError as e:
            raise PreflightError(f"{what}: {e}") from None
    else:
        check_model_dir(judge.model, model_what, chat=True)


def check_reward_model(model: str, what: str) -> None:
    """A reward model given by path is a whole model directory (`trained` and a hub id are not checked)."""
    if model != "trained" and (model.startswith(("/", "./", "../", "~")) or Path(model).expanduser().is_dir()):
        check_model_dir(str(Path(model).expanduser()), what)


class QuietInputErrors:
    """Logging filter: input errors are reported as their one-line message, without a traceback.

    Prefect logs every failed task or flow with its traceback; for a missing file or a wrong field name
    that buries the one line that says what to fix.
    """

    def filter(self, record) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and is_input_error(exc):
            record.exc_info, record.exc_text = None, None
        return True


def quiet_input_errors() -> None:
    import logging

    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logging.getLogger(name).addFilter(QuietInputErrors())
