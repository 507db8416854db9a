"""The receiver: the monitor's metrics endpoint and Alertmanager's webhook, which starts one retraining per incident.

One process serves both: Prometheus scrapes `GET /metrics` (every textfile under state_dir/metrics plus the
receiver's own counters), and Alertmanager posts its notifications to `POST /alerts` with a bearer token. An
incident is one alert fingerprint: it starts a retraining once, and not again for `alerts.cooldown_s`, however
often Alertmanager repeats it. What was started is kept in state_dir/alerts/incidents.json, so a restart of
the receiver does not start the same incident again.
"""

from __future__ import annotations

import copy
import hmac
import json
import logging
import os
import secrets
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from driftloop.config import Config
from driftloop.errors import ConfigError
from driftloop.metrics import ReceiverMetrics, receiver_metrics

# Gets the alert's labels, starts a retraining, returns a run name or id (for the logs); raises on failure.
RetrainingStarter = Callable[[dict[str, str]], str]

TOKEN_ENV = "DRIFTLOOP_WEBHOOK_TOKEN"
SOURCE = "alertmanager"

logger = logging.getLogger("driftloop.receiver")


# ---------------------------------------------------------------- the shared token


def webhook_token_path(config: Config) -> Path:
    """Where the shared token lives: alerts.token_file, or state_dir/stack/webhook.token."""
    if config.alerts.token_file is not None:
        return Path(config.alerts.token_file).expanduser().resolve()
    return Path(config.state_dir).resolve() / "stack" / "webhook.token"


def ensure_webhook_token(config: Config) -> Path:
    """Create the token file (random, mode 0600) unless it exists; return its path."""
    path = webhook_token_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL: two `stack up` at once cannot each write a different token.
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(secrets.token_urlsafe(32))
    return path


def receiver_token(config: Config) -> str:
    """The token the receiver expects: $DRIFTLOOP_WEBHOOK_TOKEN, else the token file's content."""
    from_env = os.environ.get(TOKEN_ENV, "").strip()
    if from_env:
        return from_env
    path = webhook_token_path(config)
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ConfigError(f"no webhook token: set {TOKEN_ENV} or run `driftloop stack up`, which creates {path}") \
            from None
    if not token:
        raise ConfigError(f"{path}: the webhook token file is empty; delete it and run `driftloop stack up`, "
                          f"or set {TOKEN_ENV}")
    return token


# ---------------------------------------------------------------- the webhook payload (Alertmanager version 4)


class _Payload(BaseModel):
    # Alertmanager adds fields over time (truncatedAlerts in 0.25): ignore what is not used.
    model_config = ConfigDict(extra="ignore")


class WebhookAlert(_Payload):
    """One alert of a notification."""

    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: str | None = None
    endsAt: str | None = None
    generatorURL: str | None = None
    fingerprint: str = Field(min_length=1)


class WebhookMessage(_Payload):
    """An Alertmanager webhook notification (payload version 4)."""

    version: str
    groupKey: str = ""
    status: Literal["firing", "resolved"]
    receiver: str = ""
    groupLabels: dict[str, str] = Field(default_factory=dict)
    commonLabels: dict[str, str] = Field(default_factory=dict)
    commonAnnotations: dict[str, str] = Field(default_factory=dict)
    externalURL: str = ""
    alerts: list[WebhookAlert]


class PayloadError(ValueError):
    """A webhook body that is not an Alertmanager version 4 notification; the message names what is wrong."""

    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


def parse_webhook(body: bytes) -> WebhookMessage:
    """Parse and check a webhook body; PayloadError (400 not JSON, 422 wrong shape or version) otherwise."""
    try:
        raw = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PayloadError(f"the body is not JSON ({error})", 400) from None
    if not isinstance(raw, dict):
        raise PayloadError("the body must be a JSON object (an Alertmanager webhook notification)", 422)
    if "version" in raw and raw["version"] != "4":
        raise PayloadError(f"webhook payload version {raw['version']!r} is not supported: expected \"4\" "
                           "(Alertmanager 0.x webhook_configs)", 422)
    try:
        return WebhookMessage.model_validate(raw)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(body)"
        raise PayloadError(f"invalid Alertmanager webhook: {where}: {first['msg']}", 422) from None


# ---------------------------------------------------------------- incident memory


def incidents_path(config: Config) -> Path:
    """The JSON file of started incidents: fingerprint -> {started_at, run, alertname, model}."""
    return Path(config.state_dir).resolve() / "alerts" / "incidents.json"


