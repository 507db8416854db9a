"""The model server and the prediction log, on real models built from real flights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
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
from driftloop.metrics import (
    MODEL_INFO,
    MODEL_SWAP_FAILURES,
    MODEL_SWAPS,
    PREDICT_LATENCY,
    PREDICT_REQUESTS,
    PREDICTION_ROWS,
)
from driftloop.serving.app import create_app
from driftloop.serving.prediction_log import PredictionLog, UnknownPredictionIds
from driftloop.training.artifacts import load_model, save_model
from tests.helpers import (
    LOCAL,
    REPO,
    Shelf,
    free_port,
    make_config,
    metric,
    rows_json,
    scrape,
    wait_for,
    wait_for_server,
)

FAST_RELOAD = {"serving": {"reload_interval_s": 0.02, "max_batch_rows": 600}}
LABELS_TOKEN = "s3cret-labels-token"
LABELS_AUTH = {"Authorization": f"Bearer {LABELS_TOKEN}"}


@pytest.fixture(autouse=True)
def labels_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTLOOP_LABELS_TOKEN", LABELS_TOKEN)


# ---------------------------------------------------------------- helpers


@pytest.fixture
def server(config: Config, model_folders: dict[str, Path]) -> Iterator[tuple[TestClient, Shelf, PredictionLog]]:
    """A running app on version '1' with a fast poller and its own prediction log."""
    config = make_config(config.state_dir, **FAST_RELOAD)
    shelf = Shelf(model_folders)
    log = PredictionLog(config.state_dir / "predictions.db", pii=config.data.pii)
    with TestClient(create_app(config, shelf.load, shelf.version, log), base_url=LOCAL) as client:
        yield client, shelf, log
    log.close()


# ---------------------------------------------------------------- /predict and the log


def test_predict_scores_logs_and_hides_pii(server, flights_jan: pd.DataFrame, model_folders) -> None:
    client, _, log = server
    sample = flights_jan.head(50)
    response = client.post("/predict", json={"rows": rows_json(sample)})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_version"] == "1"
    predictions = np.array(body["predictions"])
    assert predictions.shape == (50,) and ((predictions >= 0) & (predictions <= 1)).all()
    expected = load_model(model_folders["1"]).predict(sample)
    np.testing.assert_allclose(predictions, expected, rtol=1e-6)
    ids = body["prediction_ids"]
    assert len(set(ids)) == 50 and ids == sorted(ids)

    logged = log.read()
    assert logged["prediction_id"].tolist() == ids
    np.testing.assert_allclose(logged["prediction"], predictions)
    assert (logged["model_version"] == "1").all()
    assert "tailnum" not in logged.columns and "arr_delayed" not in logged.columns
    assert logged["carrier"].tolist() == sample["carrier"].tolist()
    np.testing.assert_allclose(logged["temp"], sample["temp"])
    assert (logged["event_time"] == sample["time_hour"].reset_index(drop=True)).all()
    assert logged["label"].isna().all()


def test_labels_endpoint_attaches_and_rejects_unknown_ids(server, flights_jan: pd.DataFrame) -> None:
    client, _, log = server
    sample = flights_jan.head(10)
    ids = client.post("/predict", json={"rows": rows_json(sample)}).json()["prediction_ids"]
    truth = sample["arr_delayed"].tolist()
    sent = [{"prediction_id": i, "label": y} for i, y in zip(ids[:6], truth[:6], strict=True)]
    response = client.post("/labels", json={"labels": sent}, headers=LABELS_AUTH)
    assert response.status_code == 200 and response.json() == {"updated": 6}

    labelled = log.read(labelled_only=True)
    assert labelled["prediction_id"].tolist() == ids[:6]
    assert labelled["label"].tolist() == [float(y) for y in truth[:6]]

    before = log.read()
    bad = client.post("/labels", json={"labels": [{"prediction_id": ids[7], "label": 1},
                                                  {"prediction_id": 999_999, "label": 0}]}, headers=LABELS_AUTH)
    assert bad.status_code == 422
    assert bad.json()["detail"] == [{"row": 1, "field": "prediction_id", "error": "unknown prediction id 999999"}]
    not_binary = client.post("/labels", json={"labels": [{"prediction_id": ids[7], "label": 0.5}]},
                             headers=LABELS_AUTH)
    assert not_binary.status_code == 422 and not_binary.json()["detail"][0]["field"] == "label"
    pd.testing.assert_frame_equal(log.read(), before)  # all or nothing


def test_prediction_log_strips_pii_and_joins_labels(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path / "p.db", pii=["tailnum"])
    assert log.last_id() == 0 and log.read().empty
    rows = [{"distance": 100.0 * i, "carrier": "UA", "tailnum": f"N{i}"} for i in range(5)]
    ids = log.append(rows, [0.1, 0.2, 0.3, 0.4, 0.5], "7", ["2013-01-01T05:00:00Z", None, None, None, None])
    assert ids == [1, 2, 3, 4, 5] and log.last_id() == 5
    assert log.attach_labels([2, 4], [1, 0]) == 2
    with pytest.raises(UnknownPredictionIds, match="42"):
        log.attach_labels([3, 42], [1, 1])
    log.close()

    reopened = PredictionLog(tmp_path / "p.db")
    frame = reopened.read()
    assert list(frame.columns[:6]) == ["prediction_id", "logged_at", "model_version", "prediction", "label",
                                       "event_time"]
    assert list(frame.columns[6:8]) == ["shadow_version", "shadow_prediction"]
    assert frame["shadow_version"].isna().all() and frame["shadow_prediction"].isna().all()
    assert set(frame.columns[8:]) == {"distance", "carrier"}
    assert str(frame["logged_at"].dt.tz) == "UTC"
    assert frame["event_time"].iloc[0] == pd.Timestamp("2013-01-01T05:00:00Z") and frame["event_time"][1:].isna().all()
    assert frame["label"].isna().tolist() == [True, False, True, False, True]  # the failed call wrote nothing
    labelled = reopened.read(labelled_only=True)
    assert labelled["prediction_id"].tolist() == [2, 4] and labelled["label"].tolist() == [1.0, 0.0]
    assert reopened.read(first_id=2, last_id=3)["prediction_id"].tolist() == [2, 3]
    reopened.close()


def _row(flights_jan: pd.DataFrame) -> dict[str, Any]:
    return rows_json(flights_jan.head(1))[0]


INVALID_CASES = {
    "missing column": (lambda r: [r, {k: v for k, v in r.items() if k != "distance"}], 1, "distance"),
    "string in numerical": (lambda r: [{**r, "temp": "39.0"}], 0, "temp"),
    "boolean in numerical": (lambda r: [r, r, {**r, "wind_speed": True}], 2, "wind_speed"),
    "boolean in categorical": (lambda r: [{**r, "carrier": False}], 0, "carrier"),
    "bad timestamp": (lambda r: [{**r, "time_hour": "yesterday-ish"}], 0, "time_hour"),
    "empty rows": (lambda r: [], None, "rows"),
    "too many rows": (lambda r: [r] * 601, None, "rows"),
}


@pytest.mark.parametrize("case", INVALID_CASES)
def test_invalid_requests_name_the_field_and_log_nothing(server, flights_jan: pd.DataFrame, case: str) -> None:
    client, _, log = server
    client.post("/predict", json={"rows": [_row(flights_jan)]})
    before = log.last_id()
    make_rows, row, field = INVALID_CASES[case]
    response = client.post("/predict", json={"rows": make_rows(_row(flights_jan))})
    assert response.status_code == 422, response.text
    assert [{"row": d["row"], "field": d["field"]} for d in response.json()["detail"]] == [{"row": row,
                                                                                           "field": field}]
    assert log.last_id() == before
    assert metric(client, PREDICTION_ROWS, model_version="1") == 1


def test_extra_keys_target_and_null_values_are_accepted(server, flights_jan: pd.DataFrame) -> None:
    client, _, log = server
    row = {**_row(flights_jan), "temp": None, "carrier": None, "dest": 3.0, "note": "anything"}
    response = client.post("/predict", json={"rows": [row]})
    assert response.status_code == 200, response.text
    stored = log.read()
    assert "note" not in stored.columns and stored["dest"].tolist() == [3]


def test_non_json_body_is_422(server) -> None:
    client, _, log = server
    response = client.post("/predict", content=b"not json", headers={"content-type": "application/json"})
    assert response.status_code == 422 and log.last_id() == 0


def test_metrics_count_rows_and_requests(server, flights_jan: pd.DataFrame) -> None:
    client, _, _ = server
    assert metric(client, PREDICTION_ROWS, model_version="1") == 0
    client.post("/predict", json={"rows": rows_json(flights_jan.head(30))})
    client.post("/predict", json={"rows": []})
    text = client.get("/metrics").text
    assert "driftloop_" in text
    assert metric(client, PREDICTION_ROWS, model_version="1") == 30
    assert metric(client, PREDICT_REQUESTS, status="200") == 1
    assert metric(client, PREDICT_REQUESTS, status="422") == 1
    assert metric(client, PREDICT_LATENCY + "_count") == 2
    assert metric(client, MODEL_INFO, model="flights-delay", version="1") == 1


# ---------------------------------------------------------------- hot swap


def test_hot_swap_serves_the_new_champion_without_restart(server, flights_jan, model_folders) -> None:
    client, shelf, _ = server
    sample = flights_jan.head(20)
    before = client.post("/predict", json={"rows": rows_json(sample)}).json()
    shelf.champion = "2"
    wait_for(lambda: client.get("/healthz").json()["model_version"] == "2")
    after = client.post("/predict", json={"rows": rows_json(sample)}).json()
    assert before["model_version"] == "1" and after["model_version"] == "2"
    np.testing.assert_allclose(after["predictions"], load_model(model_folders["2"]).predict(sample), rtol=1e-6)
    assert not np.allclose(after["predictions"], before["predictions"])
    assert metric(client, MODEL_SWAPS) == 1
    assert metric(client, MODEL_INFO, model="flights-delay", version="2") == 1
    assert (MODEL_INFO, (("model", "flights-delay"), ("version", "1"))) not in scrape(client)


def test_failed_load_keeps_the_old_model(server, flights_jan: pd.DataFrame) -> None:
    client, shelf, _ = server
    shelf.champion = "3"  # not on the shelf: loading raises
    wait_for(lambda: metric(client, MODEL_SWAP_FAILURES) >= 1)
    assert client.get("/healthz").json() == {"status": "ok", "model_version": "1", "quantized": False,
                                             "challenger_version": None}
    response = client.post("/predict", json={"rows": rows_json(flights_jan.head(3))})
    assert response.status_code == 200 and response.json()["model_version"] == "1"
    assert metric(client, MODEL_SWAPS) == 0


def test_model_failing_the_smoke_test_is_not_swapped_in(server, flights_jan, model_folders, tmp_path) -> None:
    client, shelf, _ = server
    client.post("/predict", json={"rows": rows_json(flights_jan.head(5))})  # smoke rows come from the log
    broken = load_model(model_folders["2"])
    with torch.no_grad():
        broken.net.head.out.weight.fill_(float("nan"))
    shelf.folders["4"] = save_model(tmp_path / "broken", broken.net.state_dict(), broken.spec,
                                    make_config(tmp_path).model)
    shelf.champion = "4"
    wait_for(lambda: metric(client, MODEL_SWAP_FAILURES) >= 1)
    assert client.get("/healthz").json()["model_version"] == "1"
    assert client.post("/predict", json={"rows": rows_json(flights_jan.head(3))}).status_code == 200


def test_no_champion_yet_is_503_until_one_appears(config: Config, model_folders, flights_jan) -> None:
    config = make_config(config.state_dir, **FAST_RELOAD)
    shelf = Shelf(model_folders, champion=None)
    with TestClient(create_app(config, shelf.load, shelf.version), base_url=LOCAL) as client:
        health = client.get("/healthz")
        assert health.status_code == 503 and health.json()["model_version"] is None
        refused = client.post("/predict", json={"rows": rows_json(flights_jan.head(2))})
        assert refused.status_code == 503 and "champion" in refused.json()["detail"]
        assert shelf.loads == 0
        shelf.champion = "1"
        wait_for(lambda: client.get("/healthz").status_code == 200)
        assert client.post("/predict", json={"rows": rows_json(flights_jan.head(2))}).status_code == 200
    # the app opened its own log under state_dir
    assert PredictionLog(config.state_dir / "predictions.db").last_id() == 2


def test_no_request_fails_during_swaps(server, flights_jan: pd.DataFrame, model_folders) -> None:
    client, shelf, _ = server
    sample = flights_jan.head(40)
    expected = {v: load_model(f).predict(sample) for v, f in model_folders.items()}
    stop = threading.Event()

    def flip() -> None:
        while not stop.wait(0.03):
            shelf.champion = "2" if shelf.champion == "1" else "1"

    flipper = threading.Thread(target=flip)
    flipper.start()
    seen = set()
    try:
        deadline = time.monotonic() + 20
        while metric(client, MODEL_SWAPS) < 6 and time.monotonic() < deadline:
            response = client.post("/predict", json={"rows": rows_json(sample)})
            assert response.status_code == 200, response.text
            body = response.json()
            seen.add(body["model_version"])
            # model and version are swapped together: the answer matches the version it names
            np.testing.assert_allclose(body["predictions"], expected[body["model_version"]], rtol=1e-6)
    finally:
        stop.set()
        flipper.join()
    assert seen == {"1", "2"} and metric(client, MODEL_SWAPS) >= 6


# ---------------------------------------------------------------- durability and the real server


CHILD_APPENDER = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from driftloop.serving.prediction_log import PredictionLog

    log = PredictionLog(Path(sys.argv[1]), pii=["tailnum"])
    n = 0
    while True:
        rows = [{"n": n + i, "tailnum": "N1"} for i in range(25)]
        ids = log.append(rows, [(n + i) / 1e6 for i in range(25)], "1")
        print(json.dumps({"ids": ids, "n": [r["n"] for r in rows]}), flush=True)
        n += 25
""")


