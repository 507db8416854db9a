"""The drift monitor: Evidently's statistics with calibrated thresholds, performance (actual and CBPE), the
retraining policy, windows, the gauges and their textfile, the alert rules, and the file entry point."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import evidently as _evidently  # noqa: F401 - imported at collection: tests of its report time the run, not the import
import numpy as np
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

import driftloop.monitoring.calibration as calibration_module
from driftloop.config import Config, parse_config
from driftloop.errors import ConfigError, DataError
from driftloop.metrics import (
    COLUMN_DRIFT_SCORE,
    COLUMN_DRIFT_THRESHOLD,
    DRIFT_DETECTED,
    DRIFT_FALSE_ALARM_RATE,
    DRIFT_SHARE,
    LAST_CHECK,
    PERFORMANCE_DEGRADED,
    REFERENCE_PERFORMANCE,
    RETRAIN_RECOMMENDED,
    WINDOW_LABELLED_ROWS,
    WINDOW_PERFORMANCE,
    WINDOW_PERFORMANCE_ESTIMATED,
    WINDOW_ROWS,
    monitor_metrics,
)
from driftloop.monitoring.calibration import (
    cached_calibration,
    calibration_rows,
    column_references,
    draw_count,
    methods_for,
)
from driftloop.monitoring.cli_monitor import monitor_files
from driftloop.monitoring.drift import ColumnDrift, DriftResult, check_drift, typed_columns
from driftloop.monitoring.export import export_drift, export_performance, export_window, write_textfile
from driftloop.monitoring.performance import Figures, Performance, estimated_figures, measure_performance
from driftloop.monitoring.policy import Judgement, PolicyState, decide, new_champion
from driftloop.monitoring.statistics import NumericReference, score_columns
from driftloop.monitoring.summary import markdown_summary
from driftloop.monitoring.windows import cut_windows, reference_frame
from driftloop.state import reports_dir
from tests.helpers import make_config


@pytest.fixture(scope="module")
def shared_state(tmp_path_factory) -> Path:
    """One state dir for the module: its calibration cache is shared by the tests that do not test the cache."""
    return tmp_path_factory.mktemp("state")


@pytest.fixture
def config(shared_state: Path) -> Config:
    """The demo config with the module's state dir."""
    return make_config(shared_state)


@pytest.fixture(scope="module")
def jan_vs_jul(flights_jan: pd.DataFrame, flights_jul: pd.DataFrame, shared_state: Path) -> DriftResult:
    """January against July, checked once for the tests that only read the result."""
    return check_drift(flights_jan, flights_jul, make_config(shared_state))


def assert_consistent(result: DriftResult, config: Config) -> None:
    """The fields agree with each other and with the decision rule of config.monitoring.decision."""
    assert list(result.columns) == config.data.features
    drifted = sum(column.drifted for column in result.columns.values())
    assert result.drift_share == pytest.approx(drifted / len(config.data.features))
    if config.monitoring.decision == "evidently":
        assert result.drift_detected == (result.drift_share >= config.monitoring.drift_share)
        assert result.false_alarm_rate is None
    else:
        tested = [*result.columns.values(), *([result.prediction] if result.prediction else [])]
        assert result.drift_detected == any(column.drifted for column in tested)
        assert result.false_alarm_rate == config.monitoring.false_alarm_rate
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
    assert {"drift_detected", "drift_share", "rows", "columns", "report"} <= set(payload)
    assert payload["report"] is None
    # The rate the decision is calibrated for is stated; no model output in these files.
    assert payload["decision"] == "calibrated" and payload["false_alarm_rate"] == 0.01
    assert payload["prediction_drift"] is None and payload["performance"] is None
    assert payload["calibration"]["window_rows"] == 2000 and payload["calibration"]["rate_bound"] <= 0.01
    assert payload["drift_share"] == jan_vs_jul.drift_share
    temp = payload["columns"]["temp"]
    assert set(temp) == {"score", "threshold", "method", "drifted"}
    assert temp["drifted"] is True and temp["method"] == jan_vs_jul.columns["temp"].method


