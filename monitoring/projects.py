"""The model's Evidently project found on disk, without importing Evidently (its import costs seconds of CPU, which
`driftloop train` would pay only to read one id for a link).

Evidently's local workspace keeps a folder per project, named by its id, with the project's `metadata.json`
(`{"id": ..., "name": ..., ...}`); monitoring/workspace.py creates and fills the projects through Evidently itself.
"""

from __future__ import annotations

import json
from pathlib import Path

from driftloop.config import Config
from driftloop.state import evidently_workspace

METADATA = "metadata.json"


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
