"""The stage mechanism: identity, reuse, catalog record, lineage and links, in one place for every stage.

A stage module declares its step and writes a body (docs/design.md, "Identities"):

    @stage("generate-completions", returns="completions")
    def generate_task(cfg: FlywheelConfig, round_num: int, policy: str, prompts: str) -> Step:
        return Step("generate", config=cfg.generation, inputs={"policy": policy, "prompts": prompts},
                    run=lambda ctx: generate(ctx, cfg, round_num))

    def generate(ctx: StageContext, cfg: FlywheelConfig, round_num: int) -> StageOutput:
        prompts = ctx.table("prompts")                         # inputs are loaded by name, from the store
        ...
        return StageOutput({"completions": Table(table, "completions", rows=edges)}, metrics={...})

`stage` makes the Prefect task. Called, it
1. computes the step's identity: the hash of its name, the code identity of the stage's module (with every
   in-repo module it imports: storage/code_identity.py), its config section, its input artifact ids and
   the content hashes of its external inputs (files and directories outside the store);
2. reuses a completed step of the same identity whose outputs are all still stored (a failed round
   resumes this way), or runs the body and stores what it returns (tables, models, JSON, a summary);
3. records the step in the catalog (status, Prefect ids, duration, counts, metrics, artifacts, edges, row
   lineage), registers external inputs, and writes the links runs/<pipeline>/round-NNNN/<step>/<name>.json.

A body never opens the runtime or touches the catalog: it reads only what its step declared.
"""

from __future__ import annotations

import functools
import inspect
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
from prefect import task
from pydantic import BaseModel

from configs.schema import FlywheelConfig
from storage.artifacts import ArtifactRef
from storage.catalog import StepRecord
from storage.code_identity import code_identity, module_name
from storage.ids import home_relative, sha256_dir, sha256_file, step_identity
from storage.runtime import Runtime, open_runtime
from tasks.lineage_events import StepEvents, prefect_ids
from tasks.model_files import chat_template_problem, weights_problem


def get_logger() -> logging.Logger | logging.LoggerAdapter:
    """Prefect's run logger inside a flow or task (logs reach the UI), a plain logger elsewhere."""
    try:
        from prefect import get_run_logger

        return get_run_logger()
    except Exception:  # outside a Prefect run context
        return logging.getLogger("flywheel")


def runtime(cfg: FlywheelConfig) -> Runtime:
    """The store and catalog of a config, opened once per process (see storage/runtime.py)."""
    s = cfg.storage
    return open_runtime(
        cfg.resolve_home(),
        s.uri,
        endpoint_url=s.endpoint_url,
        region=s.region,
        retry_window_s=s.retry_window_s,
        catalog_wait_s=s.catalog_wait_s,
        catalog=s.catalog,
        catalog_metadata=s.catalog_metadata,
    )


# --- what a step reads ------------------------------------------------------------------------------------


class PreflightError(Exception):
    """An input the config names is missing or unusable (one line: what, where, how to fix)."""


# Errors meant for the user (what, where, how to fix): printed as their one line, never as a traceback.
INPUT_ERROR_NAMES = {
    "PreflightError",
    "SourceError",
    "CurationError",
    "ConfigError",
    "StoreError",
    "CatalogLocked",
}


def is_input_error(e: BaseException, also: frozenset[str] = frozenset()) -> bool:
    """Whether `e` is one of INPUT_ERROR_NAMES (or `also`), or a subclass of one (StoreUnavailable is a
    StoreError). Matched by class name, so the check imports none of the modules that define them."""
    names = INPUT_ERROR_NAMES | also
    return any(c.__name__ in names for c in type(e).__mro__)


