"""The receiver (metrics endpoint + Alertmanager webhook), the rendered Prometheus and Alertmanager configs, and
one run of the whole alert path with the real Prometheus and Alertmanager."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

import driftloop.monitoring.receiver as receiver
from driftloop.config import Config
from driftloop.errors import ConfigError
from driftloop.metrics import (
    ALERTS_RECEIVED,
    RETRAIN_RECOMMENDED,
    RETRAIN_TRIGGERS,
    TRAINING_LOSS,
    WEBHOOK_UNAUTHORIZED,
    monitor_metrics,
    training_metrics,
)
from driftloop.monitoring.alerting import (
    alertmanager_config,
    prometheus_config,
    prometheus_duration,
    rules_path,
    write_yaml,
)
from driftloop.monitoring.export import write_textfile
from driftloop.monitoring.receiver import (
    TOKEN_ENV,
    create_receiver_app,
    ensure_webhook_token,
    incidents_path,
    receiver_token,
    webhook_token_path,
)
from tests.helpers import free_port, make_config, wait_for_http

TOKEN = "s3cret-token"
RETRAIN = "DriftloopRetrainRecommended"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class RecordingStarter:
    """A fake retraining starter: records the labels it was called with, or fails while `failing` is set."""

    def __init__(self) -> None:
        self.calls: list[dict[str, str]] = []
        self.failing = False

    def __call__(self, labels: dict[str, str]) -> str:
        if self.failing:
            raise RuntimeError("Prefect API unreachable")
        self.calls.append(labels)
        return f"retrain-{len(self.calls)}"


def alert(fingerprint: str, alertname: str = RETRAIN, model: str = "m", status: str = "firing",
          **labels: str) -> dict[str, Any]:
    """One alert as Alertmanager 0.25 sends it."""
    return {"status": status, "labels": {"alertname": alertname, "model": model, "severity": "critical", **labels},
            "annotations": {"summary": "retrain"}, "startsAt": "2026-11-02T10:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://prometheus/graph", "fingerprint": fingerprint}


def notification(*alerts: dict[str, Any], version: str = "4") -> dict[str, Any]:
    """A webhook notification carrying `alerts`."""
    return {"version": version, "groupKey": '{}:{alertname="x"}', "truncatedAlerts": 0, "status": "firing",
            "receiver": "driftloop-retrain", "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
            "externalURL": "http://alertmanager:9093", "alerts": list(alerts)}


@pytest.fixture
def starter() -> RecordingStarter:
    return RecordingStarter()


@pytest.fixture
def client(config: Config, starter: RecordingStarter, tmp_path: Path) -> TestClient:
    """A receiver on the test config with a private metrics dir."""
    return TestClient(create_receiver_app(config, starter, TOKEN, metrics_dir=tmp_path / "metrics"))


def post(client: TestClient, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    return client.post("/alerts", json=body, headers=AUTH if headers is None else headers)


def counters(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics answer by (name, sorted labels)."""
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


# ---------------------------------------------------------------- webhook decisions


def test_healthz(client: TestClient):
    assert client.get("/healthz").json() == {"status": "ok"}


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                                     {"Authorization": f"Basic {TOKEN}"}])
def test_missing_or_wrong_token_is_401_and_starts_nothing(client: TestClient, starter: RecordingStarter, headers):
    answer = post(client, notification(alert("a1")), headers)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == "Bearer"
    assert starter.calls == []
    assert counters(client.get("/metrics").text)[(WEBHOOK_UNAUTHORIZED, ())] == 1


def test_firing_retrain_alert_starts_once_per_incident(client: TestClient, starter: RecordingStarter):
    first = post(client, notification(alert("a1")))
    assert first.status_code == 200, first.text
    assert [entry["fingerprint"] for entry in first.json()["started"]] == ["a1"]
    assert first.json()["started"][0]["run"] == "retrain-1"
    assert starter.calls[0]["alertname"] == RETRAIN and starter.calls[0]["model"] == "m"
    # Alertmanager repeats the firing alert every repeat_interval: within the cooldown it starts nothing.
    again = post(client, notification(alert("a1")))
    assert again.status_code == 200
    assert again.json()["started"] == []
    assert again.json()["ignored"][0]["reason"].startswith("cooldown: this incident started retrain-1")
    assert len(starter.calls) == 1
    samples = counters(client.get("/metrics").text)
    assert samples[(RETRAIN_TRIGGERS, (("outcome", "started"), ("source", "alertmanager")))] == 1
    assert samples[(RETRAIN_TRIGGERS, (("outcome", "cooldown"), ("source", "alertmanager")))] == 1
    assert samples[(ALERTS_RECEIVED, (("alertname", RETRAIN), ("status", "firing")))] == 2


