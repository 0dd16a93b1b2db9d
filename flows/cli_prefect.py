"""`flywheel server` and `flywheel serve`: the commands that start or talk to a Prefect server."""

from __future__ import annotations

import os
import sys
import time

from flows import reaper


def cmd_server(args) -> int:
    """A local Prefect server + UI on 127.0.0.1 (SQLite, offline), until Ctrl-C or SIGTERM."""
    import signal
    import subprocess
    import urllib.request

    def stop(*_):
        raise KeyboardInterrupt

    # SIGTERM (a supervisor, a test) ends this command like Ctrl-C does: through the cleanup below.
    signal.signal(signal.SIGTERM, stop)
    url = f"http://127.0.0.1:{args.port}"
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_API_URL": f"{url}/api"}
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(args.port)]
    proc = subprocess.Popen(cmd, env=env)
    try:
        for _ in range(120):
            if proc.poll() is not None:
                raise SystemExit(f"prefect server exited with code {proc.returncode} (is port {args.port} free?)")
            try:
                urllib.request.urlopen(f"{url}/api/health", timeout=2)
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


def cmd_serve(args) -> int:
    """Register the pipeline's deployments with the server in PREFECT_API_URL and run them until Ctrl-C."""
    reaper.start()  # nothing this command starts (engines, Prefect's server) outlives it
    import urllib.request

    from configs import load_config
    from flows.deployments import serve_pipeline
    from flows.preflight import quiet_input_errors

    if problem := _schedule_error(args.cron, args.timezone):  # before the server, the config or the runner
        print(f"flywheel: {problem}", file=sys.stderr)
        return 2
    api = os.environ.get("PREFECT_API_URL")
    if not api:
        raise SystemExit("flywheel serve: set PREFECT_API_URL to a Prefect server (`flywheel server` prints it)")
    try:
        urllib.request.urlopen(f"{api.rstrip('/')}/health", timeout=5)
    except OSError as e:
        raise SystemExit(
            f"flywheel serve: no Prefect server answers at {api} ({e}); start one with `flywheel server`"
        ) from None
    cfg = load_config(args.config, home=args.home)
    quiet_input_errors()
    try:
        serve_pipeline(cfg, args.cron, args.timezone)
    except KeyboardInterrupt:
        pass
    return 0
