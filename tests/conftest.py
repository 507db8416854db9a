"""Shared fixtures: telemetry off, a config for the demo data and small real samples of it."""

from __future__ import annotations

import os
import socket
import time
import urllib.error
import urllib.request

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402

from driftloop.config import Config, demo_config_path, parse_config  # noqa: E402
from driftloop.datasets import load_flights  # noqa: E402

# A first start migrates a new SQLite database: on 2 busy cores that can exceed the harness's 30 s default.
HARNESS_STARTUP_TIMEOUT_S = 180


@pytest.fixture(scope="session")
def flights() -> pd.DataFrame:
    """The whole real demo dataset, loaded once per test session."""
    return load_flights()


@pytest.fixture(scope="session")
def flights_jan(flights: pd.DataFrame) -> pd.DataFrame:
    """A small real sample: 4,000 January flights in time order."""
    jan = flights[flights["time_hour"] < pd.Timestamp("2013-02-01", tz="UTC")]
    return jan.sample(4000, random_state=0).sort_values("time_hour", kind="stable").reset_index(drop=True)


@pytest.fixture(scope="session")
def flights_jul(flights: pd.DataFrame) -> pd.DataFrame:
    """A small real sample of July flights: warmer weather, a drifted window."""
    jul = flights[(flights["time_hour"] >= pd.Timestamp("2013-07-01", tz="UTC"))
                  & (flights["time_hour"] < pd.Timestamp("2013-08-01", tz="UTC"))]
    return jul.sample(2000, random_state=0).sort_values("time_hour", kind="stable").reset_index(drop=True)


def demo_suite_path() -> Path:
    """The demo's saved suite (driftloop/configs/suites/), as an absolute path."""
    raw = yaml.safe_load(demo_config_path().read_text())
    return (demo_config_path().parent / raw["validation"]["suite"]).resolve()


def make_config(state_dir: Path, **overrides: dict) -> Config:
    """The demo config with a private state dir and small, fast settings, plus `overrides` per section."""
    raw = yaml.safe_load(demo_config_path().read_text())
    raw["state_dir"] = str(state_dir)
    raw["training"].update({"epochs": 1, "batch_size": 256})
    # Suites built from each test's own reference, as its data expects; tests/test_checks_init.py tests the demo's
    # saved suite (validation.suite), which a test asks for with validation={"suite": demo_suite_path()}.
    raw["validation"].pop("suite", None)
    for section, values in overrides.items():
        raw.setdefault(section, {}).update(values)
    return parse_config(raw, "test config")


@pytest.fixture
def config(tmp_path: Path) -> Config:
    """The demo config with its state under a fresh temporary folder."""
    return make_config(tmp_path / "state")


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """Prefect's test harness (a temporary server and database) for flows run in this process, started once per
    session (≈ 11 s) and shared by every test that asks for it (DESIGN.md: one harness per session)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=HARNESS_STARTUP_TIMEOUT_S):
        yield


@pytest.fixture
def restored_environ(tmp_path: Path) -> Iterator[None]:
    """For `driftloop.cli.main` run in the test's process: the variables it sets for its process (telemetry,
    PREFECT_HOME) are undone after the test."""
    saved = dict(os.environ)
    os.environ["PREFECT_HOME"] = str(tmp_path / "prefect")
    yield
    os.environ.clear()
    os.environ.update(saved)


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