def test_after_the_cooldown_the_incident_starts_again(config: Config, starter: RecordingStarter, tmp_path: Path,
                                                      monkeypatch):
    clock = [1_000_000.0]
    monkeypatch.setattr(receiver, "_now", lambda: clock[0])
    client = TestClient(create_receiver_app(config, starter, TOKEN, metrics_dir=tmp_path))
    post(client, notification(alert("a1")))
    clock[0] += config.alerts.cooldown_s - 1
    assert post(client, notification(alert("a1"))).json()["started"] == []
    clock[0] += 1
    assert [entry["run"] for entry in post(client, notification(alert("a1"))).json()["started"]] == ["retrain-2"]


def test_zero_cooldown_starts_every_time(tmp_path: Path, starter: RecordingStarter):
    config = make_config(tmp_path / "state", alerts={"cooldown_s": 0})
    client = TestClient(create_receiver_app(config, starter, TOKEN, metrics_dir=tmp_path))
    for _ in range(2):
        post(client, notification(alert("a1")))
    assert len(starter.calls) == 2


def test_one_start_per_model_in_a_notification(client: TestClient, starter: RecordingStarter):
    answer = post(client, notification(alert("a1", instance="x:1"), alert("a2", instance="x:2"),
                                       alert("b1", model="other")))
    assert answer.status_code == 200
    assert sorted(call["model"] for call in starter.calls) == ["m", "other"]
    ignored = answer.json()["ignored"]
    assert [entry["fingerprint"] for entry in ignored] == ["a2"]
    assert ignored[0]["reason"].startswith("duplicate: alert a1")
    # The covered fingerprint is part of the incident: its repeat starts nothing either.
    assert post(client, notification(alert("a2", instance="x:2"))).json()["started"] == []
    assert len(starter.calls) == 2


def test_resolved_and_other_alerts_are_acknowledged_and_ignored(client: TestClient, starter: RecordingStarter):
    answer = post(client, notification(alert("a1", status="resolved"), alert("d1", alertname="DriftloopDriftDetected")))
    assert answer.status_code == 200
    assert answer.json()["started"] == []
    assert [entry["reason"] for entry in answer.json()["ignored"]] == ["resolved", "not in alerts.retrain_alerts"]
    assert starter.calls == []
    samples = counters(client.get("/metrics").text)
    assert samples[(ALERTS_RECEIVED, (("alertname", RETRAIN), ("status", "resolved")))] == 1
    assert samples[(ALERTS_RECEIVED, (("alertname", "DriftloopDriftDetected"), ("status", "firing")))] == 1


def test_configured_retrain_alerts_are_the_ones_that_start(tmp_path: Path, starter: RecordingStarter):
    config = make_config(tmp_path / "state", alerts={"retrain_alerts": ["DriftloopPerformanceDrop"]})
    client = TestClient(create_receiver_app(config, starter, TOKEN, metrics_dir=tmp_path))
    post(client, notification(alert("a1"), alert("p1", alertname="DriftloopPerformanceDrop", model="n")))
    assert [call["alertname"] for call in starter.calls] == ["DriftloopPerformanceDrop"]


@pytest.mark.parametrize(("body", "status", "words"), [
    (b"{not json", 400, "not JSON"),
    (b"[]", 422, "JSON object"),
    (json.dumps(notification(alert("a1"), version="3")).encode(), 422, "version '3'"),
    (json.dumps({k: v for k, v in notification(alert("a1")).items() if k != "alerts"}).encode(), 422, "alerts"),
    (json.dumps(notification({k: v for k, v in alert("a1").items() if k != "fingerprint"})).encode(), 422,
     "alerts.0.fingerprint"),
    (json.dumps(notification(dict(alert("a1"), status="pending"))).encode(), 422, "alerts.0.status"),
])
def test_malformed_payload_is_4xx_naming_the_problem(client: TestClient, starter: RecordingStarter, body: bytes,
                                                     status: int, words: str):
    answer = client.post("/alerts", content=body, headers={**AUTH, "Content-Type": "application/json"})
    assert answer.status_code == status
    assert words in answer.json()["detail"]
    assert starter.calls == []


