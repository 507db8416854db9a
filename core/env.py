"""Process environment for driftloop: no telemetry (the network here is closed) and state kept local."""

from __future__ import annotations

import json
import os
from pathlib import Path

from driftloop.state_templates import seed_database

# The libraries' usage reporting: the network may be closed, and nothing may wait on a connection that never opens.
TELEMETRY_OFF = {
    "GX_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",  # Evidently, Prefect's client and others
    "MLFLOW_ENABLE_TELEMETRY": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}
DEFAULTS = {
    **TELEMETRY_OFF,
    "PREFECT_UI_ENABLED": "false",
    "TOKENIZERS_PARALLELISM": "false",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    # A first start migrates a new SQLite database; on 2 busy cores that can exceed Prefect's 20 s default.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
}


# Settings that move the Prefect server's database out of PREFECT_HOME/prefect.db (then no template is copied there).
PREFECT_DATABASE_URL = ("PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_SERVER_DATABASE_CONNECTION_URL")


def switch_off_telemetry() -> None:
    """Telemetry off for this process and its children, unless the user set a variable: the libraries read these
    when imported, so the driftloop package calls this before any stage imports them."""
    for key, value in TELEMETRY_OFF.items():
        os.environ.setdefault(key, value)


def _live_record(state_dir: Path, name: str) -> dict | None:
    """A stack part's record (state_dir/stack/<name>.json, written by `driftloop stack up`) while its process lives."""
    try:
        info = json.loads((Path(state_dir) / "stack" / f"{name}.json").read_text(encoding="utf-8"))
        os.kill(int(info["pid"]), 0)
        return info
    except (OSError, ValueError, KeyError, TypeError):
        return None


def stack_prefect_url(state_dir: Path) -> str | None:
    """The API URL of the local stack's Prefect server while its process lives."""
    info = _live_record(state_dir, "prefect")
    return str(info["api_url"]) if info and "api_url" in info else None


def stack_part_url(state_dir: Path, name: str) -> str | None:
    """The URL of a part of the local stack while its recorded process lives."""
    info = _live_record(state_dir, name)
    return str(info["url"]) if info and "url" in info else None


def prepare_environment(state_dir: Path | None = None, api_url: str | None = None) -> None:
    """Switch telemetry off, choose the Prefect API and, without one, keep Prefect's home under the state dir (a new
    home gets the install's already migrated database: driftloop.state_templates).

    The Prefect API is, in this order: PREFECT_API_URL from the environment, `api_url` (orchestration.api_url),
    the local stack's server while it runs, else Prefect's temporary local API. Must run before Prefect, MLflow
    or Great Expectations are imported: they read these at import.
    """
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
    chosen = api_url or (stack_prefect_url(state_dir) if state_dir is not None else None)
    if chosen:
        os.environ.setdefault("PREFECT_API_URL", chosen)
    if "PREFECT_API_URL" not in os.environ:
        # Flow logs of the throw-away local API would only repeat on the console what the CLI prints.
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    if state_dir is not None and "PREFECT_HOME" not in os.environ and "PREFECT_API_URL" not in os.environ:
        home = Path(state_dir).resolve() / "prefect"
        home.mkdir(parents=True, exist_ok=True)  # Prefect does not create it and then cannot open its database
        os.environ["PREFECT_HOME"] = str(home)
        if not any(os.environ.get(name) for name in PREFECT_DATABASE_URL):
            seed_database(home / "prefect.db", "prefect")  # the temporary server's database, already migrated
