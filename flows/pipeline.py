"""N rounds of one pipeline, each a subflow; round r+1 starts from the policy round r promoted.

Run:  flywheel run --config configs/demo.yaml --rounds 3
"""

from __future__ import annotations

from prefect import flow
from pydantic import Field

from configs.schema import FlywheelConfig
from flows.round import RoundReport, round_flow


@flow(name="flywheel-pipeline", flow_run_name="{cfg.pipeline}-{rounds}-rounds")
def pipeline_flow(
    cfg: FlywheelConfig, rounds: int = Field(1, ge=1, le=100, description="Rounds to run.")
) -> list[RoundReport]:
    return [round_flow(cfg) for _ in range(rounds)]
