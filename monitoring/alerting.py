"""prometheus.yml and alertmanager.yml for the local stack, rendered from the config.

Prometheus scrapes the model server and the receiver (the monitor's gauges) and evaluates the shipped rules;
Alertmanager routes the alerts named in alerts.retrain_alerts to the receiver's webhook, with the shared token
as a bearer credential read from a file (so the token never appears in the rendered config), and keeps every
other alert to itself.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import yaml

from driftloop.config import Config

RETRAIN_RECEIVER = "driftloop-retrain"
DEFAULT_RECEIVER = "default"
GROUP_BY = ["alertname", "model"]


def rules_path() -> Path:
    """The shipped alert rules, monitoring/rules/driftloop.rules.yml."""
    return Path(__file__).resolve().parent / "rules" / "driftloop.rules.yml"


def prometheus_duration(seconds: float) -> str:
    """A duration in Prometheus/Alertmanager syntax: whole seconds as "15s", else milliseconds ("500ms")."""
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative ({seconds})")
    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    # Prometheus durations have millisecond resolution; a positive interval must not round down to 0.
    return f"{max(1, round(seconds * 1000))}ms"


def prometheus_config(config: Config, scrape_targets: dict[str, str | list[str]], alertmanager_address: str,
                      rule_files: list[Path]) -> dict:
    """prometheus.yml: one job per scrape target (job name -> "host:port", or a list of them: the model server's
    replicas, each its own `instance`), the rules, the Alertmanager."""
    return {
        "global": {
            "scrape_interval": prometheus_duration(config.stack.scrape_interval_s),
            "evaluation_interval": prometheus_duration(config.stack.evaluation_interval_s),
        },
        "rule_files": [str(Path(path).resolve()) for path in rule_files],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager_address]}]}]},
        "scrape_configs": [{"job_name": job, "static_configs": [
            {"targets": [target] if isinstance(target, str) else list(target)}]}
                           for job, target in scrape_targets.items()],
    }


def retrain_matcher(alert_names: list[str]) -> str:
    """An Alertmanager matcher for any of `alert_names` (regex anchored by Alertmanager, names escaped)."""
    pattern = "|".join(re.escape(name) for name in alert_names)
    # The matcher's quoted value takes the escapes of a JSON string (\\ and \"); non-ASCII stays as is.
    return f"alertname=~{json.dumps(pattern, ensure_ascii=False)}"


def alertmanager_config(config: Config, receiver_url: str, token_file: Path) -> dict:
    """alertmanager.yml: retrain alerts go to the receiver's webhook (bearer token from `token_file`), others
    stay in Alertmanager (receiver "default" sends nothing)."""
    alerts = config.alerts
    route: dict[str, Any] = {
        "receiver": DEFAULT_RECEIVER,
        "group_by": list(GROUP_BY),
        "group_wait": prometheus_duration(alerts.group_wait_s),
        "group_interval": prometheus_duration(alerts.group_interval_s),
        "repeat_interval": prometheus_duration(alerts.repeat_interval_s),
    }
    receivers: list[dict[str, Any]] = [{"name": DEFAULT_RECEIVER}]
    if alerts.retrain_alerts:  # an empty list: nothing starts a retraining, so no webhook at all
        route["routes"] = [{"receiver": RETRAIN_RECEIVER, "matchers": [retrain_matcher(alerts.retrain_alerts)]}]
        receivers.append({
            "name": RETRAIN_RECEIVER,
            "webhook_configs": [{
                "url": receiver_url,
                # A resolved alert starts nothing: sending it would only be acknowledged and dropped.
                "send_resolved": False,
                "http_config": {"authorization": {"type": "Bearer",
                                                  "credentials_file": str(Path(token_file).resolve())}},
            }],
        })
    return {"route": route, "receivers": receivers}


def write_yaml(document: dict, path: Path) -> Path:
    """Write `document` as YAML to `path` atomically (the old file or the new, never half of one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            yaml.safe_dump(document, handle, sort_keys=False, default_flow_style=False)
        os.chmod(temporary, 0o644)  # mkstemp makes it 0600; Prometheus may run as another user
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
