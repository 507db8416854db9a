"""Drift check of one window: Evidently's per-column statistics, decided with calibrated thresholds.

Two decisions (monitoring.decision):

- "calibrated" (default): each column (and the model's output, when both sides have it) is scored by
  Evidently with a fixed method (normed Wasserstein for numbers, Jensen-Shannon for categories) and
  judged against a threshold learned from the reference for this window size (monitoring.calibration);
  the window drifts when any column does, and the thresholds hold that to
  monitoring.false_alarm_rate per window on windows without drift;
- "evidently": Evidently's default tests and thresholds, and drift when the share of drifted feature
  columns is at least monitoring.drift_share (known to over-alarm on small windows and to miss a
  shift in one column of many; kept for comparison).

Either way the window's performance (actual and estimated) is measured when it has the model output.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from driftloop.config import Config
from driftloop.data import missing_columns
from driftloop.errors import ConfigError, DataError
from driftloop.monitoring.calibration import Calibration, cached_calibration, calibration_rows, column_references
from driftloop.monitoring.performance import Performance, measure_performance
from driftloop.monitoring.statistics import DISPLAY_NAMES, score_columns

if TYPE_CHECKING:  # Evidently is imported only to write a report (its import alone takes seconds)
    from evidently.core.report import Snapshot

# The reference is sampled with a fixed seed: the same reference always gives the same rows, so
# every window of a run is compared against the same sample (and its calibration is reused).
REFERENCE_SAMPLE_SEED = 0
# Windows above the size limit are sampled with a fixed seed too: a check is reproducible.
WINDOW_SAMPLE_SEED = 0
# How Evidently tags a ValueDrift result and its pass/fail test in `Snapshot.dict()`.
VALUE_DRIFT_TYPE = "evidently:metric_v2:ValueDrift"
VALUE_DRIFT_TEST = "drift"
TEST_FAILED = "FAIL"


@dataclass(frozen=True)
class ColumnDrift:
    """Evidently's drift test of one column, as Evidently computed it (with the calibrated threshold, if any).

    `score` is a p-value for tests whose `method` ends in "p_value" (drift when the score is below
    `threshold`) and a distance otherwise (drift when it is at or above `threshold`). `drifted` is
    Evidently's own verdict, so it reads right either way.
    """

    score: float
    threshold: float
    method: str
    drifted: bool

    def to_json(self) -> dict:
        """The column's entry in the monitor's JSON."""
        return {"score": self.score, "threshold": self.threshold, "method": self.method, "drifted": self.drifted}


@dataclass(frozen=True)
class DriftResult:
    """Drift of one window: per-column tests, the model output's test, the dataset verdict, performance."""

    drift_detected: bool
    drift_share: float  # share of drifted feature columns
    rows: int
    columns: dict[str, ColumnDrift]  # the feature columns, in config order
    report: Path | None
    prediction: ColumnDrift | None = None  # drift of the model output, when both sides have it
    # The per-window false-alarm rate the decision is calibrated for; None for Evidently's own rule.
    false_alarm_rate: float | None = None
    rows_checked: int | None = None  # rows the drift tests used (a sample of large windows)
    performance: Performance | None = None
    calibration: Calibration | None = None  # the thresholds' provenance (calibrated decision only)

    def to_json(self) -> dict:
        """The `driftloop monitor --json` object: the keys docs/concepts/loop.md lists, then the calibration and
        performance."""
        return {
            "drift_detected": self.drift_detected,
            "drift_share": self.drift_share,
            "rows": self.rows,
            "columns": {name: column.to_json() for name, column in self.columns.items()},
            "report": str(self.report) if self.report is not None else None,
            "decision": "evidently" if self.false_alarm_rate is None else "calibrated",
            "false_alarm_rate": self.false_alarm_rate,
            "rows_checked": self.rows_checked if self.rows_checked is not None else self.rows,
            "prediction_drift": self.prediction.to_json() if self.prediction is not None else None,
            "performance": self.performance.to_json() if self.performance is not None else None,
            "calibration": _calibration_json(self.calibration),
        }


def _calibration_json(calibration: Calibration | None) -> dict | None:
    """What the thresholds were learned for and what they promise (not the thresholds: they are per column)."""
    if calibration is None:
        return None
    return {"window_rows": calibration.window_rows, "draws": calibration.draws, "rank": calibration.rank,
            "expected_rate": calibration.expected_rate, "rate_bound": calibration.rate_bound}


def validate_window(frame: pd.DataFrame, config: Config, source: str) -> None:
    """Raise DataError naming `source` and the column when `frame` cannot be checked for drift."""
    if len(frame) == 0:
        raise DataError(f"{source} has no rows")
    missing = missing_columns(frame, config.data.features)
    if missing:
        raise DataError(f"{source}: missing feature column(s) {', '.join(missing)}; "
                        "every column under data.numerical and data.categorical is needed")
    for name in config.data.features:
        if frame[name].isna().all():
            raise DataError(f"{source}: column {name} has no values (all missing); drift cannot be measured")
    for name in config.data.numerical:
        column = frame[name]
        if not pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
            raise DataError(f"{source}: column {name} is listed under data.numerical but holds non-numeric "
                            f"values such as {_non_numeric_example(column)!r}; fix the values or list {name} "
                            "under data.categorical")