def test_two_halves_of_january_do_not_drift(config: Config, flights_jan: pd.DataFrame, tmp_path: Path):
    shuffled = flights_jan.sample(frac=1, random_state=1)
    half = len(shuffled) // 2
    result = check_drift(shuffled.iloc[:half], shuffled.iloc[half:], config)
    assert_consistent(result, config)
    assert not result.drift_detected and result.drift_share == 0
    # 2,000 rows against a 2,000-row reference: checked on a sample of half the reference.
    assert result.rows == 2000 and result.rows_checked == 1000


def test_evidently_rule_is_at_least_drift_share(flights_jan: pd.DataFrame, tmp_path: Path):
    shuffled = flights_jan.sample(frac=1, random_state=1)
    half = len(shuffled) // 2
    evidently = make_config(tmp_path / "state", monitoring={"decision": "evidently"})
    result = check_drift(shuffled.iloc[:half], shuffled.iloc[half:], evidently)
    assert_consistent(result, evidently)
    assert not result.drift_detected and result.drift_share <= 0.2
    assert result.to_json()["decision"] == "evidently" and result.to_json()["false_alarm_rate"] is None
    # The rule is "at least drift_share": a share exactly at the setting is drift.
    at_share = make_config(tmp_path / "state", monitoring={"decision": "evidently",
                                                           "drift_share": max(result.drift_share, 0.1)})
    shifted = shuffled.iloc[half:].assign(temp=shuffled["temp"].iloc[half:] + 30)
    assert check_drift(shuffled.iloc[:half], shifted, at_share).drift_detected


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
    # A 1,000-row reference sample: windows are checked on at most half of it.
    assert first.rows == len(flights_jul) and first.rows_checked == 500
    assert first.columns["temp"].method == "Wasserstein distance (normed)"


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
    page = result.report.read_text()  # the verdict's own page: no Evidently import on this path
    assert "DRIFT" in page and f"<td>temp</td><td>{result.columns['temp'].method}</td>" in page
    evidently = monitor_files(current_path, reference_path, config, evidently_report=True)
    assert evidently.report != result.report and evidently.report.stat().st_size > 100_000
    assert evidently.columns == result.columns
    textfile = Path(config.state_dir) / "metrics" / "monitor.prom"
    samples = {(s.name, s.labels.get("column")): s.value
               for family in text_string_to_metric_families(textfile.read_text()) for s in family.samples}
    assert samples[(DRIFT_SHARE, None)] == pytest.approx(result.drift_share)
    assert samples[(COLUMN_DRIFT_SCORE, "temp")] == pytest.approx(result.columns["temp"].score)


@pytest.mark.slow
def test_the_monitor_command_imports_neither_evidently_nor_the_heavy_stack(config, flights_jan, flights_jul, tmp_path):
    """`driftloop monitor --reference` decides and writes its page without Evidently, Prefect, MLflow or torch
    (their imports were most of its 15 s); --evidently-report imports Evidently for its report alone."""
    current_path, reference_path = write_windows(tmp_path, flights_jan, flights_jul)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(json.dumps(config.model_dump(mode="json")))
    heavy = ["evidently", "prefect", "mlflow", "torch", "great_expectations"]
    script = ("import sys; from driftloop.cli import main; code = main(sys.argv[1:]); "
              f"print([m for m in {heavy!r} if m in sys.modules]); sys.exit(code)")
    command = [sys.executable, "-c", script, "monitor", "--config", str(config_path), "--current", str(current_path),
               "--reference", str(reference_path), "--json"]
    fast = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert fast.returncode == 0, fast.stderr
    assert fast.stdout.splitlines()[-1] == "[]"
    assert json.loads(fast.stdout.splitlines()[0])["drift_detected"]
    full = subprocess.run([*command, "--evidently-report"], capture_output=True, text=True, timeout=300)
    assert full.returncode == 0, full.stderr
    assert full.stdout.splitlines()[-1] == "['evidently']"


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


# ---------------------------------------------------------------- synthetic data with a model output

