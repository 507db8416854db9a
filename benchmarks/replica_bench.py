"""Model server replicas benchmark (issue 16): requests/s and p99 of one and of two `driftloop serve` replicas, with
the prediction log on SQLite and on the stack's PostgreSQL; logged rows = answered rows.

Set-up, per database, in a fresh temporary folder (outside /tmp/pytest-of-*: PostgreSQL runs as another user):
`driftloop train` registers version 1 (4,000 January flights, as benchmarks/serve_bench.py); for PostgreSQL,
`driftloop stack up --only postgres` starts the stack's private cluster and every server logs to it (the stack's
default while its PostgreSQL runs). Two replicas start with the stack's command (`driftloop serve --port P`), each
pinned to one core with `taskset` (replica 1 on CPU 0, replica 2 on CPU 1): "single-threaded", so that two cores can
show what a second replica buys. The one-replica runs load replica 1 only.

Load: serve_bench's raw asyncio client, `--concurrency` keep-alive connections spread evenly over the loaded replicas
(as a round-robin balancer would), bodies of `--rows` held-back rows; runs alternate (1, 2, 1, 2, ...) over
`--rounds` rounds; figures are medians. After each run the log's row count must have grown by exactly the rows
answered 200 (warm-up included): a request is answered only after the commit that holds its rows.

    nice -n 10 .venv/bin/python benchmarks/replica_bench.py                 # ~6 min on 2 cores
    nice -n 10 .venv/bin/python benchmarks/replica_bench.py --quick         # a smoke run
    nice -n 10 .venv/bin/python benchmarks/replica_bench.py --databases postgres

Each run also reports the CPU time per request answered of the loaded replicas, of PostgreSQL (the postmaster and
its children) and of the load generator (this process), read from /proc before and after the run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import serve_bench as sb  # noqa: E402 - the serving benchmark's data, training and load client

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
GOAL = 1.6  # two replicas on PostgreSQL serve at least this many times one replica's requests/s


@dataclass
class Cell:
    """One timed run: a database, a replica count, a round."""

    database: str
    replicas: int
    round: int
    requests: int = 0
    errors: int = 0
    req_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    answered_rows: int = 0
    logged_rows: int = 0
    load_before: float = 0.0
    # CPU time per request answered, in ms: the loaded replicas, PostgreSQL (all its processes), the load generator.
    server_cpu_ms: float = 0.0
    postgres_cpu_ms: float = 0.0
    client_cpu_ms: float = 0.0


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by these processes (0 for one that is gone)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
    return total / os.sysconf("SC_CLK_TCK")


def postgres_pids(folder: Path) -> list[int]:
    """The postmaster of the cluster under `folder` and its children (backends, WAL writer, checkpointer, ...)."""
    found = list(folder.rglob("postmaster.pid"))
    if not found:
        return []
    parent = int(found[0].read_text().split()[0])
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == parent:
                children.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return [parent, *children]


def write_config(folder: Path, database: str) -> tuple[Path, dict]:
    """serve_bench's config (small, fast training) with the stack's database and two replicas on free ports."""
    import yaml

    path = sb.write_config(folder)
    raw = yaml.safe_load(path.read_text())
    from driftloop.stack.process import port_free

    port = sb.free_port()
    while not port_free("127.0.0.1", port + 1):  # the second replica listens on the next port
        port = sb.free_port()
    raw["serving"] = {**raw.get("serving", {}), "port": port}
    raw["stack"] = {**raw.get("stack", {}), "database": database, "postgres_port": sb.free_port(),
                    "server_replicas": 2}
    path.write_text(yaml.safe_dump(raw))
    return path, raw


def driftloop(*args: str, config: Path, folder: Path) -> None:
    """Run the CLI; exit with its output if it fails."""
    done = subprocess.run([sys.executable, "-m", "driftloop.cli", *args, "--config", str(config)], cwd=folder,
                          env=sb.child_env(), capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise SystemExit(f"driftloop {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")


def log_url(config: Path) -> str:
    """Where the servers log: the stack's PostgreSQL while it runs, else the SQLite file."""
    from driftloop.config import load_config
    from driftloop.serving.log import log_location

    return log_location(load_config(config))


