"""`driftloop monitor` as a function: one window file against a reference file."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from driftloop.config import Config
from driftloop.data import read_table
from driftloop.metrics import monitor_metrics
from driftloop.monitoring.drift import DriftResult, check_drift, validate_window
from driftloop.monitoring.export import export_window, write_textfile
from driftloop.monitoring.summary import html_summary
from driftloop.state import reports_dir, state_path


def monitor_files(current_path: Path, reference_path: Path, config: Config,
                  evidently_report: bool = False) -> DriftResult:
    """Drift (and performance, when the files hold the model output) of the window in `current_path` against
    `reference_path`; writes the HTML report and the gauges.

    The report is a page of the verdict and figures (no Evidently import: a check with its calibration cached
    takes about a second), or with `evidently_report` Evidently's own report with every column's distribution
    (its import and run add about 8 s on 2 cores). Bad input raises DataError with one line naming the file and
    column.
    """
    current_path, reference_path = Path(current_path), Path(reference_path)
    current = read_table(current_path)
    validate_window(current, config, str(current_path))
    reference = read_table(reference_path)
    validate_window(reference, config, str(reference_path))
    report = drift_report_path(config, current_path)
    result = check_drift(reference, current, config, report_path=report if evidently_report else None)
    if not evidently_report:
        partial = report.with_suffix(".partial")
        partial.write_text(html_summary(result, config.model.name, current_path.stem), encoding="utf-8")
        result = replace(result, report=partial.replace(report))
    metrics = monitor_metrics()
    export_window(result, None, metrics, config.model.name, config.monitoring.prediction_column)
    write_textfile(metrics, monitor_textfile_path(config))
    return result


def drift_report_path(config: Config, current_path: Path) -> Path:
    """A new HTML report file per check, named after the window file and the time of the check."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return reports_dir(config, "drift") / f"{Path(current_path).stem}-{stamp}.html"


def monitor_textfile_path(config: Config) -> Path:
    """The gauges textfile under the state dir, for a node-exporter textfile collector."""
    return state_path(config, "metrics", "monitor.prom")
