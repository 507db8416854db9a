"""Starting `retrain-on-drift` from outside Prefect (Alertmanager's webhook, through the receiver), and the names
the deployments, the monitor and the automation share.

Apart from the deployments module on purpose: the receiver imports only this and Prefect's client, not the flows
(torch, MLflow, Great Expectations, Evidently: about 12 s of CPU), so that it starts in seconds with the stack.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from driftloop.config import Config
from driftloop.errors import ConfigError

RETRAIN_FLOW = "retrain-from-log"
RETRAIN_ON_DRIFT = "retrain-on-drift"
# The event the monitor emits when the retraining policy says retrain; the automation of retrain-on-drift waits
# for it (here, with the names, so that registering the deployments imports no stage).
DRIFT_EVENT = "driftloop.drift.detected"


def drift_resource(config: Config) -> dict[str, str]:
    """The Prefect event resource of this model."""
    return {"prefect.resource.id": f"driftloop.model.{config.model.name}"}


def require_prefect_server() -> None:
    """Deployments and automations live in a Prefect server: a temporary local API would vanish with this process."""
    if not os.environ.get("PREFECT_API_URL"):
        raise ConfigError("no Prefect server: start the local one with `driftloop stack up` (or `driftloop stack up "
                          "--only prefect`), or set orchestration.api_url (or PREFECT_API_URL) to a remote server")


def retraining_starter(config: Config, config_path: Path) -> Callable[[dict[str, str]], str]:
    """A function that starts `retrain-on-drift` for an alert's labels and returns the flow run's name."""
    from prefect.deployments import run_deployment

    require_prefect_server()

    def start(labels: dict[str, str]) -> str:
        reason = f"alert {labels.get('alertname', '?')} for model {labels.get('model', config.model.name)}"
        run = run_deployment(f"{RETRAIN_FLOW}/{RETRAIN_ON_DRIFT}", timeout=0, tags=["alertmanager"],
                             parameters={"config_path": str(config_path), "reason": reason})
        return run.name

    return start