def synthetic(n: int, seed: int, shift: float = 0.0, flip: float = 0.0) -> pd.DataFrame:
    """Rows like the config below describes: a logistic label, a calibrated model output `prediction`.

    `shift` moves x1 (in sd); `flip` is the share of labels flipped (concept drift: features unchanged).
    """
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"x1": rng.normal(shift, 1, n).round(3), "x2": rng.normal(0, 1, n).round(3),
                          "count": rng.poisson(3, n).astype("float64"),
                          "group": rng.choice(["a", "b", "c"], n, p=[0.5, 0.3, 0.2]),
                          "code": rng.choice([10, 20, 30, 40], n)})
    probability = 1 / (1 + np.exp(-(frame["x1"] - 0.5 * frame["x2"] - 0.5)))
    frame["y"] = (rng.random(n) < probability).astype("int64")
    frame["y"] = np.where(rng.random(n) < flip, 1 - frame["y"], frame["y"])
    frame["prediction"] = probability
    return frame


def synthetic_config(state: Path, **monitoring) -> Config:
    """Three numerical columns (one discrete), two categorical (one stored as integers); target y.

    Fewer calibration draws than the default unless given: enough for 1% over these columns, and fast.
    """
    monitoring = {"calibration_draws": 3000, **monitoring}
    return parse_config({"state_dir": str(state), "model": {"name": "synthetic"}, "monitoring": monitoring,
                         "data": {"target": "y", "numerical": ["x1", "x2", "count"],
                                  "categorical": ["group", "code"]}}, "synthetic config")


@pytest.fixture(scope="module")
def synthetic_reference() -> pd.DataFrame:
    """5,000 reference rows with labels and model outputs."""
    return synthetic(5000, seed=0)


def column_kinds(config: Config) -> dict[str, str]:
    """The monitored columns of the synthetic config, the model output included."""
    return {**{name: "numerical" for name in config.data.numerical},
            **{name: "categorical" for name in config.data.categorical}, "prediction": "numerical"}


# ---------------------------------------------------------------- statistics: identical to Evidently's

def evidently_scores(reference: pd.DataFrame, current: pd.DataFrame, kinds: dict[str, str]) -> dict[str, float]:
    """Evidently's own ValueDrift scores with the calibrated methods (one Report for all columns)."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift

    categorical = [name for name, kind in kinds.items() if kind == "categorical"]
    definition = DataDefinition(numerical_columns=[n for n in kinds if n not in categorical],
                                categorical_columns=categorical)
    methods = methods_for(kinds)
    snapshot = Report([ValueDrift(column=name, method=methods[name]) for name in kinds]).run(
        Dataset.from_pandas(current.reset_index(drop=True), data_definition=definition),
        Dataset.from_pandas(reference.reset_index(drop=True), data_definition=definition))
    return {metric["config"]["column"]: float(metric["value"]) for metric in snapshot.dict()["metrics"]}


def test_fast_statistics_equal_evidentlys_scores(tmp_path: Path, synthetic_reference: pd.DataFrame):
    """The calibration's statistics are Evidently's: a window against the reference, and a drawn window
    against the rest of the reference (the calibration's null pairs), with missing values and new categories."""
    config = synthetic_config(tmp_path)
    kinds = column_kinds(config)
    reference = typed_columns(synthetic_reference, config, kinds)
    reference.loc[reference.index[::17], "x2"] = np.nan
    reference.loc[reference.index[::23], "group"] = np.nan
    summaries = column_references(reference, kinds)
    window = typed_columns(synthetic(700, seed=5, shift=0.3), config, kinds)
    window.loc[window.index[:40], "group"] = "new-category"
    window.loc[window.index[::9], "x1"] = np.nan
    expected = evidently_scores(reference, window, kinds)
    assert score_columns(summaries, window) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    rng = np.random.default_rng(3)
    for draw in (rng.choice(len(reference), 400, replace=False) for _ in range(2)):
        rest = reference.drop(index=draw)
        expected = evidently_scores(rest, reference.iloc[draw], kinds)
        got = {name: float(summaries[name].null_scores(draw[None, :])[0]) for name in kinds}
        assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_numeric_null_scores_by_counting_and_by_sorting_agree(synthetic_reference: pd.DataFrame):
    """The two exact routes (chosen by cost) give the same numbers, discrete or continuous."""
    rng = np.random.default_rng(1)
    rows = np.stack([rng.choice(len(synthetic_reference), 300, replace=False) for _ in range(30)])
    for name in ("x1", "count"):
        summary = NumericReference.build(synthetic_reference[name])
        assert summary._null_by_counts(rows) == pytest.approx(summary._null_by_sorting(rows), rel=1e-9, abs=1e-12)


# ---------------------------------------------------------------- calibration

@pytest.mark.slow  # hundreds of windows through the calibrated decision: about the quick limit of CPU
def test_no_drift_stream_stays_under_the_stated_rate(tmp_path: Path, synthetic_reference: pd.DataFrame):
    """600 fresh windows from the reference's distribution (fixed seeds): alarms at most the stated 5%,
    within sampling error, and not absurdly fewer (the thresholds are not just huge)."""
    config = synthetic_config(tmp_path, false_alarm_rate=0.05, calibration_draws=8000)
    kinds = column_kinds(config)
    reference = typed_columns(synthetic_reference, config, kinds)
    calibration = cached_calibration(reference, kinds, 200, config)
    assert calibration.expected_rate <= 0.05 and calibration.false_alarm_rate == 0.05
    summaries = column_references(reference, kinds)
    alarms = 0
    for seed in range(1000, 1600):
        scores = score_columns(summaries, typed_columns(synthetic(200, seed), config, kinds))
        alarms += any(scores[name] >= calibration.thresholds[name] for name in kinds)
    rate = alarms / 600
    assert 0.01 <= rate <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / 600), rate


