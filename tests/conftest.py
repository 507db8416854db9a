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

from pathlib import Path  # noqa: E402

import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402

from driftloop.config import Config, demo_config_path, parse_config  # noqa: E402
from driftloop.datasets import load_flights  # noqa: E402


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


def make_config(state_dir: Path, **overrides: dict) -> Config:
    """The demo config with a private state dir and small, fast settings, plus `overrides` per section."""
    raw = yaml.safe_load(demo_config_path().read_text())
    raw["state_dir"] = str(state_dir)
    raw["training"].update({"epochs": 1, "batch_size": 256})
    for section, values in overrides.items():
        raw.setdefault(section, {}).update(values)
    return parse_config(raw, "test config")


@pytest.fixture
def config(tmp_path: Path) -> Config:
    """The demo config with its state under a fresh temporary folder."""
    return make_config(tmp_path / "state")


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
