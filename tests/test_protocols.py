"""The Open Inference Protocol and MLflow's /invocations on the model server: the same rows, validation, log,
metrics and shadow scoring as /predict; real clients (tritonclient, plain MLflow-format HTTP) against a real server."""

from __future__ import annotations

import json
import signal
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml
from fastapi.testclient import TestClient

from driftloop.config import Config
from driftloop.metrics import PREDICT_REQUESTS, PREDICTION_ROWS, REQUESTS_REFUSED
from driftloop.serving.app import AliasSource, create_app
from driftloop.serving.prediction_log import PredictionLog
from driftloop.serving.protocol import OIP_INFER_ROUTE, route
from driftloop.training.artifacts import load_model
from tests.helpers import LOCAL, Shelf, free_port, lineage_for, make_config, metric, rows_json, wait_for_server

NAME = "flights-delay"


@pytest.fixture
def app_config(config: Config) -> Config:
    return make_config(config.state_dir, serving={"reload_interval_s": 0.02, "max_batch_rows": 600})


@pytest.fixture
def server(app_config: Config, model_folders) -> Iterator[tuple[TestClient, PredictionLog]]:
    """The app on version '1' with its own prediction log."""
    log = PredictionLog(app_config.state_dir / "predictions.db", pii=app_config.data.pii)
    with TestClient(create_app(app_config, Shelf(model_folders).load, lambda: "1", log), base_url=LOCAL) as client:
        yield client, log
    log.close()


def sample_rows(flights: pd.DataFrame, config: Config, n: int = 20) -> pd.DataFrame:
    """n complete real rows: the features and the timestamp."""
    columns = list(config.data.features) + [config.data.timestamp]
    return flights[columns].dropna().head(n).reset_index(drop=True)


def column_tensors(frame: pd.DataFrame, config: Config) -> list[dict[str, Any]]:
    """One JSON tensor per column, as an OIP client builds them from the model metadata."""
    tensors = []
    for column in frame.columns:
        numerical = column in config.data.numerical
        values = frame[column].astype("float64" if numerical else str)
        data = values.tolist() if numerical else [str(v) if column != config.data.timestamp
                                                  else pd.Timestamp(v).isoformat() for v in frame[column]]
        tensors.append({"name": column, "datatype": "FP64" if numerical else "BYTES", "shape": [len(frame)],
                        "data": data})
    return tensors


def bytes_tensor(values: list[str]) -> bytes:
    """The binary BYTES layout: 4-byte little-endian length, then the UTF-8 bytes, per element."""
    return b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in values)


def predict(client: TestClient, frame: pd.DataFrame) -> dict[str, Any]:
    response = client.post("/predict", json={"rows": rows_json(frame)})
    assert response.status_code == 200, response.text
    return response.json()


# ---------------------------------------------------------------- the Open Inference Protocol, in process


def test_route_names_the_infer_paths_as_one_template() -> None:
    assert route(f"/v2/models/{NAME}/infer") == OIP_INFER_ROUTE
    assert route(f"/v2/models/{NAME}/versions/7/infer") == OIP_INFER_ROUTE
    for other in ("/v2/models//infer", "/v2/models/a/b/infer", "/predict", "/v2/models/a/versions//infer"):
        assert route(other) == other


def test_oip_health_and_metadata(server, app_config: Config) -> None:
    client, _ = server
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get("/v2").json()["extensions"] == ["binary_tensor_data"]
    meta = client.get(f"/v2/models/{NAME}").json()
    assert meta["name"] == NAME and meta["versions"] == ["1"]
    types = {t["name"]: t["datatype"] for t in meta["inputs"]}
    assert all(types[c] == "FP64" for c in app_config.data.numerical)
    assert all(types[c] == "BYTES" for c in app_config.data.categorical)
    assert [o["name"] for o in meta["outputs"]] == ["prediction", "prediction_id"]
    assert client.get(f"/v2/models/{NAME}/versions/1").status_code == 200
    assert client.get(f"/v2/models/{NAME}/versions/1/ready").status_code == 200
    missing = client.get("/v2/models/other")
    assert missing.status_code == 404 and "serves 'flights-delay'" in missing.json()["error"]
    wrong = client.get(f"/v2/models/{NAME}/versions/9/ready")
    assert wrong.status_code == 404 and "served version is 1" in wrong.json()["error"]


