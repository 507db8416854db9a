"""`driftloop monitor` as a function: one window file against a reference file."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from driftloop.config import Config
from driftloop.data import read_table
from driftloop.metrics import monitor_metrics
from driftloop.monitoring.drift import DriftResult, check_drift, validate_window
from driftloop.monitoring.export import export_window, write_textfile
from driftloop.state import reports_dir, state_path


def monitor_files(current_path: Path, reference_path: Path, config: Config) -> DriftResult:
    """Drift (and performance, when the files hold the model output) of the window in `current_path` against
    `reference_path`; writes the HTML report and the gauges.

    Bad input raises DataError with one line naming the file and column.
    """
    current_path, reference_path = Path(current_path), Path(reference_path)
    current = read_table(current_path)
    validate_window(current, config, str(current_path))
    reference = read_table(reference_path)
    validate_window(reference, config, str(reference_path))
    result = check_drift(reference, current, config, report_path=drift_report_path(config, current_path))
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