def load_incidents(path: Path) -> dict[str, dict[str, Any]]:
    """The recorded incidents; an unreadable file is logged and read as empty (the cooldown then restarts)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        logger.warning("incident memory %s is unreadable (%s): starting with none", path, error)
        return {}
    if not isinstance(raw, dict):
        logger.warning("incident memory %s is not a JSON object: starting with none", path)
        return {}
    return {key: value for key, value in raw.items() if isinstance(value, dict) and "started_at" in value}


def save_incidents(path: Path, incidents: dict[str, dict[str, Any]], cooldown_s: float, now: float) -> None:
    """Write the incidents still within their cooldown, atomically (a crash leaves the old file or the new)."""
    kept = {key: value for key, value in incidents.items() if now - float(value["started_at"]) < cooldown_s}
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(kept, handle, indent=1, sort_keys=True)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _now() -> float:
    """Wall-clock time: incidents outlive the process, so a monotonic clock would not do."""
    return time.time()


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


# ---------------------------------------------------------------- the decisions of one notification


def handle_alerts(message: WebhookMessage, config: Config, start_retraining: RetrainingStarter,
                  metrics: ReceiverMetrics, path: Path) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    """Decide on each alert, start retrainings, record the incidents; return the report and the failures."""
    report: dict[str, list[dict[str, Any]]] = {"started": [], "ignored": []}
    failures: list[str] = []
    now = _now()
    incidents = load_incidents(path)
    started_models: dict[str, str] = {}  # model label -> fingerprint that started it in this notification
    cooldown = config.alerts.cooldown_s
    for alert in message.alerts:
        alertname = alert.labels.get("alertname", "")
        model = alert.labels.get("model", "")
        entry: dict[str, Any] = {"fingerprint": alert.fingerprint, "alertname": alertname, "model": model}
        metrics.alerts_received.labels(alertname=alertname, status=alert.status).inc()
        if alert.status != "firing":
            _ignore(report, entry, "resolved")
            continue
        if alertname not in config.alerts.retrain_alerts:
            _ignore(report, entry, "not in alerts.retrain_alerts")
            continue
        previous = incidents.get(alert.fingerprint)
        if previous is not None and now - float(previous["started_at"]) < cooldown:
            metrics.retrain_triggers.labels(source=SOURCE, outcome="cooldown").inc()
            _ignore(report, entry, f"cooldown: this incident started {previous.get('run')} at "
                                   f"{_iso(float(previous['started_at']))} (alerts.cooldown_s={cooldown:g})")
            continue
        if model in started_models:
            # A group lists every alert of one model (e.g. one per scraping instance): one retraining is enough.
            first = started_models[model]
            incidents[alert.fingerprint] = dict(incidents[first], alertname=alertname)
            metrics.retrain_triggers.labels(source=SOURCE, outcome="duplicate").inc()
            _ignore(report, entry, f"duplicate: alert {first} of the same model started {incidents[first]['run']} "
                                   "in this notification")
            save_incidents(path, incidents, cooldown, now)
            continue
        try:
            run = str(start_retraining(dict(alert.labels)))
        except Exception as error:  # any failure: Alertmanager retries it
            metrics.retrain_triggers.labels(source=SOURCE, outcome="failed").inc()
            failures.append(f"starting a retraining for {alertname} (model {model!r}) failed: {error}")
            logger.error("alert %s %s model=%r: starting a retraining failed: %s", alertname, alert.fingerprint,
                         model, error)
            continue
        metrics.retrain_triggers.labels(source=SOURCE, outcome="started").inc()
        incidents[alert.fingerprint] = {"started_at": now, "run": run, "alertname": alertname, "model": model}
        started_models[model] = alert.fingerprint
        report["started"].append(dict(entry, run=run))
        logger.info("alert %s %s model=%r: started retraining %s", alertname, alert.fingerprint, model, run)
        # Saved after each start: a later failure in this notification must not lose this one.
        save_incidents(path, incidents, cooldown, now)
    return report, failures


def _ignore(report: dict[str, list[dict[str, Any]]], entry: dict[str, Any], reason: str) -> None:
    """Record and log one alert that starts nothing."""
    report["ignored"].append(dict(entry, reason=reason))
    logger.info("alert %s %s model=%r: ignored (%s)", entry["alertname"], entry["fingerprint"], entry["model"],
                reason)


# ---------------------------------------------------------------- metrics textfiles


def collect_textfiles(metrics_dir: Path, own: str) -> str:
    """Every *.prom file under `metrics_dir` after `own` exposition text, skipping files that are not valid
    exposition format or repeat a metric name (Prometheus would reject the whole scrape for either)."""
    seen = {family.name for family in text_string_to_metric_families(own)}
    parts = [own]
    for path in sorted(Path(metrics_dir).glob("*.prom")) if Path(metrics_dir).is_dir() else []:
        try:
            text = path.read_text(encoding="utf-8")
        except (FileNotFoundError, IsADirectoryError):
            continue  # replaced or removed between the listing and the read: the next scrape sees it
        try:
            names = {family.name for family in text_string_to_metric_families(text)}
        except ValueError as error:
            logger.warning("metrics textfile %s skipped: not Prometheus text format (%s)", path, error)
            continue
        if names & seen:
            logger.warning("metrics textfile %s skipped: it repeats %s", path, sorted(names & seen))
            continue
        seen |= names
        parts.append(text if text.endswith("\n") or not text else text + "\n")
    return "".join(parts)


# ---------------------------------------------------------------- the app


def _authorized(request: Request, token: str) -> bool:
    """True for `Authorization: Bearer <token>` (compared in constant time)."""
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def create_receiver_app(config: Config, start_retraining: RetrainingStarter, token: str,
                        metrics_dir: Path | None = None) -> FastAPI:
    """The receiver's app: GET /metrics, GET /healthz, POST /alerts (metrics_dir default state_dir/metrics)."""
    if not token:
        raise ConfigError(f"the webhook token is empty: set {TOKEN_ENV} or fill {webhook_token_path(config)}")
    folder = Path(metrics_dir) if metrics_dir is not None else Path(config.state_dir).resolve() / "metrics"
    memory = incidents_path(config)
    metrics = receiver_metrics()
    # One notification at a time: two concurrent repeats of one incident must not both start it.
    lock = threading.Lock()
    app = FastAPI(title="driftloop receiver")

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        """200 {"status": "ok"} while the receiver runs."""
        return {"status": "ok"}

    @app.get("/metrics")
    def scrape() -> Response:
        """The receiver's own metrics and the monitor's and training's textfiles (state_dir/metrics), for
        Prometheus."""
        own = generate_latest(metrics.registry).decode("utf-8")
        return Response(collect_textfiles(folder, own), media_type=CONTENT_TYPE_LATEST)

    @app.post("/alerts")
    async def alerts(request: Request) -> JSONResponse:
        """Alertmanager's webhook (payload version 4): each firing alert of alerts.retrain_alerts starts the
        retraining deployment once per incident; answers {"started": [...], "ignored": [...]}.

        401 without the bearer token, 400 for a body that is not JSON, 422 for one that is not a notification,
        502 when a retraining could not be started (Alertmanager retries; that incident was not recorded).
        """
        if not _authorized(request, token):
            metrics.unauthorized.inc()
            logger.warning("webhook from %s refused: missing or wrong bearer token",
                           request.client.host if request.client else "?")
            return JSONResponse({"detail": "missing or wrong bearer token"}, status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})
        try:
            message = parse_webhook(await request.body())
        except PayloadError as error:
            logger.warning("webhook refused: %s", error)
            return JSONResponse({"detail": str(error)}, status_code=error.status_code)
        report, failures = await _run_locked(lock, handle_alerts, message, config, start_retraining, metrics, memory)
        if failures:
            # 5xx: Alertmanager retries the notification; the failed incidents were not recorded.
            return JSONResponse(dict(report, detail="; ".join(failures)), status_code=502)
        return JSONResponse(report)

    return app


async def _run_locked(lock: threading.Lock, function: Callable[..., Any], *args: Any) -> Any:
    """Run a blocking function under `lock` in a worker thread (the starter may call a remote API)."""
    def locked() -> Any:
        with lock:
            return function(*args)

    return await run_in_threadpool(locked)


def _log_config() -> dict[str, Any]:
    """uvicorn's logging set-up plus the receiver's logger, so each decision shows in the process output."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["driftloop"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config


def serve_receiver(config: Config, start_retraining: RetrainingStarter, host: str | None = None,
                   port: int | None = None) -> None:
    """Serve until interrupted; host and port default to stack.host and stack.receiver_port."""
    import uvicorn

    app = create_receiver_app(config, start_retraining, receiver_token(config))
    uvicorn.run(app, host=host or config.stack.host, port=config.stack.receiver_port if port is None else port,
                workers=1, log_config=_log_config(), log_level="info")
