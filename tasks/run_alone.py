"""Run one stage alone, for debugging:  python -m tasks.<stage> --config X --round N [--home DIR] [--force]

Each stage module ends with `run_alone(its_task, args_of)`, where args_of maps round N, as the catalog
holds it, to the arguments the round flow would pass (the outputs of the round's earlier steps, its
policy). The step runs through the same mechanism as in a round (tasks/stage.py), without Prefect.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from configs.schema import FlywheelConfig
from storage.code_identity import module_name
from tasks.stage import PreflightError, Step, code_of, import_model, is_input_error, run_step, runtime


@dataclass
class RoundView:
    """Round `round` of a pipeline as the catalog holds it: where `python -m tasks.<stage>` finds the
    inputs the round flow would have passed (outputs of the round's earlier steps, its policy)."""

    cfg: FlywheelConfig
    round: int
    options: Any  # the command line's parsed options

    @property
    def catalog(self):
        return runtime(self.cfg).catalog

    def output(self, step: str, name: str) -> str:
        found = self.catalog.step_outputs(self.cfg.pipeline, self.round, step).get(name)
        if found is None:
            raise SystemExit(
                f"round {self.round} of pipeline {self.cfg.pipeline!r} has no completed `{step}` step "
                f"(output `{name}`): run the round's earlier stages first (`flywheel run`, or "
                f"`python -m tasks.<stage> --config ... --round {self.round}` for each)"
            )
        return found

    def summary(self, step: str) -> dict:
        """The stored summary of one of the round's completed steps (its metrics under the body's names)."""
        return runtime(self.cfg).artifacts.get_json(self.output(step, "summary"))

    @property
    def policy(self) -> str:
        """The policy the round starts (or started) from; before round 1, the base model, imported."""
        rnd = self.catalog.round(self.cfg.pipeline, self.round)
        current = rnd["policy_in"] if rnd else self.catalog.current_policy(self.cfg.pipeline)
        return current or import_model(self.cfg, self.cfg.base_model, "base-model", "base_model")

    @property
    def candidate(self) -> str:
        """The round's trained candidate: the averaged model if the round averaged, else DPO's output."""
        averaged = self.catalog.step_outputs(self.cfg.pipeline, self.round, "average").get("model")
        return averaged or self.output("train-dpo", "model")


def run_alone(
    prefect_task: Any,
    args_of: Callable[[RoundView], dict],
    options: dict[str, dict] | None = None,
    choose: Callable[[Any], Any] | None = None,
) -> None:
    """`python -m tasks.<stage> --config X --round N`: one stage, through the same mechanism, without Prefect.

    Its inputs come from round N's earlier steps in the catalog (args_of maps the round to the stage's
    arguments). An identical completed step is reused unless --force; the step is recorded under round N,
    so a later `flywheel run` reuses it in turn. Prints the step's outputs and metrics as JSON.
    `options` are extra argparse flags; `choose` picks the task from them where a module has several.
    """
    import argparse
    import json
    import sys

    from configs import ConfigError, load_config
    from configs.quiet import apply_defaults
    from storage.runtime import close_runtimes
    from tasks.generation import close_engines

    apply_defaults()
    module = module_name(Path(inspect.getfile(prefect_task.declare)))  # not __main__
    parser = argparse.ArgumentParser(
        prog=f"python -m {module}", description=(prefect_task.declare.__doc__ or "").strip()
    )
    parser.add_argument("--config", required=True, help="pipeline YAML, e.g. configs/demo.yaml")
    parser.add_argument("--round", type=int, default=None, help="round number (default: the pipeline's next round)")
    parser.add_argument("--home", default=None, help="FLYWHEEL_HOME (catalog, caches, embedded store)")
    parser.add_argument("--force", action="store_true", help="recompute even if an identical step completed")
    for flag, spec in (options or {}).items():
        parser.add_argument(flag, **spec)
    ns = parser.parse_args()
    prefect_task = choose(ns) if choose else prefect_task
    try:
        cfg = load_config(ns.config, home=ns.home)
        r = ns.round or runtime(cfg).catalog.next_round(cfg.pipeline)
        step = prefect_task.declare(cfg, r, **args_of(RoundView(cfg, r, ns)))
        if not isinstance(step, Step):
            print(json.dumps({"step": None, "result": step, "note": "nothing to run with this config"}))
            return
        res = run_step(cfg, r, step, code_of(prefect_task.declare), reuse=not ns.force)
        arts = runtime(cfg).artifacts
        print(
            json.dumps(
                {
                    "pipeline": cfg.pipeline,
                    "round": r,
                    "step": res.step,
                    "identity": res.identity,
                    "reused": res.reused,
                    "outputs": {
                        k: {"id": a, "uri": arts.ref(a).uri, "rows": arts.ref(a).rows} for k, a in res.outputs.items()
                    },
                    "metrics": res.metrics,
                },
                indent=2,
            )
        )
    except (ConfigError, PreflightError) as e:
        sys.exit(f"{module}: {e}")
    except Exception as e:
        if is_input_error(e, frozenset({"EngineError"})):
            sys.exit(f"{module}: {e}")
        raise
    finally:
        close_engines()
        close_runtimes()