@pytest.mark.slow
def test_no_drift_stream_through_check_drift_at_one_percent(tmp_path: Path, synthetic_reference: pd.DataFrame):
    """The default 1% per window, 1,000 windows of 1,000 rows scored as check_drift scores them, and 10 of them
    through check_drift itself (Evidently's Report) with the same verdicts."""
    config = synthetic_config(tmp_path, calibration_draws=8000)
    kinds = column_kinds(config)
    reference = typed_columns(synthetic_reference, config, kinds)
    calibration = cached_calibration(reference, kinds, 1000, config)
    summaries = column_references(reference, kinds)
    verdicts = []
    for seed in range(2000, 3000):
        window = synthetic(1000, seed)
        scores = score_columns(summaries, typed_columns(window, config, kinds))
        verdicts.append(any(scores[name] >= calibration.thresholds[name] for name in kinds))
        if seed < 2010:
            assert check_drift(synthetic_reference, window, config).drift_detected == verdicts[-1]
    assert np.mean(verdicts) <= 0.01 + 2 * math.sqrt(0.01 * 0.99 / 1000)


def test_clear_shift_is_detected_in_its_column(tmp_path: Path, synthetic_reference: pd.DataFrame):
    config = synthetic_config(tmp_path)
    result = check_drift(synthetic_reference, synthetic(1000, seed=7, shift=0.3), config)
    assert_consistent(result, config)
    assert result.drift_detected and result.columns["x1"].drifted
    assert [name for name, column in result.columns.items() if column.drifted] == ["x1"]
    assert result.prediction is not None and result.prediction.drifted  # x1 moves the model's output too
    quiet = check_drift(synthetic_reference, synthetic(1000, seed=8), config)
    assert not quiet.drift_detected and not quiet.prediction.drifted


def test_calibration_is_cached_and_follows_the_reference(tmp_path: Path, synthetic_reference: pd.DataFrame,
                                                         monkeypatch):
    calls = []
    real = calibration_module.calibrate

    def counting(*args, **kwargs):
        calls.append(args[2])  # the window size
        return real(*args, **kwargs)

    monkeypatch.setattr(calibration_module, "calibrate", counting)
    config = synthetic_config(tmp_path)
    window = synthetic(400, seed=9)
    first = check_drift(synthetic_reference, window, config)
    second = check_drift(synthetic_reference, synthetic(400, seed=10), config)
    assert calls == [400]  # the second window reused the first's calibration
    cached = list((tmp_path / "cache" / "calibration").glob("*.json"))
    assert len(cached) == 1
    saved = json.loads(cached[0].read_text())
    assert saved["window_rows"] == 400 and saved["false_alarm_rate"] == 0.01 and saved["rate_bound"] <= 0.01
    assert {name: column.threshold for name, column in first.columns.items()} == \
           {name: column.threshold for name, column in second.columns.items()}
    # A new champion's reference (other rows) calibrates anew; so does another window size.
    check_drift(synthetic(5000, seed=1), window, config)
    check_drift(synthetic_reference, window.iloc[:200], config)
    assert calls == [400, 400, 200]
    # A damaged cache file is recomputed, not trusted.
    cached[0].write_text("{not json")
    check_drift(synthetic_reference, window, config)
    assert calls == [400, 400, 200, 400]


