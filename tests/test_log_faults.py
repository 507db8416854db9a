"""Faults of the prediction log, made for real: a label import killed with SIGKILL halfway (both backends), and a
full disk on the log's filesystem (a small tmpfs mounted for the test; needs root or CAP_SYS_ADMIN, skipped only when
mount is refused), which also makes the WAL checkpoints fail. benchmarks/README.md has the table of these faults."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml
from fastapi.testclient import TestClient

from driftloop.metrics import LOG_CHECKPOINT_ERRORS
from driftloop.serving.app import create_app
from driftloop.serving.log import is_postgres
from driftloop.serving.prediction_log import LogBase, PredictionLog, open_log_at
from tests.helpers import LOCAL, REPO, Shelf, make_config, metric, rows_json

TMPFS_SIZE = "8m"
LABELS_TOKEN = "faults-labels-token"


def count_labels(log: LogBase) -> int:
    with log._lock:
        return int(log._execute("SELECT COUNT(*) FROM labels")[0][0])


@pytest.mark.slow
def test_kill_9_during_a_label_import_loses_nothing_and_the_import_resumes(
        log_uri: str, tmp_path: Path, flights_jan: pd.DataFrame) -> None:
    postgres = is_postgres(log_uri)
    config = make_config(tmp_path / "state", serving={"log_uri": log_uri if postgres else None,
                                                       "label_import_chunk_rows": 100})
    location = log_uri if postgres else str(config.state_dir.resolve() / "predictions.db")
    rows = rows_json(flights_jan.head(200))
    with open_log_at(location, pii=config.data.pii) as log:
        ids = [i for _ in range(100) for i in log.append(rows, [0.5] * len(rows), "1")]  # 20,000 predictions
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"prediction_id": ids, "label": [i % 2 for i in ids]}).to_csv(labels, index=False)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    command = [sys.executable, "-m", "driftloop.cli", "label", "--config", str(config_path), "--file", str(labels)]

    acknowledged: list[int] = []
    latencies: list[float] = []
    stop = threading.Event()
    with open_log_at(location, pii=config.data.pii) as log:

        def serve() -> None:  # the model server's commits go on during the import
            while not stop.is_set():
                start = time.perf_counter()
                acknowledged.extend(log.append(rows[:5], [0.5] * 5, "1"))
                latencies.append(time.perf_counter() - start)

        server = threading.Thread(target=serve)
        server.start()
        child = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 120
            while count_labels(log) < 300 and time.monotonic() < deadline:
                time.sleep(0.005)
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=30)
        finally:
            if child.poll() is None:
                child.kill()
            stop.set()
            server.join()
        written = count_labels(log)
        assert 300 <= written < len(ids)  # killed halfway
        assert written % 100 == 0  # whole chunks only: each one committed or not at all
        read = log.read_index()
        assert set(ids + acknowledged) <= set(read["prediction_id"])  # 0 acknowledged predictions lost
        assert len(read) == len(ids) + len(acknowledged)
        assert max(latencies) < 2.0, f"a commit waited {max(latencies):.2f} s behind the import"
    resumed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip() == f"labelled {len(ids) - written} predictions"
    with open_log_at(location) as log:
        logged = log.read(ids[0], ids[-1])
        history = log.label_history()
    assert logged["label"].tolist() == [float(i % 2) for i in ids]
    assert len(history) == len(ids) and history["prediction_id"].is_unique


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A TMPFS_SIZE tmpfs mounted for the test (the log's filesystem), unmounted after."""
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(folder)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path) -> Path:
    """Write a file until the filesystem is full; the file (delete it to free the space)."""
    filler = folder / "filler"
    with filler.open("wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError as error:
            assert error.errno == errno.ENOSPC
    return filler


@pytest.mark.slow
def test_a_full_disk_is_507_loses_nothing_acknowledged_and_checkpoint_errors_are_survived(
        small_disk: Path, tmp_path: Path, model_folders: dict[str, Path], flights_jan: pd.DataFrame,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTLOOP_LABELS_TOKEN", LABELS_TOKEN)
    config = make_config(tmp_path / "state", serving={"max_batch_rows": 1000})
    log = PredictionLog(small_disk / "predictions.db", pii=config.data.pii)
    rows = rows_json(flights_jan.head(1000))
    acknowledged: list[int] = []
    statuses: list[int] = []
    shelf = Shelf(model_folders)
    with TestClient(create_app(config, shelf.load, shelf.version, log),
                    base_url=LOCAL) as client:

        def predict(count: int) -> None:
            answer = client.post("/predict", json={"rows": rows[:count]})
            statuses.append(answer.status_code)
            if answer.status_code == 200:
                acknowledged.extend(answer.json()["prediction_ids"])
            else:
                assert answer.status_code == 507, answer.text
                assert "disk is full" in answer.json()["detail"] and "free space" in answer.json()["detail"]

        for _ in range(3):  # the WAL grows to its working size and is checkpointed into the database file
            predict(1000)
        time.sleep(2.5)
        filler = fill(small_disk)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (507 not in statuses or log.checkpoint_errors == 0):
            predict(20)
            time.sleep(0.02)
        assert 507 in statuses and 500 not in statuses
        assert log.checkpoint_errors >= 1
        assert metric(client, LOG_CHECKPOINT_ERRORS) == log.checkpoint_errors  # counted in the server's metrics
        assert any(t.name == "prediction-log-checkpoint" for t in threading.enumerate())  # the thread survived
        assert client.get("/healthz").status_code == 200
        filler.unlink()
        failed_checkpoints = log.checkpoint_errors
        predict(20)
        assert statuses[-1] == 200  # recovered once space is free
        time.sleep(2.5)
        assert log.checkpoint_errors == failed_checkpoints  # checkpoints succeed again
        predict(20)
        assert statuses[-1] == 200
    log.close()
    with PredictionLog(small_disk / "predictions.db") as reopened:
        stored = reopened.read_index()["prediction_id"].tolist()
    assert stored == sorted(acknowledged)  # every acknowledged row, and no row of a refused request
