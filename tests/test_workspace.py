"""The monitor's Evidently workspace: a project per model with its panels, a snapshot per checked window."""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest

from driftloop.config import Config
from driftloop.monitoring.drift import check_drift
from driftloop.monitoring.workspace import dashboard_panels, open_project, store_window
from driftloop.state import evidently_workspace


def labelled(frame: pd.DataFrame, config: Config, seed: int) -> pd.DataFrame:
    """The frame with a model output, as the prediction log holds it once labels arrived."""
    out = frame.copy()
    out[config.monitoring.prediction_column] = np.random.default_rng(seed).random(len(out))
    return out


@pytest.mark.slow  # two calibrated drift checks: about 20 s on 2 cores
def test_each_window_is_one_snapshot_in_the_models_project_with_its_panels(
        config: Config, flights_jan: pd.DataFrame, flights_jul: pd.DataFrame) -> None:
    config = config.model_copy(update={"monitoring": config.monitoring.model_copy(
        update={"calibration_draws": 200})})
    reference = labelled(flights_jan.head(1500), config, 0)
    for index, current in enumerate((flights_jan.tail(300), flights_jul.head(300))):
        current = labelled(current, config, index + 1)
        result = check_drift(reference, current, config)
        started = time.monotonic()
        store_window(reference, current, result, config, f"w{index}")
        print(f"snapshot of w{index}: {time.monotonic() - started:.2f} s")
    workspace, project = open_project(config)
    assert [p.name for p in workspace.list_projects()] == [config.model.name]  # found again, not created twice
    runs = [workspace.get_run(project.id, run) for run in workspace.list_runs(project.id)]
    assert sorted(run.name for run in runs) == ["w0", "w1"]
    text = json.dumps([run.dict() for run in runs], default=str)
    for name in ("DriftedColumnsCount", "ValueDrift", "RowCount", "RocAuc", "Accuracy"):
        assert name in text, f"{name} missing from the snapshots"
    dashboard = workspace.get_dashboard(project.id)
    assert [panel.title for panel in dashboard.panels] == [panel.title for _, panel in dashboard_panels(config)]
    assert {tab.title for tab in dashboard.tabs} == {"Drift", "Performance"}
    assert (evidently_workspace(config) / str(project.id)).is_dir()
