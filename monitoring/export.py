"""Drift and performance figures as Prometheus gauges, and the textfile a node exporter collects."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import write_to_textfile

from driftloop.metrics import MonitorMetrics
from monitoring.drift import DriftResult


def export_drift(result: DriftResult, metrics: MonitorMetrics, model: str) -> None:
    """Set the drift gauges of `model` to the last checked window."""
    metrics.drift_share.labels(model=model).set(result.drift_share)
    metrics.drift_detected.labels(model=model).set(1 if result.drift_detected else 0)
    metrics.window_rows.labels(model=model).set(result.rows)
    # The method is a label and can change between windows (Evidently picks the test by reference
    # size): drop the model's old columns so a stale method never lingers beside the new one.
    metrics.column_score.remove_by_labels({"model": model})
    metrics.column_threshold.remove_by_labels({"model": model})
    for name, column in result.columns.items():
        labels = {"model": model, "column": name, "method": column.method}
        metrics.column_score.labels(**labels).set(column.score)
        metrics.column_threshold.labels(**labels).set(column.threshold)
    metrics.last_check.labels(model=model).set_to_current_time()


def export_performance(figures: dict[str, float], metrics: MonitorMetrics, model: str) -> None:
    """Set the live performance gauges of `model` (e.g. auc, accuracy) from one labelled window."""
    # A figure missing this time (AUC of a one-class window) must not keep its old value.
    metrics.performance.remove_by_labels({"model": model})
    for metric, value in figures.items():
        metrics.performance.labels(model=model, metric=metric).set(value)


def write_textfile(metrics: MonitorMetrics, path: Path) -> None:
    """Write the monitor's gauges in Prometheus text format, atomically, for a node-exporter textfile collector."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), metrics.registry)
