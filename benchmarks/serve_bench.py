"""Model server benchmark: `driftloop serve` (prediction log on) against `mlflow models serve`, same model.

Set-up, in a fresh temporary state dir: `driftloop train` on 4,000 January 2013 flights (the demo config with
small, fast training settings) registers MLflow version 1 as `champion`. Both servers then serve that version
on 127.0.0.1 and stay up for the whole run:

- driftloop: `python -m driftloop.cli serve` (POST /predict, every row written to the prediction log), measured on
  three paths of the same server and model: its own /predict (`driftloop`), the Open Inference Protocol's
  /v2/models/<name>/infer with one JSON tensor per column (`driftloop-oip`) and MLflow's /invocations with
  `dataframe_records` (`driftloop-invocations`);
- MLflow: `python -m mlflow models serve -m models:/<name>@champion --env-manager local` (POST /invocations,
  `dataframe_records`), MLflow's defaults otherwise (one uvicorn worker, request timeout 60 s).

Both must answer the same predictions (within 1e-5) for the same rows before anything is timed.

Load: a closed-loop client in this process (the servers are separate processes): `concurrency` keep-alive
HTTP/1.1 connections, each sending its next request as soon as the previous answer is read, pre-serialised
bodies of real held-back January flights (the same rows for both servers), 1 or 64 rows per request. The
client is raw asyncio on uvloop, because httpx costs more CPU per request than the servers' own work; its
ceiling against a trivial endpoint (and httpx's, for comparison) is measured and reported. Each run: a warm-up,
then `--seconds` measured; runs alternate between the servers (A, B, A, B per cell) so that the machine's
drifting speed affects both alike; figures are medians over the rounds. Any non-200 answer is an error.

    .venv/bin/python benchmarks/serve_bench.py               # ~14 min on 2 cores
    .venv/bin/python benchmarks/serve_bench.py --quick       # 3 min: a smoke run
    .venv/bin/python benchmarks/serve_bench.py --concurrency 8   # only the 8-in-flight cells
    .venv/bin/python benchmarks/serve_bench.py --seconds 5   # shorter runs
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.metadata
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ROW_SIZES = (1, 64)
CONCURRENCY = (1, 8, 32)
TRAIN_ROWS = 4000
BODIES = 64  # distinct pre-serialised bodies per row size, cycled through
TOLERANCE = 1e-5
GOAL_THROUGHPUT, GOAL_P99 = 2.0, 0.5  # driftloop / mlflow: at least 2x the req/s, at most half the p99
SERVERS = ("driftloop", "driftloop-oip", "driftloop-invocations", "mlflow")
OURS = SERVERS[:3]  # the paths of driftloop's one server, each compared with MLflow's
VERSIONS = ("torch", "mlflow", "uvicorn", "fastapi", "starlette", "httpx", "uvloop", "httptools", "pandas", "numpy")
TRIVIAL_RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


@dataclass(frozen=True)
class Target:
    """One server under load: where its scoring endpoint is and how rows are wrapped for it."""

    name: str
    port: int
    path: str
    wrap: str  # how rows become a body: "rows" (/predict), "records" (MLflow's dataframe_records), "oip" (tensors)
    process: subprocess.Popen | None = None


@dataclass
class Run:
    """One timed run of one server at one row size and concurrency."""

    server: str
    rows: int
    concurrency: int
    round: int
    client: str
    requests: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    req_s: float = 0.0
    rows_s: float = 0.0
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    answered_rows: int = 0  # rows answered 200, warm-up included: what the prediction log must hold
    server_cpu_s: float | None = None
    cpu_ms_per_request: float | None = None
    load_before: float = 0.0


# ---------------------------------------------------------------- set-up: data, model, servers


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def child_env() -> dict[str, str]:
    """Environment for the servers and `driftloop train`: the venv's scripts on PATH (mlflow starts `uvicorn` by
    name); telemetry is off in os.environ since driftloop was imported."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def prepare_data(folder: Path) -> tuple[Path, list[dict], list[str], list[str]]:
    """Training parquet (4,000 January flights) and held-back January rows (features only, no missing values).

    Numbers are sent as floats: the MLflow signature says float64 for every numerical column.
    """
    import pandas as pd

    from driftloop.config import demo_config_path, load_config
    from driftloop.datasets import load_flights

    data = load_config(demo_config_path()).data
    flights = load_flights()
    jan = flights[flights["time_hour"] < pd.Timestamp("2013-02-01", tz="UTC")]
    train = jan.sample(TRAIN_ROWS, random_state=0).sort_values("time_hour", kind="stable")
    path = folder / "train.parquet"
    train.reset_index(drop=True).to_parquet(path, index=False)
    # Complete rows only: a one-row request with a null would make MLflow's schema check see an object column.
    held = jan.drop(train.index)[data.features].dropna().sample(BODIES * max(ROW_SIZES), random_state=1)
    held[data.numerical] = held[data.numerical].astype("float64")
    return path, held.to_dict("records"), list(data.numerical), list(data.categorical)


