"""The parts of the local stack, in start order: what each runs, where it listens and how its health is checked."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from driftloop.config import Config
from driftloop.env import DEFAULTS
from driftloop.errors import ConfigError

# Start order: each part may need the ones before it (the deployments report to Prefect and MLflow, Prometheus
# sends alerts to Alertmanager, which posts them to the receiver).
PART_NAMES: tuple[str, ...] = ("prefect", "mlflow", "evidently", "prometheus", "alertmanager", "receiver", "server",
                               "deployments")
# Parts that need no other part to start (Prometheus and Alertmanager find theirs when an alert comes): `up`
# starts them all at once and then waits for each in order, so their start-ups (Prefect's database, MLflow's
# migrations, the Python imports) overlap instead of adding up. The server and the deployments need the registry
# and Prefect up.
INDEPENDENT: frozenset[str] = frozenset({"prefect", "mlflow", "evidently", "prometheus", "alertmanager", "receiver"})


@dataclass(frozen=True)
class Part:
    """One process of the stack."""

    name: str
    command: list[str]
    url: str  # what a user opens (or points a client at)
    health_url: str | None  # GET 200 means healthy; None: see `healthy` (the deployments are checked differently)
    port: int | None  # where it listens; None: it does not
    port_key: str | None  # the config key that sets the port, for error messages
    env: dict[str, str] = field(default_factory=dict, repr=False)  # the child's whole environment
    binary_key: str | None = None  # config key naming an external binary that must exist
    ui_url: str | None = None  # the page a person opens in a browser, when the part has one


def stack_dir(config: Config) -> Path:
    """state_dir/stack: records, rendered configs, data and logs of the stack (not created here)."""
    return Path(config.state_dir).resolve() / "stack"


def log_path(config: Config, name: str) -> Path:
    """The log file of one part."""
    return stack_dir(config) / "logs" / f"{name}.log"


def record_path(config: Config, name: str) -> Path:
    """The JSON record of one started part."""
    return stack_dir(config) / f"{name}.json"


def prefect_record_path(config: Config) -> Path:
    """prefect.json: read by driftloop.env.stack_prefect_url, so every later command reports to the stack's server."""
    return stack_dir(config) / "prefect.json"


def base_url(config: Config, port: int) -> str:
    """http://host:port on the stack's host."""
    host = config.stack.host
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def prefect_api_url(config: Config) -> str:
    """The stack's Prefect API URL."""
    return f"{base_url(config, config.stack.prefect_port)}/api"


def mlflow_url(config: Config) -> str:
    """The stack's MLflow tracking server (and UI)."""
    return base_url(config, config.stack.mlflow_port)


def evidently_url(config: Config) -> str:
    """The stack's Evidently UI service."""
    return base_url(config, config.stack.evidently_port)


def remote_parts(config: Config) -> dict[str, str]:
    """Parts a remote service replaces, with why: Prefect with orchestration.api_url, MLflow with a tracking server
    in registry.tracking_uri."""
    remote = {}
    if config.orchestration.api_url:
        remote["prefect"] = f"{config.orchestration.api_url} (orchestration.api_url)"
    if (config.registry.tracking_uri or "").startswith(("http://", "https://")):
        remote["mlflow"] = f"{config.registry.tracking_uri} (registry.tracking_uri)"
    return remote


def select_parts(names: list[str] | None) -> list[str]:
    """The requested parts in start order (all when `names` is empty); an unknown name is a ConfigError."""
    if not names:
        return list(PART_NAMES)
    unknown = [name for name in names if name not in PART_NAMES]
    if unknown:
        raise ConfigError(f"unknown stack part(s) {', '.join(unknown)}: choose from {', '.join(PART_NAMES)}")
    return [name for name in PART_NAMES if name in names]


def child_environment(config: Config) -> dict[str, str]:
    """What driftloop's own children run with: telemetry off, reporting to the stack's Prefect API (or the
    configured orchestration.api_url), output unbuffered so that the logs keep up."""
    env = dict(os.environ)
    if "PREFECT_API_URL" not in env and env.get("PREFECT_LOGGING_LEVEL") == "WARNING":
        # prepare_environment's quiet default for a throw-away API: the children report to a real server, and
        # their logs are where a user looks for what the deployments and flow runs did.
        del env["PREFECT_LOGGING_LEVEL"]
    for key, value in DEFAULTS.items():
        env.setdefault(key, value)
    env["PREFECT_API_URL"] = config.orchestration.api_url or prefect_api_url(config)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def prefect_environment(config: Config) -> dict[str, str]:
    """The Prefect server's environment: its own home (SQLite database) under the stack folder, no telemetry, and
    its UI (the wheel ships the built assets) talking to this server's API."""
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    for key, value in DEFAULTS.items():
        env.setdefault(key, value)
    env.update({"PREFECT_HOME": str(stack_dir(config) / "prefect"), "PREFECT_UI_ENABLED": "true",
                "PREFECT_UI_API_URL": prefect_api_url(config), "PYTHONUNBUFFERED": "1",
                # The V2 UI (Prefect's default) starts Amplitude analytics before it reads analytics_enabled, so
                # it calls out on every load; V1 does not. Promotions link to Prefect Cloud: not offline.
                "PREFECT_SERVER_UI_V2_ENABLED": "false", "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false"})
    return env


