"""Drift check of one window: Evidently's per-column tests and the share-of-drifted-columns rule."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

# Evidently sends usage events unless DO_NOT_TRACK is set; set it before the import.
os.environ.setdefault("DO_NOT_TRACK", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from evidently import DataDefinition, Dataset, Report  # noqa: E402
from evidently.core.report import Snapshot  # noqa: E402
from evidently.metrics import ValueDrift  # noqa: E402
from evidently.presets import DataDriftPreset  # noqa: E402

from driftloop.config import Config  # noqa: E402
from driftloop.data import missing_columns  # noqa: E402
from driftloop.errors import DataError  # noqa: E402

# The reference is sampled with a fixed seed: the same reference always gives the same rows, so
# every window of a run is compared against the same sample.
REFERENCE_SAMPLE_SEED = 0
# How Evidently tags a ValueDrift result and its pass/fail test in `Snapshot.dict()`.
VALUE_DRIFT_TYPE = "evidently:metric_v2:ValueDrift"
VALUE_DRIFT_TEST = "drift"
TEST_FAILED = "FAIL"


@dataclass(frozen=True)
class ColumnDrift:
    """Evidently's drift test of one column, as Evidently computed it.

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
    """Drift of one window: per-column tests and the dataset verdict."""

    drift_detected: bool
    drift_share: float
    rows: int
    columns: dict[str, ColumnDrift]
    report: Path | None

    def to_json(self) -> dict:
        """The `driftloop monitor --json` object."""
        return {
            "drift_detected": self.drift_detected,
            "drift_share": self.drift_share,
            "rows": self.rows,
            "columns": {name: column.to_json() for name, column in self.columns.items()},
            "report": str(self.report) if self.report is not None else None,
        }


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
    """Evidently drift of the config's feature columns (config.data.numerical + categorical; never pii, never
    target) of `current` against `reference`; dataset drift when the share of drifted columns >=
    config.monitoring.drift_share. Saves the Evidently HTML report to report_path when given."""
    validate_window(reference, config, "reference")
    validate_window(current, config, "current window")
    snapshot = _run_report(
        _features(_sample_reference(reference, config), config),
        _features(current, config),
        config,
        with_report=report_path is not None,
    )
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


def _features(frame: pd.DataFrame, config: Config) -> pd.DataFrame:
    """Only the feature columns (pii and target never reach Evidently or the report), typed by the config."""
    data = config.data
    numbers = frame[data.numerical].astype("float64")
    labels = pd.DataFrame({name: _labels(frame[name]) for name in data.categorical}, index=frame.index)
    return pd.concat([numbers, labels], axis=1).reset_index(drop=True)


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


def _run_report(reference: pd.DataFrame, current: pd.DataFrame, config: Config, with_report: bool) -> Snapshot:
    """Run Evidently's drift metrics, the column types declared from the config, not inferred."""
    definition = DataDefinition(numerical_columns=config.data.numerical, categorical_columns=config.data.categorical)
    if with_report:
        # The preset adds the dataset summary and the per-column table that make the HTML report.
        metrics = [DataDriftPreset(columns=config.data.features, drift_share=config.monitoring.drift_share)]
    else:
        # The same per-column ValueDrift metrics the preset runs, without its table: about half the time.
        metrics = [ValueDrift(column=name) for name in config.data.features]
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
    """Score, threshold, method and verdict of every feature, read from Evidently's results."""
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
            method=str(params["method"]),
            drifted=verdicts[metric["id"]] == TEST_FAILED,
        )
    return {name: columns[name] for name in features}


def _save_report(snapshot: Snapshot, path: Path) -> Path:
    """Write the HTML report, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # save_html writes only when given a str: with a Path it silently writes nothing.
    snapshot.save_html(str(path))
    return path