def write_config(folder: Path) -> Path:
    """The demo config with a private state dir and small, fast training (as tests/conftest.py make_config)."""
    import yaml

    from driftloop.config import demo_config_path

    raw = yaml.safe_load(demo_config_path().read_text())
    raw["state_dir"] = str(folder / "state")
    raw["training"].update({"epochs": 1, "batch_size": 256})
    raw["validation"].pop("suite", None)  # relative to the shipped config's folder, not this copy's
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def train(config: Path, data: Path, folder: Path) -> dict:
    """`driftloop train --json` in a child process: registers version 1 as champion."""
    result = subprocess.run([sys.executable, "-m", "driftloop.cli", "train", "--config", str(config),
                             "--data", str(data), "--json"], cwd=folder, env=child_env(), capture_output=True,
                            text=True, timeout=900)
    if result.returncode != 0:
        raise SystemExit(f"driftloop train failed ({result.returncode}):\n{result.stderr[-3000:]}")
    payload = json.loads(result.stdout)
    if payload["model_version"] != "1":
        raise SystemExit(f"expected model version 1 in a fresh state dir, got {payload['model_version']}")
    return payload


def start(command: list[str], log: Path, folder: Path, env: dict[str, str]) -> subprocess.Popen:
    """A server in its own session (so it and its children stop together), output to `log`."""
    with open(log, "wb") as out:
        return subprocess.Popen(command, cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def stop(process: subprocess.Popen) -> None:
    """Stop a server started by `start`: its own process group, SIGTERM then SIGKILL."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def wait_ready(url: str, process: subprocess.Popen, log: Path, timeout_s: float = 240.0) -> None:
    """Wait until `url` answers 200; fail loudly with the server's log tail if it dies or never answers."""
    import httpx

    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{url}: the server exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        try:
            answer = httpx.get(url, timeout=2)
            if answer.status_code == 200:
                return
            last = f"HTTP {answer.status_code}"
        except httpx.HTTPError as error:
            last = str(error)
        time.sleep(0.3)
    raise SystemExit(f"{url} did not answer 200 within {timeout_s:g} s ({last}):\n{log.read_text()[-3000:]}")


def start_servers(config: Path, folder: Path, model_name: str, tracking_uri: str,
                  mlflow_threads: int | None) -> dict[str, Target]:
    """Both servers up and healthy, on free ports; `mlflow_threads` caps torch's threads in MLflow's server."""
    env = child_env()
    # torch reads OMP_NUM_THREADS at start; None keeps MLflow's default (one thread per core per call).
    threads = {name: str(mlflow_threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")} if mlflow_threads else {}
    ports = {name: free_port() for name in ("driftloop", "mlflow")}
    ours = start([sys.executable, "-m", "driftloop.cli", "serve", "--config", str(config), "--port",
                  str(ports["driftloop"])], folder / "driftloop.log", folder, env)
    theirs = start([sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{model_name}@champion",
                    "--env-manager", "local", "--host", "127.0.0.1", "--port", str(ports["mlflow"])],
                   folder / "mlflow.log", folder, {**env, **threads, "MLFLOW_TRACKING_URI": tracking_uri})
    targets = {"driftloop": Target("driftloop", ports["driftloop"], "/predict", "rows", ours),
               "driftloop-oip": Target("driftloop-oip", ports["driftloop"], f"/v2/models/{model_name}/infer", "oip",
                                       ours),
               "driftloop-invocations": Target("driftloop-invocations", ports["driftloop"], "/invocations", "records",
                                               ours),
               "mlflow": Target("mlflow", ports["mlflow"], "/invocations", "dataframe_records", theirs)}
    wait_ready(f"http://127.0.0.1:{ports['driftloop']}/healthz", ours, folder / "driftloop.log")
    wait_ready(f"http://127.0.0.1:{ports['mlflow']}/ping", theirs, folder / "mlflow.log")
    return targets


def body(rows: list[dict], wrap: str) -> dict:
    """One request body holding `rows` in a server's format."""
    if wrap == "oip":  # one tensor per column, as an OIP client builds them from GET /v2/models/<name>
        return {"inputs": [{"name": c, "datatype": "FP64" if isinstance(rows[0][c], float) else "BYTES",
                            "shape": [len(rows)], "data": [row[c] for row in rows]} for c in rows[0]]}
    return {"rows" if wrap == "rows" else "dataframe_records": rows}


def bodies(rows: list[dict], size: int, wrap: str) -> list[bytes]:
    """BODIES request bodies of `size` consecutive held-back rows each, the same rows for every server."""
    return [json.dumps(body(rows[i * size:(i + 1) * size], wrap)).encode() for i in range(BODIES)]


def answered_predictions(answer: dict) -> list[float]:
    """The predictions of an answer: {"predictions": [...]}, or the OIP `prediction` output tensor."""
    if "outputs" in answer:
        return next(o["data"] for o in answer["outputs"] if o["name"] == "prediction")
    return answer["predictions"]


def check_same_predictions(targets: dict[str, Target], rows: list[dict]) -> float:
    """Score the same rows on both servers, as 64-row and 1-row requests; the largest difference, or exit."""
    import httpx
    import numpy as np

    answers: dict[str, list[float]] = {}
    for target in targets.values():
        url = f"http://127.0.0.1:{target.port}{target.path}"
        scored: list[float] = []
        for payload in bodies(rows, 64, target.wrap)[:4] + bodies(rows, 1, target.wrap)[:16]:
            answer = httpx.post(url, content=payload, headers={"content-type": "application/json"}, timeout=60)
            if answer.status_code != 200:
                raise SystemExit(f"{target.name}: HTTP {answer.status_code} on the check rows: {answer.text[:2000]}")
            scored += [float(value) for value in answered_predictions(answer.json())]
        answers[target.name] = scored
    theirs = np.asarray(answers["mlflow"])
    worst = 0.0
    for name in OURS:
        ours = np.asarray(answers[name])
        if ours.shape != theirs.shape:
            raise SystemExit(f"different numbers of predictions: {name} {ours.shape}, mlflow {theirs.shape}")
        worst = max(worst, float(np.max(np.abs(ours - theirs))))
    if not worst <= TOLERANCE:
        raise SystemExit(f"the servers disagree by up to {worst:.3g} (> {TOLERANCE:g}) on the same rows: "
                         "the comparison would be meaningless")
    return worst


# ---------------------------------------------------------------- the load generator

Send = Callable[[int], Awaitable[int]]  # send body number i, answer the HTTP status
Opener = Callable[[], Awaitable[tuple[Send, Callable[[], Awaitable[None]]]]]  # a connection: (send, close)


def _content_length(head: bytes) -> int | None:
    """Content-Length of a header block, or None."""
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            return int(line[15:])
    return None


async def _read_chunked(reader: asyncio.StreamReader) -> None:
    """Consume a chunked body (neither server uses it today, but a silent hang would be worse)."""
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        await reader.readexactly(size + 2)
        if size == 0:
            return


def raw_opener(port: int, path: str, payloads: list[bytes]) -> Opener:
    """Keep-alive HTTP/1.1 over asyncio streams: request bytes built once, the answer read by Content-Length."""
    head = (f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\n"
            "content-length: {}\r\n\r\n")
    requests = [head.format(len(body)).encode() + body for body in payloads]

    async def opener() -> tuple[Send, Callable[[], Awaitable[None]]]:
        state: dict[str, asyncio.StreamWriter | asyncio.StreamReader | None] = {"reader": None, "writer": None}

        async def send(i: int) -> int:
            if state["writer"] is None:
                state["reader"], state["writer"] = await asyncio.open_connection("127.0.0.1", port)
            reader, writer = state["reader"], state["writer"]
            try:
                writer.write(requests[i % len(requests)])
                answer = await reader.readuntil(b"\r\n\r\n")
                length = _content_length(answer)
                if length is not None:
                    await reader.readexactly(length)
                elif b"chunked" in answer.lower():
                    await _read_chunked(reader)
                else:
                    raise ConnectionError("answer without content-length or chunked body")
                if b"connection: close" in answer.lower():
                    await close()
                return int(answer[9:12])
            except BaseException:
                await close()  # a broken connection is not reused: the next request opens a new one
                raise

        async def close() -> None:
            writer = state["writer"]
            state["reader"] = state["writer"] = None
            if writer is not None:
                writer.close()

        return send, close

    return opener


def httpx_opener(port: int, path: str, payloads: list[bytes], client_box: dict) -> Opener:
    """httpx.AsyncClient with a shared connection pool: only for the client-ceiling comparison."""
    import httpx

    url = f"http://127.0.0.1:{port}{path}"
    headers = {"content-type": "application/json"}

    async def opener() -> tuple[Send, Callable[[], Awaitable[None]]]:
        if "client" not in client_box:
            client_box["client"] = httpx.AsyncClient(limits=httpx.Limits(max_connections=64), timeout=60)
        client: httpx.AsyncClient = client_box["client"]

        async def send(i: int) -> int:
            return (await client.post(url, content=payloads[i % len(payloads)], headers=headers)).status_code

        async def close() -> None:
            return None

        return send, close

    return opener


async def _load(opener: Opener, concurrency: int, warmup_s: float, seconds: float) -> tuple[list[float], Counter, int]:
    """`concurrency` closed-loop workers: latencies (s) of requests started after the warm-up, error kinds, and the
    number of 200 answers, warm-up included."""
    started = time.perf_counter()
    measure_from, stop_at = started + warmup_s, started + warmup_s + seconds
    latencies: list[float] = []
    errors: Counter = Counter()
    answered = 0

    async def worker(offset: int) -> None:
        nonlocal answered
        send, close = await opener()
        i = offset * 7919  # workers start at different bodies
        while (sent := time.perf_counter()) < stop_at:
            try:
                status = await send(i)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as error:
                status = type(error).__name__
            done = time.perf_counter()
            i += 1
            answered += status == 200
            if sent >= measure_from:
                latencies.append(done - sent)
                if status != 200:
                    errors[str(status)] += 1
        await close()

    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return latencies, errors, answered


def run_load(opener: Opener, concurrency: int, warmup_s: float,
             seconds: float) -> tuple[list[float], Counter, int, float]:
    """One load run on a fresh uvloop event loop: latencies, errors, 200 answers, wall seconds of the measured part."""
    import uvloop

    gc.collect()
    gc.freeze()  # the set-up's objects are never scanned during the run: no collector pauses in the latencies
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        began = time.perf_counter()
        latencies, errors, answered = runner.run(_load(opener, concurrency, warmup_s, seconds))
        wall = time.perf_counter() - began - warmup_s
    gc.unfreeze()
    return latencies, errors, answered, wall


# ---------------------------------------------------------------- CPU of the servers (a steadier figure than time)


def _tree(pid: int) -> list[int]:
    """`pid` and all its descendants (mlflow's CLI starts uvicorn as a child)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += parents.get(current, [])
    return found


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process tree (Linux /proc), None where /proc cannot say."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    try:
        for member in _tree(pid):
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    except (OSError, IndexError, ValueError):
        return None
    return total / ticks


# ---------------------------------------------------------------- runs


def summarise(run: Run, latencies: list[float], errors: Counter, answered: int, wall: float) -> Run:
    """Fill a Run's figures from its latencies."""
    import numpy as np

    run.answered_rows = answered * run.rows
    ms = np.asarray(latencies) * 1000.0
    run.requests, run.errors, run.error_kinds = len(ms), sum(errors.values()), dict(errors)
    run.seconds = wall
    run.req_s = len(ms) / wall if wall > 0 else 0.0
    run.rows_s = run.req_s * run.rows
    if len(ms):
        run.p50_ms, run.p90_ms, run.p99_ms = (float(v) for v in np.percentile(ms, [50, 90, 99]))
        run.max_ms = float(ms.max())
    return run


def timed_run(target: Target, payloads: list[bytes], rows: int, concurrency: int, round_: int,
              warmup_s: float, seconds: float) -> Run:
    """One measured run against one server, with the server's CPU time over the whole run."""
    run = Run(target.name, rows, concurrency, round_, "raw-asyncio", load_before=os.getloadavg()[0])
    pid = target.process.pid if target.process else None
    cpu_before = cpu_seconds(pid) if pid else None
    outcome = run_load(raw_opener(target.port, target.path, payloads), concurrency, warmup_s, seconds)
    cpu_after = cpu_seconds(pid) if pid else None
    summarise(run, *outcome)
    if cpu_before is not None and cpu_after is not None:
        # CPU over warm-up + measured part, per request of the measured part scaled to the same span.
        run.server_cpu_s = cpu_after - cpu_before
        total_requests = run.requests * (warmup_s + seconds) / seconds
        run.cpu_ms_per_request = 1000.0 * run.server_cpu_s / total_requests if total_requests else None
    return run


def trivial_server(port: int) -> None:
    """A minimal keep-alive HTTP server answering `{}` to every request: the client's ceiling (run as a child)."""
    import uvloop

    class Trivial(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            self.buffer = b""

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
                total = end + 4 + (_content_length(self.buffer[:end]) or 0)
                if len(self.buffer) < total:
                    return
                self.buffer = self.buffer[total:]
                self.transport.write(TRIVIAL_RESPONSE)

    async def serve() -> None:
        server = await asyncio.get_running_loop().create_server(Trivial, "127.0.0.1", port)
        await server.serve_forever()

    uvloop.run(serve())


def client_ceiling(rows: list[dict], folder: Path, warmup_s: float, seconds: float) -> list[Run]:
    """Both clients against the trivial endpoint (another process), 64-row bodies, each concurrency."""
    port = free_port()
    process = start([sys.executable, __file__, "--trivial-server", str(port)], folder / "trivial.log", folder,
                    child_env())
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    log = (folder / "trivial.log").read_text()
                    raise SystemExit(f"the trivial server did not start:\n{log}") from None
                time.sleep(0.1)
        payloads = bodies(rows, 64, "rows")  # the client's ceiling: /predict's body
        runs = []
        for client in ("raw-asyncio", "httpx"):
            for concurrency in CONCURRENCY:
                box: dict = {}
                opener = (raw_opener(port, "/", payloads) if client == "raw-asyncio"
                          else httpx_opener(port, "/", payloads, box))
                run = Run("trivial", 64, concurrency, 0, client, load_before=os.getloadavg()[0])
                summarise(run, *run_load(opener, concurrency, warmup_s, seconds))
                if "client" in box:
                    asyncio.run(box["client"].aclose())
                runs.append(run)
        return runs
    finally:
        stop(process)


def median_cells(runs: list[Run]) -> list[dict]:
    """Per server, row size and concurrency: medians over the rounds."""
    import numpy as np

    cells = []
    for rows in ROW_SIZES:
        for concurrency in CONCURRENCY:
            for server in SERVERS:
                chosen = [r for r in runs if (r.server, r.rows, r.concurrency) == (server, rows, concurrency)]
                if not chosen:
                    continue
                cell = {"server": server, "rows": rows, "concurrency": concurrency, "rounds": len(chosen),
                        "errors": sum(r.errors for r in chosen)}
                for key in ("req_s", "rows_s", "p50_ms", "p90_ms", "p99_ms", "cpu_ms_per_request"):
                    values = [getattr(r, key) for r in chosen if getattr(r, key) is not None]
                    cell[key] = float(np.median(values)) if values else None
                cells.append(cell)
    return cells


def ratios(cells: list[dict]) -> list[dict]:
    """Each driftloop path / mlflow per row size and concurrency, and whether the goal is met there."""
    by = {(c["server"], c["rows"], c["concurrency"]): c for c in cells}
    out = []
    for server in OURS:
        out += _ratios(by, server)
    return out


def _ratios(by: dict, server: str) -> list[dict]:
    """One driftloop path / mlflow per row size and concurrency."""
    out = []
    for rows in ROW_SIZES:
        for concurrency in CONCURRENCY:
            ours, theirs = by.get((server, rows, concurrency)), by.get(("mlflow", rows, concurrency))
            if not ours or not theirs:
                continue
            throughput = ours["req_s"] / theirs["req_s"]
            p99 = ours["p99_ms"] / theirs["p99_ms"]
            valid = ours["errors"] == 0 and theirs["errors"] == 0
            cpu = (ours["cpu_ms_per_request"] / theirs["cpu_ms_per_request"]
                   if ours["cpu_ms_per_request"] and theirs["cpu_ms_per_request"] else None)
            out.append({"server": server, "rows": rows, "concurrency": concurrency, "throughput_ratio": throughput,
                        "p99_ratio": p99,
                        "cpu_per_request_ratio": cpu,
                        "valid": valid, "goal_met": valid and throughput >= GOAL_THROUGHPUT and p99 <= GOAL_P99})
    return out


# ---------------------------------------------------------------- output


def versions() -> dict[str, str | None]:
    """Installed versions of the packages that matter here."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in VERSIONS:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def cpu_model() -> str | None:
    """The CPU's model name from /proc/cpuinfo."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def print_tables(results: dict) -> None:
    """The results, the ratios and the client's ceiling as rich tables, then the same as markdown."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=160) if not sys.stdout.isatty() else Console()
    machine = results["machine"]
    load = f"load average {machine['load_before'][0]:.2f} → {machine['load_after'][0]:.2f}"
    table = Table(title=f"Model servers, medians of {results['settings']['rounds']} rounds "
                        f"({results['settings']['seconds']:g} s each; {machine['cores']} cores, {load})")
    for column in ("server", "rows/request", "concurrency", "req/s", "rows/s", "p50 ms", "p99 ms", "errors",
                   "server CPU ms/req"):
        table.add_column(column, justify="left" if column == "server" else "right")
    for c in results["medians"]:
        table.add_row(c["server"], str(c["rows"]), str(c["concurrency"]), _fmt(c["req_s"]), _fmt(c["rows_s"], 0),
                      _fmt(c["p50_ms"], 2), _fmt(c["p99_ms"], 2), str(c["errors"]), _fmt(c["cpu_ms_per_request"], 2))
    console.print(table)
    goal = Table(title=f"driftloop / mlflow (goal: throughput ≥ {GOAL_THROUGHPUT:g}×, p99 ≤ {GOAL_P99:g}×)")
    for column in ("path", "rows/request", "concurrency", "throughput ratio", "p99 ratio", "goal met",
                   "CPU/request ratio"):
        goal.add_column(column, justify="left" if column == "path" else "right")
    for r in results["ratios"]:
        verdict = "invalid (errors)" if not r["valid"] else ("yes" if r["goal_met"] else "no")
        goal.add_row(r["server"], str(r["rows"]), str(r["concurrency"]), f"{r['throughput_ratio']:.2f}",
                     f"{r['p99_ratio']:.2f}", verdict, _fmt(r["cpu_per_request_ratio"], 2))
    console.print(goal)
    ceiling = Table(title="Client ceiling: trivial endpoint (another process), 64-row bodies")
    for column in ("client", "concurrency", "req/s", "p50 ms", "p99 ms", "errors"):
        ceiling.add_column(column, justify="left" if column == "client" else "right")
    for r in results["client_ceiling"]:
        ceiling.add_row(r["client"], str(r["concurrency"]), _fmt(r["req_s"]), _fmt(r["p50_ms"], 2),
                        _fmt(r["p99_ms"], 2), str(r["errors"]))
    console.print(ceiling)
    print(markdown(results))


def markdown(results: dict) -> str:
    """The two main tables as markdown, for benchmarks/README.md."""
    by = {(c["server"], c["rows"], c["concurrency"]): c for c in results["medians"]}
    lines = ["| driftloop path | rows/request | concurrency | driftloop req/s | mlflow req/s | "
             "driftloop p50 / p99 ms | mlflow p50 / p99 ms | throughput ratio | p99 ratio | errors | goal met | "
             "CPU/request ratio |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in results["ratios"]:
        ours, theirs = by[(r["server"], r["rows"], r["concurrency"])], by[("mlflow", r["rows"], r["concurrency"])]
        verdict = "invalid" if not r["valid"] else ("**yes**" if r["goal_met"] else "no")
        lines.append(f"| {r['server']} | {r['rows']} | {r['concurrency']} | {ours['req_s']:,.0f} | "
                     f"{theirs['req_s']:,.0f} | "
                     f"{ours['p50_ms']:.2f} / {ours['p99_ms']:.2f} | {theirs['p50_ms']:.2f} / {theirs['p99_ms']:.2f} | "
                     f"{r['throughput_ratio']:.2f} | {r['p99_ratio']:.2f} | {ours['errors'] + theirs['errors']} | "
                     f"{verdict} | {_fmt(r['cpu_per_request_ratio'], 2)} |")
    return "\n".join(lines)


# ---------------------------------------------------------------- main


@contextmanager
def servers(config: Path, folder: Path, model_name: str, tracking_uri: str,
            mlflow_threads: int | None) -> Iterator[dict[str, Target]]:
    """Both servers for the duration of the block, always stopped afterwards."""
    targets: dict[str, Target] = {}
    try:
        targets = start_servers(config, folder, model_name, tracking_uri, mlflow_threads)
        yield targets
    finally:
        for target in targets.values():
            if target.process is not None:
                stop(target.process)


def logged_rows(state: Path) -> int | None:
    """Rows in driftloop's prediction log (proof that it was on), None if it cannot be read."""
    import sqlite3

    try:
        with sqlite3.connect(f"file:{state / 'predictions.db'}?mode=ro", uri=True) as db:
            return int(db.execute("SELECT COUNT(*) FROM predictions").fetchone()[0])
    except sqlite3.Error:
        return None


def alternate_runs(targets: dict[str, Target], rows: list[dict], args: argparse.Namespace) -> list[Run]:
    """Every cell, every server path in turn per round (A, B, C, D, A, ...): all see the same drift of the machine's
    speed."""
    payloads = {(name, size): bodies(rows, size, target.wrap)
                for name, target in targets.items() for size in ROW_SIZES}
    runs: list[Run] = []
    for size in ROW_SIZES:
        for concurrency in args.concurrency:
            for round_ in range(args.rounds):
                for name in SERVERS:
                    run = timed_run(targets[name], payloads[(name, size)], size, concurrency, round_,
                                    args.warmup, args.seconds)
                    runs.append(run)
                    print(f"  {name:21} rows {size:2} concurrency {concurrency:2} round {round_}: "
                          f"{run.req_s:8,.1f} req/s p50 {run.p50_ms:7.2f} ms p99 {run.p99_ms:7.2f} ms "
                          f"errors {run.errors}", file=sys.stderr)
    return runs


def settings(args: argparse.Namespace, numerical: list[str], categorical: list[str]) -> dict:
    """What was run, and how each server was started."""
    return {"seconds": args.seconds, "warmup_s": args.warmup, "rounds": args.rounds, "quick": args.quick,
            "row_sizes": list(ROW_SIZES), "concurrency": list(args.concurrency), "train_rows": TRAIN_ROWS,
            "distinct_bodies": BODIES, "tolerance": TOLERANCE, "numerical": numerical, "categorical": categorical,
            "mlflow_threads": args.mlflow_threads,
            "order": "per cell: driftloop, driftloop-oip, driftloop-invocations, mlflow, then again",
            "client": "raw asyncio HTTP/1.1 keep-alive on uvloop, closed loop, one connection per in-flight "
                      "request, one process for all runs (the servers are separate processes)",
            "servers": {
                "driftloop": "python -m driftloop.cli serve --config C --port P (uvicorn, 1 worker, prediction "
                             "log on: state_dir/predictions.db; torch.set_num_threads(1))",
                "mlflow": "python -m mlflow models serve -m models:/NAME@champion --env-manager local --host "
                          "127.0.0.1 --port P (MLflow's defaults: uvicorn, 1 worker (--workers defaults to 1), "
                          "request timeout 60 s, scoring in asyncio.to_thread, torch's default threads)"},
            "goal": {"throughput_ratio_at_least": GOAL_THROUGHPUT, "p99_ratio_at_most": GOAL_P99}}


def parse_args() -> argparse.Namespace:
    """Command-line flags; --quick overrides the durations."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per run (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds before each run (default 2)")
    parser.add_argument("--rounds", type=int, default=2, help="runs per server and cell, alternating (default 2)")
    parser.add_argument("--quick", action="store_true", help="1 s runs, one round: a smoke run")
    parser.add_argument("--mlflow-threads", type=int, help="torch threads in MLflow's server (default: MLflow's "
                        "own, one per core); 1 matches driftloop's setting: a fairness check")
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY),
                        help=f"requests in flight to measure (default {' '.join(map(str, CONCURRENCY))})")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "serve.json")
    parser.add_argument("--trivial-server", type=int, help=argparse.SUPPRESS)  # internal: the ceiling's endpoint
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.warmup, args.rounds = 1.0, 0.5, 1
    return args


def main() -> None:
    """Set up, check, load both servers alternately; print and write the results."""
    args = parse_args()
    if args.trivial_server:
        trivial_server(args.trivial_server)
        return
    started = time.perf_counter()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        folder = Path(tmp)
        data, rows, numerical, categorical = prepare_data(folder)
        config = write_config(folder)
        print(f"training on {TRAIN_ROWS} January flights ...", file=sys.stderr)
        trained = train(config, data, folder)
        from driftloop.config import load_config
        from driftloop.state import mlflow_tracking_uri

        loaded = load_config(config)
        setup_s = time.perf_counter() - started
        print("starting both servers ...", file=sys.stderr)
        with servers(config, folder, loaded.model.name, mlflow_tracking_uri(loaded), args.mlflow_threads) as targets:
            worst = check_same_predictions(targets, rows)
            print(f"same predictions on both servers (max |diff| {worst:.2g}); client ceiling ...", file=sys.stderr)
            ceiling = client_ceiling(rows, folder, min(args.warmup, 1.0), min(args.seconds, 3.0))
            logged_before = logged_rows(Path(loaded.state_dir))
            runs = alternate_runs(targets, rows, args)
            time.sleep(1.0)  # a group commit may still hold the last rows of the last driftloop run
            logged_after = logged_rows(Path(loaded.state_dir))
    answered = sum(r.answered_rows for r in runs if r.server in OURS)
    log_check = {"before_runs": logged_before, "after_runs": logged_after, "answered_rows_during_runs": answered,
                 "complete": None if logged_before is None or logged_after is None
                 else logged_after - logged_before == answered}
    cells = median_cells(runs)
    results = {
        "machine": {"cores": os.cpu_count(), "cpu": cpu_model(), "load_before": list(load_before),
                    "load_after": list(os.getloadavg()), "platform": platform.platform(), "versions": versions()},
        "settings": settings(args, numerical, categorical),
        "training": trained,
        "max_abs_prediction_diff": worst,
        "prediction_log": log_check,
        "setup_s": setup_s,
        "client_ceiling": [asdict(r) for r in ceiling],
        "runs": [asdict(r) for r in runs],
        "medians": cells,
        "ratios": ratios(cells),
        "seconds": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1), encoding="utf-8")
    print_tables(results)
    print(f"\ntotal {results['seconds']:.0f} s (set-up {setup_s:.0f} s); results in {args.out}")
    print(f"prediction log: {log_check}")
    if log_check["complete"] is False:
        print("WARNING: driftloop's prediction log does not hold exactly the rows it answered", file=sys.stderr)
    invalid = [r for r in results["ratios"] if not r["valid"]]
    if invalid:
        raise SystemExit(f"{len(invalid)} cell(s) had errors: those runs are not valid")


if __name__ == "__main__":
    main()