def test_calibration_rows_round_down_and_cap(tmp_path: Path):
    config = synthetic_config(tmp_path)
    assert calibration_rows(1000, 20000, config) == 1000
    assert calibration_rows(5873, 20000, config) == 5000  # max_window_rows
    assert calibration_rows(4873, 20000, config) == 4800  # two significant digits, rounded down
    assert calibration_rows(95, 20000, config) == 95
    assert calibration_rows(3000, 4000, config) == 2000  # at most half the reference


def test_too_few_draws_for_the_rate_are_raised_automatically(tmp_path: Path):
    config = synthetic_config(tmp_path, calibration_draws=100, false_alarm_rate=0.001)
    assert draw_count(config, columns=6) == 17000


# ---------------------------------------------------------------- performance: actual and CBPE

def test_cbpe_estimate_is_close_to_actual_under_covariate_shift(tmp_path: Path):
    """A miscalibrated (overconfident) model: isotonic calibration on the reference, then the estimate on a
    shifted window matches the labels' actual accuracy and AUC; the raw outputs would not."""
    rng = np.random.default_rng(0)

    def rows(n: int, mean: float, sd: float) -> pd.DataFrame:
        x = rng.normal(mean, sd, n)
        truth = 1 / (1 + np.exp(-(1.5 * x - 0.5)))
        return pd.DataFrame({"x": x, "y": (rng.random(n) < truth).astype(int),
                             "prediction": 1 / (1 + np.exp(-(3 * x - 1)))})

    config = parse_config({"state_dir": str(tmp_path), "data": {"target": "y", "numerical": ["x"]}})
    reference, window = rows(20000, 0, 1), rows(20000, 0.7, 0.8)
    performance = measure_performance(reference, window, config)
    actual, estimated = performance.actual.values, performance.estimated.values
    assert estimated["accuracy"] == pytest.approx(actual["accuracy"], abs=0.01)
    assert estimated["auc"] == pytest.approx(actual["auc"], abs=0.01)
    assert estimated["log_loss"] == pytest.approx(actual["log_loss"], abs=0.02)
    naive = estimated_figures(window["prediction"], window["prediction"].to_numpy())
    assert abs(naive.values["log_loss"] - actual["log_loss"]) > 0.05  # the calibration mattered
    # On the reference itself the estimate matches the actual figures, and the errors are sane.
    assert performance.reference_estimated.values["auc"] == pytest.approx(performance.reference.values["auc"],
                                                                          abs=0.01)
    assert 0 < performance.actual.errors["auc"] < 0.01 and performance.metric == "auc"


def test_performance_needs_the_model_output_and_uses_the_labels_that_arrived(tmp_path: Path,
                                                                            synthetic_reference: pd.DataFrame):
    config = synthetic_config(tmp_path)
    window = synthetic(1000, seed=11)
    assert measure_performance(synthetic_reference, window.drop(columns="prediction"), config) is None
    window.loc[window.index[300:], "y"] = np.nan  # labels of 300 rows so far
    performance = measure_performance(synthetic_reference, window, config)
    assert performance.actual.rows == 300 and performance.estimated.rows == 1000
    assert set(performance.actual.values) == {"accuracy", "log_loss", "auc"}
    regression = parse_config({"state_dir": str(tmp_path), "data": {"target": "y", "task": "regression",
                                                                    "numerical": ["x1"]}})
    figures = measure_performance(synthetic_reference, window, regression)
    assert figures.estimated is None and set(figures.actual.values) == {"rmse", "mae"}
    assert figures.metric == "rmse" and figures.actual.errors["rmse"] > 0


# ---------------------------------------------------------------- the retraining policy

