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
MODEL_QUANTIZED = "driftloop_serving_model_quantized"
SHADOW_ROWS = "driftloop_shadow_rows_total"
SHADOW_FAILURES = "driftloop_shadow_failures_total"
ADMIN_UNAUTHORIZED = "driftloop_admin_unauthorized_total"
# Requests refused before they reach a handler or for a missing token, by path and reason (serving/guard.py).
REQUESTS_REFUSED = "driftloop_requests_refused_total"
# Failed WAL checkpoints of the SQLite prediction log (the checkpoint thread logs each, retries, and keeps running).
LOG_CHECKPOINT_ERRORS = "driftloop_log_checkpoint_errors_total"
# The version the champion alias names (as the server last probed it) and the version it serves: they differ while
# the alias's version is refused or fails to load (alert DriftloopServedVersionNotChampion).
CHAMPION_ALIAS_VERSION = "driftloop_champion_alias_version"
SERVED_VERSION = "driftloop_serving_model_version"
# 1 while the server serves its last-known-good copy because the champion could not be loaded at start.
SERVING_DEGRADED = "driftloop_serving_degraded"

# Monitoring
DRIFT_SHARE = "driftloop_drift_share"
DRIFT_DETECTED = "driftloop_drift_detected"
COLUMN_DRIFT_SCORE = "driftloop_column_drift_score"
COLUMN_DRIFT_THRESHOLD = "driftloop_column_drift_threshold"
WINDOW_ROWS = "driftloop_window_rows"
WINDOW_PERFORMANCE = "driftloop_window_performance"
LAST_CHECK = "driftloop_monitor_last_check_timestamp_seconds"
DRIFT_FALSE_ALARM_RATE = "driftloop_drift_false_alarm_rate"
WINDOW_PERFORMANCE_ESTIMATED = "driftloop_window_performance_estimated"
REFERENCE_PERFORMANCE = "driftloop_reference_performance"
WINDOW_LABELLED_ROWS = "driftloop_window_labelled_rows"
PERFORMANCE_DEGRADED = "driftloop_performance_degraded"
RETRAIN_RECOMMENDED = "driftloop_retrain_recommended"

# Training (exported by training.telemetry to state_dir/metrics/training.prom)
TRAINING_INFO = "driftloop_training_info"
TRAINING_LOSS = "driftloop_training_loss"
TRAINING_STEP = "driftloop_training_step"
TRAINING_EPOCH = "driftloop_training_epoch"
TRAINING_STEP_SECONDS = "driftloop_training_step_seconds"
TRAINING_SAMPLES_PER_SECOND = "driftloop_training_samples_per_second"
TRAINING_STAGE_FORWARD = "driftloop_training_stage_forward_seconds"
TRAINING_STAGE_BACKWARD = "driftloop_training_stage_backward_seconds"
TRAINING_STAGE_COST = "driftloop_training_stage_cost"
TRAINING_STAGE_IMBALANCE = "driftloop_training_stage_imbalance"
TRAINING_BUBBLE = "driftloop_training_bubble_fraction"
TRAINING_FINISHED = "driftloop_training_finished_timestamp_seconds"

# Alertmanager webhook receiver (monitoring/receiver.py)
ALERTS_RECEIVED = "driftloop_alerts_received_total"
RETRAIN_TRIGGERS = "driftloop_retrain_triggers_total"
WEBHOOK_UNAUTHORIZED = "driftloop_webhook_unauthorized_total"


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
    quantized: Gauge
    shadow_rows: Counter
    shadow_failures: Counter
    admin_unauthorized: Counter
    refused: Counter
    log_checkpoint_errors: Counter
    alias_version: Gauge
    served_version: Gauge
    degraded: Gauge


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
        quantized=Gauge(MODEL_QUANTIZED, "1 if the served model is int8-quantized (serving.quantize), else 0",
                        ["model"], registry=registry),
        shadow_rows=Counter(SHADOW_ROWS, "Rows the challenger scored in shadow mode", ["model_version"],
                            registry=registry),
        # stage: load (the challenger could not be loaded or failed its smoke test), score (it raised or
        # answered non-finite values on live rows; the request was answered by the champion all the same).
        shadow_failures=Counter(SHADOW_FAILURES, "Shadow-mode failures of the challenger, by stage", ["stage"],
                                registry=registry),
        admin_unauthorized=Counter(ADMIN_UNAUTHORIZED, "Admin calls refused for a missing or wrong bearer token",
                                   registry=registry),
        # reason: host (400), content_type (415), body_size (413), body_timeout (408), concurrency (503),
        # unauthorized (401 on /labels).
        refused=Counter(REQUESTS_REFUSED, "Requests refused by the server's limits and checks, by path and reason",
                        ["path", "reason"], registry=registry),
        log_checkpoint_errors=Counter(LOG_CHECKPOINT_ERRORS, "Failed checkpoints of the prediction log's WAL "
                                      "(retried every second; the log keeps committing)", registry=registry),
        alias_version=Gauge(CHAMPION_ALIAS_VERSION, "The version the champion alias names, as last probed",
                            ["model"], registry=registry),
        served_version=Gauge(SERVED_VERSION, "The version being served (as a number)", ["model"], registry=registry),
        degraded=Gauge(SERVING_DEGRADED, "1 while the last-known-good copy is served because the champion could not "
                       "be loaded at start, else 0", ["model"], registry=registry),
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
    false_alarm_rate: Gauge
    performance_estimated: Gauge
    reference_performance: Gauge
    labelled_rows: Gauge
    performance_degraded: Gauge
    retrain_recommended: Gauge


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
        false_alarm_rate=Gauge(DRIFT_FALSE_ALARM_RATE, "Per-window false-alarm rate the drift decision is "
                               "calibrated for (absent with Evidently's own rule)", model, registry=registry),
        performance_estimated=Gauge(WINDOW_PERFORMANCE_ESTIMATED, "Estimated (CBPE) model performance on the last "
                                    "window, before its labels", ["model", "metric"], registry=registry),
        reference_performance=Gauge(REFERENCE_PERFORMANCE, "Model performance on the reference, the baseline",
                                    ["model", "metric"], registry=registry),
        labelled_rows=Gauge(WINDOW_LABELLED_ROWS, "Rows of the last window whose labels have arrived", model,
                            registry=registry),
        performance_degraded=Gauge(PERFORMANCE_DEGRADED, "1 if the last window's performance dropped beyond the "
                                   "margin and beyond chance", model, registry=registry),
        retrain_recommended=Gauge(RETRAIN_RECOMMENDED, "1 if the retraining policy asked for a retrain after the "
                                  "last window", model, registry=registry),
    )