def test_failed_start_is_502_and_not_recorded(client: TestClient, starter: RecordingStarter):
    starter.failing = True
    answer = post(client, notification(alert("a1")))
    assert answer.status_code == 502
    assert "Prefect API unreachable" in answer.json()["detail"]
    # Alertmanager retries the notification: now the start works and is recorded.
    starter.failing = False
    assert [entry["fingerprint"] for entry in post(client, notification(alert("a1"))).json()["started"]] == ["a1"]
    samples = counters(client.get("/metrics").text)
    assert samples[(RETRAIN_TRIGGERS, (("outcome", "failed"), ("source", "alertmanager")))] == 1
    assert samples[(RETRAIN_TRIGGERS, (("outcome", "started"), ("source", "alertmanager")))] == 1


def test_a_failure_keeps_the_other_models_started(config: Config, tmp_path: Path):
    calls: list[str] = []

    def starts_m_only(labels: dict[str, str]) -> str:
        if labels["model"] != "m":
            raise RuntimeError(f"no deployment for {labels['model']}")
        calls.append(labels["model"])
        return "retrain-m"

    client = TestClient(create_receiver_app(config, starts_m_only, TOKEN, metrics_dir=tmp_path))
    answer = post(client, notification(alert("b1", model="other"), alert("a1")))
    assert answer.status_code == 502
    assert "no deployment for other" in answer.json()["detail"]
    assert [entry["fingerprint"] for entry in answer.json()["started"]] == ["a1"]
    # Alertmanager's retry starts model m no second time.
    post(client, notification(alert("b1", model="other"), alert("a1")))
    assert calls == ["m"]
    assert set(json.loads(incidents_path(config).read_text())) == {"a1"}


def test_incident_memory_survives_a_restart(config: Config, starter: RecordingStarter, tmp_path: Path):
    post(TestClient(create_receiver_app(config, starter, TOKEN, metrics_dir=tmp_path)), notification(alert("a1")))
    saved = json.loads(incidents_path(config).read_text())
    assert saved["a1"]["run"] == "retrain-1" and saved["a1"]["model"] == "m"
    restarted = TestClient(create_receiver_app(config, starter, TOKEN, metrics_dir=tmp_path))
    assert post(restarted, notification(alert("a1"))).json()["started"] == []
    assert len(starter.calls) == 1


