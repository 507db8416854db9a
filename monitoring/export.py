"""Drift and performance figures as Prometheus gauges, and the textfile a node exporter collects."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import write_to_textfile

from driftloop.metrics import MonitorMetrics
from driftloop.monitoring.drift import DriftResult
from driftloop.monitoring.performance import Performance
from driftloop.monitoring.policy import Decision


def export_drift(result: DriftResult, metrics: MonitorMetrics, model: str, output_column: str = "prediction") -> None:
    """Set the drift gauges of `model` to the last checked window (the model output under `output_column`)."""
    metrics.drift_share.labels(model=model).set(result.drift_share)
    metrics.drift_detected.labels(model=model).set(1 if result.drift_detected else 0)
    metrics.window_rows.labels(model=model).set(result.rows)
    # The method is a label and can change between windows (Evidently picks the test by reference
    # size): drop the model's old columns so a stale method never lingers beside the new one.
    metrics.column_score.remove_by_labels({"model": model})
    metrics.column_threshold.remove_by_labels({"model": model})
    columns = dict(result.columns)
    if result.prediction is not None:
        # The model output is one more column of the same gauges, under the output column's name.
        columns[output_column] = result.prediction
    for name, column in columns.items():
        labels = {"model": model, "column": name, "method": column.method}
        metrics.column_score.labels(**labels).set(column.score)
        metrics.column_threshold.labels(**labels).set(column.threshold)
    metrics.false_alarm_rate.remove_by_labels({"model": model})
    if result.false_alarm_rate is not None:
        metrics.false_alarm_rate.labels(model=model).set(result.false_alarm_rate)
    metrics.last_check.labels(model=model).set_to_current_time()


def export_performance(figures: dict[str, float], metrics: MonitorMetrics, model: str) -> None:
    """Set the live performance gauges of `model` (e.g. auc, accuracy) from one labelled window."""
    # A figure missing this time (AUC of a one-class window) must not keep its old value.
    metrics.performance.remove_by_labels({"model": model})
    for metric, value in figures.items():
        metrics.performance.labels(model=model, metric=metric).set(value)


def export_window(result: DriftResult, decision: Decision | None, metrics: MonitorMetrics, model: str,
                  output_column: str = "prediction") -> None:
    """Every gauge of one checked window: drift, performance (actual, estimated, reference) and the policy."""
    export_drift(result, metrics, model, output_column)
    export_figures(result.performance, metrics, model)
    for gauge in (metrics.performance_degraded, metrics.retrain_recommended):
        gauge.remove_by_labels({"model": model})
    if decision is not None:
        degraded = decision.performance is not None and decision.performance.degraded
        metrics.performance_degraded.labels(model=model).set(1 if degraded else 0)
        metrics.retrain_recommended.labels(model=model).set(1 if decision.retrain else 0)


def export_figures(performance: Performance | None, metrics: MonitorMetrics, model: str) -> None:
    """Actual, estimated and reference performance of `model`; a figure missing this time is dropped."""
    actual = performance.actual if performance else None
    export_performance(actual.values if actual else {}, metrics, model)
    metrics.labelled_rows.labels(model=model).set(actual.rows if actual else 0)
    for gauge, figures in ((metrics.performance_estimated, performance.estimated if performance else None),
                           (metrics.reference_performance, performance.reference if performance else None)):
        gauge.remove_by_labels({"model": model})
        for metric, value in (figures.values if figures else {}).items():
            gauge.labels(model=model, metric=metric).set(value)


def write_textfile(metrics: MonitorMetrics, path: Path) -> None:
    """Write the monitor's gauges in Prometheus text format, atomically, for a node-exporter textfile collector."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), metrics.registry)
