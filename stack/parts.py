"""The parts of the local stack, in start order: what each runs, where it listens and how its health is checked."""

from __future__ import annotations

import os
import re
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from driftloop.config import Config
from driftloop.env import DEFAULTS
from driftloop.errors import ConfigError
from driftloop.stack import postgres

# The parts of a stack with the default settings, in start order. `part_names` adds what the config asks for:
# `postgres` first (stack.database), `server-2`, ... after `server` (stack.server_replicas), `worker` last.
PART_NAMES: tuple[str, ...] = ("prefect", "mlflow", "evidently", "prometheus", "alertmanager", "receiver", "server",
                               "deployments")
SERVER = "server"
POSTGRES = "postgres"
WORKER = "worker"
DEPLOYMENTS = "deployments"


@dataclass(frozen=True)
class Part:
    """One process of the stack."""

    name: str
    command: list[str]
    url: str  # what a user opens (or points a client at)
    health_url: str | None  # GET 200 means healthy; None: see `healthy` (Prefect's API is asked instead)
    port: int | None  # where it listens; None: it does not
    port_key: str | None  # the config key that sets the port, for error messages
    env: dict[str, str] = field(default_factory=dict, repr=False)  # the child's whole environment
    binary_key: str | None = None  # config key naming an external binary that must exist
    ui_url: str | None = None  # the page a person opens in a browser, when the part has one
    # Parts that must be healthy before this one starts (when they are started by the same call): `up` starts
    # every part whose dependencies are healthy at once, so that start-ups (Prefect's database, MLflow's
    # migrations, the Python imports) overlap instead of adding up.
    after: tuple[str, ...] = ()
    oneshot: bool = False  # runs to completion (exit 0), then is checked; nothing to stop later
    user: str | None = None  # run as this user (PostgreSQL refuses to run as root)
    stop_signal: int = signal.SIGTERM  # sent to the part's process group by `down`


def shown_url(url: str) -> str:
    """A URL for the console: a password in it as *** (`stack status --json` gives the whole URL)."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


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


def server_names(config: Config) -> list[str]:
    """The model servers' part names: server, server-2, ... (stack.server_replicas)."""
    return [SERVER] + [f"{SERVER}-{index}" for index in range(2, config.stack.server_replicas + 1)]


def server_port(config: Config, index: int) -> int:
    """The port of replica `index` (0-based): serving.port, serving.port + 1, ..."""
    return config.serving.port + index


def part_names(config: Config) -> list[str]:
    """Every part the config asks for, in start order."""
    names = [POSTGRES] if config.stack.database == "postgres" else []
    names += [name for name in PART_NAMES if name not in (SERVER, DEPLOYMENTS)]
    names += [*server_names(config), DEPLOYMENTS]
    return names + ([WORKER] if config.stack.worker else [])


def select_parts(config: Config, names: list[str] | None) -> list[str]:
    """The requested parts in start order (all when `names` is empty; `server` means every replica); an unknown
    name is a ConfigError."""
    known = part_names(config)
    if not names:
        return known
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ConfigError(f"unknown stack part(s) {', '.join(unknown)}: choose from {', '.join(known)}")
    wanted = set(names) | (set(server_names(config)) if SERVER in names else set())
    return [name for name in known if name in wanted]


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
    if config.stack.database == "postgres":
        url = postgres.database_url(config, postgres.PREFECT_DATABASE, driver="asyncpg")
        if url:  # made by `up` before any part starts
            timeout = str(config.stack.database_timeout_s)
            env.update({"PREFECT_API_DATABASE_CONNECTION_URL": url, "PREFECT_SERVER_DATABASE_TIMEOUT": timeout,
                        "PREFECT_SERVER_DATABASE_CONNECTION_TIMEOUT": timeout})
    return env