def mlflow_command(config: Config) -> list[str]:
    """`mlflow server` on the registry's store, one worker, artifacts read and written by the clients themselves
    (the experiments keep their file locations under state_dir, as without a server)."""
    from driftloop.state import mlflow_artifact_root, mlflow_store_uri

    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", mlflow_store_uri(config),
            "--default-artifact-root", config.registry.artifact_location or mlflow_artifact_root(config),
            "--no-serve-artifacts", "--host", config.stack.host, "--port", str(config.stack.mlflow_port),
            "--workers", "1"]


def evidently_command(config: Config) -> list[str]:
    """`evidently ui` on the monitor's workspace (evidently has no `python -m` entry: call its CLI app)."""
    from driftloop.state import evidently_workspace

    return [sys.executable, "-c", "from evidently.cli import app; app()", "ui", "--workspace",
            str(evidently_workspace(config)), "--host", config.stack.host, "--port", str(config.stack.evidently_port)]


def build_parts(config: Config, config_path: Path) -> list[Part]:
    """Every part of the stack in start order, with its command and environment (nothing is written here)."""
    stack, host, folder = config.stack, config.stack.host, stack_dir(config)
    driftloop = [sys.executable, "-m", "driftloop.cli"]
    cfg = ["--config", str(Path(config_path).resolve())]
    env = child_environment(config)
    prefect = base_url(config, stack.prefect_port)
    prometheus = base_url(config, stack.prometheus_port)
    alertmanager = base_url(config, stack.alertmanager_port)
    receiver = base_url(config, stack.receiver_port)
    server = base_url(config, config.serving.port)
    mlflow, evidently = mlflow_url(config), evidently_url(config)
    # MLflow's background job runner (a handful of consumer processes) serves features driftloop does not use.
    mlflow_env = {**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    return [
        Part("prefect", [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port",
                         str(stack.prefect_port)],
             f"{prefect}/api", f"{prefect}/api/health", stack.prefect_port, "stack.prefect_port",
             prefect_environment(config), ui_url=f"{prefect}/"),
        Part("mlflow", mlflow_command(config), mlflow, f"{mlflow}/health", stack.mlflow_port, "stack.mlflow_port",
             mlflow_env, ui_url=f"{mlflow}/"),
        Part("evidently", evidently_command(config), evidently, f"{evidently}/api/version", stack.evidently_port,
             "stack.evidently_port", env, ui_url=f"{evidently}/"),
        Part("prometheus", [stack.prometheus_bin, f"--config.file={folder / 'prometheus.yml'}",
                            f"--storage.tsdb.path={folder / 'prometheus-data'}",
                            f"--web.listen-address={host}:{stack.prometheus_port}", "--web.enable-lifecycle"],
             prometheus, f"{prometheus}/-/ready", stack.prometheus_port, "stack.prometheus_port", env,
             "stack.prometheus_bin", ui_url=f"{prometheus}/"),
        # An empty cluster address: otherwise Alertmanager also binds 0.0.0.0:9094 for gossip it does not need.
        Part("alertmanager", [stack.alertmanager_bin, f"--config.file={folder / 'alertmanager.yml'}",
                              f"--storage.path={folder / 'alertmanager-data'}",
                              f"--web.listen-address={host}:{stack.alertmanager_port}", "--cluster.listen-address="],
             alertmanager, f"{alertmanager}/-/ready", stack.alertmanager_port, "stack.alertmanager_port", env,
             "stack.alertmanager_bin", ui_url=f"{alertmanager}/"),
        Part("receiver", [*driftloop, "receiver", *cfg, "--host", host, "--port", str(stack.receiver_port)],
             receiver, f"{receiver}/healthz", stack.receiver_port, "stack.receiver_port", env),
        Part("server", [*driftloop, "serve", *cfg, "--host", host, "--port", str(config.serving.port)],
             server, f"{server}/healthz", config.serving.port, "serving.port", env),
        Part("deployments", [*driftloop, "deploy", *cfg], env["PREFECT_API_URL"], None, None, None, env),
    ]


def write_part_files(config: Config, name: str) -> None:
    """Render the files a part reads at start: prometheus.yml, alertmanager.yml, the webhook token (which the
    receiver reads, and may start before Alertmanager); nothing for the others."""
    if name == "receiver":
        from driftloop.monitoring.receiver import ensure_webhook_token

        ensure_webhook_token(config)
        return
    if name not in ("prometheus", "alertmanager"):
        return
    from driftloop.monitoring.alerting import alertmanager_config, prometheus_config, rules_path, write_yaml

    stack, host, folder = config.stack, config.stack.host, stack_dir(config)
    if name == "prometheus":
        targets = {"driftloop-server": f"{host}:{config.serving.port}",
                   "driftloop-monitor": f"{host}:{stack.receiver_port}"}
        document = prometheus_config(config, targets, f"{host}:{stack.alertmanager_port}", [rules_path()])
        write_yaml(document, folder / "prometheus.yml")
        return
    from driftloop.monitoring.receiver import ensure_webhook_token

    receiver_url = f"{base_url(config, stack.receiver_port)}/alerts"
    write_yaml(alertmanager_config(config, receiver_url, ensure_webhook_token(config)), folder / "alertmanager.yml")


def healthy(part: Part, client: httpx.Client) -> bool:
    """One health probe: GET health_url answers 200 (Prefect's with `true`); the deployments are healthy once
    Prefect lists at least one deployment (the caller checks that their process lives)."""
    try:
        if part.health_url is None:
            response = client.post(f"{part.url}/deployments/filter", json={})
            return response.status_code == 200 and bool(response.json())
        response = client.get(part.health_url)
        if response.status_code != 200:
            return False
        return response.json() is True if part.name == "prefect" else True
    except (httpx.HTTPError, ValueError):
        return False