@pytest.mark.slow
def test_prediction_log_survives_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "crash.db"
    child = subprocess.Popen([sys.executable, "-c", CHILD_APPENDER, str(path)], cwd=REPO,
                             stdout=subprocess.PIPE, text=True)
    acknowledged: dict[int, int] = {}
    try:
        assert child.stdout is not None
        for line in child.stdout:
            batch = json.loads(line)
            acknowledged.update(zip(batch["ids"], batch["n"], strict=True))
            if len(acknowledged) >= 2000:
                break
    finally:
        os.kill(child.pid, signal.SIGKILL)
        rest, _ = child.communicate()  # acknowledgements still in the pipe count too
    for line in rest.splitlines():
        if line.strip():
            batch = json.loads(line)
            acknowledged.update(zip(batch["ids"], batch["n"], strict=True))
    assert child.returncode == -signal.SIGKILL and len(acknowledged) >= 2000

    log = PredictionLog(path)
    logged = log.read().set_index("prediction_id")
    missing = set(acknowledged) - set(logged.index)
    assert not missing, f"{len(missing)} acknowledged rows lost"
    ids = sorted(acknowledged)
    assert logged.loc[ids, "n"].tolist() == [acknowledged[i] for i in ids]
    np.testing.assert_allclose(logged.loc[ids, "prediction"], [acknowledged[i] / 1e6 for i in ids])
    assert "tailnum" not in logged.columns
    log.close()


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
def test_serve_runs_uvicorn(config: Config, model_folders, flights_jan: pd.DataFrame, tmp_path: Path) -> None:
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    port = free_port()
    child = subprocess.Popen([sys.executable, "-c", CHILD_SERVER, str(config_file), str(model_folders["1"]),
                              str(port)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_server(child, base, timeout=60)
        response = httpx.post(f"{base}/predict", json={"rows": rows_json(flights_jan.head(5))})
        assert response.status_code == 200 and response.json()["model_version"] == "1"
        assert "driftloop_prediction_rows_total" in httpx.get(f"{base}/metrics").text
    finally:
        child.send_signal(signal.SIGTERM)
        child.wait(timeout=30)
    assert PredictionLog(config.state_dir / "predictions.db").last_id() == 5