def window_result(drift: bool, actual_auc: float | None = 0.80, estimated_auc: float = 0.80,
                  labelled: int = 1000, error: float = 0.01) -> DriftResult:
    """A checked window, made by hand: drift in x1 or none; AUCs against a reference of 0.80."""
    reference = Figures(5000, {"auc": 0.80}, {"auc": 0.005})
    actual = Figures(labelled, {"auc": actual_auc}, {"auc": error}) if actual_auc is not None else None
    performance = Performance("auc", reference, actual, Figures(1000, {"auc": estimated_auc}, {"auc": error}),
                              Figures(5000, {"auc": 0.80}, {"auc": 0.005}))
    columns = {"x1": ColumnDrift(0.5 if drift else 0.01, 0.1, "Wasserstein distance (normed)", drift),
               "x2": ColumnDrift(0.02, 0.1, "Wasserstein distance (normed)", False)}
    return DriftResult(drift, 0.5 if drift else 0.0, 1000, columns, None, false_alarm_rate=0.01,
                       performance=performance)


@pytest.fixture
def policy_config(tmp_path: Path) -> Config:
    return make_config(tmp_path, monitoring={"cooldown_windows": 2})


def test_drift_without_a_performance_drop_does_not_retrain(policy_config: Config):
    decision = decide(PolicyState(), window_result(drift=True, actual_auc=0.795), policy_config)
    assert not decision.retrain and decision.drift
    assert "drift in x1" in decision.reason and "not retraining" in decision.reason
    assert decision.performance.source == "actual" and not decision.performance.degraded


def test_drift_with_a_performance_drop_retrains(policy_config: Config):
    decision = decide(PolicyState(), window_result(drift=True, actual_auc=0.70), policy_config)
    assert decision.retrain and "drift in x1" in decision.reason and "a drop" in decision.reason
    assert decision.performance.drop == pytest.approx(0.10) and decision.state.last_retrain == 0


def test_a_performance_drop_without_drift_retrains(policy_config: Config):
    decision = decide(PolicyState(), window_result(drift=False, actual_auc=0.70), policy_config)
    assert decision.retrain and decision.reason.startswith("no drift") and not decision.drift


def test_a_drop_within_noise_or_margin_does_not_retrain(policy_config: Config):
    # 0.05 below the reference but with a standard error of 0.03: not beyond chance at 1%.
    noisy = decide(PolicyState(), window_result(drift=True, actual_auc=0.75, error=0.03), policy_config)
    assert not noisy.retrain and "no significant drop" in noisy.reason
    # Certainly lower, but by less than the 0.02 margin.
    small = decide(PolicyState(), window_result(drift=False, actual_auc=0.785, error=0.001), policy_config)
    assert not small.retrain


def test_before_labels_the_estimate_is_judged(policy_config: Config):
    early = decide(PolicyState(), window_result(drift=True, actual_auc=None, estimated_auc=0.70), policy_config)
    assert early.retrain and early.performance.source == "estimated"
    # A few labels (under min_labelled_rows) are not enough to overrule the estimate.
    few = decide(PolicyState(), window_result(drift=True, actual_auc=0.60, estimated_auc=0.80, labelled=50),
                 policy_config)
    assert not few.retrain and few.performance.source == "estimated"


def test_cooldown_stops_repeated_triggers_for_one_incident(policy_config: Config):
    state, retrained = PolicyState(), []
    for _ in range(5):
        decision = decide(state, window_result(drift=True, actual_auc=0.70), policy_config)
        retrained.append(decision.retrain)
        state = decision.state
    # cooldown_windows = 2: windows 1 and 2 wait, window 3 may retrain again.
    assert retrained == [True, False, False, True, False]
    assert state.windows == 5 and state.last_retrain == 3
    waiting = decide(PolicyState(windows=4, last_retrain=3), window_result(True, 0.70), policy_config)
    assert waiting.reason.startswith("cooldown")


def test_retrain_on_drift_setting_and_state_round_trip(tmp_path: Path):
    eager = make_config(tmp_path, monitoring={"retrain_on_drift": True})
    assert decide(PolicyState(), window_result(drift=True, actual_auc=0.80), eager).retrain
    assert not decide(PolicyState(), window_result(drift=False, actual_auc=0.80), eager).retrain
    state = PolicyState(windows=7, last_retrain=5, baseline={"auc": 0.75})
    assert PolicyState.from_json(json.loads(json.dumps(state.to_json()))) == state
    moved = new_champion(state, {"auc": 0.90})
    assert moved.baseline == {"auc": 0.90} and moved.last_retrain == 5 and moved.windows == 7
    # The champion's baseline replaces the reference's figure for the actual performance.
    judged = decide(moved, window_result(drift=False, actual_auc=0.80), eager)
    assert judged.performance.baseline == 0.90 and judged.performance.degraded