def test_protocols_without_a_model_are_not_ready(app_config: Config, model_folders) -> None:
    with TestClient(create_app(app_config, Shelf(model_folders, None).load, lambda: None), base_url=LOCAL) as client:
        assert client.get("/v2/health/live").status_code == 200
        assert client.get("/v2/health/ready").status_code == 503
        assert client.get(f"/v2/models/{NAME}/ready").status_code == 503
        answer = client.post(f"/v2/models/{NAME}/infer", json={"inputs": []})
        assert answer.status_code == 503 and "champion" in answer.json()["error"]
        mlflow = client.post("/invocations", json={"dataframe_records": [{}]})
        assert mlflow.status_code == 503 and mlflow.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
        assert client.get("/ping").status_code == 503


def test_oip_json_tensors_score_as_predict_does(server, flights_jan, app_config: Config) -> None:
    client, log = server
    frame = sample_rows(flights_jan, app_config)
    expected = predict(client, frame)
    answer = client.post(f"/v2/models/{NAME}/infer", json={"id": "r1", "inputs": column_tensors(frame, app_config)})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model_name"] == NAME and body["model_version"] == "1" and body["id"] == "r1"
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["prediction"]["shape"] == [len(frame)] and outputs["prediction"]["datatype"] == "FP64"
    np.testing.assert_allclose(outputs["prediction"]["data"], expected["predictions"], rtol=1e-9)
    ids = outputs["prediction_id"]["data"]
    assert ids == [expected["prediction_ids"][-1] + 1 + i for i in range(len(frame))]  # logged after /predict's rows
    logged = log.read(first_id=ids[0])
    np.testing.assert_allclose(logged["prediction"], expected["predictions"], rtol=1e-9)
    assert (logged["event_time"] == log.read(first_id=expected["prediction_ids"][0], last_id=ids[0] - 1)
            ["event_time"].to_numpy()).all()  # the timestamp tensor is the event time, as /predict's field


def test_oip_binary_tensors_and_binary_outputs(server, flights_jan, app_config: Config) -> None:
    """tritonclient's default layout: no Content-Type, the JSON header's length in a header, raw tensors after it."""
    client, _ = server
    frame = sample_rows(flights_jan, app_config, 16)
    frame.loc[3, "temp"] = np.nan  # binary floats carry a missing value as NaN: scored as /predict scores null
    expected = predict(client, frame)["predictions"]
    tensors, chunks = [], []
    for column in app_config.data.features:
        if column in app_config.data.numerical:
            raw = frame[column].to_numpy("float32").tobytes()
            datatype = "FP32"
        else:
            raw, datatype = bytes_tensor([str(v) for v in frame[column]]), "BYTES"
        tensors.append({"name": column, "datatype": datatype, "shape": [len(frame), 1],
                        "parameters": {"binary_data_size": len(raw)}})
        chunks.append(raw)
    header = json.dumps({"inputs": tensors, "outputs": [{"name": "prediction", "parameters": {"binary_data": True}}]})
    answer = client.post(f"/v2/models/{NAME}/infer", content=header.encode() + b"".join(chunks),
                         headers={"Inference-Header-Content-Length": str(len(header)), "content-type": ""})
    assert answer.status_code == 200, answer.text
    size = int(answer.headers["inference-header-content-length"])
    meta = json.loads(answer.content[:size])
    assert [o["name"] for o in meta["outputs"]] == ["prediction"]  # only what was asked for
    values = np.frombuffer(answer.content[size:], dtype="<f8")
    assert meta["outputs"][0]["parameters"]["binary_data_size"] == values.nbytes
    np.testing.assert_allclose(values, expected, rtol=1e-5)  # FP32 inputs: float32 rounding of the numbers


