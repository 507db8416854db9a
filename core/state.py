"""Where driftloop keeps its state under `state_dir`: one function per kind of file."""

from __future__ import annotations

import os
from pathlib import Path

from driftloop.config import Config
from driftloop.env import stack_part_url


def write_atomic(path: Path, text: str) -> None:
    """Write a text file whole: a reader (or a process killed halfway) sees the old content or the new, never
    half of it. The temporary name is per process, so two writers never share one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)


def state_path(config: Config, *parts: str) -> Path:
    """A path under the state dir, with its parent folder created."""
    path = Path(config.state_dir).resolve().joinpath(*parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def reports_dir(config: Config, kind: str) -> Path:
    """Folder for HTML reports of one kind (validation, drift, summary)."""
    folder = state_path(config, "reports", kind, "x").parent
    return folder


def quarantine_dir(config: Config) -> Path:
    """Folder holding batches that failed validation, each with its report."""
    return state_path(config, "quarantine", "x").parent


def batches_dir(config: Config) -> Path:
    """Folder holding one provenance record per batch offered to training (core/batches.py)."""
    return state_path(config, "batches", "x").parent


def prediction_log_path(config: Config) -> Path:
    """SQLite file of the prediction log."""
    return state_path(config, "predictions.db")


def mlflow_tracking_uri(config: Config) -> str:
    """The MLflow tracking URI: the config's, else the local stack's tracking server while it runs (so that its UI
    shows what every command records, and one server writes the SQLite file), else SQLite under the state dir."""
    if config.registry.tracking_uri:
        return config.registry.tracking_uri
    return stack_part_url(Path(config.state_dir), "mlflow") or mlflow_store_uri(config)


def evidently_workspace(config: Config) -> Path:
    """The monitor's Evidently workspace (`evidently ui --workspace` on it): a project per model."""
    return Path(config.state_dir).resolve() / "evidently"


def mlflow_store_uri(config: Config) -> str:
    """The MLflow store itself: the config's database URI (not a tracking server), else SQLite under the state dir."""
    uri = config.registry.tracking_uri
    if uri and not uri.startswith(("http://", "https://")):
        return uri
    return f"sqlite:///{state_path(config, 'mlflow.db')}"


def mlflow_artifact_root(config: Config) -> str:
    """Where MLflow stores artifacts of a local-store experiment."""
    return state_path(config, "artifacts", "x").parent.as_uri()
