"""`driftloop predict`: batch scoring of CSV/Parquet files in chunks, the same predictions as the server, the
prediction log with --log, and bad input refused with nothing written."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from fastapi.testclient import TestClient

from driftloop.config import Config
from driftloop.errors import DataError
from driftloop.serving.app import create_app
from driftloop.serving.batch import score_file
from driftloop.serving.prediction_log import PredictionLog
from driftloop.training.artifacts import load_model
from tests.helpers import LOCAL, Shelf, assert_one_clean_error, lineage_for, make_config, rows_json, run_cli


@pytest.fixture
def small_chunks(config: Config) -> Config:
    """Chunks of 7 rows, so that every test crosses chunk boundaries."""
    return make_config(config.state_dir, serving={"batch_chunk_rows": 7})


@pytest.fixture
def model(model_folders):
    return load_model(model_folders["1"], version="1")


def scoring_frame(flights: pd.DataFrame, n: int = 40) -> pd.DataFrame:
    """Real flights with a key column (row_id), the timestamp, the label, PII and missing values."""
    frame = flights.head(n).reset_index(drop=True)
    frame.insert(0, "row_id", [f"r{i}" for i in range(n)])
    frame.loc[5, "temp"] = np.nan  # missing values cross the path too
    frame.loc[9, "dest"] = None
    return frame


def server_predictions(config: Config, model_folders, frame: pd.DataFrame) -> list[float]:
    with TestClient(create_app(config, Shelf(model_folders).load, lambda: "1"), base_url=LOCAL) as client:
        answer = client.post("/predict", json={"rows": rows_json(frame)})
    assert answer.status_code == 200, answer.text
    return answer.json()["predictions"]


@pytest.mark.parametrize("suffixes", [(".csv", ".parquet"), (".parquet", ".csv")])
def test_scores_in_chunks_as_the_server_does(small_chunks: Config, model, model_folders, flights_jan, tmp_path,
                                             suffixes) -> None:
    frame = scoring_frame(flights_jan)
    data, out = tmp_path / f"in{suffixes[0]}", tmp_path / f"out{suffixes[1]}"
    frame.to_csv(data, index=False) if suffixes[0] == ".csv" else frame.to_parquet(data, index=False)
    result = score_file(small_chunks, model, data, out)
    written = pd.read_csv(out) if suffixes[1] == ".csv" else pd.read_parquet(out)
    data_config = small_chunks.data
    expected_keys = [c for c in frame.columns
                     if c not in data_config.features and c != data_config.target and c not in data_config.pii]
    assert result.rows == len(frame) and result.key_columns == expected_keys
    assert list(written.columns) == expected_keys + ["prediction"]  # no features, label or PII copied
    assert expected_keys == ["row_id", "time_hour"]
    assert written["row_id"].tolist() == frame["row_id"].tolist()  # in the input's order
    np.testing.assert_allclose(written["prediction"], server_predictions(small_chunks, model_folders, frame),
                               rtol=1e-6)
    assert not list(tmp_path.glob(".out*"))  # no temporary file left


def test_log_writes_the_rows_as_the_server_does(small_chunks: Config, model, flights_jan, tmp_path) -> None:
    frame = scoring_frame(flights_jan, 20)
    data, out = tmp_path / "in.parquet", tmp_path / "out.csv"
    frame.to_parquet(data, index=False)
    result = score_file(small_chunks, model, data, out, log=True)
    written = pd.read_csv(out)
    assert written["prediction_id"].tolist() == list(range(1, 21))
    assert (result.first_prediction_id, result.last_prediction_id) == (1, 20)
    with PredictionLog(small_chunks.state_dir / "predictions.db") as log:
        logged = log.read()
    np.testing.assert_allclose(logged["prediction"], written["prediction"], rtol=1e-12)
    assert (logged["model_version"] == "1").all()
    assert "tailnum" not in logged.columns and "distance" in logged.columns  # features logged, PII not
    assert logged["event_time"].tolist() == frame["time_hour"].tolist()


def test_bad_input_writes_nothing(small_chunks: Config, model, flights_jan, tmp_path) -> None:
    frame = scoring_frame(flights_jan, 30).astype({"distance": object})
    frame.loc[25, "distance"] = "far"  # in the fourth chunk: earlier chunks were fine
    data, out = tmp_path / "in.csv", tmp_path / "out.parquet"
    frame.to_csv(data, index=False)
    with pytest.raises(DataError, match=r"column distance, row 26: 'far' is not a number"):
        score_file(small_chunks, model, data, out, log=True)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]
    assert not (small_chunks.state_dir / "predictions.db").exists() or \
        PredictionLog(small_chunks.state_dir / "predictions.db").last_id() == 0  # nothing logged either
    with pytest.raises(DataError, match=r"column distance, row 26"):
        score_file(small_chunks, model, data, out)  # without --log: found while scoring, the partial file removed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]
    frame.drop(columns=["distance", "origin"]).to_csv(data, index=False)
    with pytest.raises(DataError, match=r"missing feature column\(s\) distance, origin"):
        score_file(small_chunks, model, data, out)
    with pytest.raises(DataError, match="unsupported output type .json"):
        score_file(small_chunks, model, data, tmp_path / "out.json")


def test_unknown_categories_and_key_columns_follow_the_config(config: Config, model, flights_jan, tmp_path) -> None:
    frame = scoring_frame(flights_jan, 10)
    frame.loc[3, "origin"] = "XXX"
    data = tmp_path / "in.parquet"
    frame.to_parquet(data, index=False)
    strict = make_config(config.state_dir, serving={"unknown_category": "reject"})
    with pytest.raises(DataError, match=r"column origin, row 4: 'XXX' is a category the model never saw"):
        score_file(strict, model, data, tmp_path / "out.csv")
    keyed = make_config(config.state_dir, serving={"batch_key_columns": ["row_id", "tailnum"]})
    score_file(keyed, model, data, tmp_path / "out.csv")
    assert list(pd.read_csv(tmp_path / "out.csv").columns) == ["row_id", "tailnum", "prediction"]
    missing = make_config(config.state_dir, serving={"batch_key_columns": ["flight_id"]})
    with pytest.raises(DataError, match=r"missing key column\(s\) \['flight_id'\]"):
        score_file(missing, model, data, tmp_path / "out2.csv")


# ---------------------------------------------------------------- the command, on a registered model


@pytest.fixture(scope="module")
def registered(trained, flights_jan: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A config file whose registry holds the trained model as champion (version 1)."""
    from driftloop.registry.store import register

    folder = tmp_path_factory.mktemp("batch")
    config = make_config(folder / "state")
    register(config, trained, lineage_for(config, flights_jan), flights_jan)
    config_file = folder / "config.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    yield config_file


