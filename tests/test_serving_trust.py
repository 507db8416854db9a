"""Attacks on the model server's trust boundaries (issue 15), each through a real HTTP server (uvicorn on a socket in
this process): who may label, what time means, how much a request may carry. Every attack is refused with its
status, nothing it sent is kept, and the server answers normal requests during and after it. The table of these
rows is in docs/operations/security.md."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pandas as pd
import pytest
import yaml
from fastapi.testclient import TestClient

from driftloop.config import Config
from driftloop.metrics import REQUESTS_REFUSED
from driftloop.monitoring.windows import cut_windows
from driftloop.serving.app import create_app
from driftloop.serving.guard import allowed_hosts, host_name
from driftloop.serving.labels import attach_label_file
from driftloop.serving.prediction_log import PredictionLog
from driftloop.state import prediction_log_path
from tests.helpers import (
    LOCAL,
    REPO,
    Shelf,
    ThreadedServer,
    cli_here,
    free_port,
    make_config,
    rows_json,
    wait_for,
    wait_for_server,
)

LABELS_TOKEN = "labels-token-for-tests"
ADMIN_TOKEN = "admin-token-for-tests"
MAX_BODY = 64 * 1024
MAX_SCORING = 2


@dataclass
class Live:
    """A running server and what a test needs to attack it."""

    url: str
    port: int
    config: Config
    log: PredictionLog
    rows: list[dict]

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)

    def predict_ok(self) -> None:
        """A normal request still answers."""
        response = httpx.post(f"{self.url}/predict", json={"rows": self.rows[:3]}, timeout=30)
        assert response.status_code == 200, response.text

    def refused(self, path: str, reason: str) -> float:
        text = httpx.get(f"{self.url}/metrics", timeout=30).text
        for line in text.splitlines():
            if line.startswith(f'{REQUESTS_REFUSED}{{path="{path}",reason="{reason}"}}'):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


def trust_config(state_dir: Path, **serving: object) -> Config:
    token_file = state_dir.parent / "labels.token"
    token_file.write_text(LABELS_TOKEN + "\n")
    return make_config(state_dir, serving={"reload_interval_s": 3600, "max_batch_rows": 600,
                                           "labels_token_file": str(token_file), "max_body_bytes": MAX_BODY,
                                           "max_concurrent_requests": MAX_SCORING, **serving})


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, model_folders: dict[str, Path],
         flights_jan: pd.DataFrame) -> Iterator[Live]:
    """One real server for the module's attacks (each leaves it as it found it)."""
    root = tmp_path_factory.mktemp("trust")
    config = trust_config(root / "state")
    shelf = Shelf(model_folders, "1")
    log = PredictionLog(prediction_log_path(config), pii=config.data.pii)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DRIFTLOOP_ADMIN_TOKEN", ADMIN_TOKEN)
        env.delenv("DRIFTLOOP_LABELS_TOKEN", raising=False)
        app = create_app(config, shelf.load, shelf.version, log)
    server = ThreadedServer(app)
    with server as url:
        yield Live(url, server.port, config, log, rows_json(flights_jan.head(50)))
    log.close()


def predicted_ids(live: Live, count: int) -> list[int]:
    response = httpx.post(f"{live.url}/predict", json={"rows": live.rows[:count]}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["prediction_ids"]


def labels_body(ids: list[int], label: float) -> dict:
    return {"labels": [{"prediction_id": i, "label": label} for i in ids]}


# ---------------------------------------------------------------- who may label


def test_labels_need_their_own_token(live: Live) -> None:
    ids = predicted_ids(live, 4)
    before = live.refused("/labels", "unauthorized")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {ADMIN_TOKEN}"},
                    {"Authorization": LABELS_TOKEN}, {"Authorization": f"Basic {LABELS_TOKEN}"}):
        refused = httpx.post(f"{live.url}/labels", json=labels_body(ids, 1), headers=headers)
        assert refused.status_code == 401 and "labels token" in refused.json()["detail"]
        live.predict_ok()
    assert live.refused("/labels", "unauthorized") == before + 5
    assert live.log.read(first_id=ids[0], last_id=ids[-1])["label"].isna().all()  # nothing was written
    auth = {"Authorization": f"Bearer {LABELS_TOKEN}"}
    assert httpx.post(f"{live.url}/labels", json=labels_body(ids, 1), headers=auth).json() == {"updated": 4}


def test_the_first_label_wins_and_is_audited(live: Live) -> None:
    ids = predicted_ids(live, 6)
    auth = {"Authorization": f"Bearer {LABELS_TOKEN}"}
    assert httpx.post(f"{live.url}/labels", json=labels_body(ids[:3], 1), headers=auth).status_code == 200
    # A flip of labelled rows, mixed with rows nobody labelled yet: 409 naming the labelled ones, nothing written.
    flip = httpx.post(f"{live.url}/labels", json=labels_body(ids[1:5], 0), headers=auth)
    assert flip.status_code == 409
    assert [e["row"] for e in flip.json()["detail"]] == [0, 1]
    assert all("labelled already" in e["error"] for e in flip.json()["detail"])
    logged = live.log.read(first_id=ids[0], last_id=ids[-1])["label"].tolist()
    assert logged[:3] == [1.0, 1.0, 1.0] and pd.isna(logged[3:]).all()
    twice = httpx.post(f"{live.url}/labels", json={"labels": [{"prediction_id": ids[5], "label": 1},
                                                              {"prediction_id": ids[5], "label": 0}]}, headers=auth)
    assert twice.status_code == 422 and "labelled twice" in twice.json()["detail"][0]["error"]
    history = live.log.label_history(ids[0], ids[-1])
    assert history["prediction_id"].tolist() == ids[:3]
    assert (history["source"] == "http").all() and history["principal"].str.startswith("labels-token:").all()
    assert LABELS_TOKEN not in "".join(history["principal"])  # a digest, never the token
    assert history["received_at"].notna().all()
    live.predict_ok()


def test_label_command_refuses_labelled_ids_and_corrects_with_an_audit_trail(
        config: Config, tmp_path: Path, flights_jan: pd.DataFrame, capsys: pytest.CaptureFixture[str],
        restored_environ: None) -> None:
    with PredictionLog(prediction_log_path(config)) as log:
        ids = log.append([{"distance": float(i)} for i in range(6)], [0.5] * 6, "1")
        log.attach_labels(ids[:2], [1, 1], source="http", principal="labels-token:abc")
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    both = tmp_path / "both.csv"
    pd.DataFrame({"prediction_id": ids[1:4], "label": [0, 1, 0]}).to_csv(both, index=False)
    refused = cli_here(capsys, "label", "--config", str(config_path), "--file", str(both))
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert f"already labelled: {ids[1]};" in refused.stderr and "no label was written" in refused.stderr
    fixes = tmp_path / "fixes.csv"
    pd.DataFrame({"prediction_id": ids[:2], "label": [0, 0]}).to_csv(fixes, index=False)
    no_reason = cli_here(capsys, "label", "--config", str(config_path), "--file", str(fixes), "--correct")
    assert no_reason.returncode == 2 and "--reason" in no_reason.stderr
    corrected = cli_here(capsys, "label", "--config", str(config_path), "--file", str(fixes), "--correct",
                         "--reason", "annotator swapped the classes")
    assert corrected.returncode == 0 and corrected.stdout.strip() == "corrected 2 predictions"
    with PredictionLog(prediction_log_path(config)) as log:
        labels = log.read()["label"]
        history = log.label_history()
    assert labels.head(2).tolist() == [0.0, 0.0] and labels.iloc[2:].isna().all()  # the refused file wrote nothing
    assert history["label"].tolist() == [1.0, 1.0, 0.0, 0.0]  # the old labels are kept
    assert history["supersedes"].tolist()[2:] == history["label_id"].tolist()[:2]
    assert history["source"].tolist() == ["http", "http", "cli", "cli"]
    assert set(history["reason"].tolist()[2:]) == {"annotator swapped the classes"}
    assert history["principal"].iloc[2].startswith(("user:", "uid:"))
    with pytest.raises(Exception, match="append-only"), PredictionLog(prediction_log_path(config)) as log:
        log._db.execute("UPDATE labels SET label = 1")


def test_label_file_naming_a_prediction_twice_is_refused(config: Config, tmp_path: Path) -> None:
    with PredictionLog(prediction_log_path(config)) as log:
        ids = log.append([{"distance": 1.0}] * 3, [0.5] * 3, "1")
    path = tmp_path / "twice.csv"
    pd.DataFrame({"prediction_id": [ids[0], ids[1], ids[0]], "label": [1, 0, 0]}).to_csv(path, index=False)
    with pytest.raises(Exception, match=f"row 3: {ids[0]} appears more than once"):
        attach_label_file(config, path)


# ---------------------------------------------------------------- what time means


def test_future_event_times_are_refused_and_old_ones_kept(live: Live) -> None:
    stamp = live.config.data.timestamp
    now = pd.Timestamp.now(tz="UTC")
    rows = [dict(live.rows[0]), dict(live.rows[1]), dict(live.rows[2])]
    rows[1][stamp] = "2262-01-01T00:00:00Z"
    last = live.log.last_id()
    refused = httpx.post(f"{live.url}/predict", json={"rows": rows})
    assert refused.status_code == 422
    assert refused.json()["detail"] == [{"row": 1, "field": stamp, "error": refused.json()["detail"][0]["error"]}]
    assert "in the future" in refused.json()["detail"][0]["error"]
    assert live.log.last_id() == last  # nothing logged
    rows[1][stamp] = (now + pd.Timedelta("1min")).isoformat()  # a client clock a minute ahead: within the skew
    rows[2][stamp] = "1677-09-22T00:00:00Z"  # old times stay accepted: the demo replays 2013
    assert httpx.post(f"{live.url}/predict", json={"rows": rows}).status_code == 200


def test_max_event_age_refuses_old_times_when_set(config: Config, model_folders, flights_jan) -> None:
    config = trust_config(config.state_dir, max_event_age="30D")
    shelf = Shelf(model_folders, "1")
    with TestClient(create_app(config, shelf.load, shelf.version), base_url=LOCAL) as client:
        old = client.post("/predict", json={"rows": rows_json(flights_jan.head(2))})  # 2013
        assert old.status_code == 422 and "max_event_age" in old.json()["detail"][0]["error"]
        fresh = rows_json(flights_jan.head(2))
        for row in fresh:
            row[config.data.timestamp] = pd.Timestamp.now(tz="UTC").isoformat()
        assert client.post("/predict", json={"rows": fresh}).status_code == 200


def test_windows_cost_rows_not_time_span(config: Config) -> None:
    config = make_config(config.state_dir, monitoring={"window": "1h"})
    stamp = config.data.timestamp
    frame = pd.DataFrame({stamp: ["1677-09-22T00:00:00Z", "2262-04-10T00:00:00Z", "2013-01-01T00:30:00Z",
                                  "2013-01-01T00:10:00Z"], "x": [1, 2, 3, 4]})
    start = time.process_time()
    windows = list(cut_windows(frame, config))
    assert time.process_time() - start < 1.0  # the old loop stepped through five million empty hours
    assert [len(w.frame) for w in windows] == [1, 2, 1]
    assert windows[1].frame["x"].tolist() == [3, 4]  # rows keep their order within a window
    assert windows[1].start == pd.Timestamp("2013-01-01T00:00:00Z") and windows[1].end - windows[1].start == \
        pd.Timedelta("1h")


# ---------------------------------------------------------------- how much a request may carry


def raw_request(port: int, head: str, body: bytes = b"") -> bytes:
    """Send a hand-written request and return what the server answered before closing (or the first answer)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        try:
            sock.sendall(head.encode() + body)
        except OSError:  # the server may answer and close before the whole body is sent
            pass
        return sock.recv(65536)


def test_oversized_bodies_are_413_before_parsing(live: Live) -> None:
    before = live.refused("/predict", "body_size")
    big = b'{"rows": [' + b",".join([b"{}"] * (MAX_BODY // 2)) + b"]}"
    declared = httpx.post(f"{live.url}/predict", content=big, headers={"Content-Type": "application/json"})
    assert declared.status_code == 413 and "serving.max_body_bytes" in declared.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is counted as the body streams in
        for start in range(0, len(big), 8192):
            yield big[start:start + 8192]

    streamed = httpx.post(f"{live.url}/predict", content=chunks(), headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413
    lying = raw_request(live.port, "POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                        "Transfer-Encoding: chunked\r\n\r\n", b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks()))
    assert lying.startswith(b"HTTP/1.1 413")
    assert live.refused("/predict", "body_size") == before + 3
    live.predict_ok()


def test_concurrency_beyond_the_limit_is_503_and_the_server_keeps_answering(live: Live) -> None:
    before = live.refused("/predict", "concurrency")
    body = b'{"rows": []}'
    held: list[socket.socket] = []
    try:
        for _ in range(MAX_SCORING):  # requests that hold their slot: headers sent, body still to come
            sock = socket.create_connection(("127.0.0.1", live.port), timeout=30)
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body))
            held.append(sock)
        wait_for(lambda: httpx.post(f"{live.url}/predict", json={"rows": live.rows[:1]}).status_code == 503)
        busy = httpx.post(f"{live.url}/predict", json={"rows": live.rows[:1]})
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        assert "serving.max_concurrent_requests" in busy.json()["detail"]
        assert httpx.get(f"{live.url}/healthz").status_code == 200  # the rest of the server answers meanwhile
        for sock in held:
            sock.sendall(body)
            assert sock.recv(65536).startswith(b"HTTP/1.1 422")  # the held requests finish normally
    finally:
        for sock in held:
            sock.close()
    assert live.refused("/predict", "concurrency") >= before + 2
    wait_for(lambda: httpx.post(f"{live.url}/predict", json={"rows": live.rows[:1]}).status_code == 200)


def test_a_stalled_body_is_408_and_frees_its_slot(config: Config, model_folders, flights_jan) -> None:
    config = trust_config(config.state_dir, body_timeout_s=0.5, max_concurrent_requests=1)
    shelf = Shelf(model_folders, "1")
    server = ThreadedServer(create_app(config, shelf.load, shelf.version))
    with server as url, socket.create_connection(("127.0.0.1", server.port), timeout=30) as stalled:
        stalled.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 100\r\n\r\n")  # and never the body
        assert stalled.recv(65536).startswith(b"HTTP/1.1 408")
        response = httpx.post(f"{url}/predict", json={"rows": rows_json(flights_jan.head(2))}, timeout=30)
        assert response.status_code == 200  # the only slot is free again


@pytest.mark.parametrize("path", ["/predict", "/labels"])
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                                          None])
def test_a_browser_form_post_is_415(live: Live, path: str, content_type: str | None) -> None:
    last = live.log.last_id()
    body = b'{"rows": [{}], "labels": []}'
    headers = {"Authorization": f"Bearer {LABELS_TOKEN}"}
    if content_type:
        headers["Content-Type"] = content_type
    response = httpx.post(f"{live.url}{path}", content=body, headers=headers)
    assert response.status_code == 415 and "application/json" in response.json()["detail"]
    assert live.log.last_id() == last
    live.predict_ok()


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8080", "127.0.0.1.evil.example", ""])
def test_a_foreign_host_header_is_400(live: Live, host: str) -> None:
    before = live.refused("/predict", "host")
    answer = raw_request(live.port, f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                         f"Content-Length: 12\r\n\r\n", b'{"rows": []}')
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert live.refused("/predict", "host") == before + 1
    for name in ("localhost", "127.0.0.1", "[::1]"):  # the loopback names answer
        assert httpx.get(f"{live.url}/healthz", headers={"Host": f"{name}:{live.port}"}).status_code == 200
    live.predict_ok()


def test_allowed_hosts_defaults_follow_the_bind_address(config: Config) -> None:
    serving = config.serving
    assert allowed_hosts(serving, "127.0.0.1") == {"localhost", "127.0.0.1", "::1"}
    assert allowed_hosts(serving, "localhost") == {"localhost", "127.0.0.1", "::1"}
    assert allowed_hosts(serving, "0.0.0.0") is None  # bound to the network: reached by names only DNS knows
    configured = make_config(config.state_dir, serving={"allowed_hosts": ["models.internal"]}).serving
    assert allowed_hosts(configured, "0.0.0.0") == {"models.internal"}
    assert allowed_hosts(make_config(config.state_dir, serving={"allowed_hosts": ["*"]}).serving, "::1") is None
    assert [host_name(h) for h in ("a:1", "[::1]:80", "::1", "B.example")] == ["a", "::1", "::1", "b.example"]


@pytest.mark.parametrize(("path", "status"), [("/predict", 422), ("/labels", 422), ("/admin/rollback", 400)])
@pytest.mark.parametrize("depth", [1_500, 20_000])
def test_deep_json_is_refused_never_500(live: Live, path: str, status: int, depth: int) -> None:
    key = b'"labels"' if path == "/labels" else b'"rows"'
    nested = b"{" + key + b": " + b"[" * depth + b"]" * depth + b"}"
    assert len(nested) < MAX_BODY  # the depth is refused, not the size
    token = ADMIN_TOKEN if path == "/admin/rollback" else LABELS_TOKEN
    response = httpx.post(f"{live.url}{path}", content=nested,
                          headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    assert response.status_code == status, response.text
    live.predict_ok()


# ---------------------------------------------------------------- normal traffic during every attack


def attack_each(url: str, port: int, rows: list[dict]) -> dict[str, int]:
    """Every HTTP attack of the table once, in turn; the status each got."""
    stamp = "time_hour"
    ids = httpx.post(f"{url}/predict", json={"rows": rows[:2]}, timeout=30).json()["prediction_ids"]
    auth = {"Authorization": f"Bearer {LABELS_TOKEN}"}
    future = [dict(rows[0], **{stamp: "2262-01-01T00:00:00Z"})]
    big = b'{"rows": [' + b",".join([b"{}"] * (MAX_BODY // 2)) + b"]}"
    deep = b'{"rows": ' + b"[" * 20_000 + b"]" * 20_000 + b"}"
    json_type = {"Content-Type": "application/json"}
    got = {
        "labels without a token": httpx.post(f"{url}/labels", json=labels_body(ids, 1)).status_code,
        "first label": httpx.post(f"{url}/labels", json=labels_body(ids, 1), headers=auth).status_code,
        "relabel": httpx.post(f"{url}/labels", json=labels_body(ids, 0), headers=auth).status_code,
        "future event time": httpx.post(f"{url}/predict", json={"rows": future}).status_code,
        "oversized body": httpx.post(f"{url}/predict", content=big, headers=json_type).status_code,
        "form post": httpx.post(f"{url}/predict", content=b'{"rows": []}',
                                headers={"Content-Type": "text/plain"}).status_code,
        "deep JSON": httpx.post(f"{url}/predict", content=deep, headers=json_type).status_code,
    }
    rebound = raw_request(port, "GET /healthz HTTP/1.1\r\nHost: evil.example\r\n\r\n")
    got["foreign Host"] = int(rebound.split(b" ", 2)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as stalled:
        stalled.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 100\r\n\r\n")
        got["stalled body"] = int(stalled.recv(65536).split(b" ", 2)[1])
    return got


@pytest.mark.slow
def test_normal_requests_are_answered_during_and_after_every_attack(config: Config, model_folders,
                                                                    flights_jan) -> None:
    """A client sends normal /predict requests without pause while every attack of the table runs once: each of its
    requests is answered 200 by the champion, during and after."""
    config = trust_config(config.state_dir, body_timeout_s=1.0, max_concurrent_requests=16)
    shelf = Shelf(model_folders, "1")
    rows = rows_json(flights_jan.head(20))
    server = ThreadedServer(create_app(config, shelf.load, shelf.version))
    statuses: list[int] = []
    stop = threading.Event()

    def normal_client(url: str) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            while not stop.is_set():
                statuses.append(client.post("/predict", json={"rows": rows[:3]}).status_code)

    with server as url:
        client = threading.Thread(target=normal_client, args=(url,), daemon=True)
        client.start()
        got = attack_each(url, server.port, rows)
        during = len(statuses)
        wait_for(lambda: len(statuses) >= during + 5)  # and after
        stop.set()
        client.join(timeout=30)
    assert got == {"labels without a token": 401, "first label": 200, "relabel": 409, "future event time": 422,
                   "oversized body": 413, "form post": 415, "deep JSON": 422, "foreign Host": 400,
                   "stalled body": 408}
    assert during >= 5 and set(statuses) == {200}, sorted(set(statuses))


# ---------------------------------------------------------------- the real `driftloop serve`

CHILD_SERVER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from driftloop.config import load_config
    from driftloop.serving.server import serve
    from driftloop.training.artifacts import load_model

    config, folder, port = load_config(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    serve(config, lambda: load_model(folder, version="1"), lambda: "1", port=port)
""")


@pytest.mark.slow
def test_served_process_creates_a_private_labels_token_and_checks_hosts(config: Config, model_folders,
                                                                        flights_jan, tmp_path: Path) -> None:
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "DRIFTLOOP_LABELS_TOKEN"}
    child = subprocess.Popen([sys.executable, "-c", CHILD_SERVER, str(config_file), str(model_folders["1"]),
                              str(port)], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_server(child, base, timeout=90)
        token_file = config.state_dir / "serving" / "labels.token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        assert token != (config.state_dir / "serving" / "admin.token").read_text().strip()
        ids = httpx.post(f"{base}/predict", json={"rows": rows_json(flights_jan.head(2))}).json()["prediction_ids"]
        assert httpx.post(f"{base}/labels", json=labels_body(ids, 1)).status_code == 401
        auth = {"Authorization": f"Bearer {token}"}
        assert httpx.post(f"{base}/labels", json=labels_body(ids, 1), headers=auth).status_code == 200
        assert httpx.post(f"{base}/labels", json=labels_body(ids, 0), headers=auth).status_code == 409
        assert httpx.get(f"{base}/healthz", headers={"Host": "rebound.example"}).status_code == 400
        assert httpx.get(f"{base}/healthz").status_code == 200
    finally:
        child.terminate()
        child.wait(timeout=30)