def check_drift(reference: pd.DataFrame, current: pd.DataFrame, config: Config,
                report_path: Path | None = None) -> DriftResult:
    """Drift of the config's feature columns (never pii, never the target) and of the model output of
    `current` against `reference`, decided as monitoring.decision says, with the window's performance.

    Saves the Evidently HTML report to report_path when given. Calibrations are cached under state_dir.
    """
    validate_window(reference, config, "reference")
    validate_window(current, config, "current window")
    sample = _sample_reference(reference, config)
    performance = measure_performance(sample, current, config)
    if config.monitoring.decision == "evidently":
        return _evidently_defaults(sample, current, config, report_path, performance)
    kinds = monitored_kinds(sample, current, config)
    window_rows = calibration_rows(len(current), len(sample), config)
    window = _sample_window(current, window_rows)
    reference_columns = typed_columns(sample, config, kinds)
    calibration = cached_calibration(reference_columns, kinds, window_rows, config)
    window_columns = typed_columns(window, config, kinds)
    tested = calibrated_drifts(reference_columns, window_columns, kinds, calibration)
    columns = {name: tested[name] for name in config.data.features}
    prediction = tested.get(config.monitoring.prediction_column)
    if report_path is not None:
        snapshot = _run_report(reference_columns, window_columns, config, True, calibration)
        report_path = _save_report(snapshot, Path(report_path))
    return DriftResult(
        drift_detected=any(column.drifted for column in tested.values()),
        drift_share=sum(column.drifted for column in columns.values()) / len(columns),
        rows=len(current),
        columns=columns,
        report=report_path,
        prediction=prediction,
        false_alarm_rate=calibration.false_alarm_rate,
        rows_checked=len(window),
        performance=performance,
        calibration=calibration,
    )


def calibrated_drifts(reference: pd.DataFrame, window: pd.DataFrame, kinds: dict[str, str],
                      calibration: Calibration) -> dict[str, ColumnDrift]:
    """Each monitored column's score against its calibrated threshold, with Evidently's statistics as
    monitoring.statistics computes them (equal to Evidently's to 1e-9; tests/test_monitoring.py) and Evidently's
    rule for distances (drift at or above the threshold), without importing Evidently."""
    scores = score_columns(column_references(reference, kinds), window)
    return {name: ColumnDrift(score=scores[name], threshold=calibration.thresholds[name],
                              method=DISPLAY_NAMES.get(calibration.methods[name], calibration.methods[name]),
                              drifted=scores[name] >= calibration.thresholds[name]) for name in kinds}


def feature_kinds(config: Config) -> dict[str, str]:
    """The feature columns in config order, each "numerical" or "categorical"."""
    return {**{name: "numerical" for name in config.data.numerical},
            **{name: "categorical" for name in config.data.categorical}}


def monitored_kinds(reference: pd.DataFrame, current: pd.DataFrame, config: Config) -> dict[str, str]:
    """Every monitored column and its kind: the features, then the model output when both sides have it."""
    kinds = feature_kinds(config)
    output = config.monitoring.prediction_column
    if output in kinds:
        raise ConfigError(f"monitoring.prediction_column {output!r} is also a feature column; name the model "
                          "output column differently")
    if all(output in frame and frame[output].notna().any() for frame in (reference, current)):
        for frame, source in ((reference, "reference"), (current, "current window")):
            if not pd.api.types.is_numeric_dtype(frame[output]) or pd.api.types.is_bool_dtype(frame[output]):
                raise DataError(f"{source}: model output column {output} holds non-numeric values such as "
                                f"{_non_numeric_example(frame[output])!r}")
        kinds[output] = "numerical"
    return kinds


def _evidently_defaults(reference: pd.DataFrame, current: pd.DataFrame, config: Config, report_path: Path | None,
                        performance: Performance | None) -> DriftResult:
    """Evidently's default tests on the features, and the share-of-drifted-columns rule."""
    kinds = feature_kinds(config)
    snapshot = _run_report(typed_columns(reference, config, kinds), typed_columns(current, config, kinds), config,
                           report_path is not None, None)
    columns = _column_drifts(snapshot, config.data.features)
    share = sum(column.drifted for column in columns.values()) / len(columns)
    if report_path is not None:
        report_path = _save_report(snapshot, Path(report_path))
    return DriftResult(
        drift_detected=share >= config.monitoring.drift_share,
        drift_share=share,
        rows=len(current),
        columns=columns,
        report=report_path,
        rows_checked=len(current),
        performance=performance,
    )


