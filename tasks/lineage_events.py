"""OpenLineage run events of the steps of a round, sent with the openlineage-python client.

openlineage-python has no Prefect integration (and a generic one would know nothing of steps, identities and
artifacts), so run_step (tasks/stage.py) reports each step itself: START when the step begins, COMPLETE once
the catalog has recorded it (a reused step too, marked so), FAIL with the error when its body raises. The
catalog stays the record; these events are a copy for lineage tools (Marquez).

- job: `<namespace>/<pipeline>.<step>`; run id: a UUID of (pipeline, round, step, identity), so a step's
  events share it; a `parent` facet names the Prefect flow run the step ran in;
- datasets: the store URIs of the step's input and output artifacts (namespace s3://bucket and the key, or
  `file` and the path), with row counts where the artifact is a table;
- custom facets `flywheel_step` (identity, reuse, artifact ids by name) and `flywheel_artifact` (id, the
  step's name for it, kind, format, bytes).

Sending never breaks a round: an event that cannot be sent is dropped, with one warning per round.
Turn it on with `tracking.openlineage` (configs/tracking.py).
"""

from __future__ import annotations

import json
import logging
import traceback
import uuid
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import attr
from openlineage.client import OpenLineageClient
from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
from openlineage.client.facet_v2 import (
    DatasetFacet,
    RunFacet,
    error_message_run,
    input_statistics_input_dataset,
    job_type_job,
    output_statistics_output_dataset,
    parent_run,
)
from openlineage.client.naming.dataset import S3, LocalFileSystem
from openlineage.client.transport import get_default_factory

from configs.tracking import OpenLineageConfig
from storage.artifacts import ArtifactRef, artifact_folder
from storage.runtime import Runtime

# Any fixed UUID: the namespace of the run ids, so the same step of the same round always gets the same id.
_RUN_IDS = uuid.UUID("6f1c1d5e-8a4b-4c2e-9d3f-0b7a2e5c4d10")
_clients: dict[str, OpenLineageClient] = {}  # transport config (as JSON) -> client: one HTTP session each
_warned: set[tuple[str, int]] = set()  # rounds (pipeline, round) that already warned of a failed send


def _producer() -> str:
    try:
        return f"urn:flywheel:{metadata.version('flywheel')}"
    except metadata.PackageNotFoundError:  # a checkout that was never installed
        return "urn:flywheel"


PRODUCER = _producer()


@attr.define
class FlywheelStepRunFacet(RunFacet):
    """What the catalog knows a step by: its identity, whether its outputs were reused, the artifact ids."""

    pipeline: str
    round: int
    step: str
    identity: str
    reused: bool | None = None  # known once the step is done: None in START and FAIL
    inputs: dict[str, str] = attr.field(factory=dict)
    outputs: dict[str, str] | None = None  # COMPLETE only

    @staticmethod
    def _get_schema() -> str:
        return "urn:flywheel:facets:FlywheelStepRunFacet:1"


@attr.define
class FlywheelArtifactDatasetFacet(DatasetFacet):
    artifactId: str  # noqa: N815  (OpenLineage facets use camelCase)
    role: str  # the step's name for it: "prompts", "model", "summary"
    kind: str | None = None
    format: str | None = None
    bytes: int | None = None

    @staticmethod
    def _get_schema() -> str:
        return "urn:flywheel:facets:FlywheelArtifactDatasetFacet:1"


def run_id(pipeline: str, round_num: int, step: str, identity: str) -> str:
    """The OpenLineage run id of a step: the same for its START and its COMPLETE or FAIL."""
    return str(uuid.uuid5(_RUN_IDS, f"{pipeline}/{round_num}/{step}/{identity}"))


def dataset_name(uri: str) -> tuple[str, str]:
    """(namespace, name) of a store URI, by OpenLineage's naming rules.

    >>> dataset_name("s3://bucket/prefix/artifacts/ab/abcd")
    ('s3://bucket', 'prefix/artifacts/ab/abcd')
    >>> dataset_name("file:///data/store/artifacts/ab/abcd")
    ('file', '/data/store/artifacts/ab/abcd')
    """
    u = urlparse(uri)
    if u.scheme == "s3":
        naming = S3(bucket_name=u.netloc, object_key=u.path.lstrip("/"))
    elif u.scheme == "file":
        naming = LocalFileSystem(path=unquote(u.path))
    else:
        return f"{u.scheme}://{u.netloc}", u.path.lstrip("/")
    return naming.get_namespace(), naming.get_name()


def prefect_ids() -> tuple[str | None, str | None]:
    """(flow run id, task run id) of the Prefect run this code runs in; None outside one."""
    try:
        from prefect.runtime import flow_run, task_run

        return (str(flow_run.id) if flow_run.id else None, str(task_run.id) if task_run.id else None)
    except Exception:
        return None, None


