"""Operating the flywheel from Prefect: a real server, `flywheel serve`, and the UI in headless Chromium.

Starts `flywheel server` on a free loopback port, serves the pipeline's deployments with
`flywheel serve`, clicks Run -> Quick run on the flywheel-round deployment page (one click, no dialog),
waits for the round, then starts a Custom run with one field of the typed config form changed, and checks
the catalog, the store (round 2 used the changed field) and the Prefect artifacts; then the nightly schedule.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

from storage.s3server import free_port
from tests.conftest import HF_GENERATION

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROOT = Path(__file__).resolve().parents[1]


def _api(url: str, path: str, body: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        f"{url}/api{path}",
        data=data,
        method="GET" if body is None else "POST",
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read() or b"null")


def _wait(predicate, timeout: float, what: str, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _stop(proc: subprocess.Popen, sig=signal.SIGINT, timeout: float = 60) -> int:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise AssertionError(f"{proc.args[:4]} did not stop within {timeout} s of {sig!r}") from None
    return proc.returncode


def test_quick_run_from_the_ui_runs_a_round(make_config, tmp_path):
    assert Path(CHROMIUM).exists(), "Debian chromium is needed: apt-get install chromium (make test does it)"
    from playwright.sync_api import sync_playwright

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    home = tmp_path / "home"
    cfg = make_config(pipeline="ui", home=home, generation=HF_GENERATION)
    config = tmp_path / "ui.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_API_URL": f"{url}/api",
        "FLYWHEEL_HOME": str(home),
    }
    flywheel = [sys.executable, "-m", "flows.cli"]
    logs = {name: open(tmp_path / f"{name}.log", "w") for name in ("server", "serve")}
    server = subprocess.Popen(
        flywheel + ["server", "--port", str(port)],
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=logs["server"],
        stderr=subprocess.STDOUT,
    )
    serve = None
    try:
        _wait(lambda: _health(url), 90, "the Prefect server")
        serve = subprocess.Popen(
            flywheel + ["serve", "--config", str(config), "--timezone", "Europe/Paris"],
            cwd=tmp_path,
            env=env,
            start_new_session=True,
            stdout=logs["serve"],
            stderr=subprocess.STDOUT,
        )
        deployments = _wait(lambda: _deployments(url), 120, "both served deployments")
        round_dep = deployments["flywheel-round"]
        schema = round_dep["parameter_openapi_schema"]
        assert set(schema["properties"]) == {"cfg", "rounds", "overrides"}
        assert not schema.get("required")  # what lets Quick run start without a dialog

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{url}/deployments/deployment/{round_dep['id']}")
            page.get_by_role("button", name="Run", exact=True).click()
            # One click: the run is created straight away with the deployment's parameters, no dialog.
            with page.expect_response(lambda r: "create_flow_run" in r.url and r.request.method == "POST") as resp:
                page.get_by_text("Quick run", exact=True).click()
            assert resp.value.status == 201
            assert page.get_by_role("dialog").count() == 0
            run_id = resp.value.json()["id"]
            page.screenshot(path=str(tmp_path / "ui.png"))
            _wait_done(url, run_id, tmp_path)

            # Custom run: the typed form of the config, one field changed (the policy's sampling temperature).
            page.goto(f"{url}/deployments/deployment/{round_dep['id']}/run")
            temperature = page.locator(
                "xpath=//div[contains(@class,'schema-form-property')][./div[@class='p-label__header']"
                "//span[@class='schema-form-property__label' and text()='Temperature (Optional)']]"
                "[.//div[text()='Sampling temperature (0: greedy).']]//input"
            ).first
            assert float(temperature.input_value()) == cfg.generation.sampling.temperature
            temperature.fill("0.7")
            with page.expect_response(lambda r: "create_flow_run" in r.url and r.request.method == "POST") as resp:
                page.get_by_role("button", name="Submit").click()
            assert resp.value.status == 201
            custom_id = resp.value.json()["id"]
            browser.close()
        _wait_done(url, custom_id, tmp_path)

        # The round is in the catalog and the store, and its report is in Prefect.
        from storage.catalog import Catalog

        rnd, custom = Catalog(home / "catalog.duckdb").rounds("ui")
        assert custom["status"] == "completed" and custom["flow_run_id"] is not None
        assert rnd["status"] == "completed" and rnd["manifest_uri"].endswith("runs/ui/round-0001/manifest.json")
        from storage.store import open_store

        store = open_store(cfg.storage.uri, endpoint_url=cfg.storage.endpoint_url)
        assert store.exists("runs/ui/round-0001/manifest.json") and store.exists("runs/ui/round-0001/metrics.png")
        # The custom run was round 2, and it sampled with the temperature set in the form.
        sampled = [
            json.loads(store.get_bytes(f"runs/ui/round-{r:04d}/manifest.json"))["config"]["generation"]["sampling"]
            for r in (1, 2)
        ]
        assert [s["temperature"] for s in sampled] == [cfg.generation.sampling.temperature, 0.7]
        keys = {a["key"] for a in _api(url, "/artifacts/filter", {})}
        assert {"ui-round-summary", "ui-round-report"} <= keys

        # The nightly deployment: its cron and timezone, and runs scheduled ahead.
        nightly = deployments["flywheel-nightly"]
        (schedule,) = nightly["schedules"]
        assert schedule["schedule"]["cron"] == "0 2 * * *" and schedule["schedule"]["timezone"] == "Europe/Paris"
        upcoming = _wait(
            lambda: _api(
                url,
                "/flow_runs/filter",
                {"flow_runs": {"deployment_id": {"any_": [nightly["id"]]}, "state": {"type": {"any_": ["SCHEDULED"]}}}},
            ),
            60,
            "scheduled nightly runs",
        )
        assert len(upcoming) >= 1
    finally:
        if serve is not None:
            assert _stop(serve) is not None  # Ctrl-C stops the serve process, no hung process left behind
        _stop(server, signal.SIGTERM)
        for f in logs.values():
            f.close()


def _wait_done(url: str, run_id: str, tmp_path: Path) -> None:
    state = _wait(
        lambda: (s := _api(url, f"/flow_runs/{run_id}")["state_type"]) in ("COMPLETED", "FAILED", "CRASHED") and s,
        420,
        "the round started from the UI",
        every=3,
    )
    assert state == "COMPLETED", (tmp_path / "serve.log").read_text()[-4000:]


def _deployments(url: str) -> dict | None:
    found = {d["name"]: d for d in _api(url, "/deployments/filter", {})}
    return found if {"flywheel-round", "flywheel-nightly"} <= set(found) else None


def _health(url: str) -> bool:
    try:
        return _api(url, "/health") is True
    except OSError:
        return False
