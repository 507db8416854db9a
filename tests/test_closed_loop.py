"""The closed loop on the real local stack: Prefect server, Prometheus, Alertmanager, the model server, the
receiver and the served deployments, all started by `driftloop stack up` as a user would.

Twice: on SQLite with the deployments served by their own process (the default), and scaled out (issue 16) on the
stack's PostgreSQL (Prefect, MLflow and the prediction log) with two model servers and a Prefect process worker
that runs every flow. One stack per variant (about a minute to start); the tests run in file order and share it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pandas as pd
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from driftloop.config import Config
from driftloop.dashboards.build import dashboard_json
from driftloop.dashboards.queries import query_all
from driftloop.flows.deployments import MONITOR, MONITOR_FLOW, RETRAIN_FLOW, RETRAIN_ON_DRIFT, SCHEDULED_RETRAINING
from driftloop.flows.monitoring import DRIFT_EVENT
from driftloop.metrics import RETRAIN_RECOMMENDED, WINDOW_PERFORMANCE
from driftloop.serving.admin import labels_auth
from driftloop.stack.process import port_free
from driftloop.state import evidently_workspace
from tests.helpers import chromium, console_errors, make_config, page_text

pytestmark = [pytest.mark.slow, pytest.mark.stack]

FINAL = {"COMPLETED", "CANCELLED", "FAILED", "CRASHED"}
EMIT = """
import sys
from pathlib import Path
from driftloop.env import prepare_environment
prepare_environment(Path(sys.argv[1]))
from prefect.events import emit_event
for index in range(3):
    emit_event(sys.argv[2], resource={"prefect.resource.id": sys.argv[3]}, payload={"window": f"test-{index}"})
"""


VARIANTS = {
    "sqlite": {},
    "postgres-worker": {"database": "postgres", "server_replicas": 2, "worker": True},
}


@dataclass
class Loop:
    """The running stack and where to reach it."""

    config: Config
    config_path: Path
    drifted: Path

    @property
    def scaled(self) -> bool:
        return self.config.stack.database == "postgres"

    @property
    def servers(self) -> list[int]:
        """Every replica's port."""
        return [self.config.serving.port + index for index in range(self.config.stack.server_replicas)]

    def url(self, port: int) -> str:
        return f"http://{self.config.stack.host}:{port}"

    @property
    def prefect(self) -> str:
        return self.url(self.config.stack.prefect_port) + "/api"