# ---------------------------------------------------------------- windows, reference, summary, gauges, rules

def test_windows_by_rows_or_by_time(tmp_path: Path, flights_jan: pd.DataFrame):
    by_rows = make_config(tmp_path, monitoring={"window": 1500})
    windows = list(cut_windows(flights_jan, by_rows))
    assert [len(w.frame) for w in windows] == [1500, 1500, 1000]
    assert windows[0].start <= windows[0].end <= windows[1].start
    by_time = list(cut_windows(flights_jan, make_config(tmp_path, monitoring={"window": "7D"})))
    assert 4 <= len(by_time) <= 5 and sum(len(w.frame) for w in by_time) == len(flights_jan)
    with pytest.raises(ConfigError, match="monitoring.window"):
        make_config(tmp_path, monitoring={"window": "weekly"})


def test_reference_frame_keeps_outputs_and_drops_pii(config: Config, flights_jan: pd.DataFrame):
    outputs = np.linspace(0, 1, len(flights_jan))
    reference = reference_frame(flights_jan, config, outputs)
    assert "tailnum" not in reference and reference["prediction"].tolist() == outputs.tolist()
    small = reference_frame(flights_jan, make_config(Path(config.state_dir), monitoring={"reference_max_rows": 500}))
    assert len(small) == 500 and small.equals(reference_frame(flights_jan, make_config(
        Path(config.state_dir), monitoring={"reference_max_rows": 500})))


def test_export_window_sets_every_gauge(tmp_path: Path, synthetic_reference: pd.DataFrame):
    config = synthetic_config(tmp_path)
    result = check_drift(synthetic_reference, synthetic(1000, seed=12, flip=0.4), config)
    decision = decide(PolicyState(), result, config)
    assert decision.retrain and not result.drift_detected  # concept drift: labels only
    metrics = monitor_metrics()
    export_window(result, decision, metrics, "synthetic")
    value = metrics.registry.get_sample_value
    model = {"model": "synthetic"}
    assert value(DRIFT_FALSE_ALARM_RATE, model) == 0.01 and value(DRIFT_DETECTED, model) == 0
    assert value(WINDOW_LABELLED_ROWS, model) == 1000 and value(WINDOW_ROWS, model) == 1000
    assert value(PERFORMANCE_DEGRADED, model) == 1 and value(RETRAIN_RECOMMENDED, model) == 1
    assert value(WINDOW_PERFORMANCE, {**model, "metric": "auc"}) == result.performance.actual.values["auc"]
    assert value(WINDOW_PERFORMANCE_ESTIMATED, {**model, "metric": "auc"}) == \
        result.performance.estimated.values["auc"]
    assert value(REFERENCE_PERFORMANCE, {**model, "metric": "auc"}) == result.performance.reference.values["auc"]
    output = {**model, "column": "prediction", "method": "Wasserstein distance (normed)"}
    assert value(COLUMN_DRIFT_SCORE, output) == result.prediction.score
    assert value(COLUMN_DRIFT_THRESHOLD, output) == result.prediction.threshold
    text = markdown_summary(result, "synthetic", "w01", decision)
    assert "1.00% false alarms per window" in text and "| model output |" in text
    assert "**Policy**: RETRAIN" in text and "estimated (CBPE)" in text


def test_monitor_json_with_model_output(tmp_path: Path, synthetic_reference: pd.DataFrame):
    config = synthetic_config(tmp_path)
    window = synthetic(20000, seed=13)  # over max_window_rows: drift on a 2,500-row sample (half the reference)
    current_path, reference_path = write_windows(tmp_path, synthetic_reference, window)
    payload = json.loads(json.dumps(monitor_files(current_path, reference_path, config).to_json()))
    assert payload["rows"] == 20000 and payload["rows_checked"] == 2500
    assert set(payload["columns"]) == {"x1", "x2", "count", "group", "code"}
    assert payload["columns"]["code"]["method"] == "Jensen-Shannon distance"  # integers declared categorical
    assert set(payload["prediction_drift"]) == {"score", "threshold", "method", "drifted"}
    performance = payload["performance"]
    assert performance["metric"] == "auc" and performance["actual"]["rows"] == 20000
    assert performance["estimated"]["values"]["auc"] == pytest.approx(performance["actual"]["values"]["auc"],
                                                                       abs=0.02)


