"""The model server in operation: shadow mode, int8, safe artifacts, request checks, admin endpoints, durability."""

from __future__ import annotations

import json
import os
import pickle
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from fastapi.testclient import TestClient

from driftloop.config import Config
from driftloop.errors import DriftloopError, RegistryError
from driftloop.metrics import MODEL_QUANTIZED, SHADOW_FAILURES, SHADOW_ROWS
from driftloop.serving.app import AliasSource, create_app
from driftloop.serving.prediction_log import PredictionLog
from driftloop.training.artifacts import LoadedModel, PickledArtifactError, load_model
from tests.helpers import (
    LOCAL,
    REPO,
    Shelf,
    ThreadedServer,
    free_port,
    make_config,
    metric,
    rows_json,
    wait_for,
    wait_for_server,
)

TOKEN = "s3cret-admin-token"


@pytest.fixture(autouse=True)
def admin_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTLOOP_ADMIN_TOKEN", TOKEN)


def app_config(config: Config, **serving: Any) -> Config:
    return make_config(config.state_dir, serving={"reload_interval_s": 0.02, "max_batch_rows": 600, **serving})


@pytest.fixture
def shadow_server(config: Config, model_folders) -> Iterator[tuple[TestClient, Shelf, Shelf, PredictionLog]]:
    config = app_config(config, shadow=True)
    champion, challenger = Shelf(model_folders, "1"), Shelf(model_folders, "2")
    log = PredictionLog(config.state_dir / "predictions.db", pii=config.data.pii)
    app = create_app(config, champion.load, champion.version, log,
                     challenger=AliasSource(challenger.load, challenger.version))
    with TestClient(app, base_url=LOCAL) as client:
        yield client, champion, challenger, log
    log.close()


# ---------------------------------------------------------------- shadow mode


def test_shadow_challenger_is_logged_beside_the_champion(shadow_server, flights_jan, model_folders) -> None:
    client, champion, challenger, log = shadow_server
    sample = flights_jan.head(20)
    wait_for(lambda: client.get("/healthz").json()["challenger_version"] == "2")
    body = client.post("/predict", json={"rows": rows_json(sample)}).json()
    assert body["model_version"] == "1"
    np.testing.assert_allclose(body["predictions"], load_model(model_folders["1"]).predict(sample), rtol=1e-6)
    logged = log.read()
    assert (logged["shadow_version"] == "2").all()
    np.testing.assert_allclose(logged["shadow_prediction"], load_model(model_folders["2"]).predict(sample), rtol=1e-6)
    assert metric(client, SHADOW_ROWS, model_version="2") == 20

    challenger.champion = "1"  # the challenger alias now names the champion: nothing to shadow
    wait_for(lambda: client.get("/healthz").json()["challenger_version"] is None)
    client.post("/predict", json={"rows": rows_json(sample.head(2))})
    assert log.read().tail(2)["shadow_version"].isna().all()
    challenger.champion = None  # the alias vanished
    client.post("/predict", json={"rows": rows_json(sample.head(2))})
    assert log.read().tail(2)["shadow_prediction"].isna().all()


@dataclass
class Exploding(LoadedModel):
    """A model that loads and passes its smoke test, then raises on live traffic."""

    calls: int = 0

    def predict_rows(self, rows):  # noqa: ANN001, ANN201
        self.calls += 1
        if self.calls > 1:  # the first call is the smoke test
            raise RuntimeError("challenger blew up")
        return super().predict_rows(rows)


def test_failing_challenger_never_fails_a_request(config, model_folders, flights_jan) -> None:
    config = app_config(config, shadow=True)
    champion = Shelf(model_folders, "1")
    good = load_model(model_folders["2"], version="2")
    exploding = Exploding(good.net, good.spec, "2")
    with TestClient(create_app(config, champion.load, champion.version,
                               challenger=AliasSource(lambda: exploding, lambda: "2")), base_url=LOCAL) as client:
        response = client.post("/predict", json={"rows": rows_json(flights_jan.head(5))})
        assert response.status_code == 200 and response.json()["model_version"] == "1"
        assert metric(client, SHADOW_FAILURES, stage="score") == 1
    logged = PredictionLog(config.state_dir / "predictions.db").read()
    assert len(logged) == 5 and logged["shadow_version"].isna().all()