@dataclass(frozen=True)
class External:
    """A file, directory or dataset outside the store that a step reads.

    Its content hash is part of the step's identity (an edited source is a new input, a renamed one is not),
    and the mechanism registers it in the catalog's artifacts, so lineage reaches it.
    """

    id: str
    kind: str  # "source", "eval-set", "committee-model", "tokenizer", "reward-model-base", ...
    uri: str
    format: str
    path: Path | None = None  # where a body reads it (None for a dataset loaded by spec)
    bytes: int | None = None

    @classmethod
    def file(cls, path: str | Path, kind: str) -> External:
        check_file(str(path), kind, ())
        p = Path(path).resolve()
        return cls(sha256_file(p), kind, p.as_uri(), p.suffix.lstrip("."), p, p.stat().st_size)

    @classmethod
    def model_dir(cls, path: str | Path, kind: str, what: str) -> External:
        """A transformers model directory; `what` names the config field in the error if it is not one."""
        p = check_model_dir(str(path), what).resolve()
        return cls(sha256_dir(p), kind, p.as_uri(), "dir", p)

    def ref(self) -> ArtifactRef:
        return ArtifactRef(self.id, self.kind, self.uri, self.bytes, None, self.format)


def check_file(path: str, what: str, suffixes: tuple[str, ...], allow_dir: bool = False) -> None:
    p = Path(path)
    if not p.exists():
        raise PreflightError(f"{what}: file not found: {path} (fix the path in the config)")
    if allow_dir and p.is_dir():
        return  # a save_to_disk dataset: read_source checks it
    if not p.is_file():
        raise PreflightError(f"{what}: {path} is not a file")
    if suffixes and p.suffix.lower() not in suffixes:
        raise PreflightError(f"{what}: {path} has extension {p.suffix!r}; expected one of {', '.join(suffixes)}")


def check_model_dir(path: str, what: str, chat: bool = False) -> Path:
    """The model directory at `path`, if it has a config and whole weights (and, with `chat`, a chat
    template); else PreflightError naming `what`. Cheap: headers are read, weights never loaded."""
    p = Path(path).expanduser()
    if not p.exists():
        raise PreflightError(
            f"{what}: no model directory at {path}: give a local directory saved with save_pretrained "
            "(run `flywheel demo` once to build the demo's base model)"
        )
    if not (p / "config.json").is_file():
        raise PreflightError(f"{what}: {path} has no config.json: it is not a transformers model directory")
    if problem := weights_problem(p) or (chat_template_problem(p) if chat else None):
        raise PreflightError(f"{what}: {problem}")
    return p


def import_model(cfg: FlywheelConfig, path: str, role: str, what: str) -> str:
    """Store a model directory from outside the store (the base model) and register it, as made by step
    `role` of round 0; its artifact id. Ids are content hashes: importing the same weights stores nothing new.
    """
    rt = runtime(cfg)
    ref = rt.artifacts.put_model(check_model_dir(path, what), kind="model")
    rt.catalog.register_artifact(ref, cfg.pipeline, 0, role)
    return ref.id


# --- what a body returns ----------------------------------------------------------------------------------


@dataclass
class Table:
    table: pa.Table
    kind: str
    rows: list[tuple[str, str]] = field(default_factory=list)  # row lineage: (row id, parent row or artifact id)


@dataclass
class Model:
    path: Path  # a directory save_pretrained wrote; stored before the step's scratch directory goes
    kind: str = "model"


@dataclass
class Json:
    value: Any
    kind: str


# An output is made by the body (Table, Model, Json), already stored (ArtifactRef), or an existing
# artifact passed through by id (a disabled training stage hands its input model on).
Output = Table | Model | Json | ArtifactRef | str


@dataclass
class StageOutput:
    outputs: dict[str, Output]
    metrics: dict[str, float] = field(default_factory=dict)
    rows_in: int | None = None
    rows_out: int | None = None
    summary: dict[str, Any] = field(default_factory=dict)  # JSON-able facts for the flow; stored with the step
    # Wall-clock measures: metrics, but not in the stored summary, whose id must not differ between runs.
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class StepResult:
    step: str
    identity: str
    outputs: dict[str, str]  # output name -> artifact id
    summary: dict[str, Any]  # the body's summary, with "metrics", "rows_in" and "rows_out"
    reused: bool

    @property
    def metrics(self) -> dict[str, float]:
        """The body's metrics under the body's names (the catalog records them under Step.metric_name)."""
        return {k: float(v) for k, v in self.summary.get("metrics", {}).items()}