@dataclass(frozen=True)
class TrainingMetrics:
    """A training run's metrics, bound to one registry."""

    registry: CollectorRegistry
    info: Gauge
    loss: Gauge
    step: Gauge
    epoch: Gauge
    step_seconds: Gauge
    samples_per_second: Gauge
    stage_forward: Gauge
    stage_backward: Gauge
    stage_cost: Gauge
    imbalance: Gauge
    bubble: Gauge
    finished: Gauge


def training_metrics(registry: CollectorRegistry | None = None) -> TrainingMetrics:
    """Create the training metrics in `registry` (a fresh one by default)."""
    registry = registry or CollectorRegistry()
    model = ["model"]
    info = ["model", "schedule", "stages", "stages_per_rank", "ranks", "microbatches", "launcher", "device",
            "partition"]
    return TrainingMetrics(
        registry=registry,
        info=Gauge(TRAINING_INFO, "1 for the pipeline set-up of the latest training run", info, registry=registry),
        loss=Gauge(TRAINING_LOSS, "Training loss of the latest step (batch mean)", model, registry=registry),
        step=Gauge(TRAINING_STEP, "Steps done in the current training run", model, registry=registry),
        epoch=Gauge(TRAINING_EPOCH, "Epoch of the latest step (from 1)", model, registry=registry),
        step_seconds=Gauge(TRAINING_STEP_SECONDS, "Wall time of the latest step", model, registry=registry),
        samples_per_second=Gauge(TRAINING_SAMPLES_PER_SECOND, "Training rows per second (latest step while "
                                 "running, steady-state mean once done)", model, registry=registry),
        stage_forward=Gauge(TRAINING_STAGE_FORWARD, "Forward compute time of a stage per step (mean)",
                            ["model", "stage"], registry=registry),
        stage_backward=Gauge(TRAINING_STAGE_BACKWARD, "Backward compute time of a stage per step (mean)",
                             ["model", "stage"], registry=registry),
        stage_cost=Gauge(TRAINING_STAGE_COST, "Cost of a stage used to partition the blocks (parameters or "
                         "seconds)", ["model", "stage", "unit"], registry=registry),
        imbalance=Gauge(TRAINING_STAGE_IMBALANCE, "max / mean of the stage costs (1 is balanced)", model,
                        registry=registry),
        bubble=Gauge(TRAINING_BUBBLE, "Measured idle share of a rank's pipeline step", ["model", "rank"],
                     registry=registry),
        finished=Gauge(TRAINING_FINISHED, "Unix time the latest training run finished", model, registry=registry),
    )


@dataclass(frozen=True)
class ReceiverMetrics:
    """The webhook receiver's own metrics, bound to one registry."""

    registry: CollectorRegistry
    alerts_received: Counter
    retrain_triggers: Counter
    unauthorized: Counter


def receiver_metrics(registry: CollectorRegistry | None = None) -> ReceiverMetrics:
    """Create the receiver metrics in `registry` (a fresh one by default)."""
    registry = registry or CollectorRegistry()
    return ReceiverMetrics(
        registry=registry,
        alerts_received=Counter(ALERTS_RECEIVED, "Alerts received from Alertmanager, by alert name and status",
                                ["alertname", "status"], registry=registry),
        # outcome: started, cooldown (the incident already started one), duplicate (another alert of the same
        # model started one in this notification), failed (the retraining could not be started).
        retrain_triggers=Counter(RETRAIN_TRIGGERS, "Decisions on firing retrain alerts, by source and outcome",
                                 ["source", "outcome"], registry=registry),
        unauthorized=Counter(WEBHOOK_UNAUTHORIZED, "Webhook calls refused for a missing or wrong bearer token",
                             registry=registry),
    )