RULES = Path(__file__).resolve().parents[1] / "monitoring" / "rules"
RULE_TESTS = ("driftloop.rules.test.yml", "driftloop.stale.test.yml")


def test_alert_rules_use_only_driftloop_metric_names():
    import driftloop.metrics as names

    defined = {value for key, value in vars(names).items() if key.isupper() and isinstance(value, str)}
    used = set(re.findall(r"driftloop_[a-z_]+", (RULES / "driftloop.rules.yml").read_text()))
    assert used and used <= defined, used - defined
    alerts = set(re.findall(r"alert: (\w+)", (RULES / "driftloop.rules.yml").read_text()))
    assert {"DriftloopDriftDetected", "DriftloopPerformanceDrop", "DriftloopMonitorStale",
            "DriftloopServingErrors"} <= alerts
    tested = {name for path in RULE_TESTS for name in re.findall(r"alertname: (\w+)", (RULES / path).read_text())}
    assert alerts == tested


def test_the_retrain_rule_is_the_alert_that_starts_retraining():
    """The rule the receiver acts on by default exists, and is marked for the retraining route."""
    import yaml

    from driftloop.config import AlertsConfig

    rules = {rule["alert"]: rule for group in yaml.safe_load((RULES / "driftloop.rules.yml").read_text())["groups"]
             for rule in group["rules"]}
    for name in AlertsConfig().retrain_alerts:
        assert rules[name]["labels"]["action"] == "retrain"
        assert "for" not in rules[name]  # the gauge holds one window's verdict: an event, not a condition
    assert RETRAIN_RECOMMENDED in rules["DriftloopRetrainRecommended"]["expr"]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian package prometheus) is not installed")
def test_promtool_checks_and_unit_tests_the_alert_rules():
    for command in (["check", "rules", "driftloop.rules.yml"], ["test", "rules", *RULE_TESTS]):
        done = subprocess.run(["promtool", *command], cwd=RULES, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "SUCCESS" in done.stdout


@pytest.mark.slow
def test_large_window_is_checked_in_seconds(tmp_path: Path):
    """100,000 rows x 20 columns against 20,000: a few seconds with the calibration cached."""
    rng = np.random.default_rng(0)

    def rows(n: int) -> pd.DataFrame:
        frame = pd.DataFrame(rng.normal(size=(n, 15)).round(2), columns=[f"x{i}" for i in range(15)])
        for i in range(5):
            frame[f"c{i}"] = rng.choice(list("abcdefgh"), n)
        return frame.assign(y=rng.integers(0, 2, n))

    config = parse_config({"state_dir": str(tmp_path), "monitoring": {"calibration_draws": 100}, "data": {
        "target": "y", "numerical": [f"x{i}" for i in range(15)], "categorical": [f"c{i}" for i in range(5)]}})
    assert draw_count(config, 20) == 4500  # the least that resolves 1% over 20 columns: a quick calibration
    reference, window = rows(20000), rows(100_000)
    check_drift(reference, window, config)  # calibrates once
    started = time.perf_counter()
    result = check_drift(reference, window.assign(x3=window["x3"] + 0.2), config)
    assert time.perf_counter() - started < 10
    assert result.rows == 100_000 and result.rows_checked == 5000
    assert [name for name, column in result.columns.items() if column.drifted] == ["x3"]


def test_a_judgement_says_which_way_the_metric_moved_whatever_its_direction() -> None:
    """RMSE falling is no drop, and the reason says it went down; AUC falling is a drop and says down too."""
    better_rmse = Judgement("actual", "rmse", 20.6, 35.8, drop=-15.2, error=0.6, degraded=False)
    worse_auc = Judgement("actual", "auc", 0.62, 0.70, drop=0.08, error=0.01, degraded=True)
    assert "rmse 20.600 vs 35.800 (down 15.200" in better_rmse.describe()
    assert "no significant drop" in better_rmse.describe()
    assert "auc 0.620 vs 0.700 (down 0.080" in worse_auc.describe() and ": a drop" in worse_auc.describe()