def driftloop(*args: str, config_path: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the real CLI as a user would."""
    return subprocess.run([sys.executable, "-m", "driftloop.cli", *args, "--config", str(config_path)],
                          capture_output=True, text=True, timeout=timeout)


def must(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


# Listening ports below the kernel's ephemeral range (32768-60999 here): a free ephemeral port chosen now may be
# any process's outgoing connection by the time the stack starts, minutes of training later.
QUIET_PORTS = range(20000, 32000)


def quiet_port(taken: set[int]) -> int:
    """A port below the ephemeral range that is free now (and its successor, for a second replica)."""
    while True:
        port = random.choice(QUIET_PORTS)
        if port not in taken and port + 1 not in taken and port_free("127.0.0.1", port) \
                and port_free("127.0.0.1", port + 1):
            taken.update({port, port + 1})
            return port


def loop_config(state_dir: Path, **scale: object) -> Config:
    """Small model, short windows, fast scrapes and alert routing, free ports, schedules that never fire in a test;
    `scale`: the stack's database, replicas and worker."""
    taken: set[int] = set()
    server = quiet_port(taken)  # a second replica listens on the next port
    return make_config(
        state_dir,
        model={"hidden": 16, "blocks": 2},
        # retrain_on_drift: the deployed monitor's drifted windows emit the event (Jan vs Jul weather drifts)
        monitoring={"window": 500, "min_labelled_rows": 100, "calibration_draws": 500, "retrain_on_drift": True},
        orchestration={"monitor_cron": "0 0 1 1 *", "retrain_cron": "0 0 1 1 *"},
        retraining={"data": "recent", "max_rows": 1000},  # the two latest windows of 500 before the gate
        serving={"port": server, "reload_interval_s": 1},
        stack={**{key: quiet_port(taken) for key in ("prefect_port", "prometheus_port", "alertmanager_port",
                                                     "receiver_port", "mlflow_port", "evidently_port",
                                                     "postgres_port")},
               "scrape_interval_s": 1, "evaluation_interval_s": 1, **scale},
        alerts={"retrain_alerts": ["DriftloopDriftDetected", "DriftloopRetrainRecommended"], "group_wait_s": 1,
                "group_interval_s": 1},
    )


def send_traffic(loop: Loop, frame: pd.DataFrame) -> None:
    """Predictions through the model servers (taking turns when there are several), then their labels, as clients
    would send them."""
    from driftloop.flows.demo import request_rows

    clients = [httpx.Client(base_url=loop.url(port), timeout=60) for port in loop.servers]
    try:
        ids: list[int] = []
        rows = request_rows(loop.config, frame)
        for turn, start in enumerate(range(0, len(rows), 250)):
            response = clients[turn % len(clients)].post("/predict", json={"rows": rows[start:start + 250]})
            response.raise_for_status()
            ids += response.json()["prediction_ids"]
        labels = [{"prediction_id": i, "label": y} for i, y in zip(ids, frame[loop.config.data.target], strict=True)]
        clients[-1].post("/labels", json={"labels": labels}, headers=labels_auth(loop.config)).raise_for_status()
    finally:
        for client in clients:
            client.close()


@pytest.fixture(scope="module", params=list(VARIANTS))
def loop(request: pytest.FixtureRequest, flights_jan: pd.DataFrame,
         flights_jul: pd.DataFrame) -> Iterator[Loop]:
    """Prefect server (and its database) → a champion trained through it → the rest of the stack → labelled
    traffic."""
    # Outside pytest's tmp root: PostgreSQL runs as its own user and must pass through the folder's parents, and
    # every pytest session that starts on the machine makes /tmp/pytest-of-<user> private again.
    root = Path(tempfile.mkdtemp(prefix=f"driftloop-loop-{request.param}-"))
    config = loop_config(root / "state", **VARIANTS[request.param])
    config_path = root / "config.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    train, drifted = root / "jan.parquet", root / "jul.parquet"
    flights_jan.to_parquet(train, index=False)
    flights_jul.head(500).to_parquet(drifted, index=False)
    loop = Loop(config, config_path, drifted)
    try:
        first = ["--only", "postgres", "--only", "mlflow"] if loop.scaled else []  # MLflow's store is PostgreSQL
        must(driftloop("stack", "up", *first, "--only", "prefect", config_path=config_path))
        must(driftloop("train", "--data", str(train), config_path=config_path))
        must(driftloop("stack", "up", config_path=config_path))
        send_traffic(loop, flights_jul)
        yield loop
    finally:
        driftloop("stack", "down", config_path=config_path)
        shutil.rmtree(root / "state" / "stack" / "postgres", ignore_errors=True)  # the screenshots stay


def api(loop: Loop, method: str, path: str, body: dict | None = None) -> object:
    response = httpx.request(method, loop.prefect + path, json=body, timeout=10)
    response.raise_for_status()
    return response.json()


def deployment(loop: Loop, flow: str, name: str) -> dict:
    return api(loop, "GET", f"/deployments/name/{flow}/{name}")


def runs_of(loop: Loop, deployment_id: str) -> list[dict]:
    return api(loop, "POST", "/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [deployment_id]}}})


def wait_until(condition, timeout_s: float, what: str):  # noqa: ANN001, ANN201 - a predicate and its value
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(1)
    pytest.fail(f"{what} within {timeout_s:g} s")


def model_versions(config: Config) -> list[str]:
    from driftloop.registry.store import mlflow_client

    return sorted(v.version for v in mlflow_client(config).search_model_versions(f"name='{config.model.name}'"))


def test_stack_status_says_every_part_is_up(loop: Loop) -> None:
    status = json.loads(must(driftloop("stack", "status", "--json", config_path=loop.config_path)).stdout)
    assert status["healthy"] is True
    names = ["prefect", "mlflow", "evidently", "prometheus", "alertmanager", "receiver", "server", "deployments"]
    if loop.scaled:
        names = ["postgres", *names[:-1], "server-2", "deployments", "worker"]
    assert {name: part["state"] for name, part in status["parts"].items()} == dict.fromkeys(names, "up")
    pages = {name: loop.url(port) + "/" for name, port in (
        ("prefect", loop.config.stack.prefect_port), ("mlflow", loop.config.stack.mlflow_port),
        ("evidently", loop.config.stack.evidently_port), ("prometheus", loop.config.stack.prometheus_port),
        ("alertmanager", loop.config.stack.alertmanager_port))}
    if loop.scaled:
        pages["worker"] = f"{loop.url(loop.config.stack.prefect_port)}/work-pools/work-pool/driftloop"
    assert {name: part["ui"] for name, part in status["parts"].items() if part["ui"]} == pages
    http = {name: part for name, part in status["parts"].items() if name != "postgres"}
    assert all(part["url"].startswith("http://127.0.0.1:") for part in http.values())
    if loop.scaled:
        assert [status["parts"][name]["url"] for name in ("server", "server-2")] == [loop.url(p) for p in loop.servers]
        url = status["parts"]["postgres"]["url"]
        assert url.startswith("postgresql://driftloop:")
        assert url.endswith(f"@127.0.0.1:{loop.config.stack.postgres_port}/driftloop")


def test_prefect_mlflow_and_the_log_keep_their_data_in_postgresql(loop: Loop) -> None:
    if not loop.scaled:
        pytest.skip("the SQLite stack has no PostgreSQL")
    import psycopg

    url = json.loads(must(driftloop("stack", "status", "--json", config_path=loop.config_path)).stdout)["parts"][
        "postgres"]["url"]
    base = url.rsplit("/", 1)[0]
    with psycopg.connect(f"{base}/driftloop") as log:
        # 2,000 predictions sent to the two servers in turns land in the one table, with every label
        assert log.execute("SELECT count(*), count(DISTINCT prediction_id) FROM predictions").fetchone() == \
            (2000, 2000)
    with psycopg.connect(f"{base}/mlflow") as mlflow:
        assert mlflow.execute("SELECT count(*) FROM registered_models WHERE name = %s",
                              (loop.config.model.name,)).fetchone() == (1,)
    with psycopg.connect(f"{base}/prefect") as prefect:
        assert prefect.execute("SELECT count(*) FROM deployment").fetchone()[0] == 3
    for store in ("predictions.db", "mlflow.db"):
        assert not (loop.config.state_dir / store).exists(), f"{store} was written beside PostgreSQL"
    assert oct((loop.config.state_dir / "stack" / "postgres" / "password").stat().st_mode & 0o777) == "0o600"


def ran_on_worker(loop: Loop, run: dict) -> None:
    """On the scaled stack: the flow run went to the worker's pool and the worker ran it."""
    if not loop.scaled:
        return
    assert run["work_pool_name"] == loop.config.stack.worker_pool
    log = (loop.config.state_dir / "stack" / "logs" / "worker.log").read_text()
    assert f"submitting flow run '{run['id']}'" in log


def test_deployments_are_registered_with_schedules_trigger_and_limit(loop: Loop) -> None:
    monitor = deployment(loop, MONITOR_FLOW, MONITOR)
    weekly = deployment(loop, RETRAIN_FLOW, SCHEDULED_RETRAINING)
    on_drift = deployment(loop, RETRAIN_FLOW, RETRAIN_ON_DRIFT)
    assert [s["schedule"]["cron"] for s in monitor["schedules"]] == [loop.config.orchestration.monitor_cron]
    assert [s["schedule"]["cron"] for s in weekly["schedules"]] == [loop.config.orchestration.retrain_cron]
    assert on_drift["schedules"] == []
    for limited in (weekly, on_drift):
        assert limited["global_concurrency_limit"]["limit"] == 1
        assert limited["concurrency_options"]["collision_strategy"] == "CANCEL_NEW"
    automations = api(loop, "POST", "/automations/filter", {})
    triggers = [a for a in automations if DRIFT_EVENT in a["trigger"].get("expect", [])]
    assert len(triggers) == 1
    (action,) = triggers[0]["actions"]
    assert action["type"] == "run-deployment" and action["deployment_id"] == on_drift["id"]


def test_three_drift_events_retrain_once_and_cancel_the_others(loop: Loop) -> None:
    on_drift = deployment(loop, RETRAIN_FLOW, RETRAIN_ON_DRIFT)
    before = model_versions(loop.config)
    resource = f"driftloop.model.{loop.config.model.name}"
    subprocess.run([sys.executable, "-c", EMIT, str(loop.config.state_dir), DRIFT_EVENT, resource], check=True,
                   timeout=60)

    def all_finished() -> list[dict] | None:
        runs = runs_of(loop, on_drift["id"])
        return runs if len(runs) >= 3 and all(r["state_type"] in FINAL for r in runs) else None

    runs = wait_until(all_finished, 300, "three retrain-on-drift runs did not all finish")
    assert sorted(r["state_type"] for r in runs) == ["CANCELLED", "CANCELLED", "COMPLETED"]
    ran_on_worker(loop, next(r for r in runs if r["state_type"] == "COMPLETED"))  # started by the automation
    after = model_versions(loop.config)
    assert len(after) == len(before) + 1, f"versions before {before}, after {after}"


def test_a_drifted_window_fires_the_alert_and_the_webhook_starts_a_retraining(loop: Loop) -> None:
    on_drift = deployment(loop, RETRAIN_FLOW, RETRAIN_ON_DRIFT)
    known = {r["id"] for r in runs_of(loop, on_drift["id"])}
    versions = model_versions(loop.config)
    checked = json.loads(must(driftloop("monitor", "--current", str(loop.drifted), "--json",
                                        config_path=loop.config_path)).stdout)
    assert checked["drift_detected"] is True

    def new_alert_runs() -> list[dict]:
        return [r for r in runs_of(loop, on_drift["id"]) if r["id"] not in known and "alertmanager" in r["tags"]]

    (run,) = wait_until(new_alert_runs, 120, "no retraining run started by Alertmanager's webhook")
    firing = httpx.get(loop.url(loop.config.stack.prometheus_port) + "/api/v1/alerts", timeout=10).json()
    firing = firing["data"]["alerts"]
    assert any(a["labels"]["alertname"] == "DriftloopDriftDetected" and a["state"] == "firing" for a in firing)
    assert "DriftloopDriftDetected" in run["parameters"]["reason"]
    finished = wait_until(lambda: next((r for r in runs_of(loop, on_drift["id"]) if r["id"] == run["id"]
                                        and r["state_type"] in FINAL), None), 300, "the alert's run did not finish")
    assert finished["state_type"] == "COMPLETED"
    # No labels arrived since the event-started retraining: the same incident reported again trains nothing.
    assert model_versions(loop.config) == versions
    time.sleep(3)  # Alertmanager repeats the group every group_interval: the incident must not start another run
    assert len(new_alert_runs()) == 1


def test_the_webhook_refuses_requests_without_the_token(loop: Loop) -> None:
    on_drift = deployment(loop, RETRAIN_FLOW, RETRAIN_ON_DRIFT)
    before = len(runs_of(loop, on_drift["id"]))
    alert = {"version": "4", "groupKey": "k", "status": "firing", "receiver": "driftloop-retrain",
             "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://x",
             "alerts": [{"status": "firing", "labels": {"alertname": "DriftloopRetrainRecommended", "model": "x"},
                         "annotations": {}, "startsAt": "2026-11-27T00:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
                         "generatorURL": "http://x", "fingerprint": "f00d"}]}
    url = loop.url(loop.config.stack.receiver_port) + "/alerts"
    assert httpx.post(url, json=alert, timeout=10).status_code == 401
    assert httpx.post(url, json=alert, headers={"Authorization": "Bearer wrong"}, timeout=10).status_code == 401
    time.sleep(2)
    assert len(runs_of(loop, on_drift["id"])) == before


def test_the_deployed_monitor_checks_each_complete_window_and_its_event_starts_a_retraining(loop: Loop) -> None:
    monitor = deployment(loop, MONITOR_FLOW, MONITOR)
    on_drift = deployment(loop, RETRAIN_FLOW, RETRAIN_ON_DRIFT)
    known = {r["id"] for r in runs_of(loop, on_drift["id"])}
    run = api(loop, "POST", f"/deployments/{monitor['id']}/create_flow_run", {})
    finished = wait_until(lambda: next((r for r in runs_of(loop, monitor["id"]) if r["id"] == run["id"]
                                        and r["state_type"] in FINAL), None), 300, "the monitor run did not finish")
    assert finished["state_type"] == "COMPLETED"
    ran_on_worker(loop, finished)
    cursor = json.loads((loop.config.state_dir / "monitor" / "cursor.json").read_text())
    # 2,000 logged rows, windows of 500; on the scaled stack the two servers logged every other 250 of them
    assert cursor["last_id"] == 2000 and cursor["policy"]["windows"] == 4
    text = (loop.config.state_dir / "metrics" / "monitor.prom").read_text()
    samples = {(s.name, s.labels.get("metric")) for family in text_string_to_metric_families(text)
               for s in family.samples}
    assert (WINDOW_PERFORMANCE, "auc") in samples and (RETRAIN_RECOMMENDED, None) in samples
    # the policy's verdict went out as driftloop.drift.detected, and the automation started retrain-on-drift
    # (its gauge also fires DriftloopRetrainRecommended: Alertmanager's runs carry the tag "alertmanager")
    started = wait_until(lambda: [r for r in runs_of(loop, on_drift["id"])
                                  if r["id"] not in known and "alertmanager" not in r["tags"]], 60,
                         "the monitor's drift event started no retrain-on-drift run")
    assert all(r["parameters"]["reason"].startswith("drift event: window ids-") for r in started)


def test_every_dashboard_query_returns_data(loop: Loop) -> None:
    prometheus = loop.url(loop.config.stack.prometheus_port)
    counts = query_all(prometheus, dashboard_json(), values={"__rate_interval": "1m"})
    empty = [query for query, series in counts.items() if series == 0]
    assert not empty, f"{len(empty)} of {len(counts)} panel queries returned no data: {empty}"


# ---------------------------------------------------------------------------------------------- the pages in a browser
# After the retrainings and the deployed monitor above: every page a user is told to open, in headless Chromium.


@pytest.fixture(scope="module")
def browser(loop: Loop, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """One headless Chromium for the page tests, with a fresh profile."""
    driver = chromium(tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield driver
    finally:
        driver.quit()


def look(loop: Loop, driver: object, name: str) -> None:
    """Save a screenshot for a person (under the test's state dir, never committed), then fail on console
    errors of everything opened since the last look."""
    folder = loop.config.state_dir / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(folder / f"{name}.png"))
    errors = console_errors(driver)
    assert not errors, f"{name}: browser console errors: {errors}"


def model_project(loop: Loop) -> tuple[object, object]:
    """The monitor's Evidently workspace and the model's project in it."""
    from evidently.ui.workspace import Workspace

    workspace = Workspace(str(evidently_workspace(loop.config)))
    (project,) = workspace.search_project(loop.config.model.name)
    return workspace, project


def test_prefect_ui_lists_the_deployments_the_automation_and_a_completed_retraining(loop: Loop,
                                                                                   browser: object) -> None:
    prefect = loop.url(loop.config.stack.prefect_port)
    page_text(browser, f"{prefect}/deployments", [MONITOR, SCHEDULED_RETRAINING, RETRAIN_ON_DRIFT])
    look(loop, browser, "prefect-deployments")
    page_text(browser, f"{prefect}/automations", [f"retrain {loop.config.model.name} on drift"])
    look(loop, browser, "prefect-automations")
    completed = api(loop, "POST", "/flow_runs/filter", {"flows": {"name": {"any_": ["retraining"]}},
                                                        "flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}})
    assert completed, "no completed retraining flow run"
    run = completed[0]
    page_text(browser, f"{prefect}/runs/flow-run/{run['id']}", [run["name"], "Completed", "retraining"])
    look(loop, browser, "prefect-retraining-run")


def test_mlflow_ui_shows_the_registered_model_and_its_champion(loop: Loop, browser: object) -> None:
    from driftloop.registry.store import alias_version

    mlflow = loop.url(loop.config.stack.mlflow_port)
    name = loop.config.model.name
    page_text(browser, f"{mlflow}/#/models", [name])
    look(loop, browser, "mlflow-models")
    champion = alias_version(loop.config, "champion")
    page_text(browser, f"{mlflow}/#/models/{name}", [name, "champion", f"Version {champion}"])
    look(loop, browser, "mlflow-model")


def test_a_model_version_links_its_validation_evidently_and_prefect_pages(loop: Loop, browser: object) -> None:
    from driftloop.flows.links import EVIDENTLY_TAG, PREFECT_TAG, VALIDATION_TAG
    from driftloop.registry.store import mlflow_client

    name, mlflow = loop.config.model.name, loop.url(loop.config.stack.mlflow_port)
    latest = max(model_versions(loop.config), key=int)  # retrained by a deployment, with the stack's MLflow up
    tags = mlflow_client(loop.config).get_model_version(name, latest).tags
    assert tags[VALIDATION_TAG].startswith(f"{mlflow}/#/experiments/")
    page_text(browser, f"{mlflow}/#/models/{name}/versions/{latest}",
              ["Validation report", "Evidently snapshots", "Prefect flow run"])
    look(loop, browser, "mlflow-version-links")
    browser.get(tags[VALIDATION_TAG])
    page_text(browser, tags[VALIDATION_TAG], ["validation"])
    look(loop, browser, "mlflow-validation-artifact")
    _, project = model_project(loop)
    assert tags[EVIDENTLY_TAG] == f"{loop.url(loop.config.stack.evidently_port)}/projects/{project.id}/reports"
    page_text(browser, tags[EVIDENTLY_TAG], [name])
    look(loop, browser, "evidently-from-mlflow")
    run_id = tags[PREFECT_TAG].rsplit("/", 1)[1]
    run = api(loop, "GET", f"/flow_runs/{run_id}")
    page_text(browser, tags[PREFECT_TAG], [run["name"]])
    look(loop, browser, "prefect-from-mlflow")


def test_evidently_ui_shows_one_snapshot_per_checked_window_and_the_panels(loop: Loop, browser: object) -> None:
    evidently = loop.url(loop.config.stack.evidently_port)
    workspace, project = model_project(loop)
    names = sorted(workspace.get_run(project.id, run).name for run in workspace.list_runs(project.id))
    cursor = json.loads((loop.config.state_dir / "monitor" / "cursor.json").read_text())
    assert len(names) == cursor["policy"]["windows"], f"snapshots {names}"
    page_text(browser, f"{evidently}/", [loop.config.model.name])
    look(loop, browser, "evidently-projects")
    page_text(browser, f"{evidently}/projects/{project.id}/reports", names)
    look(loop, browser, "evidently-snapshots")
    page_text(browser, f"{evidently}/projects/{project.id}", ["Drift share over time", "Per-column drift score",
                                                             "Share of drifted columns"])
    time.sleep(3)  # the panels' plots load after their titles
    look(loop, browser, "evidently-dashboard")


def test_summary_page_shows_its_plot(loop: Loop, browser: object) -> None:
    from driftloop.flows.summary import WindowRow, write_summary

    workspace, project = model_project(loop)
    snapshots = sorted((workspace.get_run(project.id, run) for run in workspace.list_runs(project.id)),
                       key=lambda snapshot: snapshot.timestamp)
    rows = [WindowRow(s.name, pd.Timestamp(s.timestamp), loop.config.monitoring.window, 0.0, False, None, "1", "", "")
            for s in snapshots]
    path, _ = write_summary(rows, loop.config.state_dir / "summary.html", loop.config)
    browser.get(path.as_uri())
    shown = browser.execute_script("return [...document.images].map(i => i.complete && i.naturalWidth)")
    assert shown and all(width and width > 100 for width in shown), f"the summary's plots did not load: {shown}"
    assert all(row.label in browser.find_element("tag name", "body").text for row in rows)
    look(loop, browser, "summary")


def test_killing_one_replica_under_load_loses_no_acknowledged_row(loop: Loop) -> None:
    if not loop.scaled:
        pytest.skip("one model server on the SQLite stack")
    import psycopg

    from driftloop.flows.demo import request_rows

    body = {"rows": request_rows(loop.config, pd.read_parquet(loop.drifted).head(20))}
    acknowledged: dict[int, list[int]] = {port: [] for port in loop.servers}
    failed: dict[int, int] = dict.fromkeys(loop.servers, 0)
    lock, stop = threading.Lock(), threading.Event()

    def client(port: int) -> None:
        with httpx.Client(base_url=loop.url(port), timeout=10) as http:
            while not stop.is_set():
                try:
                    response = http.post("/predict", json=body)
                    ids = response.json()["prediction_ids"] if response.status_code == 200 else None
                except (httpx.HTTPError, ValueError):
                    ids = None
                with lock:
                    if ids is None:
                        failed[port] += 1
                    else:
                        acknowledged[port] += ids
                if ids is None:
                    time.sleep(0.05)

    threads = [threading.Thread(target=client, args=(port,), daemon=True) for port in loop.servers for _ in range(2)]
    for thread in threads:
        thread.start()
    time.sleep(3)
    victim = json.loads((loop.config.state_dir / "stack" / "server-2.json").read_text())["pid"]
    os.kill(victim, signal.SIGKILL)
    with lock:
        before = len(acknowledged[loop.servers[0]])
    time.sleep(3)
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    first, second = loop.servers
    assert failed[first] == 0, "the surviving replica failed requests"
    assert len(acknowledged[first]) > before, "the surviving replica stopped answering"
    assert acknowledged[second] and failed[second] > 0  # it answered, then was killed
    sent = acknowledged[first] + acknowledged[second]
    status = json.loads(driftloop("stack", "status", "--json", config_path=loop.config_path).stdout)
    assert status["parts"]["server-2"]["state"] == "down" and status["parts"]["server"]["state"] == "up"
    assert status["healthy"] is False  # exit 1: a part is down
    url = status["parts"]["postgres"]["url"]
    with psycopg.connect(url) as log:
        logged = {row[0] for row in log.execute("SELECT prediction_id FROM predictions WHERE prediction_id = ANY(%s)",
                                                (sent,))}
    assert len(sent) == len(set(sent))
    assert logged == set(sent), f"{len(set(sent) - logged)} acknowledged rows are missing from the log"


def test_stack_down_stops_every_part(loop: Loop) -> None:
    must(driftloop("stack", "down", config_path=loop.config_path))
    status = json.loads(driftloop("stack", "status", "--json", config_path=loop.config_path).stdout)
    assert status["healthy"] is False
    assert {part["state"] for part in status["parts"].values()} == {"down"}
    with pytest.raises(httpx.HTTPError):
        httpx.get(loop.prefect + "/health", timeout=2)
