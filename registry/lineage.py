"""Lineage tags recorded on every run and model version: where the model came from."""

from __future__ import annotations

import functools
import json
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

import driftloop
from driftloop.config import Config
from driftloop.data import fingerprint, time_range

# JSON list of the fingerprints of the batches a version was trained on (registry/provenance.py follows them).
BATCHES_TAG = "data.batches"


@functools.cache  # the code a process runs does not change while it runs: one look-up per process
def code_version() -> str:
    """The git commit of the code that trained the model, or the package version outside a checkout."""
    source = Path(__file__).resolve().parent  # the checkout itself, not an editable install's tree of links
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=source,
                                capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=source,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return f"{commit}{'-dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return f"driftloop-{driftloop.__version__}"


def build_lineage(config: Config, frame: pd.DataFrame, validation_success: bool | None,
                  validation_report: str | None, flow_run_id: str | None,
                  batches: Sequence[str] | None = None) -> dict[str, str]:
    """Tags naming the data (fingerprint, time range, rows), its validation, the config, the code and the champion
    when it was trained (parent.champion: empty for a first model).

    `data.batches` is a JSON list of the fingerprints of the batch records (core/batches.py) the model was
    trained on; by default the one batch `frame` is."""
    from driftloop.registry.store import alias_version  # MLflow is slow to import: only when lineage is built

    span = time_range(frame, config.data)
    digest = fingerprint(frame)
    return {
        "data.fingerprint": digest,
        BATCHES_TAG: json.dumps(list(batches) if batches is not None else [digest]),
        "data.rows": str(len(frame)),
        "data.start": span[0] if span else "",
        "data.end": span[1] if span else "",
        "validation.success": "unknown" if validation_success is None else str(validation_success).lower(),
        "validation.report": validation_report or "",
        "config.hash": config.digest(),
        "code.version": code_version(),
        "prefect.flow_run_id": flow_run_id or "",
        "parent.champion": alias_version(config) or "",
    }