class StageContext:
    """What a body may touch: its declared inputs (by name), a scratch directory, a store for early writes."""

    def __init__(self, rt: Runtime, inputs: dict[str, str | External], workdir: Path):
        self._rt, self.inputs, self.workdir = rt, inputs, workdir
        self.log = get_logger()

    def id(self, name: str) -> str:
        value = self.inputs[name]
        return value.id if isinstance(value, External) else value

    def table(self, name: str, columns: list[str] | None = None) -> pa.Table:
        return self._rt.artifacts.get_table(self.inputs[name], columns=columns)

    def rows(self, name: str, columns: list[str] | None = None) -> list[dict]:
        return self.table(name, columns).to_pylist()

    def model(self, name: str) -> Path:
        """Local directory of a model input: an external directory as it is, a stored model from the cache."""
        value = self.inputs[name]
        return value.path if isinstance(value, External) else self._rt.artifacts.get_model(value)

    def path(self, name: str) -> Path | None:
        return self.inputs[name].path

    def store(self, out: Table | Json) -> ArtifactRef:
        """Store an output now, e.g. a quarantine table that an error message must be able to point at."""
        return _store(self._rt, out)


def _store(rt: Runtime, out: Output) -> ArtifactRef:
    if isinstance(out, ArtifactRef):
        return out
    if isinstance(out, str):
        return rt.artifacts.ref(out)
    if isinstance(out, Table):
        return rt.artifacts.put_table(out.table, kind=out.kind)
    if isinstance(out, Model):
        return rt.artifacts.put_model(out.path, kind=out.kind)
    return rt.artifacts.put_json(out.value, kind=out.kind)


# --- the step --------------------------------------------------------------------------------------------


@dataclass
class Step:
    """One step of a round, as a stage declares it. `inputs` values are artifact ids or External."""

    name: str  # in the catalog and the links, e.g. "evaluate-policy"
    config: Any  # the config section the outputs depend on: a pydantic model, or anything JSON-able
    run: Callable[[StageContext], StageOutput]
    inputs: dict[str, str | External] = field(default_factory=dict)
    same_work_as: str | None = None  # identity name when equal work runs under two names (evaluate-*)
    metric_name: Callable[[str], str] = lambda name: name  # body's metric name -> the round's metric name


