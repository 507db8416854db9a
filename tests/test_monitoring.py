"""Drift check of one window (Evidently), the gauges and their textfile, and the file entry point."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from driftloop.config import Config
from driftloop.errors import DataError
from driftloop.metrics import (
    COLUMN_DRIFT_SCORE,
    COLUMN_DRIFT_THRESHOLD,
    DRIFT_DETECTED,
    DRIFT_SHARE,
    LAST_CHECK,
    WINDOW_PERFORMANCE,
    WINDOW_ROWS,
    monitor_metrics,
)
from driftloop.state import reports_dir
from monitoring.cli_monitor import monitor_files
from monitoring.drift import ColumnDrift, DriftResult, check_drift
from monitoring.export import export_drift, export_performance, write_textfile
from tests.conftest import make_config


@pytest.fixture(scope="module")
def jan_vs_jul(flights_jan: pd.DataFrame, flights_jul: pd.DataFrame, tmp_path_factory) -> DriftResult:
    """January against July, checked once for the tests that only read the result."""
    config = make_config(tmp_path_factory.mktemp("state"))
    return check_drift(flights_jan, flights_jul, config)


def assert_consistent(result: DriftResult, config: Config) -> None:
    """The fields agree with each other and with the drift_share rule."""
    assert list(result.columns) == config.data.features
    drifted = sum(column.drifted for column in result.columns.values())
    assert result.drift_share == pytest.approx(drifted / len(config.data.features))
    assert result.drift_detected == (result.drift_share >= config.monitoring.drift_share)
    for name, column in result.columns.items():
        assert column.method, name
        assert math.isfinite(column.score) and column.threshold > 0, name
        # Evidently's verdict, read the right way round for its kind of score.
        if column.method.endswith("p_value"):
            assert column.drifted == (column.score < column.threshold), name
        else:
            assert column.drifted == (column.score >= column.threshold), name


def test_january_against_july_detects_temp_drift(jan_vs_jul: DriftResult, config: Config, flights_jul):
    result = jan_vs_jul
    assert result.columns["temp"].drifted
    assert result.columns["temp"].score > result.columns["temp"].threshold
    assert result.rows == len(flights_jul)
    assert result.report is None
    assert_consistent(result, config)
    assert "tailnum" not in result.columns and "arr_delayed" not in result.columns


def test_json_has_the_contract_fields(jan_vs_jul: DriftResult):
    payload = json.loads(json.dumps(jan_vs_jul.to_json()))
    assert set(payload) == {"drift_detected", "drift_share", "rows", "columns", "report"}
    assert payload["report"] is None
    assert payload["drift_share"] == jan_vs_jul.drift_share
    temp = payload["columns"]["temp"]
    assert set(temp) == {"score", "threshold", "method", "drifted"}
    assert temp["drifted"] is True and temp["method"] == jan_vs_jul.columns["temp"].method


def test_two_halves_of_january_barely_drift(config: Config, flights_jan: pd.DataFrame, tmp_path: Path):
    shuffled = flights_jan.sample(frac=1, random_state=1)
    half = len(shuffled) // 2
    result = check_drift(shuffled.iloc[:half], shuffled.iloc[half:], config)
    assert_consistent(result, config)
    assert not result.drift_detected
    assert result.drift_share <= 0.2
    assert not result.columns["temp"].drifted
    # The rule is "at least drift_share": a share exactly at the setting is drift.
    at_share = make_config(tmp_path / "state", monitoring={"drift_share": result.drift_share})
    assert check_drift(shuffled.iloc[:half], shuffled.iloc[half:], at_share).drift_detected


def test_report_html_is_written_and_leaves_results_unchanged(config, flights_jan, flights_jul, tmp_path,
                                                             jan_vs_jul: DriftResult):
    path = tmp_path / "reports" / "drift.html"
    current = flights_jul.assign(tailnum="PII-SENTINEL-TAIL")
    result = check_drift(flights_jan, current, config, report_path=path)
    assert result.report == path and result.to_json()["report"] == str(path)
    html = path.read_text(encoding="utf-8")
    assert len(html) > 100_000
    assert "temp" in html and "dest" in html
    # pii and the target never reach the report.
    assert "PII-SENTINEL-TAIL" not in html and "tailnum" not in html and "arr_delayed" not in html
    assert result.columns == jan_vs_jul.columns
    assert result.drift_share == jan_vs_jul.drift_share


def test_missing_values_do_not_crash(config, flights_jan, flights_jul):
    current = flights_jul.copy()
    current.loc[current.index[::3], "temp"] = np.nan
    current.loc[current.index[::4], "carrier"] = np.nan
    result = check_drift(flights_jan, current, config)
    assert_consistent(result, config)
    assert result.rows == len(current)
    assert result.columns["temp"].drifted


def test_empty_window_or_all_missing_column_is_a_data_error(config, flights_jan, flights_jul):
    with pytest.raises(DataError, match="current window has no rows"):
        check_drift(flights_jan, flights_jul.iloc[:0], config)
    with pytest.raises(DataError, match="column humid has no values"):
        check_drift(flights_jan, flights_jul.assign(humid=np.nan), config)


def test_categorical_columns_stored_as_integers(config, flights_jan, flights_jul):
    as_text = check_drift(flights_jan, flights_jul, config)
    both = pd.concat([flights_jan, flights_jul])
    codes = {name: {value: i for i, value in enumerate(sorted(both[name].unique()))}
             for name in config.data.categorical}
    reference = flights_jan.assign(**{name: flights_jan[name].map(codes[name]) for name in codes})
    current = flights_jul.assign(**{name: flights_jul[name].map(codes[name]) for name in codes})
    assert reference["origin"].dtype.kind == "i" and current["dest"].dtype.kind == "i"
    as_int = check_drift(reference, current, config)
    for name in config.data.categorical:
        # Declared categorical, so a categorical test, not Wasserstein on the codes.
        assert as_int.columns[name].method == as_text.columns[name].method, name
        assert as_int.columns[name].score == pytest.approx(as_text.columns[name].score), name
        assert as_int.columns[name].drifted == as_text.columns[name].drifted, name
    # The same codes as text in one file and as floats in another (a CSV column with gaps) are one category.
    mixed = check_drift(reference.assign(origin=reference["origin"].astype(str)),
                        current.assign(origin=current["origin"].astype(float)), config)
    assert mixed.columns["origin"].score == pytest.approx(as_int.columns["origin"].score)


def test_column_types_come_from_the_config(config, flights_jan, flights_jul):
    # A small window of mostly distinct destinations: Evidently would infer "text" and run a text test.
    window = flights_jul.drop_duplicates("dest").head(30)
    result = check_drift(flights_jan, window, config)
    assert result.columns["dest"].method == "Jensen-Shannon distance"
    assert result.rows == 30


def test_large_reference_is_sampled_deterministically(tmp_path, flights_jan, flights_jul):
    config = make_config(tmp_path / "state", monitoring={"reference_max_rows": 1000})
    first = check_drift(flights_jan, flights_jul, config)
    second = check_drift(flights_jan, flights_jul, config)
    assert first == second
    assert_consistent(first, config)
    # Up to 1,000 reference rows Evidently picks K-S for numbers: proof that the sample was used.
    assert first.columns["temp"].method.startswith("K-S")


def drift_result() -> DriftResult:
    """A small hand-made result for the export tests."""
    return DriftResult(
        drift_detected=True,
        drift_share=0.5,
        rows=123,
        columns={
            "temp": ColumnDrift(score=4.2, threshold=0.1, method="Wasserstein distance (normed)", drifted=True),
            "origin": ColumnDrift(score=0.3, threshold=0.05, method="chi-square p_value", drifted=False),
        },
        report=None,
    )


def test_export_drift_sets_the_gauges():
    metrics = monitor_metrics()
    before = time.time()
    export_drift(drift_result(), metrics, "flights")
    value = metrics.registry.get_sample_value
    assert value(DRIFT_SHARE, {"model": "flights"}) == 0.5
    assert value(DRIFT_DETECTED, {"model": "flights"}) == 1
    assert value(WINDOW_ROWS, {"model": "flights"}) == 123
    temp = {"model": "flights", "column": "temp", "method": "Wasserstein distance (normed)"}
    origin = {"model": "flights", "column": "origin", "method": "chi-square p_value"}
    assert value(COLUMN_DRIFT_SCORE, temp) == 4.2 and value(COLUMN_DRIFT_THRESHOLD, temp) == 0.1
    assert value(COLUMN_DRIFT_SCORE, origin) == 0.3 and value(COLUMN_DRIFT_THRESHOLD, origin) == 0.05
    assert before - 1 <= value(LAST_CHECK, {"model": "flights"}) <= time.time() + 1


def test_export_drift_drops_a_column_series_whose_method_changed():
    metrics = monitor_metrics()
    export_drift(drift_result(), metrics, "flights")
    export_drift(drift_result(), metrics, "other")
    changed = ColumnDrift(score=0.2, threshold=0.1, method="Jensen-Shannon distance", drifted=True)
    result = drift_result()
    export_drift(DriftResult(False, 0.0, 50, {**result.columns, "origin": changed}, None), metrics, "flights")
    value = metrics.registry.get_sample_value
    assert value(COLUMN_DRIFT_SCORE, {"model": "flights", "column": "origin", "method": "chi-square p_value"}) is None
    assert value(COLUMN_DRIFT_SCORE, {"model": "flights", "column": "origin",
                                      "method": "Jensen-Shannon distance"}) == 0.2
    assert value(DRIFT_DETECTED, {"model": "flights"}) == 0
    # Another model's series are left alone.
    assert value(COLUMN_DRIFT_SCORE, {"model": "other", "column": "origin", "method": "chi-square p_value"}) == 0.3


def test_export_performance_sets_and_replaces_figures():
    metrics = monitor_metrics()
    export_performance({"auc": 0.71, "accuracy": 0.8}, metrics, "flights")
    value = metrics.registry.get_sample_value
    assert value(WINDOW_PERFORMANCE, {"model": "flights", "metric": "auc"}) == 0.71
    assert value(WINDOW_PERFORMANCE, {"model": "flights", "metric": "accuracy"}) == 0.8
    export_performance({"accuracy": 0.9}, metrics, "flights")
    assert value(WINDOW_PERFORMANCE, {"model": "flights", "metric": "auc"}) is None
    assert value(WINDOW_PERFORMANCE, {"model": "flights", "metric": "accuracy"}) == 0.9


def test_textfile_is_prometheus_text_format(tmp_path):
    metrics = monitor_metrics()
    export_drift(drift_result(), metrics, "flights")
    export_performance({"auc": 0.71}, metrics, "flights")
    path = tmp_path / "metrics" / "monitor.prom"
    write_textfile(metrics, path)
    text = path.read_text()
    assert f"# TYPE {DRIFT_SHARE} gauge" in text
    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert families and all(name.startswith("driftloop_") for name in families)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert samples[(DRIFT_SHARE, (("model", "flights"),))] == 0.5
    assert samples[(WINDOW_PERFORMANCE, (("metric", "auc"), ("model", "flights")))] == 0.71


def write_windows(tmp_path: Path, reference: pd.DataFrame, current: pd.DataFrame) -> tuple[Path, Path]:
    """The reference as Parquet and the window as CSV, the two formats the CLI reads."""
    reference_path, current_path = tmp_path / "reference.parquet", tmp_path / "window.csv"
    reference.to_parquet(reference_path)
    current.to_csv(current_path, index=False)
    return current_path, reference_path


def test_monitor_files_writes_report_and_gauges(config, flights_jan, flights_jul, tmp_path):
    current_path, reference_path = write_windows(tmp_path, flights_jan, flights_jul)
    result = monitor_files(current_path, reference_path, config)
    assert result.columns["temp"].drifted and result.rows == len(flights_jul)
    assert_consistent(result, config)
    assert result.report is not None and result.report.parent == reports_dir(config, "drift")
    assert result.report.stat().st_size > 100_000
    textfile = Path(config.state_dir) / "metrics" / "monitor.prom"
    samples = {(s.name, s.labels.get("column")): s.value
               for family in text_string_to_metric_families(textfile.read_text()) for s in family.samples}
    assert samples[(DRIFT_SHARE, None)] == pytest.approx(result.drift_share)
    assert samples[(COLUMN_DRIFT_SCORE, "temp")] == pytest.approx(result.columns["temp"].score)


@pytest.mark.parametrize("breakage, expected", [
    (lambda frame: frame.drop(columns=["temp"]), "missing feature column(s) temp"),
    (lambda frame: frame.assign(wind_speed=["calm"] + list(frame["wind_speed"].iloc[1:])),
     "column wind_speed is listed under data.numerical but holds non-numeric values such as 'calm'"),
    (lambda frame: frame.iloc[:0], "file has no rows"),
])
def test_monitor_files_names_the_file_and_column(config, flights_jan, flights_jul, tmp_path, breakage, expected):
    current_path, reference_path = write_windows(tmp_path, flights_jan, breakage(flights_jul))
    with pytest.raises(DataError) as error:
        monitor_files(current_path, reference_path, config)
    message = str(error.value)
    assert str(current_path) in message and expected in message
    assert "\n" not in message


def test_monitor_files_empty_file_and_bad_reference(config, flights_jan, flights_jul, tmp_path):
    current_path, reference_path = write_windows(tmp_path, flights_jan.drop(columns=["dest"]), flights_jul)
    with pytest.raises(DataError, match=f"{reference_path}: missing feature column\\(s\\) dest"):
        monitor_files(current_path, reference_path, config)
    current_path.write_text("")
    with pytest.raises(DataError, match=f"{current_path}: file is empty"):
        monitor_files(current_path, reference_path, config)
