"""Every Prometheus metric of driftloop, in one place: alert rules, dashboards and tests use these names."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Serving
PREDICTION_ROWS = "driftloop_prediction_rows_total"
PREDICT_REQUESTS = "driftloop_predict_requests_total"
PREDICT_LATENCY = "driftloop_predict_latency_seconds"
MODEL_INFO = "driftloop_serving_model_info"
MODEL_SWAPS = "driftloop_model_swaps_total"
MODEL_SWAP_FAILURES = "driftloop_model_swap_failures_total"

# Monitoring
DRIFT_SHARE = "driftloop_drift_share"
DRIFT_DETECTED = "driftloop_drift_detected"
COLUMN_DRIFT_SCORE = "driftloop_column_drift_score"
COLUMN_DRIFT_THRESHOLD = "driftloop_column_drift_threshold"
WINDOW_ROWS = "driftloop_window_rows"
WINDOW_PERFORMANCE = "driftloop_window_performance"
LAST_CHECK = "driftloop_monitor_last_check_timestamp_seconds"


@dataclass(frozen=True)
class ServingMetrics:
    """The model server's metrics, bound to one registry."""

    registry: CollectorRegistry
    prediction_rows: Counter
    requests: Counter
    latency: Histogram
    model_info: Gauge
    swaps: Counter
    swap_failures: Counter


def serving_metrics(registry: CollectorRegistry | None = None) -> ServingMetrics:
    """Create the serving metrics in `registry` (a fresh one by default)."""
    registry = registry or CollectorRegistry()
    return ServingMetrics(
        registry=registry,
        prediction_rows=Counter(PREDICTION_ROWS, "Rows scored", ["model_version"], registry=registry),
        requests=Counter(PREDICT_REQUESTS, "Prediction requests by HTTP status", ["status"], registry=registry),
        latency=Histogram(PREDICT_LATENCY, "Latency of /predict", registry=registry,
                          buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)),
        model_info=Gauge(MODEL_INFO, "1 for the model version being served", ["model", "version"],
                         registry=registry),
        swaps=Counter(MODEL_SWAPS, "Successful hot swaps of the served model", registry=registry),
        swap_failures=Counter(MODEL_SWAP_FAILURES, "Hot swaps that failed; the old model kept serving",
                              registry=registry),
    )


@dataclass(frozen=True)
class MonitorMetrics:
    """The drift monitor's metrics, bound to one registry."""

    registry: CollectorRegistry
    drift_share: Gauge
    drift_detected: Gauge
    column_score: Gauge
    column_threshold: Gauge
    window_rows: Gauge
    performance: Gauge
    last_check: Gauge


def monitor_metrics(registry: CollectorRegistry | None = None) -> MonitorMetrics:
    """Create the monitor metrics in `registry` (a fresh one by default)."""
    registry = registry or CollectorRegistry()
    model = ["model"]
    column = ["model", "column", "method"]
    return MonitorMetrics(
        registry=registry,
        drift_share=Gauge(DRIFT_SHARE, "Share of columns drifted in the last window", model, registry=registry),
        drift_detected=Gauge(DRIFT_DETECTED, "1 if the last window drifted", model, registry=registry),
        column_score=Gauge(COLUMN_DRIFT_SCORE, "Drift score per column", column, registry=registry),
        column_threshold=Gauge(COLUMN_DRIFT_THRESHOLD, "Drift threshold per column", column, registry=registry),
        window_rows=Gauge(WINDOW_ROWS, "Rows in the last monitored window", model, registry=registry),
        performance=Gauge(WINDOW_PERFORMANCE, "Live model performance on the last labelled window",
                          ["model", "metric"], registry=registry),
        last_check=Gauge(LAST_CHECK, "Unix time of the last drift check", model, registry=registry),
    )
