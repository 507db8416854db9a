"""The monitoring flow: drift and live performance of one window of logged traffic."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from driftloop.config import Config
from driftloop.errors import RegistryError
from driftloop.flows.outcomes import MonitoringOutcome
from driftloop.flows.starter import DRIFT_EVENT, drift_resource
from driftloop.metrics import MonitorMetrics, monitor_metrics
from driftloop.monitoring.cli_monitor import monitor_files
from driftloop.monitoring.drift import DriftResult, check_drift
from driftloop.monitoring.export import export_window, write_textfile
from driftloop.monitoring.policy import PolicyState, decide
from driftloop.monitoring.summary import markdown_summary
from driftloop.registry.store import CHAMPION, alias_version, load_reference
from driftloop.serving.prediction_log import read_window
from driftloop.state import reports_dir, state_path

_METRICS: dict[str, MonitorMetrics] = {}


def metrics_for(config: Config) -> MonitorMetrics:
    """One set of monitor gauges per process (Prometheus forbids registering a name twice)."""
    return _METRICS.setdefault(str(config.state_dir), monitor_metrics())


def champion_reference(config: Config) -> tuple[str, pd.DataFrame]:
    """The champion's version and its training data, the monitor's reference."""
    version = alias_version(config, CHAMPION)
    if version is None:
        raise RegistryError(f"model {config.model.name} has no champion yet: train one, or pass --reference")
    return version, load_reference(config, version)


def monitor_file(config: Config, current: Path, reference: Path | None, evidently_report: bool = False
                 ) -> DriftResult:
    """`driftloop monitor`: one file against a reference file or the champion's training data."""
    if reference is not None:
        return monitor_files(current, reference, config, evidently_report)
    _, frame = champion_reference(config)
    reference_path = state_path(config, "cache", "champion-reference.parquet")
    frame.to_parquet(reference_path, index=False)
    return monitor_files(current, reference_path, config, evidently_report)


def log_to_contract(config: Config, logged: pd.DataFrame) -> pd.DataFrame:
    """Logged predictions as a table in the config's columns: label → target, event time → timestamp."""
    frame = logged.rename(columns={"label": config.data.target, "prediction": config.monitoring.prediction_column})
    if config.data.timestamp:
        frame[config.data.timestamp] = pd.to_datetime(frame["event_time"], utc=True)
    return frame


@task(cache_policy=NO_CACHE)
def check_window(config: Config, reference: pd.DataFrame, window: pd.DataFrame, label: str) -> DriftResult:
    """Calibrated drift, output drift and performance of the window against the reference, with its report."""
    report = reports_dir(config, "drift") / f"{label}.html"
    return check_drift(reference, window, config, report_path=report)


@task(cache_policy=NO_CACHE)
def snapshot_window(config: Config, reference: pd.DataFrame, window: pd.DataFrame, result: DriftResult,
                    label: str) -> str | None:
    """The window's snapshot in the model's Evidently project (what `evidently ui` shows), dated by the window's
    last event. A failure is logged, not raised: the verdict, gauges and event matter more than the page."""
    from driftloop.monitoring.workspace import store_window  # Evidently: only where a snapshot is written

    column = config.data.timestamp
    when = pd.to_datetime(window[column], utc=True).max().to_pydatetime() if column and column in window else None
    try:
        return store_window(reference, window, result, config, label, when)
    except Exception as error:  # noqa: BLE001 - any Evidently failure: keep monitoring
        get_run_logger().warning("%s: no Evidently snapshot (%s: %s)", label, error.__class__.__name__, error)
        return None


@flow(name="monitoring", validate_parameters=False)
def monitoring_flow(config: Config, first_id: int, last_id: int, label: str,
                    policy: dict | None = None) -> MonitoringOutcome:
    """Check logged predictions `first_id..last_id`: drift, performance, the retraining policy, gauges, report.

    `policy` is the PolicyState of the previous window (JSON); the new one comes back in the outcome. When the
    policy says retrain, the flow emits `driftloop.drift.detected` for automations to act on.
    """
    logger = get_run_logger()
    logged = read_window(config, first_id, last_id)
    window = log_to_contract(config, logged)
    version, reference = champion_reference(config)
    result = check_window(config, reference, window, label)
    snapshot_window(config, reference, window, result, label)
    decision = decide(PolicyState.from_json(policy) if policy else PolicyState(), result, config)
    metrics = metrics_for(config)
    export_window(result, decision, metrics, config.model.name, config.monitoring.prediction_column)
    write_textfile(metrics, state_path(config, "metrics", "monitor.prom"))
    create_markdown_artifact(markdown_summary(result, config.model.name, label, decision), key="drift-check",
                             description=f"drift check {label}")
    if decision.retrain:
        emit_event(DRIFT_EVENT, resource=drift_resource(config),
                   payload={"window": label, "drift_share": result.drift_share, "champion": version,
                            "reason": decision.reason})
    logger.info("%s: %s", label, decision.reason)
    actual = result.performance.actual if result.performance else None
    return MonitoringOutcome(label, version, result, decision, dict(actual.values) if actual else {})
