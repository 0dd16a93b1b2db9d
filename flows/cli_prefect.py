"""`flywheel server`, `serve`, `deploy` and `worker`: the commands that start or talk to a Prefect server.

flywheel server                                   # one machine: a server + UI ...
flywheel serve --config X                         # ... and the deployments run in this process
flywheel deploy --config X --pool P               # several machines: the deployments on work pool P ...
flywheel worker --pool P                          # ... run by a worker on each machine (docs/work-pools.md)
"""

from __future__ import annotations

import os
import sys
import time

from flows import reaper


def cmd_server(args) -> int:
    """A local Prefect server + UI on 127.0.0.1, or --host (SQLite, offline), until Ctrl-C or SIGTERM."""
    import signal
    import subprocess
    import urllib.request

    def stop(*_):
        raise KeyboardInterrupt

    # SIGTERM (a supervisor, a test) ends this command like Ctrl-C does: through the cleanup below.
    signal.signal(signal.SIGTERM, stop)
    # Bound to args.host, 127.0.0.1 unless set: the server has no authentication. Other machines use the
    # address it listens on; on every interface (0.0.0.0) that is this machine's, which only the user knows.
    everywhere = args.host in ("0.0.0.0", "::")
    local = f"http://127.0.0.1:{args.port}" if everywhere else f"http://{args.host}:{args.port}"
    url = f"http://<this machine's address>:{args.port}" if everywhere else local
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    if not everywhere:  # the address the UI's browser calls the API on; else Prefect's default
        env["PREFECT_UI_API_URL"] = f"{local}/api"
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", args.host, "--port", str(args.port)]
    proc = subprocess.Popen(cmd, env=env)
    try:
        for _ in range(120):
            if proc.poll() is not None:
                raise SystemExit(f"prefect server exited with code {proc.returncode} (is port {args.port} free?)")
            try:
                urllib.request.urlopen(f"{local}/api/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        print(f"Prefect server and UI ready: {url}\nin other shells:  export PREFECT_API_URL={url}/api", flush=True)
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _schedule_error(cron: str, timezone: str) -> str | None:
    """What is wrong with --cron or --timezone, in one line; checked by the model Prefect validates them with,
    so what passes here is what the served schedule accepts."""
    from prefect.client.schemas.schedules import CronSchedule
    from pydantic import ValidationError

    try:
        CronSchedule(cron=cron, timezone=timezone)
    except ValidationError as e:
        if any(err["loc"][:1] == ("cron",) for err in e.errors()):
            return f'--cron: "{cron}" is not a cron expression (minute hour day month weekday), e.g. "0 2 * * *"'
        return (
            f'--timezone: unknown IANA zone "{timezone}": e.g. Europe/Paris; list them with '
            'python -c "import zoneinfo; print(sorted(zoneinfo.available_timezones()))"'
        )
    return None


def _need_server(cmd: str) -> str:
    """The Prefect API URL (from the environment or a Prefect profile), checked to answer, or exit saying why."""
    import urllib.request

    from flows.pipeline_limit import api_url

    api = api_url()
    if not api:
        raise SystemExit(f"flywheel {cmd}: set PREFECT_API_URL to a Prefect server (`flywheel server` prints it)")
    try:
        urllib.request.urlopen(f"{api.rstrip('/')}/health", timeout=5)
    except OSError as e:
        raise SystemExit(
            f"flywheel {cmd}: no Prefect server answers at {api} ({e}); start one with `flywheel server`"
        ) from None
    return api


def cmd_serve(args) -> int:
    """Register the pipeline's deployments with the server in PREFECT_API_URL and run them until Ctrl-C."""
    reaper.start()  # nothing this command starts (engines, Prefect's server) outlives it
    from configs import load_config
    from flows.deployments import serve_pipeline
    from flows.preflight import quiet_input_errors

    if problem := _schedule_error(args.cron, args.timezone):  # before the server, the config or the runner
        print(f"flywheel: {problem}", file=sys.stderr)
        return 2
    _need_server("serve")
    cfg = load_config(args.config, home=args.home)
    quiet_input_errors()
    try:
        serve_pipeline(cfg, args.cron, args.timezone)
    except KeyboardInterrupt:
        pass
    return 0


def cmd_deploy(args) -> int:
    """Register the pipeline's deployments on a work pool (a process pool, created if missing)."""
    from configs import load_config
    from flows.deployments import NIGHTLY_DEPLOYMENT, ROUND_DEPLOYMENT, deploy_pipeline, ensure_pool

    if problem := _schedule_error(args.cron, args.timezone):
        print(f"flywheel: {problem}", file=sys.stderr)
        return 2
    api = _need_server("deploy")
    cfg = load_config(args.config, home=args.home)
    kind = ensure_pool(args.pool)
    deploy_pipeline(cfg, args.pool, args.cron, args.timezone)
    print(
        f"pipeline {cfg.pipeline!r}: deployments flywheel-pipeline/{ROUND_DEPLOYMENT} and "
        f"flywheel-pipeline/{NIGHTLY_DEPLOYMENT} ({args.cron}, {args.timezone}) on {kind} work pool "
        f"{args.pool!r} at {api}\nrun them with a worker:  flywheel worker --pool {args.pool}\n"
        f"start a round now:       prefect deployment run flywheel-pipeline/{ROUND_DEPLOYMENT}"
    )
    return 0


def cmd_worker(args) -> int:
    """Become a Prefect process worker of the pool: it polls for the pool's flow runs and runs each in a
    subprocess, until Ctrl-C or SIGTERM (`prefect worker start --pool P` does the same)."""
    from flows.deployments import ensure_pool

    _need_server("worker")
    kind = ensure_pool(args.pool)
    if kind != "process":
        raise SystemExit(
            f"flywheel worker: work pool {args.pool!r} is a {kind} pool; start its worker where {kind} runs: "
            f"prefect worker start --pool {args.pool} (docs/work-pools.md)"
        )
    cmd = [sys.executable, "-m", "prefect", "worker", "start", "--pool", args.pool, "--type", "process"]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    for queue in args.work_queue or []:  # created in the pool if missing; without one, every queue is polled
        cmd += ["--work-queue", queue]
    sys.stdout.flush()
    # exec, not a child: signals reach the worker itself, which stops its flow runs' processes on the way out.
    os.execv(sys.executable, cmd)
    return 0  # not reached