def _non_numeric_example(column: pd.Series) -> object:
    """The first value of `column` that is not a number, to quote in an error."""
    numbers = pd.to_numeric(column, errors="coerce")
    bad = column[numbers.isna() & column.notna()]
    return bad.iloc[0] if len(bad) else column.dropna().iloc[0]


def _sample_reference(reference: pd.DataFrame, config: Config) -> pd.DataFrame:
    """At most config.monitoring.reference_max_rows rows of the reference, the same ones every time."""
    limit = config.monitoring.reference_max_rows
    if len(reference) <= limit:
        return reference
    return reference.sample(n=limit, random_state=REFERENCE_SAMPLE_SEED)


def _sample_window(current: pd.DataFrame, rows: int) -> pd.DataFrame:
    """The window itself, or `rows` of its rows (always the same ones) when it is larger than that."""
    if len(current) <= rows:
        return current
    return current.sample(n=rows, random_state=WINDOW_SAMPLE_SEED)


def typed_columns(frame: pd.DataFrame, config: Config, kinds: dict[str, str]) -> pd.DataFrame:
    """Only the monitored columns (pii and target never reach Evidently or the report), typed as `kinds` says."""
    numbers = frame[[name for name, kind in kinds.items() if kind == "numerical"]].astype("float64")
    labels = pd.DataFrame({name: _labels(frame[name]) for name, kind in kinds.items() if kind == "categorical"},
                          index=frame.index)
    return pd.concat([numbers, labels], axis=1)[list(kinds)].reset_index(drop=True)


def _labels(column: pd.Series) -> pd.Series:
    """Category values as strings, missing kept missing.

    CSV reads a code column as 3 or 3.0 (with gaps) and Parquet may keep "3": as strings, the
    same category matches across files.
    """
    if pd.api.types.is_float_dtype(column):
        known = column.dropna()
        if np.isfinite(known).all() and (known % 1 == 0).all():
            column = column.astype("Int64")
    return column.astype(str).where(column.notna())


def _run_report(reference: pd.DataFrame, current: pd.DataFrame, config: Config, with_report: bool,
                calibration: Calibration | None) -> Snapshot:
    """Run Evidently's drift metrics, the column types declared, not inferred; with the calibrated methods and
    thresholds when given, else Evidently's defaults."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift
    from evidently.presets import DataDriftPreset

    columns = list(reference.columns)
    categorical = [name for name in columns if name in config.data.categorical]
    definition = DataDefinition(numerical_columns=[name for name in columns if name not in categorical],
                                categorical_columns=categorical)
    methods = calibration.methods if calibration else {}
    thresholds = calibration.thresholds if calibration else {}
    if with_report:
        # The preset adds the dataset summary and the per-column table that make the HTML report. Calibrated,
        # one drifted column is a drifted window: its summary then agrees with our verdict.
        share = 1 / len(columns) if calibration else config.monitoring.drift_share
        metrics = [DataDriftPreset(columns=columns, drift_share=share, per_column_method=methods or None,
                                   per_column_threshold=thresholds or None)]
    else:
        # The same per-column ValueDrift metrics the preset runs, without its table: about half the time.
        metrics = [ValueDrift(column=name, method=methods.get(name), threshold=thresholds.get(name))
                   for name in columns]
    # include_tests gives each ValueDrift Evidently's pass/fail verdict.
    report = Report(metrics, include_tests=True)
    with warnings.catch_warnings():
        # The default chi-square divides by zero for a category the reference lacks (p-value 0,
        # i.e. drift): expected with the default tests, and noise in the logs.
        warnings.simplefilter("ignore", RuntimeWarning)
        return report.run(
            Dataset.from_pandas(current, data_definition=definition),
            Dataset.from_pandas(reference, data_definition=definition),
        )


def _column_drifts(snapshot: Snapshot, features: list[str]) -> dict[str, ColumnDrift]:
    """Score, threshold, method and verdict of every monitored column, read from Evidently's results."""
    results = snapshot.dict()
    verdicts = {test["metric_config"]["metric_id"]: test["status"]
                for test in results["tests"] if test["id"] == VALUE_DRIFT_TEST}
    columns: dict[str, ColumnDrift] = {}
    for metric in results["metrics"]:
        params = metric["config"]
        if params.get("type") != VALUE_DRIFT_TYPE:
            continue
        columns[params["column"]] = ColumnDrift(
            score=float(metric["value"]),
            threshold=float(params["threshold"]),
            # Evidently keeps a method it was given by its short name: show its display name, as for its own.
            method=DISPLAY_NAMES.get(str(params["method"]), str(params["method"])),
            drifted=verdicts[metric["id"]] == TEST_FAILED,
        )
    return {name: columns[name] for name in features}


def _save_report(snapshot: Snapshot, path: Path) -> Path:
    """Write the HTML report, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # save_html writes only when given a str: with a Path it silently writes nothing.
    snapshot.save_html(str(path))
    return path