def test_old_log_files_are_migrated_and_stay_readable(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:  # the schema before shadow mode
        db.execute("CREATE TABLE predictions (prediction_id INTEGER PRIMARY KEY AUTOINCREMENT, logged_at TEXT NOT "
                   "NULL, model_version TEXT NOT NULL, prediction REAL NOT NULL, label REAL, event_time TEXT, "
                   "features TEXT NOT NULL)")
        db.execute("INSERT INTO predictions (logged_at, model_version, prediction, features) VALUES "
                   "('2026-01-01T00:00:00+00:00', '1', 0.25, '{\"distance\": 5}')")
    log = PredictionLog(path)
    assert log.append([{"distance": 6}], [0.5], "2", shadow_version="3", shadow_predictions=[0.75]) == [2]
    frame = log.read()
    assert frame["distance"].tolist() == [5, 6]
    assert frame["shadow_version"].tolist() == [None, "3"]
    assert np.isnan(frame["shadow_prediction"][0]) and frame["shadow_prediction"][1] == 0.75
    log.close()
    PredictionLog(path).close()  # opening a migrated file again changes nothing


# ---------------------------------------------------------------- int8


def labelled_log(config: Config, flights: pd.DataFrame) -> None:
    """A prediction log holding labelled real traffic (the quantization gate's evidence)."""
    with PredictionLog(config.state_dir / "predictions.db", pii=config.data.pii) as log:
        ids = log.append([{c: v for c, v in r.items() if c in config.data.features} for r in rows_json(flights)],
                         [0.5] * len(flights), "0")
        log.attach_labels(ids, flights["arr_delayed"].astype(float).tolist())


@pytest.mark.parametrize("tolerance", [0.05, 0.0])
def test_int8_is_served_only_within_tolerance(config, model_folders, flights_jan, tolerance: float) -> None:
    config = app_config(config, quantize=True, quantize_tolerance=tolerance)
    labelled_log(config, flights_jan.head(1000))
    shelf = Shelf(model_folders, "1")
    sample = flights_jan.tail(200)
    with TestClient(create_app(config, shelf.load, shelf.version), base_url=LOCAL) as client:
        health = client.get("/healthz").json()
        served = np.array(client.post("/predict", json={"rows": rows_json(sample)}).json()["predictions"])
        gauge = metric(client, MODEL_QUANTIZED, model="flights-delay")
    float_predictions = load_model(model_folders["1"]).predict(sample)
    if tolerance > 0:
        assert health["quantized"] is True and gauge == 1
        delta = np.abs(served - float_predictions)
        assert 0 < delta.max() < 0.05  # int8 answers differ from float, by a little
    else:
        assert health["quantized"] is False and gauge == 0
        np.testing.assert_allclose(served, float_predictions, rtol=1e-6)


# ---------------------------------------------------------------- safe artifacts


class Marker:
    """Unpickling this creates a file: proof that a pickle was executed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):  # noqa: ANN204
        return (Path.touch, (self.path,))


@pytest.mark.parametrize("kind", ["pkl", "torch_save", "legacy_torch", "pyfunc_pickle"])
def test_pickled_artifacts_are_refused_before_unpickling(model_folders, tmp_path: Path, kind: str) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    for item in model_folders["1"].iterdir():
        (folder / item.name).write_bytes(item.read_bytes())
    marker = tmp_path / "executed"
    if kind == "pkl":
        culprit = folder / "extra.pkl"
        culprit.write_bytes(pickle.dumps(Marker(marker)))
    elif kind == "torch_save":
        culprit = folder / "weights.pt"
        torch.save({"w": torch.zeros(2), "boom": Marker(marker)}, culprit)
    elif kind == "legacy_torch":
        culprit = folder / "weights.bin"
        torch.save({"boom": Marker(marker)}, culprit, _use_new_zipfile_serialization=False)
    else:  # an MLflow pyfunc whose python_model is a cloudpickle, around the weights folder
        root = tmp_path / "pyfunc"
        (root / "artifacts").mkdir(parents=True)
        folder = folder.rename(root / "artifacts" / "model")
        culprit = root / "MLmodel"
        culprit.write_text(yaml.safe_dump({"flavors": {"python_function": {"python_model": "python_model.data",
                                                                           "loader_module": "mlflow.pyfunc.model"}}}))
    with pytest.raises(PickledArtifactError, match=culprit.name) as refused:
        load_model(folder)
    assert isinstance(refused.value, DriftloopError)
    assert not marker.exists(), "a pickle was executed"


def test_models_logged_as_code_with_safetensors_still_load(model_folders, tmp_path: Path) -> None:
    root = tmp_path / "pyfunc"
    folder = root / "artifacts" / "model"
    folder.mkdir(parents=True)
    for item in model_folders["1"].iterdir():
        (folder / item.name).write_bytes(item.read_bytes())
    (root / "MLmodel").write_text(yaml.safe_dump({"flavors": {"python_function": {
        "cloudpickle_version": "3.1", "loader_module": "mlflow.pyfunc.loaders.code_model",
        "model_code_path": "pyfunc_model.py"}}}))
    assert load_model(folder, version="1").version == "1"


def test_no_torch_load_without_weights_only() -> None:
    offenders = []
    for path in REPO.rglob("*.py"):
        if ".venv" in path.parts or path.name == Path(__file__).name:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if "torch.load(" in line and "weights_only=True" not in line:
                offenders.append(f"{path.relative_to(REPO)}:{number}")
    assert not offenders


# ---------------------------------------------------------------- requests


def _row(flights_jan: pd.DataFrame) -> dict[str, Any]:
    return rows_json(flights_jan.head(1))[0]


BAD_BODIES = {
    "malformed JSON": lambda r: b'{"rows": [',
    "rows not a list": lambda r: json.dumps({"rows": r}).encode(),
    "no rows key": lambda r: json.dumps([r]).encode(),
    "missing column": lambda r: json.dumps({"rows": [{k: v for k, v in r.items() if k != "temp"}]}).encode(),
    "wrong type": lambda r: json.dumps({"rows": [{**r, "distance": "far"}]}).encode(),
    "NaN": lambda r: json.dumps({"rows": [{**r, "temp": float("nan")}]}).encode(),
    "Infinity": lambda r: json.dumps({"rows": [{**r, "temp": float("inf")}]}).encode(),
    "unknown category": lambda r: json.dumps({"rows": [r, {**r, "carrier": "ZZ"}]}).encode(),
    "too many rows": lambda r: json.dumps({"rows": [r] * 601}).encode(),
}


def test_bad_requests_are_422_naming_the_fault_and_log_nothing(config, model_folders, flights_jan) -> None:
    config = app_config(config, unknown_category="reject")
    shelf = Shelf(model_folders, "1")
    row = _row(flights_jan)
    with TestClient(create_app(config, shelf.load, shelf.version), base_url=LOCAL) as client:
        assert client.post("/predict", json={"rows": [row]}).status_code == 200
        log: PredictionLog = client.app.state.log
        for case, make in BAD_BODIES.items():
            before = log.last_id()
            response = client.post("/predict", content=make(row), headers={"content-type": "application/json"})
            assert response.status_code == 422, (case, response.text)
            assert log.last_id() == before, case
            detail = response.json()["detail"]
            text = json.dumps(detail)
            expected = {"missing column": "temp", "wrong type": "distance", "NaN": "temp", "Infinity": "temp",
                        "unknown category": "ZZ", "too many rows": "600", "rows not a list": "rows"}.get(case)
            assert expected is None or expected in text, (case, detail)
        unknown = client.post("/predict", json={"rows": [row, {**row, "carrier": "ZZ"}]}).json()["detail"]
        assert unknown == [{"row": 1, "field": "carrier",
                            "error": "unknown category 'ZZ' (serving.unknown_category is reject)"}]


def test_unknown_category_scores_as_unknown_bucket_by_default(config, model_folders, flights_jan) -> None:
    config = app_config(config)
    shelf = Shelf(model_folders, "1")
    row = _row(flights_jan)
    with TestClient(create_app(config, shelf.load, shelf.version), base_url=LOCAL) as client:
        odd = client.post("/predict", json={"rows": [{**row, "carrier": "ZZ"}]})
        null = client.post("/predict", json={"rows": [{**row, "carrier": None}]})
    assert odd.status_code == 200 and odd.json()["predictions"] == null.json()["predictions"]


# ---------------------------------------------------------------- admin


@dataclass(frozen=True)
class FakeRollback:
    from_version: str
    to_version: str
    reason: str


def test_admin_token_file_is_created_private(config, model_folders, monkeypatch) -> None:
    monkeypatch.delenv("DRIFTLOOP_ADMIN_TOKEN")
    shelf = Shelf(model_folders, "1")
    create_app(app_config(config), shelf.load, shelf.version)
    token_file = config.state_dir / "serving" / "admin.token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600 and len(token_file.read_text().strip()) >= 32


def test_admin_reload_and_rollback_need_the_token(config, model_folders) -> None:
    config = make_config(config.state_dir, serving={"reload_interval_s": 3600})  # only admin calls reload
    shelf = Shelf(model_folders, "1")
    calls: list[str | None] = []

    def rollback(to_version: str | None = None) -> FakeRollback:
        calls.append(to_version)
        if to_version == "9":
            raise RegistryError("model flights-delay has no version 9 to roll back to")
        shelf.champion = "1"
        return FakeRollback("2", "1", "rolled back by admin")

    auth = {"Authorization": f"Bearer {TOKEN}"}
    with TestClient(create_app(config, shelf.load, shelf.version, rollback=rollback), base_url=LOCAL) as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            assert client.post("/admin/reload", headers=headers).status_code == 401
            assert client.post("/admin/rollback", headers=headers).status_code == 401
        assert calls == [] and shelf.loads == 1

        assert client.post("/admin/reload", headers=auth).json()["changed"] is False
        shelf.champion = "2"
        reloaded = client.post("/admin/reload", headers=auth).json()
        assert reloaded["model_version"] == "2" and reloaded["changed"] is True

        rolled = client.post("/admin/rollback", headers=auth).json()
        assert rolled["from_version"] == "2" and rolled["to_version"] == "1" and rolled["model_version"] == "1"
        assert rolled["changed"] is True and calls == [None]
        refused = client.post("/admin/rollback", headers=auth, json={"to_version": "9"})
        assert refused.status_code == 409 and "version 9" in refused.json()["detail"]
        assert client.get("/healthz").json()["model_version"] == "1"


# ---------------------------------------------------------------- a real server: swaps under load, kill -9


@pytest.mark.slow
def test_swaps_under_load_lose_no_request(config, model_folders, flights_jan) -> None:
    config = app_config(config)
    shelf = Shelf(model_folders, "1")
    rows = rows_json(flights_jan.head(200))
    answers: list[tuple[int, str, list[int]]] = []
    stop = threading.Event()

    def fire(worker: int) -> None:
        with httpx.Client(base_url=base, timeout=30) as http:
            i = worker
            while not stop.is_set():
                response = http.post("/predict", json={"rows": rows[i % 200:i % 200 + 3]})
                body = response.json()
                answers.append((response.status_code, body.get("model_version"), body.get("prediction_ids")))
                i += 7

    with ThreadedServer(create_app(config, shelf.load, shelf.version)) as base, ThreadPoolExecutor(6) as pool:
        for worker in range(6):
            pool.submit(fire, worker)
        for version in ("2", "1"):  # the champion changes twice under load
            time.sleep(0.7)
            shelf.champion = version
            wait_for(lambda v=version: httpx.get(f"{base}/healthz").json()["model_version"] == v)
        time.sleep(0.5)
        stop.set()
    assert answers and all(status == 200 for status, _, _ in answers)
    assert {version for _, version, _ in answers} == {"1", "2"}
    acknowledged = [i for _, _, ids in answers for i in ids]
    logged = PredictionLog(config.state_dir / "predictions.db").read()
    assert len(acknowledged) == len(set(acknowledged)) == len(logged)
    assert sorted(acknowledged) == logged["prediction_id"].tolist()


CHILD_SERVER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from driftloop.config import load_config
    from driftloop.serving.server import serve
    from driftloop.training.artifacts import load_model

    config, folder, port = load_config(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    serve(config, lambda: load_model(folder, version="1"), lambda: "1", port=port)
""")