def mlflow_store_environment(config: Config) -> dict[str, str]:
    """With the stack's PostgreSQL, MLflow's backend store through the environment (not the command line, where
    every user of the machine would read the password); nothing otherwise."""
    if config.stack.database != "postgres":
        return {}
    url = postgres.database_url(config, postgres.MLFLOW_DATABASE, driver="psycopg")
    return {"MLFLOW_BACKEND_STORE_URI": url} if url else {}


def postgres_part(config: Config) -> Part:
    """The stack's PostgreSQL in the foreground; `down` sends SIGINT (a fast shutdown: clients are rolled back)."""
    from driftloop.postgres_cluster import SUPERUSER, run_as_user

    port = config.stack.postgres_port
    url = postgres.database_url(config) or f"postgresql://{SUPERUSER}@127.0.0.1:{port}/driftloop"
    return Part(POSTGRES, postgres.server_command(config), url, None, port, "stack.postgres_port",
                {"PATH": os.environ.get("PATH", ""), "LANG": "C"}, user=run_as_user(), stop_signal=signal.SIGINT)


def mlflow_command(config: Config) -> list[str]:
    """`mlflow server` on the registry's store, one worker, artifacts read and written by the clients themselves
    (the experiments keep their file locations under state_dir, as without a server)."""
    from driftloop.state import mlflow_artifact_root, mlflow_store_uri

    store = [] if config.stack.database == "postgres" else ["--backend-store-uri", mlflow_store_uri(config)]
    return [sys.executable, "-m", "mlflow", "server", *store, "--default-artifact-root",
            config.registry.artifact_location or mlflow_artifact_root(config), "--no-serve-artifacts",
            "--host", config.stack.host, "--port", str(config.stack.mlflow_port), "--workers", "1"]


def evidently_command(config: Config) -> list[str]:
    """`evidently ui` on the monitor's workspace (evidently has no `python -m` entry: call its CLI app)."""
    from driftloop.state import evidently_workspace

    return [sys.executable, "-c", "from evidently.cli import app; app()", "ui", "--workspace",
            str(evidently_workspace(config)), "--host", config.stack.host, "--port", str(config.stack.evidently_port)]


def work_pool(config: Config) -> str | None:
    """The work pool the deployments go to: orchestration.work_pool, else the stack's worker's pool when
    stack.worker is on, else None (`driftloop deploy` serves them from its own process)."""
    if config.orchestration.work_pool:
        return config.orchestration.work_pool
    return config.stack.worker_pool if config.stack.worker else None


def server_parts(config: Config, driftloop: list[str], cfg: list[str], env: dict[str, str]) -> list[Part]:
    """One model server per replica on consecutive ports, each loading the champion from the stack's MLflow."""
    host = config.stack.host
    parts = []
    for index, name in enumerate(server_names(config)):
        port = server_port(config, index)
        url = base_url(config, port)
        parts.append(Part(name, [*driftloop, "serve", *cfg, "--host", host, "--port", str(port)], url,
                          f"{url}/healthz", port, "serving.port" if index == 0 else
                          f"serving.port (replica {index + 1} listens on serving.port + {index})", env,
                          after=("mlflow", POSTGRES)))
    return parts


def orchestration_parts(config: Config, driftloop: list[str], cfg: list[str], env: dict[str, str]) -> list[Part]:
    """The deployments (served by their own process, or registered for a work pool) and the pool's worker."""
    pool = work_pool(config)
    api = env["PREFECT_API_URL"]
    if pool is None:
        return [Part(DEPLOYMENTS, [*driftloop, "deploy", *cfg], api, None, None, None, env, after=("prefect",))]
    parts = [Part(DEPLOYMENTS, [*driftloop, "deploy", "--no-serve", *cfg], api, None, None, None, env,
                  after=("prefect",), oneshot=True)]
    if config.stack.worker:
        page = f"{base_url(config, config.stack.prefect_port)}/work-pools/work-pool/{pool}"
        parts.append(Part(WORKER, [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type",
                                   "process"], f"{api}/work_pools/{pool}", None, None, None, env, ui_url=page,
                          after=(DEPLOYMENTS,)))
    return parts


