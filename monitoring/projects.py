"""The model's Evidently project found on disk, or its id reserved, without importing Evidently (its import costs
seconds of CPU, which `driftloop train` would pay only to write one id into a link).

Evidently's local workspace keeps a folder per project, named by its id, with the project's `metadata.json`
(`{"id": ..., "name": ..., ...}`); monitoring/workspace.py creates and fills the projects through Evidently itself.
Before a model's project exists (no window checked yet), its id is reserved here, in a file of the workspace folder
that Evidently does not list (it lists only folders named by a UUID): the version's link names that id, and the
monitor creates the project with it when it stores the first window (workspace.model_project).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from driftloop.config import Config
from driftloop.state import evidently_workspace, write_atomic

METADATA = "metadata.json"
# The reserved project ids, {model name: id}, in the workspace folder.
RESERVED = "driftloop-project-ids.json"


@contextmanager
def locked(folder: Path) -> Iterator[None]:
    """One process at a time sets up or reserves a project (two monitor runs must not create it twice, two trainings
    must not reserve two ids)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".driftloop.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def project_ids(folder: Path, name: str) -> list[str]:
    """The ids of the projects named `name` in the workspace `folder` (none when it does not exist)."""
    found = []
    for metadata in sorted(folder.glob(f"*/{METADATA}")) if folder.is_dir() else []:
        try:
            project = json.loads(metadata.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(project, dict) and project.get("name") == name and project.get("id") == metadata.parent.name:
            found.append(str(project["id"]))
    return found


def existing_project_id(config: Config) -> str | None:
    """The id of the model's project when exactly one exists on disk; None when there is none yet or several
    (then Evidently itself decides: monitoring.workspace.open_project)."""
    found = project_ids(evidently_workspace(config), config.model.name)
    return found[0] if len(found) == 1 else None


def new_project_id() -> str:
    """A new project id of the kind Evidently makes (a time-ordered UUID, version 7)."""
    millis = time.time_ns() // 1_000_000 & ((1 << 48) - 1)
    random = int.from_bytes(os.urandom(10), "big")
    value = millis << 80 | 0x7 << 76 | (random >> 62 & 0xFFF) << 64 | 0b10 << 62 | random & ((1 << 62) - 1)
    return str(uuid.UUID(int=value))


def _reservations(folder: Path) -> dict[str, str]:
    """The reserved ids in the workspace `folder` ({} when none, or when the file is damaged)."""
    try:
        reserved = json.loads((folder / RESERVED).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in reserved.items()} if isinstance(reserved, dict) else {}


def reserved_project_id(config: Config) -> str | None:
    """The id reserved for the model's project, if any (workspace.model_project creates the project with it)."""
    reserved = _reservations(evidently_workspace(config)).get(config.model.name)
    try:
        return str(uuid.UUID(reserved)) if reserved is not None else None
    except ValueError:  # a hand-edited file: Evidently chooses the id
        return None


def link_project_id(config: Config) -> str | None:
    """The id of the model's project for a link: the project's when exactly one exists, else the id reserved for
    it (reserved now when needed), so the link stays right once the monitor creates the project. None when several
    projects have the model's name (then Evidently decides which: open_project)."""
    folder = evidently_workspace(config)
    with locked(folder):
        found = project_ids(folder, config.model.name)
        if found:
            return found[0] if len(found) == 1 else None
        reserved = _reservations(folder)
        if config.model.name not in reserved:
            reserved[config.model.name] = new_project_id()
            write_atomic(folder / RESERVED, json.dumps(reserved, indent=2) + "\n")
        return reserved[config.model.name]