@pytest.mark.slow
def test_acknowledged_predictions_survive_kill_9_of_the_server(config, model_folders, flights_jan, tmp_path) -> None:
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    port = free_port()
    child = subprocess.Popen([sys.executable, "-c", CHILD_SERVER, str(config_file), str(model_folders["1"]),
                              str(port)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    rows = rows_json(flights_jan.head(100))
    acknowledged: list[int] = []
    try:
        wait_for_server(child, base, timeout=60)

        def one(i: int) -> list[int]:
            return httpx.post(f"{base}/predict", json={"rows": rows[i % 99:i % 99 + 2]}).json()["prediction_ids"]

        with ThreadPoolExecutor(8) as pool:  # concurrent requests: they share group commits
            for ids in pool.map(one, range(200)):
                acknowledged += ids
    finally:
        os.kill(child.pid, signal.SIGKILL)  # right after the last answer: no clean shutdown
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL and len(acknowledged) == 400
    logged = PredictionLog(config.state_dir / "predictions.db").read()
    assert set(acknowledged) <= set(logged["prediction_id"]) and len(set(acknowledged)) == 400


CHILD_WRITER = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from driftloop.serving.prediction_log import PredictionLog

    log = PredictionLog(Path(sys.argv[1]))
    tag, ids = sys.argv[2], []
    for n in range(150):
        ids += log.append([{"writer": tag, "n": n}] * 3, [0.5] * 3, tag)
    print(json.dumps(ids))
""")


@pytest.mark.slow
def test_two_processes_append_at_once(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    PredictionLog(path).close()
    children = [subprocess.Popen([sys.executable, "-c", CHILD_WRITER, str(path), tag], cwd=REPO,
                                 stdout=subprocess.PIPE, text=True) for tag in ("a", "b")]
    results = [json.loads(child.communicate(timeout=120)[0]) for child in children]
    assert all(child.returncode == 0 for child in children)
    ids = results[0] + results[1]
    assert len(ids) == len(set(ids)) == 900
    logged = PredictionLog(path).read().set_index("prediction_id")
    assert sorted(logged.index) == sorted(ids)
    for tag, mine in zip("ab", results, strict=True):
        assert (logged.loc[mine, "writer"] == tag).all()


def test_the_log_checkpoints_off_the_commit_path(tmp_path: Path) -> None:
    """Commits only append to the WAL; the checkpoint thread copies the pages into the database file."""
    path = tmp_path / "predictions.db"
    log = PredictionLog(path)
    try:
        rows = [{"x": float(i), "note": "y" * 100} for i in range(2000)]
        log.append(rows, [0.5] * len(rows), "1")
        wal = path.with_name(path.name + "-wal")
        assert wal.stat().st_size > path.stat().st_size  # the commit wrote the WAL, not the database file
        deadline = time.monotonic() + 10
        while path.stat().st_size < 200_000 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert path.stat().st_size >= 200_000, "no checkpoint copied the committed rows into the database file"
    finally:
        log.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM predictions").fetchone() == (2000,)