def build_parts(config: Config, config_path: Path) -> list[Part]:
    """Every part the config asks for, in start order, with its command and environment (nothing is written)."""
    stack, host, folder = config.stack, config.stack.host, stack_dir(config)
    driftloop = [sys.executable, "-m", "driftloop.cli"]
    cfg = ["--config", str(Path(config_path).resolve())]
    env = child_environment(config)
    prefect = base_url(config, stack.prefect_port)
    prometheus = base_url(config, stack.prometheus_port)
    alertmanager = base_url(config, stack.alertmanager_port)
    receiver = base_url(config, stack.receiver_port)
    mlflow, evidently = mlflow_url(config), evidently_url(config)
    # MLflow's background job runner (a handful of consumer processes) serves features driftloop does not use.
    mlflow_env = {**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **mlflow_store_environment(config)}
    database = [postgres_part(config)] if stack.database == "postgres" else []
    return [
        *database,
        Part("prefect", [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port",
                         str(stack.prefect_port)],
             f"{prefect}/api", f"{prefect}/api/health", stack.prefect_port, "stack.prefect_port",
             prefect_environment(config), ui_url=f"{prefect}/", after=(POSTGRES,)),
        Part("mlflow", mlflow_command(config), mlflow, f"{mlflow}/health", stack.mlflow_port, "stack.mlflow_port",
             mlflow_env, ui_url=f"{mlflow}/", after=(POSTGRES,)),
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
        *server_parts(config, driftloop, cfg, env),
        *orchestration_parts(config, driftloop, cfg, env),
    ]


def write_part_files(config: Config, name: str) -> None:
    """Render the files a part reads at start: prometheus.yml (every replica a target), alertmanager.yml, the
    webhook token (which the receiver reads, and may start before Alertmanager), the PostgreSQL cluster (initdb on
    first use); nothing for the others."""
    if name == "receiver":
        from driftloop.monitoring.receiver import ensure_webhook_token

        ensure_webhook_token(config)
        return
    if name == POSTGRES:
        postgres.ensure_cluster(config)
        return
    if name not in ("prometheus", "alertmanager"):
        return
    from driftloop.monitoring.alerting import alertmanager_config, prometheus_config, rules_path, write_yaml

    stack, host, folder = config.stack, config.stack.host, stack_dir(config)
    if name == "prometheus":
        servers = [f"{host}:{server_port(config, index)}" for index in range(stack.server_replicas)]
        targets = {"driftloop-server": servers, "driftloop-monitor": [f"{host}:{stack.receiver_port}"]}
        document = prometheus_config(config, targets, f"{host}:{stack.alertmanager_port}", [rules_path()])
        write_yaml(document, folder / "prometheus.yml")
        return
    from driftloop.monitoring.receiver import ensure_webhook_token

    receiver_url = f"{base_url(config, stack.receiver_port)}/alerts"
    write_yaml(alertmanager_config(config, receiver_url, ensure_webhook_token(config)), folder / "alertmanager.yml")


def _prefect_lists(part: Part, client: httpx.Client) -> bool:
    """The deployments: Prefect lists at least one. The worker: its pool has a worker that is ONLINE."""
    if part.name == WORKER:
        response = client.post(f"{part.url}/workers/filter", json={})
        return response.status_code == 200 and any(w.get("status") == "ONLINE" for w in response.json())
    response = client.post(f"{part.url}/deployments/filter", json={})
    return response.status_code == 200 and bool(response.json())


def healthy(part: Part, client: httpx.Client) -> bool:
    """One health probe: GET health_url answers 200 (Prefect's with `true`); PostgreSQL accepts connections; the
    deployments and the worker are asked of Prefect (the caller checks that their process lives)."""
    if part.name == POSTGRES:
        return postgres.ready_at(part.url)
    try:
        if part.health_url is None:
            return _prefect_lists(part, client)
        response = client.get(part.health_url)
        if response.status_code != 200:
            return False
        return response.json() is True if part.name == "prefect" else True
    except (httpx.HTTPError, ValueError):
        return False
