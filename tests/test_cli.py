"""The `driftloop` command as a user runs it: exit codes, one-line errors, --json output."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from sklearn.datasets import load_diabetes

from driftloop.config import demo_config_path
from tests.helpers import assert_one_clean_error, run_cli


@pytest.fixture
def demo_yaml(tmp_path: Path) -> Path:
    raw = yaml.safe_load(demo_config_path().read_text())
    raw["state_dir"] = str(tmp_path / "state")
    raw["validation"].pop("suite", None)  # relative to the shipped config's folder; as in conftest.make_config
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("case", ["empty", "not_csv", "binary"])
def test_validate_unusable_files_exit_2(tmp_path: Path, demo_yaml: Path, case: str) -> None:
    path = {"empty": tmp_path / "empty.csv", "not_csv": tmp_path / "data.txt", "binary": tmp_path / "bin.csv"}[case]
    path.write_bytes({"empty": b"", "not_csv": b"a,b\n1,2\n", "binary": b"\xff\xfe\x00\x81" * 50}[case])
    result = run_cli("validate", "--config", str(demo_yaml), "--data", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert_one_clean_error(result, str(path))
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "state" / "mlflow.db").exists()


@pytest.mark.slow
def test_validate_missing_column_and_wrong_type_exit_1(tmp_path: Path, demo_yaml: Path,
                                                      flights_jan: pd.DataFrame) -> None:
    broken = flights_jan.drop(columns=["distance"]).assign(temp="warm")
    path = tmp_path / "broken.csv"
    broken.to_csv(path, index=False)
    result = run_cli("validate", "--config", str(demo_yaml), "--data", str(path), cwd=tmp_path)
    assert result.returncode == 1
    assert_one_clean_error(result, "distance", "temp")
    as_json = run_cli("validate", "--config", str(demo_yaml), "--data", str(path), "--json", cwd=tmp_path)
    payload = json.loads(as_json.stdout)
    assert payload["success"] is False and payload["rows"] == len(broken)
    assert {f["column"] for f in payload["failed"]} >= {"distance", "temp"}
    assert not (tmp_path / "state" / "mlflow.db").exists()


@pytest.mark.slow
def test_validate_good_file_passes(tmp_path: Path, demo_yaml: Path, flights_jan: pd.DataFrame) -> None:
    path = tmp_path / "good.parquet"
    flights_jan.to_parquet(path)
    result = run_cli("validate", "--config", str(demo_yaml), "--data", str(path), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["success"] is True and Path(payload["report"]).is_file()


@pytest.mark.slow
def test_bad_config_key_is_named(tmp_path: Path, flights_jan: pd.DataFrame) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"data": {"target": "y", "numerical": ["x"]}, "trainig": {"epochs": 1}}))
    result = run_cli("validate", "--config", str(config), "--data", str(config), cwd=tmp_path)
    assert result.returncode == 2
    assert_one_clean_error(result, "unknown key 'trainig'")


@pytest.mark.slow
def test_monitor_bad_window_exit_2(tmp_path: Path, demo_yaml: Path, flights_jan: pd.DataFrame) -> None:
    reference, current = tmp_path / "ref.csv", tmp_path / "cur.csv"
    flights_jan.to_csv(reference, index=False)
    flights_jan.drop(columns=["carrier"]).to_csv(current, index=False)
    result = run_cli("monitor", "--config", str(demo_yaml), "--current", str(current), "--reference",
                     str(reference), "--json", cwd=tmp_path)
    assert result.returncode == 2
    assert_one_clean_error(result, "carrier")


@pytest.mark.slow
def test_train_another_dataset_with_only_a_data_section(tmp_path: Path) -> None:
    """Real data other than the demo's: sklearn's diabetes table, regression, `sex` a category stored as 1/2."""
    frame = load_diabetes(as_frame=True, scaled=False).frame
    frame.to_csv(tmp_path / "diabetes.csv", index=False)
    config = {"data": {"target": "target", "task": "regression", "numerical": ["age", "bmi", "bp", "s1", "s5"],
                       "categorical": ["sex"]}}
    (tmp_path / "diabetes.yaml").write_text(yaml.safe_dump(config))
    result = run_cli("train", "--config", "diabetes.yaml", "--data", "diabetes.csv", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads(result.stdout)
    assert payload["stages"] == 2 and payload["schedule"] == "1F1B" and payload["model_version"] == "1"
    assert set(payload["metrics"]) >= {"rmse", "mae"}
    assert payload["metrics"]["rmse"] < frame["target"].std() * 1.5
    assert (tmp_path / ".driftloop" / "mlflow.db").is_file()
