"""Helpers the test modules share: configs, ports, the CLI in a child process, HTTP waits."""

from __future__ import annotations

import dataclasses
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
import uvicorn
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from driftloop.config import Config, demo_config_path, parse_config
from driftloop.errors import RegistryError
from driftloop.registry.lineage import build_lineage
from driftloop.training.artifacts import LoadedModel, load_model
from driftloop.training.trainer import TrainResult

REPO = Path(__file__).resolve().parents[1]
# The base URL of TestClients of the model server: a loopback name it answers (TestClient's own 'testserver' is a
# Host a loopback-bound server refuses, serving.allowed_hosts).
LOCAL = "http://127.0.0.1"


def demo_suite_path() -> Path:
    """The demo's saved suite (driftloop/configs/suites/), as an absolute path."""
    raw = yaml.safe_load(demo_config_path().read_text())
    return (demo_config_path().parent / raw["validation"]["suite"]).resolve()


def make_config(state_dir: Path, **overrides: dict) -> Config:
    """The demo config with a private state dir and small, fast settings, plus `overrides` per section."""
    raw = yaml.safe_load(demo_config_path().read_text())
    raw["state_dir"] = str(state_dir)
    # No validation split: tests count steps and rows of exactly `epochs` epochs; tests of early stopping set one.
    raw["training"].update({"epochs": 1, "batch_size": 256, "validation_fraction": 0.0, "min_epoch_steps": 1})
    # Suites built from each test's own reference, as its data expects; tests/test_checks_init.py tests the demo's
    # saved suite (validation.suite), which a test asks for with validation={"suite": demo_suite_path()}.
    raw["validation"].pop("suite", None)
    for section, values in overrides.items():
        raw.setdefault(section, {}).update(values)
    return parse_config(raw, "test config")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_http(url: str, timeout_s: float = 30.0) -> None:
    """Wait until `url` answers 200, or fail the test saying what did not come up."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
                last = f"HTTP {response.status}"
        except (OSError, urllib.error.URLError) as error:
            last = str(error)
        time.sleep(0.2)
    pytest.fail(f"{url} did not answer 200 within {timeout_s:g}s ({last})")


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run `driftloop ...` in a child process, as the console script does."""
    return subprocess.run([sys.executable, "-m", "driftloop.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def cli_here(capsys: pytest.CaptureFixture[str], *args: str) -> subprocess.CompletedProcess:
    """`driftloop ...` run in this process (driftloop.cli.main) with its output captured: the exit code and streams
    a user sees, without a child process's seconds of imports. Use it with the restored_environ fixture."""
    from driftloop.cli import main

    capsys.readouterr()
    code = main(list(args))
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(["driftloop", *args], code, captured.out, captured.err)


def assert_one_clean_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def rows_json(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as a real client sends them: JSON with ISO timestamps and null for missing values."""
    return json.loads(frame.to_json(orient="records", date_format="iso"))


def scrape(client: TestClient) -> dict[tuple[str, tuple], float]:
    """/metrics parsed: {(sample name, sorted labels): value}."""
    response = client.get("/metrics")
    assert response.status_code == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def metric(client: TestClient, name: str, **labels: str) -> float:
    """One sample from /metrics, 0 when absent."""
    return scrape(client).get((name, tuple(sorted(labels.items()))), 0.0)


def wait_for(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    """Poll `condition` until true, failing the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def wait_for_server(child: subprocess.Popen, base: str, timeout: float = 90.0) -> None:
    """Wait until the server process `child` answers 200 on {base}/healthz; fail if it exits first."""
    import httpx

    def up() -> bool:
        if child.poll() is not None:
            stderr = child.stderr.read() if child.stderr else ""
            raise AssertionError(f"server exited: {stderr.decode() if isinstance(stderr, bytes) else stderr}")
        try:
            return httpx.get(f"{base}/healthz").status_code == 200
        except httpx.TransportError:
            return False

    wait_for(up, timeout=timeout)


class Shelf:
    """Stand-in for the registry (not part of serving): saved versions and which one is champion."""

    def __init__(self, folders: dict[str, Path], champion: str | None = "1") -> None:
        self.folders = dict(folders)
        self.champion = champion
        self.loads = 0

    def version(self) -> str | None:
        return self.champion

    def load(self) -> LoadedModel:
        self.loads += 1
        version = self.champion
        if version not in self.folders:
            raise RegistryError(f"version {version} cannot be loaded")
        return load_model(self.folders[version], version=str(version))


def scrambled(result: TrainResult) -> TrainResult:
    """The same model with random weights: a clearly worse challenger."""
    generator = torch.Generator().manual_seed(1)
    state = {k: torch.randn(v.shape, generator=generator) for k, v in result.state.items()}
    return dataclasses.replace(result, state=state)


def lineage_for(config: Config, frame: pd.DataFrame) -> dict[str, str]:
    return build_lineage(config, frame, True, "report.html", "flow-run-1")


class ThreadedServer:
    """uvicorn on a free port in a thread of this process (so the test can move the champion)."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        wait_for(lambda: self.server.started, timeout=30)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


# ---------------------------------------------------------------------------------------------- browser

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"  # Debian's chromium, chromium-driver
# Failed loads that are the UIs' own harmless requests, not a page failing: Prefect serves no favicon at its root
# and its flow-run page asks for an icon named "undefined" (ico/undefined.svg, a UI bug); MLflow's UI asks for the
# signed-in user (an auth plugin driftloop does not install) and gets 404. Anything else fails a page test.
KNOWN_CONSOLE_NOISE = ("/favicon.ico - Failed to load resource", "/ico/undefined.svg - Failed to load resource",
                       "/ajax-api/2.0/mlflow/users/current - ")


def chromium(profile: Path) -> Any:
    """Headless Chromium under Selenium with no network of its own (no updates, sync or first-run calls) and a
    fresh profile; the browser console is kept (goog:loggingPrefs) for `console_errors`."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                     "--window-size=1400,1000"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


def console_errors(driver: Any) -> list[str]:
    """The SEVERE browser console entries since the last call (JavaScript errors, failed loads), known noise
    dropped. Reading the log empties it."""
    return [entry["message"] for entry in driver.get_log("browser")
            if entry["level"] == "SEVERE" and not any(noise in entry["message"] for noise in KNOWN_CONSOLE_NOISE)]


def page_text(driver: Any, url: str, expected: list[str], timeout_s: float = 60.0) -> str:
    """Open `url` and wait until the rendered page shows every expected text (single-page apps render late);
    the page's text. Fails naming what is missing."""
    driver.get(url)
    deadline = time.monotonic() + timeout_s
    while True:
        text = driver.find_element("tag name", "body").text
        missing = [item for item in expected if item not in text]
        if not missing:
            return text
        if time.monotonic() > deadline:
            pytest.fail(f"{url} does not show {missing} after {timeout_s:g} s; it shows: {text[:1500]!r}")
        time.sleep(1)