def test_oip_rows_input_of_json_objects(server, flights_jan, app_config: Config) -> None:
    client, _ = server
    frame = sample_rows(flights_jan, app_config, 5)
    expected = predict(client, frame)["predictions"]
    rows = [json.dumps(row) for row in rows_json(frame)]
    answer = client.post(f"/v2/models/{NAME}/versions/1/infer",
                         json={"inputs": [{"name": "rows", "datatype": "BYTES", "shape": [5], "data": rows}]})
    assert answer.status_code == 200, answer.text
    np.testing.assert_allclose(answer.json()["outputs"][0]["data"], expected, rtol=1e-9)


def test_oip_refusals_use_the_protocol_error_body(server, flights_jan, app_config: Config) -> None:
    client, log = server
    url = f"/v2/models/{NAME}/infer"
    frame = sample_rows(flights_jan, app_config, 3)
    tensors = column_tensors(frame, app_config)
    cases = [
        ({"inputs": tensors + [{"name": "colour", "datatype": "BYTES", "shape": [3], "data": ["a"] * 3}]}, 400,
         "unknown input(s) ['colour']"),
        ({"inputs": tensors[1:]}, 400, f"missing input(s) for feature column(s) ['{tensors[0]['name']}']"),
        ({"inputs": [dict(tensors[0], shape=[4])] + tensors[1:]}, 400, "shape [4] holds 4 elements, the data 3"),
        ({"inputs": [dict(tensors[0], shape=[2], data=tensors[0]["data"][:2])] + tensors[1:]}, 400,
         "inputs disagree on the number of rows"),
        ({"inputs": tensors, "outputs": [{"name": "score"}]}, 400, "unknown output(s) ['score']"),
        ({"inputs": [dict(t, data=["x"] * 3, datatype="BYTES") if t["name"] == "distance" else t for t in tensors]},
         400, "input distance is a numerical column"),
        ({"inputs": [{"name": "rows", "datatype": "BYTES", "shape": [1], "data": ['{"distance": 1}']}]}, 422,
         "row 0, field dep_hour: missing feature column"),
    ]
    before = log.last_id()
    for body, status, fragment in cases:
        answer = client.post(url, json=body)
        assert answer.status_code == status, answer.text
        assert fragment in answer.json()["error"], answer.text
    assert client.post("/v2/models/other/infer", json={"inputs": tensors}).status_code == 404
    assert client.post(f"/v2/models/{NAME}/versions/2/infer", json={"inputs": tensors}).status_code == 404
    # A browser page's post (an Origin header) without a JSON or binary Content-Type is refused, as /predict's.
    refused = client.post(url, content=json.dumps({"inputs": tensors}),
                          headers={"content-type": "", "origin": "http://evil.example"})
    assert refused.status_code == 415 and "application/json" in refused.json()["error"]
    assert client.post(url, content=b"{}", headers={"content-type": "text/plain"}).status_code == 415
    assert metric(client, REQUESTS_REFUSED, path=OIP_INFER_ROUTE, reason="content_type") == 2
    assert log.last_id() == before  # nothing refused was logged


def test_oip_body_limit_and_metrics(app_config: Config, model_folders, flights_jan) -> None:
    config = make_config(app_config.state_dir, serving={"max_body_bytes": 2048})
    with TestClient(create_app(config, Shelf(model_folders).load, lambda: "1"), base_url=LOCAL) as client:
        frame = sample_rows(flights_jan, config, 3)
        ok = client.post(f"/v2/models/{NAME}/infer", json={"inputs": column_tensors(frame, config)})
        assert ok.status_code == 200, ok.text
        big = client.post(f"/v2/models/{NAME}/infer", content=b" " * 4096, headers={"content-type": "application/json"})
        assert big.status_code == 413 and "max_body_bytes" in big.json()["error"]
        assert metric(client, REQUESTS_REFUSED, path=OIP_INFER_ROUTE, reason="body_size") == 1
        assert metric(client, PREDICT_REQUESTS, status="200") == 1
        assert metric(client, PREDICT_REQUESTS, status="413") == 1
        assert metric(client, PREDICTION_ROWS, model_version="1") == 3