def run_step(cfg: FlywheelConfig, round_num: int, step: Step, code: str, *, reuse: bool = True) -> StepResult:
    """Run `step` unless an identical step completed before (and `reuse`); record it either way."""
    rt = runtime(cfg)
    log = get_logger()
    config = step.config.model_dump(mode="json") if isinstance(step.config, BaseModel) else step.config
    input_ids = {k: v.id if isinstance(v, External) else v for k, v in step.inputs.items()}
    # Paths into the home (a demo's data and base model) are hashed as {home}/...: the same step, same id anywhere.
    identity = step_identity(step.same_work_as or step.name, code, home_relative(config, rt.home), input_ids)
    flow_run_id, task_run_id = prefect_ids()
    started, t0 = datetime.now(timezone.utc), time.perf_counter()
    for ext in (v for v in step.inputs.values() if isinstance(v, External)):
        rt.catalog.register_artifact(ext.ref(), cfg.pipeline, round_num, ext.kind)
    events = StepEvents(cfg.tracking.openlineage, rt, cfg.pipeline, round_num, step.name, identity, input_ids, log)
    events.start()

    prior = rt.catalog.find_completed_step(identity) if reuse else None
    if prior is not None and all(rt.artifacts.exists(a) for a in prior.values()):
        log.info("%s: reusing the outputs of an identical earlier step (%s)", step.name, identity[:12])
        refs = {name: rt.artifacts.ref(a) for name, a in prior.items()}
        summary, edges, reused = rt.artifacts.get_json(prior["summary"]), [], True
    else:
        try:
            with tempfile.TemporaryDirectory(dir=rt.scratch, prefix=f"{step.name}-") as tmp:
                out = step.run(StageContext(rt, step.inputs, Path(tmp)))
                refs = {name: _store(rt, o) for name, o in out.outputs.items()}
        except Exception as e:
            rt.catalog.record_step_failure(cfg.pipeline, round_num, step.name, identity, f"{type(e).__name__}: {e}")
            events.fail(e)
            raise
        summary = {**out.summary, "metrics": out.metrics, "rows_in": out.rows_in, "rows_out": out.rows_out}
        refs["summary"] = rt.artifacts.put_json(summary, kind=f"{step.name}-summary")
        summary = {**summary, "metrics": {**out.metrics, **out.timings}}  # a reused step measured nothing
        edges = [
            (row, parent, refs[name].id)
            for name, o in out.outputs.items()
            if isinstance(o, Table)
            for row, parent in o.rows
        ]
        reused = False

    kill_point(f"{step.name}:stored")  # test hook: the outputs are in the store, the catalog has no record
    rt.catalog.record_step(
        StepRecord(
            pipeline=cfg.pipeline,
            round=round_num,
            step=step.name,
            identity=identity,
            inputs=input_ids,
            outputs=refs,
            metrics={step.metric_name(k): float(v) for k, v in summary.get("metrics", {}).items()},
            row_edges=edges,
            rows_in=summary.get("rows_in"),
            rows_out=summary.get("rows_out"),
            started_at=started,
            duration_s=time.perf_counter() - t0,
            flow_run_id=flow_run_id,
            task_run_id=task_run_id,
            reused=reused,
        )
    )
    events.complete(refs, reused)
    for name, ref in refs.items():
        rt.artifacts.link(f"runs/{cfg.pipeline}/round-{round_num:04d}/{step.name}/{name}.json", ref)
    return StepResult(step.name, identity, {k: r.id for k, r in refs.items()}, summary, reused)


def kill_point(name: str) -> None:
    """Test hook of the crash tests (tests/test_crash_recovery.py): a real kill -9 of this process at a
    named point, when the environment variable FLYWHEEL_TEST_KILL_AT is that name. Nothing else sets it."""
    import os
    import signal

    if os.environ.get("FLYWHEEL_TEST_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


Returns = str | tuple[str, ...] | Callable[[StepResult], Any] | None


def stage(task_name: str, returns: Returns = None) -> Callable:
    """Make a stage's Prefect task from its declaration `declare(cfg, round_num, ...) -> Step`.

    The task runs the declared step through run_step and returns `returns` of its result: an output's
    artifact id (a name), a tuple of them, a function of the StepResult, or (None) the StepResult itself.
    A declaration that returns anything but a Step has nothing to run: that value is the task's result
    and nothing is recorded (a disabled optional stage).
    """

    def wrap(declare: Callable[..., Any]) -> Any:
        @functools.wraps(declare)
        def run(cfg: FlywheelConfig, round_num: int, *args: Any, **kwargs: Any) -> Any:
            step = declare(cfg, round_num, *args, **kwargs)
            if not isinstance(step, Step):
                return step
            return pick(run_step(cfg, round_num, step, code_of(declare)), returns)

        prefect_task = task(name=task_name)(run)
        prefect_task.declare = declare  # for `python -m tasks.<stage>` and tests: the step without running it
        return prefect_task

    return wrap


def code_of(declare: Callable) -> str:
    """The code identity of the module that declares a stage (storage/code_identity.py)."""
    path = Path(inspect.getfile(declare)).resolve()
    # Under `python -m tasks.<stage>` the module is __main__: it is the same code as in a round.
    name = module_name(path) if declare.__module__ == "__main__" else declare.__module__
    return code_identity(name, path=path)


def pick(result: StepResult, returns: Returns) -> Any:
    if returns is None:
        return result
    if isinstance(returns, str):
        return result.outputs.get(returns)
    if isinstance(returns, tuple):
        return tuple(result.outputs[name] for name in returns)
    return returns(result)