def test_unreadable_incident_memory_is_read_as_empty(config: Config, client: TestClient, starter: RecordingStarter):
    path = incidents_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{half a file")
    assert post(client, notification(alert("a1"))).status_code == 200
    assert len(starter.calls) == 1
    assert "a1" in json.loads(path.read_text())


# ---------------------------------------------------------------- /metrics


def write_textfiles(folder: Path) -> None:
    """The monitor's and the training run's textfiles, as they write them."""
    monitor = monitor_metrics()
    monitor.retrain_recommended.labels(model="m").set(1)
    monitor.drift_share.labels(model="m").set(0.25)
    write_textfile(monitor, folder / "monitor.prom")
    training = training_metrics()
    training.loss.labels(model="m").set(0.5)
    write_textfile(training, folder / "training.prom")


@pytest.mark.slow
def test_metrics_serves_the_textfiles_and_the_receivers_counters(client: TestClient, tmp_path: Path):
    write_textfiles(tmp_path / "metrics")
    (tmp_path / "metrics" / "notes.txt").write_text("not a metrics file")
    post(client, notification(alert("a1")))
    answer = client.get("/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    samples = counters(answer.text)
    assert samples[(RETRAIN_RECOMMENDED, (("model", "m"),))] == 1
    assert samples[(TRAINING_LOSS, (("model", "m"),))] == 0.5
    assert samples[(RETRAIN_TRIGGERS, (("outcome", "started"), ("source", "alertmanager")))] == 1
    # Each metric family exactly once: two HELP lines for one name would make Prometheus drop the scrape.
    helps = [line.split()[2] for line in answer.text.splitlines() if line.startswith("# HELP")]
    assert len(helps) == len(set(helps))
    if shutil.which("promtool"):
        done = subprocess.run(["promtool", "check", "metrics"], input=answer.text, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


def test_metrics_reads_files_fresh_and_skips_broken_ones(client: TestClient, tmp_path: Path):
    assert RETRAIN_RECOMMENDED not in client.get("/metrics").text  # no metrics dir yet: the receiver's own only
    write_textfiles(tmp_path / "metrics")
    assert RETRAIN_RECOMMENDED in client.get("/metrics").text
    (tmp_path / "metrics" / "broken.prom").write_text("this is { not metrics\n")
    (tmp_path / "metrics" / "copy.prom").write_text((tmp_path / "metrics" / "monitor.prom").read_text())
    text = client.get("/metrics").text
    assert "not metrics" not in text
    assert text.count(f"# HELP {RETRAIN_RECOMMENDED} ") == 1
    assert TRAINING_LOSS in text


# ---------------------------------------------------------------- the token


def test_token_path_defaults_under_the_state_dir(config: Config, tmp_path: Path):
    assert webhook_token_path(config) == (tmp_path / "state" / "stack" / "webhook.token").resolve()
    chosen = make_config(tmp_path / "state", alerts={"token_file": str(tmp_path / "elsewhere" / "t")})
    assert webhook_token_path(chosen) == tmp_path / "elsewhere" / "t"


def test_receiver_token_names_both_ways_when_neither_exists(config: Config, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(ConfigError, match=f"set {TOKEN_ENV} or run `driftloop stack up`, which creates .*webhook"):
        receiver_token(config)
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    assert receiver_token(config) == "from-env"


def test_ensure_webhook_token_creates_a_private_file_and_keeps_it(config: Config, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    path = ensure_webhook_token(config)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = path.read_text()
    assert len(token) >= 32 and token == token.strip()
    assert ensure_webhook_token(config) == path and path.read_text() == token
    assert receiver_token(config) == token
    path.write_text("chosen-by-hand\n")
    ensure_webhook_token(config)
    assert receiver_token(config) == "chosen-by-hand"


# ---------------------------------------------------------------- rendered configs


def test_durations_in_prometheus_syntax():
    assert [prometheus_duration(s) for s in (15, 15.0, 0.5, 0, 90, 0.0001)] == ["15s", "15s", "500ms", "0s", "90s",
                                                                                 "1ms"]


def render_configs(config: Config, folder: Path, receiver_address: str, alertmanager_address: str,
                   token_file: Path) -> tuple[Path, Path]:
    """prometheus.yml scraping the receiver (with the shipped rules) and alertmanager.yml posting to it."""
    prometheus = write_yaml(prometheus_config(config, {"driftloop-monitor": receiver_address}, alertmanager_address,
                                              [rules_path()]), folder / "prometheus.yml")
    alertmanager = write_yaml(alertmanager_config(config, f"http://{receiver_address}/alerts", token_file),
                              folder / "alertmanager.yml")
    return prometheus, alertmanager


def test_rendered_configs_have_the_settings(config: Config, tmp_path: Path):
    prometheus, alertmanager = render_configs(config, tmp_path, "127.0.0.1:9108", "127.0.0.1:9093",
                                              tmp_path / "token")
    import yaml

    scraped = yaml.safe_load(prometheus.read_text())
    assert scraped["global"] == {"scrape_interval": "15s", "evaluation_interval": "15s"}
    assert scraped["rule_files"] == [str(rules_path())]
    routed = yaml.safe_load(alertmanager.read_text())
    assert routed["route"]["group_by"] == ["alertname", "model"]
    assert routed["route"]["routes"][0]["matchers"] == [f'alertname=~"{RETRAIN}"']
    webhook = routed["receivers"][1]["webhook_configs"][0]
    assert webhook["url"] == "http://127.0.0.1:9108/alerts" and webhook["send_resolved"] is False
    assert webhook["http_config"]["authorization"] == {"type": "Bearer", "credentials_file": str(tmp_path / "token")}


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian package prometheus) is not installed")
def test_promtool_accepts_the_rendered_prometheus_config(config: Config, tmp_path: Path):
    prometheus, _ = render_configs(config, tmp_path, "127.0.0.1:9108", "127.0.0.1:9093", tmp_path / "token")
    done = subprocess.run(["promtool", "check", "config", str(prometheus)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 1 rule files found" in done.stdout and done.stdout.count("SUCCESS") >= 3


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("amtool") is None, reason="amtool (Debian package prometheus-alertmanager) is absent")
def test_amtool_accepts_the_rendered_alertmanager_config_and_routes_it(tmp_path: Path):
    config = make_config(tmp_path / "state", alerts={"retrain_alerts": [RETRAIN, "Odd.Name\"x"]})
    token = tmp_path / "token"
    token.write_text(TOKEN)
    _, alertmanager = render_configs(config, tmp_path, "127.0.0.1:9108", "127.0.0.1:9093", token)
    done = subprocess.run(["amtool", "check-config", str(alertmanager)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    expected = {f"alertname={RETRAIN}": "driftloop-retrain", 'alertname="Odd.Name\\"x"': "driftloop-retrain",
                "alertname=OddXName": "default", "alertname=DriftloopDriftDetected": "default"}
    for labels, receiver_name in expected.items():
        routed = subprocess.run(["amtool", "config", "routes", "test", "--config.file", str(alertmanager), labels],
                                capture_output=True, text=True, timeout=60)
        assert routed.stdout.strip() == receiver_name, (labels, routed.stdout + routed.stderr)


# ---------------------------------------------------------------- the whole path, real servers


class BackgroundReceiver:
    """The receiver app under uvicorn in a thread of the test process."""

    def __init__(self, app, port: int) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> BackgroundReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def start(command: list[str], log: Path) -> subprocess.Popen:
    """A server process with its output in `log` (shown when the test fails)."""
    with log.open("wb") as handle:
        return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def received(base: str) -> float:
    """How many retrain alerts the receiver got so far (its own counter)."""
    samples = counters(httpx.get(f"{base}/metrics", timeout=5).text)
    return samples.get((ALERTS_RECEIVED, (("alertname", RETRAIN), ("status", "firing"))), 0.0)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("prometheus") is None or shutil.which("prometheus-alertmanager") is None,
                    reason="needs prometheus and prometheus-alertmanager (Debian packages)")
def test_real_prometheus_and_alertmanager_start_one_retraining(tmp_path: Path, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    # Fast intervals; Alertmanager repeats the notification every 2 s, so the cooldown is exercised for real.
    config = make_config(tmp_path / "state", stack={"scrape_interval_s": 1, "evaluation_interval_s": 1},
                         alerts={"group_wait_s": 0, "group_interval_s": 1, "repeat_interval_s": 2})
    metrics = monitor_metrics()
    metrics.retrain_recommended.labels(model="m").set(1)
    metrics.retrain_recommended.labels(model="fine").set(0)
    write_textfile(metrics, tmp_path / "metrics" / "monitor.prom")
    token_file = ensure_webhook_token(config)
    starter = RecordingStarter()
    app = create_receiver_app(config, starter, receiver_token(config), metrics_dir=tmp_path / "metrics")
    receiver_port, prometheus_port, alertmanager_port = free_port(), free_port(), free_port()
    base = f"http://127.0.0.1:{receiver_port}"
    prometheus_yml, alertmanager_yml = render_configs(config, tmp_path, f"127.0.0.1:{receiver_port}",
                                                      f"127.0.0.1:{alertmanager_port}", token_file)
    processes: list[subprocess.Popen] = []
    with BackgroundReceiver(app, receiver_port):
        try:
            processes.append(start(["prometheus-alertmanager", f"--config.file={alertmanager_yml}",
                                    f"--storage.path={tmp_path / 'am'}", "--cluster.listen-address=",
                                    f"--web.listen-address=127.0.0.1:{alertmanager_port}"], tmp_path / "am.log"))
            processes.append(start(["prometheus", f"--config.file={prometheus_yml}",
                                    f"--storage.tsdb.path={tmp_path / 'prom'}",
                                    f"--web.listen-address=127.0.0.1:{prometheus_port}"], tmp_path / "prom.log"))
            wait_for_http(f"{base}/healthz")
            wait_for_http(f"http://127.0.0.1:{alertmanager_port}/-/ready")
            wait_for_http(f"http://127.0.0.1:{prometheus_port}/-/ready")
            deadline = time.monotonic() + 60
            while not starter.calls and time.monotonic() < deadline:
                time.sleep(0.5)
            logs = "\n".join((tmp_path / name).read_text(errors="replace")[-3000:] for name in ("am.log", "prom.log"))
            assert starter.calls, f"no retraining started within 60 s\n{logs}"
            # Wait for Alertmanager's repeat of the same incident: acknowledged, not started again.
            deadline = time.monotonic() + 30
            while received(base) < 2 and time.monotonic() < deadline:
                time.sleep(0.5)
            assert received(base) >= 2, "Alertmanager did not repeat the notification"
            assert len(starter.calls) == 1
            assert starter.calls[0]["alertname"] == RETRAIN and starter.calls[0]["model"] == "m"
            assert starter.calls[0]["action"] == "retrain"
            refused = httpx.post(f"{base}/alerts", json=notification(alert("x1")), timeout=5)
            assert refused.status_code == 401
            assert len(starter.calls) == 1
        finally:
            for process in processes:
                stop(process)
    assert os.path.exists(incidents_path(config))
