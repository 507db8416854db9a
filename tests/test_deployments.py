"""The Prefect deployments as built by `driftloop deploy`, prefect.yaml, and the windows the deployed flows pick."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from driftloop.config import Config
from driftloop.flows.deployments import (
    MONITOR,
    RETRAIN_ON_DRIFT,
    SCHEDULED_RETRAINING,
    MonitorCursor,
    build_deployments,
    complete_windows,
    plan_retraining,
)
from driftloop.flows.monitoring import DRIFT_EVENT
from tests.helpers import make_config

PREFECT_YAML = Path(__file__).resolve().parents[1] / "prefect.yaml"


def logged_traffic(flights: pd.DataFrame, config: Config, rows: int, labelled: bool = True) -> pd.DataFrame:
    """Rows as PredictionLog.read returns them: ids, event time, prediction, label, features."""
    sample = flights.head(rows).reset_index(drop=True)
    logged = sample[config.data.features].copy()
    logged.insert(0, "prediction_id", range(1, rows + 1))
    logged["event_time"] = sample[config.data.timestamp]
    logged["prediction"] = 0.3
    logged["label"] = sample[config.data.target].astype(float) if labelled else float("nan")
    logged["model_version"] = "1"
    return logged


def by_name(config: Config, config_path: Path) -> dict:
    return {d.name: d for d in build_deployments(config, config_path)}


def test_deployments_carry_schedules_trigger_and_one_at_a_time(tmp_path: Path) -> None:
    config = make_config(tmp_path / "state", orchestration={"monitor_cron": "*/5 * * * *",
                                                           "retrain_cron": "0 4 * * 0", "timezone": "Europe/Paris"})
    deployments = by_name(config, tmp_path / "c.yaml")
    assert set(deployments) == {MONITOR, SCHEDULED_RETRAINING, RETRAIN_ON_DRIFT}
    monitor, weekly, on_drift = deployments[MONITOR], deployments[SCHEDULED_RETRAINING], deployments[RETRAIN_ON_DRIFT]
    assert [(s.schedule.cron, s.schedule.timezone) for s in monitor.schedules] == [("*/5 * * * *", "Europe/Paris")]
    assert [s.schedule.cron for s in weekly.schedules] == ["0 4 * * 0"]
    assert on_drift.schedules == [] and monitor.triggers == [] and weekly.triggers == []
    for deployment in (weekly, on_drift):
        assert deployment.concurrency_limit == 1
        assert deployment.concurrency_options.collision_strategy.value == "CANCEL_NEW"
    (trigger,) = on_drift.triggers
    assert trigger.expect == {DRIFT_EVENT}
    assert trigger.match.root == {"prefect.resource.id": f"driftloop.model.{config.model.name}"}
    assert trigger.parameters["config_path"] == str(tmp_path / "c.yaml")
    assert "{{ event.payload.window }}" in trigger.parameters["reason"]
    for deployment in deployments.values():
        assert deployment.parameters["config_path"] == str(tmp_path / "c.yaml")
        assert deployment.entrypoint.startswith("driftloop.flows.deployments.")  # module path: runs from any folder
        assert deployment.work_pool_name is None


def test_deployments_go_to_the_configured_work_pool(tmp_path: Path) -> None:
    config = make_config(tmp_path / "state", orchestration={"work_pool": "gpu-pool", "retrain_collision": "ENQUEUE"})
    deployments = by_name(config, tmp_path / "c.yaml")
    assert {d.work_pool_name for d in deployments.values()} == {"gpu-pool"}
    assert deployments[RETRAIN_ON_DRIFT].concurrency_options.collision_strategy.value == "ENQUEUE"


def test_prefect_yaml_declares_the_same_deployments(tmp_path: Path) -> None:
    config = make_config(tmp_path / "state")
    built = by_name(config, tmp_path / "c.yaml")
    declared = {d["name"]: d for d in yaml.safe_load(PREFECT_YAML.read_text())["deployments"]}
    assert set(declared) == set(built)
    for name, deployment in built.items():
        entry = declared[name]
        module, function = deployment.entrypoint.rsplit(".", 1)
        # prefect.yaml names the file in this repository: driftloop.flows.deployments lives in flows/deployments.py
        assert entry["entrypoint"] == f"{module.removeprefix('driftloop.').replace('.', '/')}.py:{function}"
        assert [(s["cron"], s["timezone"]) for s in entry.get("schedules", [])] == [
            (s.schedule.cron, s.schedule.timezone) for s in deployment.schedules]
        if deployment.concurrency_limit:
            assert entry["concurrency_limit"] == {
                "limit": deployment.concurrency_limit,
                "collision_strategy": deployment.concurrency_options.collision_strategy.value}
        assert [set(t["expect"]) for t in entry.get("triggers", [])] == [t.expect for t in deployment.triggers]


def test_only_complete_row_windows_are_monitored(flights_jan: pd.DataFrame, tmp_path: Path) -> None:
    config = make_config(tmp_path / "state", monitoring={"window": 500})
    assert [len(w.frame) for w in complete_windows(config, logged_traffic(flights_jan, config, 1200))] == [500, 500]
    assert [len(w.frame) for w in complete_windows(config, logged_traffic(flights_jan, config, 1000))] == [500, 500]
    assert complete_windows(config, logged_traffic(flights_jan, config, 0)) == []


def test_the_last_time_window_waits_for_later_traffic(flights_jan: pd.DataFrame, tmp_path: Path) -> None:
    config = make_config(tmp_path / "state", monitoring={"window": "7D"})
    logged = logged_traffic(flights_jan, config, len(flights_jan))
    windows = complete_windows(config, logged)
    weeks = logged["event_time"].dt.floor("D").sub(logged["event_time"].min().floor("D")).dt.days // 7
    assert len(windows) == weeks.nunique() - 1
    assert windows[-1].end <= logged["event_time"].max()


def test_retraining_gates_on_the_latest_labelled_window(flights_jan: pd.DataFrame, tmp_path: Path) -> None:
    config = make_config(tmp_path / "state", monitoring={"window": 500, "min_labelled_rows": 100})
    plan = plan_retraining(config, logged_traffic(flights_jan, config, 2000))
    assert plan is not None
    assert plan.gate == (1501, 2000)
    # every window before the gate is a candidate: the retraining data policy (config retraining) chooses rows
    assert plan.train == (1, 1500)
    assert plan_retraining(config, logged_traffic(flights_jan, config, 500)) is None  # nothing left to gate on
    # a last window with too few labels does not gate: the one before it does
    plan = plan_retraining(config, logged_traffic(flights_jan, config, 1550))
    assert plan is not None and plan.gate == (1001, 1500)


def test_monitor_cursor_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "cursor.json"
    assert MonitorCursor.load(path) == MonitorCursor()
    MonitorCursor(last_id=42, champion="3", policy={"windows": 2}).save(path)
    assert MonitorCursor.load(path) == MonitorCursor(last_id=42, champion="3", policy={"windows": 2})
    assert not path.with_suffix(".partial").exists()


@pytest.mark.slow
def test_deploy_without_a_prefect_server_says_how_to_get_one(tmp_path: Path) -> None:
    config_path = tmp_path / "c.yaml"
    config_path.write_text(yaml.safe_dump(make_config(tmp_path / "state").model_dump(mode="json")))
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    result = subprocess.run([sys.executable, "-m", "driftloop.cli", "deploy", "--config", str(config_path)],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2
    assert "no Prefect server" in result.stderr and "driftloop stack up" in result.stderr
    assert "Traceback" not in result.stderr
