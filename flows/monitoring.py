"""The monitoring flow: drift and live performance of one window of logged traffic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from driftloop.config import Config
from driftloop.errors import RegistryError
from driftloop.metrics import MonitorMetrics, monitor_metrics
from driftloop.scoring import score
from driftloop.state import prediction_log_path, reports_dir, state_path
from monitoring.cli_monitor import monitor_files
from monitoring.drift import DriftResult, check_drift
from monitoring.export import export_drift, export_performance, write_textfile
from registry.store import CHAMPION, alias_version, load_reference
from serving.prediction_log import PredictionLog

DRIFT_EVENT = "driftloop.drift.detected"
_METRICS: dict[str, MonitorMetrics] = {}


def metrics_for(config: Config) -> MonitorMetrics:
    """One set of monitor gauges per process (Prometheus forbids registering a name twice)."""
    return _METRICS.setdefault(str(config.state_dir), monitor_metrics())


def drift_resource(config: Config) -> dict[str, str]:
    """The Prefect event resource of this model."""
    return {"prefect.resource.id": f"driftloop.model.{config.model.name}"}


def champion_reference(config: Config) -> tuple[str, pd.DataFrame]:
    """The champion's version and its training data, the monitor's reference."""
    version = alias_version(config, CHAMPION)
    if version is None:
        raise RegistryError(f"model {config.model.name} has no champion yet: train one, or pass --reference")
    return version, load_reference(config, version)


def monitor_file(config: Config, current: Path, reference: Path | None) -> DriftResult:
    """`driftloop monitor`: one file against a reference file or the champion's training data."""
    if reference is not None:
        return monitor_files(current, reference, config)
    _, frame = champion_reference(config)
    reference_path = state_path(config, "cache", "champion-reference.parquet")
    frame.to_parquet(reference_path, index=False)
    return monitor_files(current, reference_path, config)


def log_to_contract(config: Config, logged: pd.DataFrame) -> pd.DataFrame:
    """Logged predictions as a table in the config's columns: label → target, event time → timestamp."""
    frame = logged.rename(columns={"label": config.data.target})
    if config.data.timestamp:
        frame[config.data.timestamp] = pd.to_datetime(frame["event_time"], utc=True)
    return frame


def live_performance(config: Config, window: pd.DataFrame) -> dict[str, float]:
    """The served predictions scored against the labels that have arrived."""
    labelled = window.dropna(subset=["label"])
    if labelled.empty:
        return {}
    return score(labelled["label"].to_numpy(), labelled["prediction"].to_numpy(np.float64), config.data.task)


@task(cache_policy=NO_CACHE)
def check_window(config: Config, reference: pd.DataFrame, window: pd.DataFrame, label: str) -> DriftResult:
    """Evidently drift of the window against the reference, with its HTML report."""
    report = reports_dir(config, "drift") / f"{label}.html"
    return check_drift(reference, window, config, report_path=report)


def _markdown(config: Config, label: str, result: DriftResult, performance: dict[str, float]) -> str:
    """A short markdown summary for the Prefect UI."""
    lines = [f"## Drift check {label} — {config.model.name}",
             f"**{'DRIFT' if result.drift_detected else 'no drift'}**: share {result.drift_share:.2f} "
             f"of {len(result.columns)} columns, {result.rows} rows",
             "", "| column | method | score | threshold | drifted |", "|---|---|---|---|---|"]
    for name, column in result.columns.items():
        lines.append(f"| {name} | {column.method} | {column.score:.4g} | {column.threshold:.4g} | "
                     f"{'yes' if column.drifted else 'no'} |")
    if performance:
        lines += ["", "Live performance: " + ", ".join(f"{k} {v:.4f}" for k, v in performance.items())]
    lines += ["", f"Report: `{result.report}`"]
    return "\n".join(lines)


@flow(name="monitoring", validate_parameters=False)
def monitoring_flow(config: Config, first_id: int, last_id: int, label: str) -> dict:
    """Check logged predictions `first_id..last_id`: drift, live performance, gauges, report, event."""
    logger = get_run_logger()
    logged = PredictionLog(prediction_log_path(config)).read(first_id, last_id)
    window = log_to_contract(config, logged)
    version, reference = champion_reference(config)
    result = check_window(config, reference, window, label)
    performance = live_performance(config, logged)
    metrics = metrics_for(config)
    export_drift(result, metrics, config.model.name)
    export_performance(performance, metrics, config.model.name)
    write_textfile(metrics, state_path(config, "metrics", "monitor.prom"))
    create_markdown_artifact(_markdown(config, label, result, performance), key="drift-check",
                             description=f"drift check {label}")
    if result.drift_detected:
        emit_event(DRIFT_EVENT, resource=drift_resource(config),
                   payload={"window": label, "drift_share": result.drift_share, "champion": version,
                            "drifted": [n for n, c in result.columns.items() if c.drifted]})
    logger.info("%s: %s, share %.2f, %s", label, "DRIFT" if result.drift_detected else "no drift",
                result.drift_share, performance)
    return {"label": label, "rows": result.rows, "drift": result.to_json(), "performance": performance,
            "champion": version}
