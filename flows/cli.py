"""The `flywheel` command.

flywheel demo [--task addition|instruct] [--rounds 3]  build a demo's model and data, run its rounds
flywheel run --config configs/demo.yaml [--rounds N]  run N more rounds of a pipeline
flywheel rounds [--pipeline P] [--json] [--attempts]  one row per round (or per attempt of a round)
flywheel promote --pipeline P --round N --reason R [--wait]  roll the pipeline back (or forward) to round N's candidate
flywheel lineage <id> [--json] [--graph out.svg]   where an artifact or a training row came from
flywheel server [--port 4200] [--host ADDR]        a local Prefect server + UI (127.0.0.1 unless --host)
flywheel serve --config configs/demo.yaml          serve the round-now and nightly deployments
flywheel deploy --config configs/demo.yaml --pool P  register them on work pool P (docs/work-pools.md)
flywheel worker --pool P [--work-queue Q]          run work pool P's rounds (or queue Q's) on this machine
flywheel catalog-rebuild --config configs/demo.yaml  rebuild the catalog from the store
flywheel export --config X [--round N] DIR         the policy (or round N's candidate) as a model directory
flywheel validate configs/x.yaml                   check a config file
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from configs.quiet import apply_defaults
from flows import reaper
from flows.cli_prefect import cmd_deploy, cmd_serve, cmd_server, cmd_worker

apply_defaults()


def _home(args) -> Path:
    return Path(args.home or os.environ.get("FLYWHEEL_HOME") or ".flywheel").resolve()


def _catalog(args):
    from storage.runtime import home_catalog

    cat = home_catalog(_home(args))
    if cat is None:
        raise SystemExit(
            f"no catalog in {_home(args)}: run `flywheel demo` or `flywheel run --config ...` first (or pass --home)"
        )
    return cat


def _run_rounds(cfg, rounds: int) -> list:
    from flows.pipeline import pipeline_flow
    from flows.preflight import preflight, quiet_input_errors
    from storage.runtime import close_runtimes
    from tasks.generation import close_engines
    from tasks.stage import runtime

    quiet_input_errors()
    try:
        # Fail on bad input here, in one line, before Prefect and the engines start.
        rt = runtime(cfg)
        preflight(cfg, need_base_model=rt.catalog.current_policy(cfg.pipeline) is None)
        return pipeline_flow(cfg, rounds)
    finally:
        close_engines()
        close_runtimes()


def cmd_run(args) -> int:
    reaper.start()  # nothing this command starts (engines, Prefect's server) outlives it
    from configs import load_config

    cfg = load_config(args.config, home=args.home)
    reports = _run_rounds(cfg, args.rounds)
    _show(args, cfg.pipeline)
    return 0 if reports else 1


def cmd_demo(args) -> int:
    reaper.start()  # nothing this command starts (engines, Prefect's server) outlives it
    from configs import DEMO_CONFIG, INSTRUCT_CONFIG, load_config

    home = _home(args)
    os.environ["FLYWHEEL_HOME"] = str(home)
    if args.fresh:
        _wipe_demo_state(home)
    cfg = load_config(INSTRUCT_CONFIG if args.task == "instruct" else DEMO_CONFIG, home=str(home))
    t0 = time.perf_counter()
    if args.task == "instruct":
        from demo.instruct_task import write_instruct_data
        from demo.smollm2 import BaseModelMissing, convert_base_model

        write_instruct_data(home / "instruct" / "data")
        try:
            convert_base_model(Path(cfg.base_model))
        except BaseModelMissing as e:
            raise SystemExit(str(e)) from None
    else:
        from demo.base_model import build_base_model
        from demo.task import write_demo_data

        write_demo_data(home / "demo" / "data")
        build_base_model(Path(cfg.base_model))
    t_base = time.perf_counter() - t0
    from tasks.stage import runtime

    done = runtime(cfg).catalog.next_round(cfg.pipeline) - 1
    todo = max(args.rounds - done, 0)
    if todo == 0:
        print(f"the {cfg.pipeline} pipeline already has {done} completed rounds in {home} (use --fresh to start over)")
    else:
        _run_rounds(cfg, todo)
    print(f"base model and data ready in {t_base:.0f} s; total {time.perf_counter() - t0:.0f} s")
    _show(args, cfg.pipeline)
    return 0


def _wipe_demo_state(home: Path) -> None:
    """Forget earlier demo rounds (catalog, store, caches); keep the built base model and data."""
    import shutil

    for p in [*home.glob("catalog.*"), home / "s3", home / "cache", home / "reports"]:
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def _show(args, pipeline: str) -> None:
    from flows.report import plot_rounds, print_rounds, round_rows

    rows = round_rows(_catalog(args).rounds(pipeline))
    print_rounds(rows)
    png = plot_rounds(rows, _home(args) / "reports" / f"{pipeline}-rounds.png")
    print(f"plot: {png}")


def _say(message: str) -> None:
    print(f"flywheel: {message}", file=sys.stderr)


def cmd_rounds(args) -> int:
    from flows.crashes import close_dead_rounds
    from flows.report import attempt_rows, dumps, print_attempts, print_rounds, round_rows

    cat = _catalog(args)
    if args.as_of_round is not None:
        if not args.pipeline:
            raise SystemExit("--as-of-round needs --pipeline: a round number is per pipeline")
        try:
            cat = cat.as_of_round(args.pipeline, args.as_of_round)  # read-only: nothing to close below
        except (ValueError, LookupError) as e:
            raise SystemExit(str(e)) from None
    else:
        # A round left `running` by a killed process is shown as what it is: crashed.
        close_dead_rounds(cat, _home(args), args.pipeline, log=_say)
    rows = attempt_rows(cat.attempts(args.pipeline)) if args.attempts else round_rows(cat.rounds(args.pipeline))
    if args.json:
        print(dumps(rows))
    else:
        (print_attempts if args.attempts else print_rounds)(rows)
    return 0


def cmd_lineage(args) -> int:
    from flows.lineage_graph import draw_lineage, graph_problem
    from flows.report import dumps, print_lineage

    graph = Path(args.graph) if args.graph else None
    if graph is not None and (problem := graph_problem(graph)):
        _say(problem)
        return 2
    cat = _catalog(args)
    artifact = cat.artifact(args.id)
    edges = cat.lineage(artifact["id"]) if artifact else []
    rows = [] if artifact else cat.row_lineage(args.id)
    if not artifact and not rows:
        raise SystemExit(f"{args.id}: no artifact or row with this id in {cat.where} (ids: `flywheel rounds --json`)")
    if args.json:
        print(dumps({"artifact": artifact, "edges": edges, "rows": rows}))
    else:
        print_lineage(artifact, edges, rows)
    if graph is not None:
        _say(f"lineage graph: {draw_lineage(cat, args.id, artifact, edges, rows, graph)}")
    return 0


def cmd_catalog_rebuild(args) -> int:
    """A new catalog from the store's round manifests (after losing the catalog, to audit it, or to move a
    home's catalog onto DuckLake: set storage.catalog: ducklake and run this once)."""
    from configs import load_config
    from storage.artifacts import ArtifactStore
    from storage.catalog_lake import sqlite_file
    from storage.runtime import CATALOG_FILE, LAKE_FILE, lake_spec, open_home_store, rebuild_into, write_lake_pointer

    cfg = load_config(args.config, home=args.home)
    s, home = cfg.storage, cfg.resolve_home()
    if s.catalog == "ducklake" and (s.catalog_metadata or "").startswith("postgres:"):
        raise SystemExit(
            "a Postgres catalog is rebuilt in place: drop and create its database, then run a round with this "
            "config (`flywheel run --config ...`), which first fills the empty catalog from the store"
        )
    lake_file = sqlite_file(s.catalog_metadata) if s.catalog_metadata else home / LAKE_FILE
    out = Path(args.out) if args.out else lake_file if s.catalog == "ducklake" else home / CATALOG_FILE
    if out.exists() and not args.force:
        raise SystemExit(f"{out} exists: pass --force to replace it, or --out to write elsewhere")
    store, server = open_home_store(home, s.uri, s.endpoint_url, s.region)
    try:
        lake = None
        if s.catalog == "ducklake":
            lake = lake_spec(home, store, server.endpoint_url if server else s.endpoint_url, s.region, f"sqlite:{out}")
        out.parent.mkdir(parents=True, exist_ok=True)
        rounds = rebuild_into(out, store, ArtifactStore(store, home / "cache"), lake)
        if lake is not None and out == lake_file:  # the home's own catalog now: `flywheel rounds` finds it
            write_lake_pointer(home, lake, embedded=server is not None)
    finally:
        if server is not None:
            server.stop()
    print(f"{out}: rebuilt {rounds} rounds from {store.uri}")
    return 0