@pytest.mark.slow
def test_predict_command_matches_the_served_champion(registered: Path, flights_jan, tmp_path) -> None:
    from driftloop.config import load_config
    from driftloop.registry.store import load_alias

    config = load_config(registered)
    frame = scoring_frame(flights_jan, 300)
    data, out = tmp_path / "flights.csv", tmp_path / "scored.parquet"
    frame.to_csv(data, index=False)
    result = run_cli("predict", "--config", str(registered), "--data", str(data), "--out", str(out), "--log",
                     "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["rows"] == 300 and summary["model_version"] == "1" and summary["logged"]
    written = pd.read_parquet(out)
    with TestClient(create_app(config, lambda: load_alias(config), lambda: "1",
                               PredictionLog(tmp_path / "other.db")), base_url=LOCAL) as client:
        served = client.post("/predict", json={"rows": rows_json(frame)}).json()["predictions"]
    np.testing.assert_allclose(written["prediction"], served, rtol=1e-6)
    assert written["prediction_id"].tolist() == list(range(summary["first_prediction_id"],
                                                           summary["last_prediction_id"] + 1))
    # bad input: one line, exit 2, nothing written
    frame.drop(columns=["carrier"]).to_csv(data, index=False)
    bad = run_cli("predict", "--config", str(registered), "--data", str(data), "--out", str(tmp_path / "x.csv"),
                  cwd=tmp_path)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert_one_clean_error(bad, "missing feature column(s) carrier")
    assert not (tmp_path / "x.csv").exists()
    unknown = run_cli("predict", "--config", str(registered), "--data", str(data), "--out", str(out), "--version",
                      "9", cwd=tmp_path)
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr
