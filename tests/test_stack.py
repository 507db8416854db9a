"""The local stack: part commands and order, preflight refusals, records, and (slow) the real processes."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from driftloop.config import Config
from driftloop.env import stack_prefect_url
from driftloop.errors import ConfigError
from driftloop.stack import supervisor
from driftloop.stack.parts import (
    PART_NAMES,
    build_parts,
    prefect_record_path,
    record_path,
    select_parts,
    stack_dir,
    write_part_files,
)
from driftloop.stack.process import pid_alive, port_free, spawn, stop_group
from driftloop.stack.supervisor import stack_down, stack_status, stack_up
from tests.helpers import make_config


def free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 right now (all bound at once, so they are distinct)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def stack_config(tmp_path: Path, **stack: object) -> tuple[Config, Path]:
    """A config on free ports with its state under tmp_path, and the YAML file the CLI and the children read."""
    prefect, prometheus, alertmanager, receiver, server, mlflow, evidently = free_ports(7)
    settings = {"prefect_port": prefect, "prometheus_port": prometheus, "alertmanager_port": alertmanager,
                "receiver_port": receiver, "mlflow_port": mlflow, "evidently_port": evidently,
                "start_timeout_s": 120.0, **stack}
    config = make_config(tmp_path / "state", stack=settings, serving={"port": server})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    return config, path


@pytest.fixture
def postgres_root() -> Iterator[Path]:
    """A folder for a stack with PostgreSQL, outside pytest's temporary root: PostgreSQL runs as another user and
    must pass through the folder's parents, and every pytest session that starts (other test runs on the machine
    too) makes /tmp/pytest-of-<user> private again."""
    folder = Path(tempfile.mkdtemp(prefix="driftloop-stack-test-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def status_json(config: Config, capsys: pytest.CaptureFixture[str]) -> dict:
    """stack_status --json, parsed."""
    stack_status(config, as_json=True)
    return json.loads(capsys.readouterr().out)


def test_parts_in_order_on_the_configured_host_and_ports(tmp_path: Path) -> None:
    config = make_config(tmp_path / "state", stack={"host": "127.0.0.2", "prefect_port": 14200,
                                                     "prometheus_port": 19090, "alertmanager_port": 19093,
                                                     "receiver_port": 19108, "alertmanager_bin": "alertmanager",
                                                     "mlflow_port": 15000, "evidently_port": 18000},
                         serving={"port": 18080})
    parts = {part.name: part for part in build_parts(config, tmp_path / "c.yaml")}
    assert list(parts) == list(PART_NAMES)
    assert [parts[n].port for n in PART_NAMES] == [14200, 15000, 18000, 19090, 19093, 19108, 18080, None]
    assert parts["prefect"].command[-4:] == ["--host", "127.0.0.2", "--port", "14200"]
    assert parts["prefect"].health_url == "http://127.0.0.2:14200/api/health"
    assert parts["prefect"].env["PREFECT_HOME"] == str(stack_dir(config) / "prefect")
    assert "PREFECT_API_URL" not in parts["prefect"].env
    assert parts["prefect"].env["PREFECT_UI_ENABLED"] == "true"
    assert parts["prefect"].env["PREFECT_UI_API_URL"] == "http://127.0.0.2:14200/api"
    assert parts["prefect"].ui_url == "http://127.0.0.2:14200/"
    assert parts["mlflow"].command[1:4] == ["-m", "mlflow", "server"]
    assert parts["mlflow"].command[-6:] == ["--host", "127.0.0.2", "--port", "15000", "--workers", "1"]
    assert parts["mlflow"].command[5] == f"sqlite:///{config.state_dir.resolve() / 'mlflow.db'}"
    assert parts["mlflow"].health_url == "http://127.0.0.2:15000/health"
    assert parts["evidently"].command[-6:] == ["--workspace", str(config.state_dir.resolve() / "evidently"),
                                               "--host", "127.0.0.2", "--port", "18000"]
    assert parts["evidently"].ui_url == "http://127.0.0.2:18000/"
    assert "--web.listen-address=127.0.0.2:19090" in parts["prometheus"].command
    assert parts["alertmanager"].command[0] == "alertmanager"
    assert "--web.listen-address=127.0.0.2:19093" in parts["alertmanager"].command
    assert "--cluster.listen-address=" in parts["alertmanager"].command
    assert parts["receiver"].command[1:5] == ["-m", "driftloop.cli", "receiver", "--config"]
    assert parts["receiver"].command[-4:] == ["--host", "127.0.0.2", "--port", "19108"]
    assert parts["server"].command[-4:] == ["--host", "127.0.0.2", "--port", "18080"]
    assert parts["server"].port_key == "serving.port"
    assert parts["deployments"].command[3:5] == ["deploy", "--config"]
    for name in ("prometheus", "alertmanager", "receiver", "server", "deployments"):
        assert parts[name].env["PREFECT_API_URL"] == "http://127.0.0.2:14200/api"
    assert all("127.0.0.2" in parts[name].url for name in PART_NAMES)


def test_scaled_out_parts_replicas_postgres_and_worker(tmp_path: Path) -> None:
    config = make_config(tmp_path / "state", serving={"port": 18080},
                         stack={"database": "postgres", "postgres_port": 15433, "server_replicas": 3, "worker": True,
                                "prefect_port": 14200})
    parts = {part.name: part for part in build_parts(config, tmp_path / "c.yaml")}
    assert list(parts) == ["postgres", "prefect", "mlflow", "evidently", "prometheus", "alertmanager", "receiver",
                           "server", "server-2", "server-3", "deployments", "worker"]
    assert [parts[name].port for name in ("server", "server-2", "server-3")] == [18080, 18081, 18082]
    assert parts["server-3"].command[-2:] == ["--port", "18082"] and "serving.port + 2" in parts["server-3"].port_key
    # what waits for what: the databases' users for PostgreSQL, the servers for the registry, the worker for its pool
    assert "postgres" in parts["prefect"].after and "postgres" in parts["mlflow"].after
    assert set(parts["server-2"].after) == {"mlflow", "postgres"}
    assert parts["deployments"].after == ("prefect",) and parts["worker"].after == ("deployments",)
    assert parts["evidently"].after == () and parts["prometheus"].after == ()
    # the deployments are registered for the worker's pool (one shot); the worker serves that pool
    assert parts["deployments"].oneshot and parts["deployments"].command[3:5] == ["deploy", "--no-serve"]
    assert parts["worker"].command[1:] == ["-m", "prefect", "worker", "start", "--pool", "driftloop", "--type",
                                           "process"]
    assert parts["worker"].ui_url == "http://127.0.0.1:14200/work-pools/work-pool/driftloop"
    # PostgreSQL in the foreground on its port, loopback only; MLflow's store (with the password) not on its
    # command line
    assert parts["postgres"].command[0].endswith("/postgres")
    assert parts["postgres"].command[parts["postgres"].command.index("-p") + 1] == "15433"
    assert "listen_addresses=127.0.0.1" in parts["postgres"].command
    assert parts["postgres"].url.startswith("postgresql://") and parts["postgres"].port_key == "stack.postgres_port"
    assert "--backend-store-uri" not in parts["mlflow"].command
    assert select_parts(config, ["server"]) == ["server", "server-2", "server-3"]
    assert select_parts(config, ["server-2", "postgres"]) == ["postgres", "server-2"]


def test_prometheus_scrapes_every_replica(tmp_path: Path) -> None:
    config = make_config(tmp_path / "state", serving={"port": 18080},
                         stack={"server_replicas": 2, "receiver_port": 19108})
    write_part_files(config, "prometheus")
    document = yaml.safe_load((stack_dir(config) / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job["static_configs"][0]["targets"] for job in document["scrape_configs"]}
    assert jobs == {"driftloop-server": ["127.0.0.1:18080", "127.0.0.1:18081"],
                    "driftloop-monitor": ["127.0.0.1:19108"]}


def test_unknown_part_names_the_valid_ones(tmp_path: Path) -> None:
    config = make_config(tmp_path / "state")
    assert select_parts(config, ["deployments", "prefect"]) == ["prefect", "deployments"]
    assert select_parts(config, None) == list(PART_NAMES)
    with pytest.raises(ConfigError, match="grafana.*prefect, mlflow, evidently, prometheus"):
        select_parts(config, ["prefect", "grafana"])
    with pytest.raises(ConfigError, match="server-2"):
        select_parts(config, ["server-2"])  # one replica by default


def test_busy_port_refuses_naming_the_key_and_starts_nothing(tmp_path: Path) -> None:
    config, path = stack_config(tmp_path)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", config.stack.prometheus_port))
        holder.listen()
        assert not port_free("127.0.0.1", config.stack.prometheus_port)
        with pytest.raises(ConfigError, match=rf"prometheus: port {config.stack.prometheus_port}.*"
                                              r"stack\.prometheus_port"):
            stack_up(config, path, ["prefect", "prometheus"])
    assert not any(record_path(config, name).exists() for name in PART_NAMES)
    assert port_free("127.0.0.1", config.stack.prefect_port)


def test_a_remote_prefect_server_replaces_the_local_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor, "champion_version", lambda config: None)  # not the registry's import time
    config, path = stack_config(tmp_path)
    config = config.model_copy(update={"orchestration": config.orchestration.model_copy(
        update={"api_url": "http://prefect.example:4200/api"})})
    with socket.socket() as prefect_port, socket.socket() as prometheus_port:
        for holder, port in ((prefect_port, config.stack.prefect_port),
                             (prometheus_port, config.stack.prometheus_port)):
            holder.bind(("127.0.0.1", port))
            holder.listen()
        with pytest.raises(ConfigError) as refused:
            stack_up(config, path)
    assert "stack.prometheus_port" in str(refused.value) and "stack.prefect_port" not in str(refused.value)


def test_missing_binary_is_one_clear_line(tmp_path: Path) -> None:
    config, path = stack_config(tmp_path, alertmanager_bin="/nonexistent/alertmanager")
    with pytest.raises(ConfigError, match=r"alertmanager not found: .*sudo make system-deps.*stack\.alertmanager_bin"):
        stack_up(config, path, ["alertmanager"])
    assert not record_path(config, "alertmanager").exists()


@pytest.mark.slow
def test_stale_record_shows_down_and_down_cleans_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config, _ = stack_config(tmp_path)
    dead = subprocess.Popen(["true"])
    dead.wait()
    record_path(config, "prefect").parent.mkdir(parents=True)
    record_path(config, "prefect").write_text(json.dumps({"pid": dead.pid, "url": "http://127.0.0.1:1/api"}))
    prefect_record_path(config).write_text(json.dumps({"pid": dead.pid, "api_url": "http://127.0.0.1:1/api"}))
    status = status_json(config, capsys)
    assert status["parts"]["prefect"]["state"] == "down"
    assert status["parts"]["prefect"]["pid"] == dead.pid
    assert status["healthy"] is False
    stack_down(config)
    assert "stale record" in capsys.readouterr().err
    assert not record_path(config, "prefect").exists()
    assert not prefect_record_path(config).exists()
    stack_down(config)  # safe with nothing recorded
    assert "nothing is running" in capsys.readouterr().err


def test_server_waits_without_a_champion(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    config, path = stack_config(tmp_path)
    monkeypatch.setattr(supervisor, "champion_version", lambda config: None)
    assert stack_up(config, path, ["server"]) is True
    assert "no champion model yet" in capsys.readouterr().err
    status = status_json(config, capsys)
    assert status["parts"]["server"]["state"] == "waiting"
    assert status["healthy"] is True
    stack_down(config)
    assert not record_path(config, "server").exists()


FAKE_READY = f"""#!{sys.executable}
# Answers 200 on every path at --web.listen-address, as Prometheus' /-/ready does.
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
address = next(a.split("=", 1)[1] for a in sys.argv if a.startswith("--web.listen-address="))
host, port = address.rsplit(":", 1)
class Ready(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
HTTPServer((host, int(port)), Ready).serve_forever()
"""
FAKE_FAILING = "#!/bin/sh\necho 'line one'\necho 'fatal: cannot read the config' >&2\nexit 1\n"


def fake_binary(folder: Path, name: str, text: str) -> str:
    """An executable script standing in for Prometheus or Alertmanager."""
    path = folder / name
    path.write_text(text)
    path.chmod(0o755)
    return str(path)


@pytest.mark.slow
def test_failed_part_prints_its_log_and_stops_what_this_call_started(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ready, failing = fake_binary(tmp_path, "ready", FAKE_READY), fake_binary(tmp_path, "failing", FAKE_FAILING)
    config, path = stack_config(tmp_path, prometheus_bin=ready, alertmanager_bin=failing, start_timeout_s=20.0)
    assert stack_up(config, path, ["prometheus", "alertmanager"]) is False
    err = capsys.readouterr().err
    assert "alertmanager exited before it was healthy" in err
    assert "fatal: cannot read the config" in err
    assert "stopped prometheus (started by this call)" in err
    assert not any(record_path(config, name).exists() for name in PART_NAMES)
    deadline = time.monotonic() + 5
    while not port_free("127.0.0.1", config.stack.prometheus_port) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert port_free("127.0.0.1", config.stack.prometheus_port)


@pytest.mark.slow
def test_spawned_group_is_stopped(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "sleeper.log"
    # A shell with a child of its own: stopping the group must take both.
    pid = spawn(["sh", "-c", "sleep 60 & echo child $!; wait"], dict(os.environ), log)
    deadline = time.monotonic() + 5
    while not re.search(r"child (\d+)", log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(re.search(r"child (\d+)", log.read_text()).group(1))
    assert pid_alive(pid) and pid_alive(child) and os.getpgid(pid) == pid
    assert stop_group(pid, timeout_s=5) == "stopped"
    assert not pid_alive(pid) and not pid_alive(child)


@pytest.mark.slow
@pytest.mark.stack
def test_real_stack_prefect_prometheus_alertmanager(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config, path = stack_config(tmp_path, evaluation_interval_s=1.0, scrape_interval_s=1.0)
    parts = ["prefect", "prometheus", "alertmanager"]
    records: dict[str, dict] = {}
    try:
        assert stack_up(config, path, parts) is True
        records.update({name: json.loads(record_path(config, name).read_text()) for name in parts})
        assert stack_prefect_url(config.state_dir) == f"http://127.0.0.1:{config.stack.prefect_port}/api"
        with httpx.Client(timeout=5, trust_env=False) as client:
            assert client.get(f"http://127.0.0.1:{config.stack.prefect_port}/api/health").json() is True
            rules = client.get(f"http://127.0.0.1:{config.stack.prometheus_port}/api/v1/rules").json()
            names = {rule["name"] for group in rules["data"]["groups"] for rule in group["rules"]}
            assert "DriftloopDriftDetected" in names
            status = client.get(f"http://127.0.0.1:{config.stack.alertmanager_port}/api/v2/status")
            assert status.status_code == 200 and "config" in status.json()

        assert stack_up(config, path, parts) is True  # up twice: nothing restarted
        assert {name: json.loads(record_path(config, name).read_text())["pid"] for name in parts} == \
               {name: record["pid"] for name, record in records.items()}

        result = subprocess.run([sys.executable, "-m", "driftloop.cli", "stack", "status", "--json", "--config",
                                 str(path)], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        status = json.loads(result.stdout)
        assert status["healthy"] is True
        assert {name: status["parts"][name]["state"] for name in PART_NAMES} == {
            "prefect": "up", "mlflow": "down", "evidently": "down", "prometheus": "up", "alertmanager": "up",
            "receiver": "down", "server": "down", "deployments": "down"}
    finally:
        stack_down(config)
    capsys.readouterr()
    for name, record in records.items():
        assert not pid_alive(record["pid"]), name
        assert not record_path(config, name).exists()
    assert not prefect_record_path(config).exists()
    assert stack_prefect_url(config.state_dir) is None
    for port in (config.stack.prefect_port, config.stack.prometheus_port, config.stack.alertmanager_port):
        assert port_free("127.0.0.1", port)


@pytest.mark.slow
@pytest.mark.stack
def test_postgres_part_private_cluster_with_a_generated_password(postgres_root: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    psycopg = pytest.importorskip("psycopg")
    config, path = stack_config(postgres_root, database="postgres", postgres_port=free_ports(1)[0])
    try:
        assert stack_up(config, path, ["postgres"]) is True
        assert "***@127.0.0.1" in capsys.readouterr().err  # the console never shows the password
        status = status_json(config, capsys)
        part = status["parts"]["postgres"]
        assert part["state"] == "up" and status["healthy"] is True
        password = (stack_dir(config) / "postgres" / "password")
        assert password.stat().st_mode & 0o777 == 0o600
        assert part["url"] == (f"postgresql://driftloop:{password.read_text()}@127.0.0.1:"
                               f"{config.stack.postgres_port}/driftloop")
        assert record_path(config, "postgres").stat().st_mode & 0o777 == 0o600
        with psycopg.connect(part["url"]) as db:
            names = {row[0] for row in db.execute("SELECT datname FROM pg_database")}
            assert {"driftloop", "prefect", "mlflow"} <= names
            assert db.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
        with pytest.raises(psycopg.OperationalError):  # a password is required, also on loopback
            psycopg.connect(part["url"].replace(password.read_text(), "wrong"), connect_timeout=5)
        pid = part["pid"]
    finally:
        stack_down(config)
    assert not pid_alive(pid)
    assert "database system is shut down" in (stack_dir(config) / "logs" / "postgres.log").read_text()
    assert port_free("127.0.0.1", config.stack.postgres_port)


@pytest.mark.slow
def test_the_stack_s_light_processes_import_no_stage() -> None:
    # The deployments part (register and serve) and the receiver start with the stack: importing torch, MLflow,
    # Great Expectations or Evidently there would add about 12 s of CPU each to `stack up`.
    probe = ("import sys, driftloop.flows.deployments, driftloop.flows.starter, driftloop.stack.supervisor, "
             "driftloop.monitoring.receiver; print(sorted(m for m in ('torch', 'mlflow', 'great_expectations', "
             "'evidently') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
