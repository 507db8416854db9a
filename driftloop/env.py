"""Process environment for driftloop: no telemetry (the network here is closed) and state kept local."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULTS = {
    "GX_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "MLFLOW_ENABLE_TELEMETRY": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_UI_ENABLED": "false",
    "TOKENIZERS_PARALLELISM": "false",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    # A first start migrates a new SQLite database; on 2 busy cores that can exceed Prefect's 20 s default.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
}


def prepare_environment(state_dir: Path | None = None) -> None:
    """Switch telemetry off and, unless the user chose otherwise, keep Prefect's home under the state dir.

    Must run before Prefect, MLflow or Great Expectations are imported: they read these at import.
    """
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
    if "PREFECT_API_URL" not in os.environ:
        # Flow logs of the throw-away local API would only repeat on the console what the CLI prints.
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    if state_dir is not None and "PREFECT_HOME" not in os.environ and "PREFECT_API_URL" not in os.environ:
        home = Path(state_dir).resolve() / "prefect"
        home.mkdir(parents=True, exist_ok=True)  # Prefect does not create it and then cannot open its database
        os.environ["PREFECT_HOME"] = str(home)
