"""N rounds of one pipeline, each a subflow; round r+1 starts from the policy round r promoted.

Run:  flywheel run --config configs/demo.yaml --rounds 3

From a deployment (flows/deployments.py) every parameter has a default: `cfg` is the served config, so
the UI's Quick run starts a round in one click (it asks for confirmation only when a parameter is
required), while Custom run still shows `cfg` as the typed form, plus `overrides` for a one-off change.
"""

from __future__ import annotations

from typing import Annotated, Any

from prefect import flow
from pydantic import Field

from configs import ConfigError, apply_overrides
from configs.schema import FlywheelConfig
from flows.round import RoundReport, round_flow


def run_name() -> str:
    """`<pipeline>-<rounds>-rounds`, read from the run's parameters (a template cannot: `cfg` may be unset)."""
    from prefect.runtime import flow_run

    params = flow_run.parameters
    cfg = params.get("cfg")
    name = cfg.pipeline if isinstance(cfg, FlywheelConfig) else (cfg or {}).get("pipeline", "no-config")
    return f"{name}-{params.get('rounds', 1)}-rounds"


@flow(name="flywheel-pipeline", flow_run_name=run_name)
def pipeline_flow(
    cfg: FlywheelConfig | None = None,
    rounds: Annotated[int, Field(ge=1, le=100)] = 1,
    overrides: dict[str, Any] | None = None,
) -> list[RoundReport]:
    """N rounds of the pipeline `cfg`. Prefect's UI shows these descriptions in the run form.

    Plain defaults, not `Field(...)` ones: Prefect passes a parameter a run omits its signature default
    as it is, so a FieldInfo default would reach the body.

    Args:
        cfg: The pipeline's config (a deployment's default: the config it was served with).
        rounds: Rounds to run.
        overrides: Dotted config keys set for this run only, e.g. {"generation.sampling.temperature": 0.7}.
    """
    if cfg is None:
        raise ConfigError(
            "flywheel-pipeline got no `cfg`: run it from a deployment (flywheel serve / deploy set the config) "
            "or pass the config, e.g. `flywheel run --config configs/demo.yaml`"
        )
    cfg = apply_overrides(cfg, overrides or {})
    return [round_flow(cfg) for _ in range(rounds)]