class StepEvents:
    """The OpenLineage run of one step. Without `cfg.enabled` every method does nothing."""

    def __init__(
        self,
        cfg: OpenLineageConfig,
        rt: Runtime,
        pipeline: str,
        round_num: int,
        step: str,
        identity: str,
        inputs: dict[str, str],
        log: logging.Logger | logging.LoggerAdapter,
    ):
        self.cfg, self.rt, self.log, self.inputs = cfg, rt, log, inputs
        self.pipeline, self.round, self.step, self.identity = pipeline, round_num, step, identity
        self.run_id = run_id(pipeline, round_num, step, identity)
        self._input_datasets: list[InputDataset] | None = None

    def start(self) -> None:
        self._emit(RunState.START)

    def complete(self, outputs: dict[str, ArtifactRef], reused: bool) -> None:
        self._emit(RunState.COMPLETE, outputs=outputs, reused=reused)

    def fail(self, error: BaseException) -> None:
        self._emit(RunState.FAIL, error=error)

    def _emit(self, state: RunState, **details: Any) -> None:
        if not self.cfg.enabled:
            return
        try:
            _client(self.cfg, self.rt.home).emit(self._event(state, **details))
        except Exception as e:  # a receiver that is down, a full disk: the round goes on without its events
            if (self.pipeline, self.round) not in _warned:
                _warned.add((self.pipeline, self.round))
                self.log.warning(
                    "OpenLineage: could not send the %s event of %s (%s: %s); the round goes on, and further "
                    "failures of round %d are not logged",
                    state.value,
                    self.step,
                    type(e).__name__,
                    e,
                    self.round,
                )

    def _event(
        self,
        state: RunState,
        outputs: dict[str, ArtifactRef] | None = None,
        reused: bool | None = None,
        error: BaseException | None = None,
    ) -> RunEvent:
        if self._input_datasets is None:  # looked up once: a step's COMPLETE names the inputs its START named
            self._input_datasets = _inputs(self.rt, self.inputs)
        ids = {name: ref.id for name, ref in outputs.items()} if outputs is not None else None
        facets: dict[str, RunFacet] = {
            "flywheel_step": FlywheelStepRunFacet(
                self.pipeline, self.round, self.step, self.identity, reused, self.inputs, ids, producer=PRODUCER
            )
        }
        if parent := _parent(self.cfg.namespace, self.pipeline):
            facets["parent"] = parent
        if error is not None:
            facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(
                message=f"{type(error).__name__}: {error}",
                programmingLanguage="python",
                stackTrace="".join(traceback.format_exception(error)),
                producer=PRODUCER,
            )
        return RunEvent(
            eventType=state,
            eventTime=datetime.now(timezone.utc).isoformat(),
            run=Run(runId=self.run_id, facets=facets),
            job=Job(
                namespace=self.cfg.namespace,
                name=f"{self.pipeline}.{self.step}",
                facets={"jobType": job_type_job.JobTypeJobFacet("BATCH", "FLYWHEEL", "STEP", producer=PRODUCER)},
            ),
            inputs=self._input_datasets,
            outputs=[_dataset(OutputDataset, name, ref) for name, ref in (outputs or {}).items()],
            producer=PRODUCER,
        )


def _client(cfg: OpenLineageConfig, home: Path) -> OpenLineageClient:
    transport = cfg.transport_config(home)
    key = json.dumps(transport, sort_keys=True)
    if key not in _clients:
        # An explicit transport: the client would otherwise fall back to openlineage.yml or the console.
        _clients[key] = OpenLineageClient(transport=get_default_factory().create(transport))
    return _clients[key]


def _parent(namespace: str, pipeline: str) -> parent_run.ParentRunFacet | None:
    try:
        from prefect.runtime import flow_run

        if not flow_run.id:
            return None
        run, job = parent_run.Run(runId=str(flow_run.id)), parent_run.Job(namespace, f"{pipeline}.{flow_run.flow_name}")
        return parent_run.ParentRunFacet(run=run, job=job, producer=PRODUCER)
    except Exception:  # outside a Prefect flow run
        return None


def _inputs(rt: Runtime, inputs: dict[str, str]) -> list[InputDataset]:
    # The catalog knows the inputs of a round (outputs of earlier steps, external inputs registered before
    # the step runs); an artifact it does not know is described by its manifest in the store.
    known = rt.catalog.artifacts_by_id(list(set(inputs.values())))
    datasets = []
    for name, artifact_id in inputs.items():
        if row := known.get(artifact_id):
            ref = ArtifactRef(artifact_id, row["kind"], row["uri"], row["bytes"], row["rows"], row["format"])
        else:
            try:
                ref = rt.artifacts.ref(artifact_id)
            except KeyError:  # gone from the store too: its name is all there is to say
                ref = ArtifactRef(artifact_id, "", rt.store.url(artifact_folder(artifact_id)), None, None, "")
        datasets.append(_dataset(InputDataset, name, ref))
    return datasets


def _dataset(cls: type[InputDataset] | type[OutputDataset], name: str, ref: ArtifactRef) -> Any:
    """The dataset of an artifact: its store URI, and (tables) the rows read or written."""
    namespace, ds_name = dataset_name(ref.uri)
    facets = {
        "flywheel_artifact": FlywheelArtifactDatasetFacet(
            ref.id, name, ref.kind, ref.format, ref.bytes, producer=PRODUCER
        )
    }
    known = ref.rows is not None
    if cls is InputDataset:
        read = input_statistics_input_dataset.InputStatisticsInputDatasetFacet(
            rowCount=ref.rows, size=ref.bytes, producer=PRODUCER
        )
        return InputDataset(namespace, ds_name, facets=facets, inputFacets={"inputStatistics": read} if known else {})
    written = output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(
        rowCount=ref.rows, size=ref.bytes, producer=PRODUCER
    )
    return OutputDataset(namespace, ds_name, facets=facets, outputFacets={"outputStatistics": written} if known else {})
