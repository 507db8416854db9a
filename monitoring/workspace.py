"""The monitor's Evidently workspace: a project per model, a snapshot per checked window (drift, data summary and,
once labels arrived, performance), and the project's dashboard panels defined here, for `evidently ui`."""

from __future__ import annotations

import warnings
from datetime import datetime
from uuid import UUID

import pandas as pd
from evidently import BinaryClassification, DataDefinition, Dataset, Regression, Report
from evidently.core.report import Snapshot
from evidently.metrics import MAE, RMSE, Accuracy, RocAuc
from evidently.presets import DataDriftPreset, DataSummaryPreset
from evidently.sdk.models import DashboardPanelPlot, PanelMetric, ProjectModel
from evidently.sdk.panels import counter_panel, line_plot_panel
from evidently.ui.workspace import Project, Workspace

from driftloop.config import Config
from driftloop.monitoring.drift import DriftResult, _sample_reference, _sample_window, feature_kinds, typed_columns
from driftloop.monitoring.projects import locked, reserved_project_id
from driftloop.state import evidently_workspace

# Tabs of the project's dashboard, and the panels' metric names as Evidently stores them in a snapshot.
DRIFT_TAB, PERFORMANCE_TAB = "Drift", "Performance"
DRIFT_SHARE = "DriftedColumnsCount"
VALUE_DRIFT = "ValueDrift"
ROW_COUNT = "RowCount"


def performance_metrics(config: Config) -> list[str]:
    """The Evidently metrics a labelled window's snapshot carries (and the performance panel plots)."""
    return ["RocAuc", "Accuracy"] if config.data.task == "classification" else ["MAE", "RMSE"]


def dashboard_panels(config: Config) -> list[tuple[str, DashboardPanelPlot]]:
    """The project's panels, each with its tab: drift share over time, per-column drift scores, performance."""
    columns = list(feature_kinds(config))
    return [
        (DRIFT_TAB, counter_panel("Rows in the last window", [PanelMetric(legend="rows", metric=ROW_COUNT)],
                                  size="half", aggregation="last")),
        (DRIFT_TAB, counter_panel("Share of drifted columns, last window",
                                  [PanelMetric(legend="share", metric=DRIFT_SHARE,
                                               metric_labels={"value_type": "share"})],
                                  size="half", aggregation="last")),
        (DRIFT_TAB, line_plot_panel("Drift share over time", [
            PanelMetric(legend="share of drifted columns", metric=DRIFT_SHARE, metric_labels={"value_type": "share"})],
            description="Share of the feature columns whose calibrated drift test failed, per window")),
        (DRIFT_TAB, line_plot_panel("Per-column drift score", [
            PanelMetric(legend=name, metric=VALUE_DRIFT, metric_labels={"column": name}) for name in columns],
            description="Each column's drift score (distance) per window; its threshold is in the snapshot")),
        (PERFORMANCE_TAB, line_plot_panel(f"Performance ({', '.join(performance_metrics(config))})", [
            PanelMetric(legend=name, metric=name) for name in performance_metrics(config)],
            description="On windows whose every row has its label")),
    ]


def model_project(workspace: Workspace, config: Config) -> Project:
    """The model's project (named after it), created with its dashboard panels on first use, with the id its
    versions' links name when one was reserved (monitoring.projects.link_project_id)."""
    found = workspace.search_project(config.model.name)
    if found:
        return found[0]
    reserved = reserved_project_id(config)
    chosen = {"id": UUID(reserved)} if reserved is not None and workspace.get_project(reserved) is None else {}
    project = workspace.add_project(ProjectModel(**chosen, name=config.model.name, description=(
        f"driftloop monitor of {config.model.name}: one snapshot per checked window")))
    for tab, panel in dashboard_panels(config):
        project.dashboard.add_panel(panel, tab=tab)
    return project


def open_project(config: Config) -> tuple[Workspace, Project]:
    """The workspace under state_dir and the model's project in it."""
    folder = evidently_workspace(config)
    with locked(folder):
        workspace = Workspace(str(folder))
        return workspace, model_project(workspace, config)


def _labelled_everywhere(frame: pd.DataFrame, config: Config) -> bool:
    """Whether every row has the label and the model output (Evidently's performance metrics need both)."""
    needed = [config.data.target, config.monitoring.prediction_column]
    return all(name in frame for name in needed) and bool(frame[needed].notna().all().all()) and len(frame) > 0


def window_report(reference: pd.DataFrame, current: pd.DataFrame, result: DriftResult, config: Config,
                  timestamp: datetime | None = None) -> Snapshot:
    """The window's snapshot: Evidently's drift on the rows and with the calibrated methods and thresholds the
    verdict used, the data summary of the feature columns and, when both sides are labelled throughout,
    performance (Evidently's metrics refuse a partly labelled table)."""
    current = _sample_window(current, result.rows_checked or len(current))
    reference = _sample_reference(reference, config)
    kinds = feature_kinds(config)
    columns = list(kinds)
    categorical = [name for name, kind in kinds.items() if kind == "categorical"]
    performance = _labelled_everywhere(current, config) and _labelled_everywhere(reference, config)
    target, output = config.data.target, config.monitoring.prediction_column
    frames = []
    for frame in (current, reference):
        typed = typed_columns(frame, config, kinds)
        if performance:
            typed[target] = frame[target].to_numpy()
            typed[output] = frame[output].astype("float64").to_numpy()
            if config.data.task == "classification":
                typed[target] = typed[target].astype(int)
        frames.append(typed)
    task = []
    if performance:
        task = [BinaryClassification(target=target, prediction_probas=output)] \
            if config.data.task == "classification" else [Regression(target=target, prediction=output)]
    definition = DataDefinition(numerical_columns=[name for name in columns if name not in categorical],
                                categorical_columns=categorical,
                                **({"classification": task} if config.data.task == "classification" else
                                   {"regression": task}))
    calibration = result.calibration
    methods = {k: v for k, v in calibration.methods.items() if k in kinds} if calibration else None
    thresholds = {k: v for k, v in calibration.thresholds.items() if k in kinds} if calibration else None
    metrics: list = [DataDriftPreset(columns=columns, drift_share=1 / len(columns) if calibration else
                                     config.monitoring.drift_share,
                                     per_column_method=methods, per_column_threshold=thresholds),
                     DataSummaryPreset(columns=columns)]
    if performance:
        metrics += [RocAuc(), Accuracy()] if config.data.task == "classification" else [MAE(), RMSE()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return Report(metrics).run(Dataset.from_pandas(frames[0], data_definition=definition),
                                   Dataset.from_pandas(frames[1], data_definition=definition), timestamp=timestamp)


def store_window(reference: pd.DataFrame, current: pd.DataFrame, result: DriftResult, config: Config, label: str,
                 timestamp: datetime | None = None) -> str:
    """Add the window's snapshot to the model's project; returns the snapshot id."""
    snapshot = window_report(reference, current, result, config, timestamp)
    workspace, project = open_project(config)
    return str(workspace.add_run(project.id, snapshot, name=label).id)


def ui_command(config: Config) -> str:
    """How a person opens the workspace without the stack."""
    return f"evidently ui --workspace {evidently_workspace(config)} --port {config.stack.evidently_port}"