# ---------------------------------------------------------------- MLflow's /invocations, in process


def invocation_bodies(frame: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """The same rows in each of MLflow's JSON formats."""
    records = rows_json(frame)
    columns = list(records[0])
    return {"dataframe_split": {"dataframe_split": {"columns": columns, "data": [[r[c] for c in columns]
                                                                                for r in records]}},
            "dataframe_records": {"dataframe_records": records},
            "inputs": {"inputs": records, "params": {"ignored": 1}},
            "instances": {"instances": {c: [r[c] for r in records] for c in columns}}}


def test_invocations_formats_score_as_predict_does(server, flights_jan, app_config: Config) -> None:
    client, log = server
    frame = sample_rows(flights_jan, app_config, 12)
    expected = predict(client, frame)["predictions"]
    for name, body in invocation_bodies(frame).items():
        answer = client.post("/invocations", json=body)
        assert answer.status_code == 200, (name, answer.text)
        payload = answer.json()
        np.testing.assert_allclose(payload["predictions"], expected, rtol=1e-9, err_msg=name)
        assert payload["model_version"] == "1" and len(payload["prediction_ids"]) == len(frame)
    assert log.last_id() == 5 * len(frame)  # /predict's rows and each format's: all logged
    assert client.get("/ping").status_code == 200 and client.get("/health").status_code == 200


def test_invocations_errors_as_mlflow_answers(server, flights_jan, app_config: Config) -> None:
    client, log = server
    records = rows_json(sample_rows(flights_jan, app_config, 2))
    two = client.post("/invocations", json={"dataframe_records": records, "inputs": records})
    assert two.status_code == 400 and two.json()["error_code"] == "BAD_REQUEST"
    assert "exactly one of the input fields" in two.json()["message"]
    uneven = client.post("/invocations", json={"inputs": {"distance": [1.0, 2.0], "dep_hour": [5]}})
    assert uneven.status_code == 400 and "inputs: the columns have different lengths" in uneven.json()["message"]
    split = client.post("/invocations", json={"dataframe_split": {"columns": ["a", "b"], "data": [[1]]}})
    assert split.status_code == 400 and "dataframe_split.data[0]" in split.json()["message"]
    records[1]["distance"] = "far"
    invalid = client.post("/invocations", json={"dataframe_records": records})
    assert invalid.status_code == 422 and invalid.json()["error_code"] == "BAD_REQUEST"
    assert invalid.json()["details"] == [{"row": 1, "field": "distance", "error": "expected a number or null, got "
                                                                                  "string"}]
    csv = client.post("/invocations", content=b"a,b\n1,2\n", headers={"content-type": "text/csv"})
    assert csv.status_code == 415 and "application/json" in csv.json()["message"]
    assert log.last_id() == 0


def test_protocol_paths_are_shadow_scored(app_config: Config, model_folders, flights_jan) -> None:
    config = make_config(app_config.state_dir, serving={"reload_interval_s": 0.02, "shadow": True})
    champion, challenger = Shelf(model_folders, "1"), Shelf(model_folders, "2")
    log = PredictionLog(config.state_dir / "predictions.db")
    app = create_app(config, champion.load, champion.version, log,
                     challenger=AliasSource(challenger.load, challenger.version))
    frame = sample_rows(flights_jan, config, 6)
    with TestClient(app, base_url=LOCAL) as client:
        assert client.post(f"/v2/models/{NAME}/infer", json={"inputs": column_tensors(frame, config)}).status_code \
            == 200
        assert client.post("/invocations", json={"dataframe_records": rows_json(frame)}).status_code == 200
    logged = log.read()
    log.close()
    assert len(logged) == 12 and (logged["shadow_version"] == "2").all()
    shadow = load_model(model_folders["2"]).predict(frame)
    np.testing.assert_allclose(logged["shadow_prediction"], np.concatenate([shadow, shadow]), rtol=1e-5)


# ---------------------------------------------------------------- real clients against a real server


@pytest.fixture(scope="module")
def served(trained, flights_jan: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """`driftloop serve` (a child process) on a registered champion; (base URL, config file)."""
    from driftloop.registry.store import register

    folder = tmp_path_factory.mktemp("protocols")
    config = make_config(folder / "state")
    register(config, trained, lineage_for(config, flights_jan), flights_jan)
    config_file = folder / "config.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    port = free_port()
    child = subprocess.Popen([sys.executable, "-m", "driftloop.cli", "serve", "--config", str(config_file),
                              "--port", str(port)], cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_server(child, base, timeout=120)
        yield base, config_file
    finally:
        child.send_signal(signal.SIGTERM)
        child.wait(timeout=30)


def predicted_by_the_server(served: tuple[str, Path], flights_jan: pd.DataFrame,
                             n: int) -> tuple[str, Config, pd.DataFrame, list[float]]:
    """The real server's URL and config, `n` sample rows and what its /predict answers for them: what every protocol
    must equal."""
    base, config_file = served
    config = make_config(Path(yaml.safe_load(config_file.read_text())["state_dir"]))
    frame = sample_rows(flights_jan, config, n)
    return base, config, frame, httpx.post(f"{base}/predict", json={"rows": rows_json(frame)}).json()["predictions"]


@pytest.mark.slow
def test_tritonclient_against_the_real_server(served, flights_jan) -> None:
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException, np_to_triton_dtype

    base, config, frame, expected = predicted_by_the_server(served, flights_jan, 32)
    client = triton.InferenceServerClient(url=base.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(NAME)
    meta = client.get_model_metadata(NAME)

    def inputs_of(binary: bool) -> list[Any]:
        """One InferInput per feature column the metadata lists (the timestamp is optional)."""
        inputs = []
        for tensor in meta["inputs"]:
            if tensor["name"] == config.data.timestamp:
                continue
            column = frame[tensor["name"]]
            array = (column.to_numpy("float64") if tensor["datatype"] == "FP64"
                     else column.astype(str).to_numpy(dtype=object)).reshape(-1, 1)
            infer_input = triton.InferInput(tensor["name"], list(array.shape), np_to_triton_dtype(array.dtype))
            infer_input.set_data_from_numpy(array, binary_data=binary)
            inputs.append(infer_input)
        return inputs

    result = client.infer(NAME, inputs_of(binary=True))  # tritonclient's defaults: binary in, all outputs binary
    np.testing.assert_allclose(result.as_numpy("prediction").ravel(), expected, rtol=1e-9)
    ids = result.as_numpy("prediction_id")
    assert ids.dtype == np.int64 and len(set(ids.tolist())) == len(frame)
    only = client.infer(NAME, inputs_of(binary=False), model_version="1",
                        outputs=[triton.InferRequestedOutput("prediction", binary_data=False)])
    np.testing.assert_allclose(only.as_numpy("prediction").ravel(), expected, rtol=1e-9)
    assert only.as_numpy("prediction_id") is None
    inputs = inputs_of(binary=False)
    with pytest.raises(InferenceServerException, match="missing input"):
        client.infer(NAME, inputs[1:])
    client.close()


@pytest.mark.slow
def test_mlflow_format_requests_against_the_real_server(served, flights_jan) -> None:
    base, _, frame, expected = predicted_by_the_server(served, flights_jan, 25)
    for name, body in invocation_bodies(frame).items():
        answer = httpx.post(f"{base}/invocations", json=body)
        assert answer.status_code == 200, (name, answer.text)
        np.testing.assert_allclose(answer.json()["predictions"], expected, rtol=1e-9, err_msg=name)
    assert httpx.get(f"{base}/ping").status_code == 200
