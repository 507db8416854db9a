"""Where driftloop keeps its state under `state_dir`: one function per kind of file."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from driftloop.config import Config
from driftloop.env import stack_part_url
from driftloop.errors import DataError

logger = logging.getLogger("driftloop.state")


LAST_GOOD_SUFFIX = ".last-good"


def write_atomic(path: Path, text: str, keep_last_good: bool = False) -> None:
    """Write a text file whole and durably: a reader (or a process killed halfway, or a power cut) sees the old
    content or the new, never half of it. The new content is fsynced before the rename and the folder after it.
    The temporary name is per process, so two writers never share one. `keep_last_good`: the content replaced is
    kept as NAME.last-good (read_json_state falls back on it when the file itself is damaged)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    _write_synced(partial, text.encode("utf-8"))
    if keep_last_good and path.exists():
        previous = path.read_bytes()
        if _json_ok(previous):  # never keep a damaged file as the fallback
            backup = path.with_name(f"{path.name}{LAST_GOOD_SUFFIX}.{os.getpid()}.partial")
            _write_synced(backup, previous)
            backup.replace(path.with_name(path.name + LAST_GOOD_SUFFIX))
    partial.replace(path)
    _sync_folder(path.parent)


def read_json_state(path: Path) -> dict | None:
    """A JSON state file written with keep_last_good: its content, else (damaged: truncated, not JSON) the last good
    copy with a warning, else None when neither exists; DataError naming both when both are damaged."""
    candidates = [path, path.with_name(path.name + LAST_GOOD_SUFFIX)]
    damaged = []
    for candidate in candidates:
        if not candidate.exists():
            continue
        raw = candidate.read_bytes()
        if _json_ok(raw):
            if damaged:
                logger.warning("%s is damaged; using the last good copy %s", path, candidate)
            return json.loads(raw)
        damaged.append(str(candidate))
    if damaged:
        raise DataError(f"{' and '.join(damaged)}: not a JSON object (damaged); delete them to start afresh")
    return None


def _json_ok(raw: bytes) -> bool:
    try:
        return isinstance(json.loads(raw), dict)
    except (ValueError, UnicodeDecodeError):
        return False


def _write_synced(path: Path, data: bytes) -> None:
    with path.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _sync_folder(folder: Path) -> None:
    """fsync a folder, so that a rename in it survives a power cut."""
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


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
    """SQLite file of the prediction log (the default of serving.log_uri)."""
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