def count_rows(location: str) -> int:
    """Rows in the `predictions` table."""
    if location.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(location) as db:
            return int(db.execute("SELECT count(*) FROM predictions").fetchone()[0])
    if not Path(location).exists():
        return 0
    with sqlite3.connect(location) as db:
        return int(db.execute("SELECT count(*) FROM predictions").fetchone()[0])


def start_replicas(config: Path, folder: Path, port: int) -> list[subprocess.Popen]:
    """Two `driftloop serve` replicas on port and port + 1, replica i pinned to CPU i."""
    cpus = os.cpu_count() or 1
    replicas = []
    for index in range(2):
        log = folder / f"server-{index + 1}.log"
        command = ["taskset", "-c", str(index % cpus), sys.executable, "-m", "driftloop.cli", "serve", "--config",
                   str(config), "--port", str(port + index)]
        replicas.append(sb.start(command, log, folder, sb.child_env()))
    for index, process in enumerate(replicas):
        sb.wait_ready(f"http://127.0.0.1:{port + index}/healthz", process, folder / f"server-{index + 1}.log")
    return replicas


async def _spread(openers: list, concurrency: int, warmup_s: float, seconds: float) -> tuple[list[float], Counter, int]:
    """serve_bench's closed-loop workers, connection k on replica k mod n."""
    queue = list(openers)
    index = {"next": 0}

    async def opener():  # noqa: ANN202 - serve_bench's Opener
        chosen = queue[index["next"] % len(queue)]
        index["next"] += 1
        return await chosen()

    return await sb._load(opener, concurrency, warmup_s, seconds)


def timed(database: str, replicas: list[subprocess.Popen], round_: int, ports: list[int], payloads: list[bytes],
          rows: int, location: str, folder: Path, args: argparse.Namespace) -> Cell:
    """One run against the `replicas` (on the first of `ports`); the log must gain exactly the answered rows."""
    import uvloop

    cell = Cell(database, len(replicas), round_, load_before=os.getloadavg()[0])
    before = count_rows(location)
    openers = [sb.raw_opener(port, "/predict", payloads) for port in ports[:len(replicas)]]
    servers, postgres = [p.pid for p in replicas], postgres_pids(folder)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        began = time.perf_counter()
        cpu = (cpu_seconds(servers), cpu_seconds(postgres), time.process_time())
        latencies, errors, answered = runner.run(_spread(openers, args.concurrency, args.warmup, args.seconds))
        spent = (cpu_seconds(servers) - cpu[0], cpu_seconds(postgres) - cpu[1], time.process_time() - cpu[2])
        wall = time.perf_counter() - began - args.warmup
    run = sb.summarise(sb.Run(database, rows, args.concurrency, round_, "raw-asyncio"), latencies, errors, answered,
                       wall)
    cell.requests, cell.errors, cell.req_s = run.requests, run.errors, run.req_s
    cell.p50_ms, cell.p99_ms, cell.answered_rows = run.p50_ms, run.p99_ms, run.answered_rows
    cell.logged_rows = count_rows(location) - before
    requests = max(1, answered)  # 200 answers, warm-up included, as in the CPU times
    cell.server_cpu_ms, cell.postgres_cpu_ms, cell.client_cpu_ms = (round(1000 * s / requests, 3) for s in spent)
    print(f"{database:8} {len(replicas)} replica(s) round {round_}: {cell.req_s:7.1f} req/s  p99 {cell.p99_ms:6.1f} ms"
          f"  answered rows {cell.answered_rows}  logged {cell.logged_rows}  errors {cell.errors}  "
          f"load {cell.load_before:.1f}  CPU ms/request: servers {cell.server_cpu_ms:.2f}, PostgreSQL "
          f"{cell.postgres_cpu_ms:.2f}, client {cell.client_cpu_ms:.2f}", flush=True)
    return cell


def bench_database(database: str, folder: Path, data: Path, rows_pool: list[dict],
                   args: argparse.Namespace) -> list[Cell]:
    """Train, (start PostgreSQL,) start two replicas, alternate 1- and 2-replica runs."""
    folder.mkdir(parents=True)
    config, raw = write_config(folder, database)
    sb.train(config, data, folder)
    cells: list[Cell] = []
    replicas: list[subprocess.Popen] = []
    try:
        if database == "postgres":
            driftloop("stack", "up", "--only", "postgres", config=config, folder=folder)
        location = log_url(config)
        port = raw["serving"]["port"]
        replicas = start_replicas(config, folder, port)
        payloads = sb.bodies(rows_pool, args.rows, "rows")
        for round_ in range(1, args.rounds + 1):
            for count in (1, 2):
                cells.append(timed(database, replicas[:count], round_, [port, port + 1], payloads, args.rows,
                                   location, folder, args))
    finally:
        for process in replicas:
            sb.stop(process)
        if database == "postgres":
            driftloop("stack", "down", config=config, folder=folder)
    return cells