def cmd_promote(args) -> int:
    """Roll a pipeline back (or forward) to an earlier round's candidate by hand, recorded with who/when/why
    (flows/manual_promotion.py: never while a round of the pipeline runs)."""
    import getpass

    from flows.manual_promotion import RoundRunning, promote_manually

    cat = _catalog(args)
    who = os.environ.get("FLYWHEEL_USER") or getpass.getuser()
    try:
        what = (args.pipeline, args.round, args.which, who, args.reason)
        row = promote_manually(cat, _home(args), *what, wait=args.wait, log=_say)
    except (ValueError, RoundRunning) as e:
        print(f"flywheel: {e}", file=sys.stderr)
        return 2
    print(
        f"{args.pipeline}: the next round starts from {row['policy']} (round {args.round}'s {args.which}); "
        f"recorded by {who} at {row['promoted_at']:%Y-%m-%d %H:%M:%S %Z}: {args.reason}"
    )
    return 0


def cmd_export(args) -> int:
    """Write the current policy, or round N's candidate or policy, as a plain model directory."""
    from configs import load_config
    from flows.export import ExportError, export_model

    cfg = load_config(args.config, home=args.home)
    try:
        s = export_model(cfg, Path(args.dir), args.round, args.which)
    except ExportError as e:
        print(f"flywheel export: {e}", file=sys.stderr)
        return 2
    what = "current policy" if args.round is None else f"round {args.round}'s {args.which}"
    print(f"{args.dir}: {cfg.pipeline}'s {what}, {s['artifact_id'][:16]} ({len(s['lineage'])} lineage edges)")
    return 0


