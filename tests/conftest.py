"""Shared fixtures (real samples of the demo data, trained and saved models, Prefect's harness) and the quick-test
rules: a test not marked slow starts no process and takes a few seconds at most."""

from __future__ import annotations

import multiprocessing.util
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest

from driftloop.config import Config
from driftloop.datasets import load_flights
from driftloop.registry.lineage import code_version
from driftloop.training.trainer import TrainResult
from tests.helpers import make_config

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


@pytest.fixture
def config(tmp_path: Path) -> Config:
    """The demo config with its state under a fresh temporary folder."""
    return make_config(tmp_path / "state")


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """Prefect's test harness (a temporary server and database) for flows run in this process, started once per
    session (≈ 11 s) and shared by every test that asks for it."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=HARNESS_STARTUP_TIMEOUT_S):
        yield


@pytest.fixture(scope="session")
def pg_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A private PostgreSQL cluster (initdb in a temporary folder, loopback, free port) for the whole session, stopped
    at its end; tests/postgres.py. Only slow tests may ask for it (it starts the server)."""
    from tests.postgres import session_cluster

    yield from session_cluster(tmp_path_factory)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.slow)])
def log_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a test's prediction log lives, once per backend: a SQLite file, or a fresh database of the session's
    PostgreSQL cluster (those runs are slow: the cluster is a server process)."""
    if request.param == "sqlite":
        return str(tmp_path / "log" / "predictions.db")
    from tests.postgres import fresh_database

    return fresh_database(request.getfixturevalue("pg_cluster"))


@pytest.fixture
def restored_environ(tmp_path: Path) -> Iterator[None]:
    """For `driftloop.cli.main` run in the test's process: the variables it sets for its process (telemetry,
    PREFECT_HOME) are undone after the test."""
    saved = dict(os.environ)
    os.environ["PREFECT_HOME"] = str(tmp_path / "prefect")
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module")
def model_folders(tmp_path_factory: pytest.TempPathFactory, flights_jan: pd.DataFrame) -> dict[str, Path]:
    """Two real models saved with training.artifacts: versions '1' and '2' (different weights)."""
    from driftloop.training.artifacts import save_model
    from driftloop.training.features import fit_spec
    from driftloop.training.model import build_model

    config = make_config(tmp_path_factory.mktemp("unused"))
    spec = fit_spec(flights_jan, config.data)
    folders = {}
    for version, seed in (("1", 0), ("2", 1)):
        net = build_model(spec, config.model, seed=seed)
        folders[version] = save_model(tmp_path_factory.mktemp(f"model{version}"), net.state_dict(), spec,
                                      config.model)
    return folders


@pytest.fixture(scope="module")
def trained(flights_jan: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """One real single-process training on January flights (the trainer itself is tested elsewhere)."""
    from driftloop.training.trainer import train

    config = make_config(tmp_path_factory.mktemp("train"), training={"epochs": 6})
    return train(flights_jan, config, stages=1, progress=False)


# `make test-quick` runs every test not marked slow: such a test starts no process and uses a few CPU seconds at most.
QUICK_TEST_LIMIT_S = 5.0
# What the standard library's `platform` module runs when a library asks at import (MLflow, Prefect's croniter), and
# joblib's count of physical cores (lscpu, once per process: scikit-learn's HistGradientBoosting, the baseline of every
# training): not processes of the test's own.
PLATFORM_PROBES = {"uname", "file", "lscpu"}
code_version()  # cached per process: the git look-up every registration records, done once here


class ProcessStarted(AssertionError):
    """A test not marked slow started a process."""


def _refuse_process(*args: object, **kwargs: object) -> None:
    raise ProcessStarted("this test starts a process: mark it @pytest.mark.slow")


def _guarded_child(original: Callable[..., None]) -> Callable[..., None]:
    """subprocess.Popen's child start, refusing every program but the platform probes."""

    def start(self: subprocess.Popen, args: object, *rest: object, **kwargs: object) -> None:
        program = args[0] if isinstance(args, list | tuple) else str(args).split()[0]
        if Path(str(program)).name not in PLATFORM_PROBES:
            _refuse_process()
        original(self, args, *rest, **kwargs)

    return start


@contextmanager
def _no_processes(item: pytest.Item) -> Iterator[None]:
    """For a test not marked slow: any process it (or a fixture it sets up) starts fails it."""
    if item.get_closest_marker("slow") is not None:
        yield
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(subprocess.Popen, "_execute_child", _guarded_child(subprocess.Popen._execute_child))
        patch.setattr(multiprocessing.util, "spawnv_passfds", _refuse_process)
        patch.setattr(os, "fork", _refuse_process)
        yield


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    with _no_processes(item):
        return (yield)


CPU_SECONDS = pytest.StashKey[float]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    # CPU time of this process, not wall time: other work on a busy machine must not fail a quick test.
    start = time.process_time()
    try:
        with _no_processes(item):
            return (yield)
    finally:
        item.stash[CPU_SECONDS] = time.process_time() - start


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[pytest.TestReport]:
    """An unmarked test that passed but used more than QUICK_TEST_LIMIT_S of CPU fails, saying to mark it slow."""
    report = yield
    used = item.stash.get(CPU_SECONDS, 0.0)
    if (call.when == "call" and report.passed and item.get_closest_marker("slow") is None
            and used > QUICK_TEST_LIMIT_S):
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid} took {used:.1f} s of CPU, over the {QUICK_TEST_LIMIT_S:g} s of a quick "
                           "test: mark it @pytest.mark.slow (make test-quick runs every unmarked test)")
    return report