def medians(cells: list[Cell]) -> list[dict]:
    """Per database and replica count: median req/s and p99 over the rounds, rows answered and logged in all."""
    out = []
    for database in dict.fromkeys(c.database for c in cells):
        base = None
        for replicas in (1, 2):
            group = [c for c in cells if c.database == database and c.replicas == replicas]
            req_s = statistics.median(c.req_s for c in group)
            base = req_s if replicas == 1 else base
            out.append({"database": database, "replicas": replicas, "req_s": round(req_s, 1),
                        "p99_ms": round(statistics.median(c.p99_ms for c in group), 1),
                        "speedup": round(req_s / base, 2) if base else None,
                        "cpu_ms_per_request": {part: round(statistics.median(getattr(c, f"{part}_cpu_ms")
                                                                             for c in group), 2)
                                               for part in ("server", "postgres", "client")},
                        "answered_rows": sum(c.answered_rows for c in group),
                        "logged_rows": sum(c.logged_rows for c in group),
                        "errors": sum(c.errors for c in group)})
    return out


def markdown(summary: list[dict], args: argparse.Namespace) -> str:
    """The results table for benchmarks/README.md."""
    lines = [f"{args.rows} rows per request, {args.concurrency} connections, {args.seconds:g} s runs after "
             f"{args.warmup:g} s warm-up, median of {args.rounds} rounds; each replica pinned to one core.", "",
             "| log | replicas | req/s | p99 ms | × one replica | rows answered | rows logged | errors "
             "| CPU ms/request: servers, PostgreSQL, client |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in summary:
        cpu = row["cpu_ms_per_request"]
        lines.append(f"| {row['database']} | {row['replicas']} | {row['req_s']} | {row['p99_ms']} | "
                     f"{row['speedup']} | {row['answered_rows']} | {row['logged_rows']} | {row['errors']} | "
                     f"{cpu['server']}, {cpu['postgres']}, {cpu['client']} |")
    return "\n".join(lines) + "\n"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--databases", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    parser.add_argument("--rows", type=int, default=16, help="rows per request")
    parser.add_argument("--concurrency", type=int, default=16, help="connections in all (spread over the replicas)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=3.0, help="warm-up seconds per run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of 1 and 2 replicas")
    parser.add_argument("--quick", action="store_true", help="5 s runs, one round")
    parser.add_argument("--name", default="replicas", help="results/NAME.json and results/NAME.md")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds = 5.0, 1
    return args


def main() -> None:
    args = parse_args()
    root = Path(tempfile.mkdtemp(prefix="driftloop-replica-bench-"))
    try:
        data, rows_pool, _, _ = sb.prepare_data(root)
        cells = []
        for database in args.databases.split(","):
            cells += bench_database(database, root / database, data, rows_pool, args)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    summary = medians(cells)
    RESULTS.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("quick", "name")}
    (RESULTS / f"{args.name}.json").write_text(json.dumps({"settings": settings, "cpus": os.cpu_count(),
                                                       "summary": summary, "runs": [asdict(c) for c in cells]},
                                                      indent=2) + "\n")
    table = markdown(summary, args)
    (RESULTS / f"{args.name}.md").write_text(table)
    print(table)
    postgres = {row["replicas"]: row for row in summary if row["database"] == "postgres"}
    if 2 in postgres:
        verdict = "met" if postgres[2]["speedup"] >= GOAL else "NOT met"
        print(f"goal: two replicas on PostgreSQL >= {GOAL}x one: {postgres[2]['speedup']}x ({verdict})")
    lost = [row for row in summary if row["answered_rows"] != row["logged_rows"]]
    print("logged rows = answered rows in every cell" if not lost else f"ROWS DIFFER: {lost}")


if __name__ == "__main__":
    main()