def cmd_validate(args) -> int:
    from configs import load_config

    cfg = load_config(args.config)
    print(
        f"{args.config}: ok (pipeline {cfg.pipeline!r}, {len(cfg.curation.sources)} sources, "
        f"{len(cfg.evaluation.eval_sets)} eval sets)"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flywheel",
        description="Post-training data flywheel: rounds of generate, score, select, train, evaluate, promote.",
    )
    p.add_argument("--home", help="Catalog, caches and embedded store (default: $FLYWHEEL_HOME or ./.flywheel)")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("run", help="run N rounds of a pipeline, continuing from its last promoted policy")
    s.add_argument("--config", required=True)
    s.add_argument("--rounds", type=int, default=1)
    s.set_defaults(fn=cmd_run)
    s = sub.add_parser("demo", help="build a CPU demo (tiny addition model, or SmolLM2 instruct) and run its rounds")
    s.add_argument(
        "--task",
        choices=["addition", "instruct"],
        default="addition",
        help="addition: a 1 M-parameter Llama learns carries (configs/demo.yaml); instruct: SmolLM2-135M-Instruct "
        "learns IFEval-style instruction following (configs/instruct.yaml)",
    )
    s.add_argument("--rounds", type=int, default=3)
    s.add_argument("--fresh", action="store_true", help="forget earlier demo rounds first")
    s.set_defaults(fn=cmd_demo)
    s = sub.add_parser("rounds", help="one row per round")
    s.add_argument("--pipeline")
    s.add_argument("--json", action="store_true")
    s.add_argument("--attempts", action="store_true", help="one row per attempt of a round, with its error")
    s.add_argument(
        "--as-of-round", type=int, metavar="N", help="the catalog as it was when round N finished (DuckLake catalogs)"
    )
    s.set_defaults(fn=cmd_rounds)
    s = sub.add_parser("lineage", help="ancestry of an artifact or a training row")
    s.add_argument("id")
    s.add_argument("--json", action="store_true")
    s.add_argument("--graph", help="also draw the ancestry to this file; its suffix picks .svg, .png, .pdf or .dot")
    s.set_defaults(fn=cmd_lineage)
    s = sub.add_parser("server", help="start a local Prefect server and UI (on 127.0.0.1 unless --host)")
    s.add_argument("--port", type=int, default=4200)
    s.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface, for other machines)"
    )
    s.set_defaults(fn=cmd_server)
    s = sub.add_parser("serve", help="serve the flywheel-round and flywheel-nightly deployments of a pipeline")
    s.add_argument("--config", required=True)
    s.add_argument("--cron", default="0 2 * * *", help="schedule of flywheel-nightly (default 02:00 every day)")
    s.add_argument("--timezone", default="UTC", help="IANA timezone of the schedule, e.g. Europe/Paris")
    s.set_defaults(fn=cmd_serve)
    s = sub.add_parser("deploy", help="register the flywheel-round and flywheel-nightly deployments on a work pool")
    s.add_argument("--config", required=True)
    s.add_argument("--pool", required=True, help="work pool name (a process pool is created if missing)")
    s.add_argument("--cron", default="0 2 * * *", help="schedule of flywheel-nightly (default 02:00 every day)")
    s.add_argument("--timezone", default="UTC", help="IANA timezone of the schedule, e.g. Europe/Paris")
    s.set_defaults(fn=cmd_deploy)
    s = sub.add_parser("worker", help="run a process worker of a work pool: it runs the pool's rounds here")
    s.add_argument("--pool", required=True)
    s.add_argument("--limit", type=int, default=None, help="most flow runs at once on this machine (default: no cap)")
    s.add_argument(
        "--work-queue",
        action="append",
        help="take runs only from this queue of the pool (repeatable; created if missing); default: all queues",
    )
    s.set_defaults(fn=cmd_worker)
    s = sub.add_parser("catalog-rebuild", help="rebuild the catalog from the store's round manifests")
    s.add_argument("--config", required=True)
    s.add_argument("--out", help="where to write it (default: the home's catalog file)")
    s.add_argument("--force", action="store_true", help="replace an existing catalog file")
    s.set_defaults(fn=cmd_catalog_rebuild)
    s = sub.add_parser("promote", help="make an earlier round's candidate the pipeline's policy (rollback)")
    s.add_argument("--pipeline", required=True)
    s.add_argument("--round", type=int, required=True, help="the round whose model becomes the policy")
    s.add_argument(
        "--which",
        choices=["candidate", "policy"],
        default="candidate",
        help="that round's candidate (default), or the policy it ended with",
    )
    s.add_argument("--reason", required=True, help="why, recorded in the catalog with who and when")
    s.add_argument("--wait", action="store_true", help="wait for a running round of the pipeline instead of refusing")
    s.set_defaults(fn=cmd_promote)
    s = sub.add_parser("export", help="write the policy (or round N's candidate) as a plain model directory")
    s.add_argument("--config", required=True)
    s.add_argument("--round", type=int, default=None, help="round N's model instead of the current policy")
    s.add_argument(
        "--which",
        choices=["candidate", "policy"],
        default="candidate",
        help="with --round: the round's candidate (default) or the policy it ended with",
    )
    s.add_argument("dir", help="a new (or empty) directory")
    s.set_defaults(fn=cmd_export)
    s = sub.add_parser("validate", help="check a config file")
    s.add_argument("config")
    s.set_defaults(fn=cmd_validate)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "rounds", 1) is not None and getattr(args, "rounds", 1) < 1:
        print("flywheel: --rounds must be at least 1", file=sys.stderr)
        return 2
    from configs import ConfigError
    from tasks.stage import PreflightError, is_input_error

    try:
        return args.fn(args)
    except BrokenPipeError:  # `flywheel rounds --json | head`
        return 0
    except (ConfigError, PreflightError) as e:
        print(f"flywheel: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        # Errors meant for the user carry one clear line; print it instead of a library traceback.
        if is_input_error(e, frozenset({"EngineError"})):
            print(f"flywheel: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
