"""Prediction-log benchmark: the deployed monitor's read path on a 1-million and a 5-million-row log (peak memory,
time), and the old whole-range read for comparison.

Set-up (not timed): a SQLite prediction log made by driftloop.serving.log (the server's schema) and filled with real
held-back 2013 flights, cycled, with the server's stored form (PII dropped, features as compact JSON). Event times
advance 30 s per row, so a 7-day monitoring window (the default) holds 20,160 rows: 50 windows in 1 M rows, 248 in
5 M. Filling uses one bulk transaction (synchronous off): it is set-up, not the server's path.

Measured, each case in a fresh child process (peak RSS from getrusage, the imports included, reported apart): what
`monitor_traffic` reads for a cursor N rows behind the end of the log: the ids and event times of at most
serving.log_index_rows rows at a time (`window_ranges`: `read_index` in chunks, the complete windows cut from them),
and every window's rows read and put in the config's columns (`read_window` + `log_to_contract`), pass after pass
from the last window's end, i.e. everything but the drift check itself (Evidently's cost grows with a
window, which monitoring.max_window_rows caps). The "whole" case reads the same range in one `read` as the monitor
did before (only run up to --whole-max rows: at 5 M rows it would need several GB).

    nice -n 10 .venv/bin/python benchmarks/log_bench.py               # 5 M rows: about 6 min on 2 cores
    nice -n 10 .venv/bin/python benchmarks/log_bench.py --rows 1000000 --sizes 200000 1000000   # a quick run

Writes benchmarks/results/log.json. Goal (issue 15): peak memory at most 1 GB on 5 M rows, time linear in rows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "log.json"
SECONDS_PER_ROW = 30
FILL_BATCH = 100_000
GOAL_PEAK_MB = 1024


def build(path: Path, rows: int) -> float:
    """A SQLite log of `rows` real flights at SECONDS_PER_ROW apart; seconds taken."""
    import pandas as pd

    from driftloop.datasets import load_flights
    from driftloop.pii import PiiPolicy
    from driftloop.serving.log.base import features_json
    from driftloop.serving.log.sqlite import INSERT, SqliteLog
    from tests.helpers import make_config, rows_json

    start = time.perf_counter()
    config = make_config(path.parent / "state")
    flights = load_flights()
    sample = flights[flights["time_hour"] >= pd.Timestamp("2013-07-01", tz="UTC")].head(50_000)
    policy = PiiPolicy.dropping(config.data.pii)
    stored = [features_json(policy.row(row)) for row in rows_json(sample)]
    SqliteLog(path).close()  # the schema, as the server makes it
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA synchronous=OFF")
    origin = pd.Timestamp("2024-01-01", tz="UTC").to_pydatetime()
    logged = origin.isoformat()
    db.execute("BEGIN")
    for first in range(0, rows, FILL_BATCH):
        db.executemany(INSERT, [
            (logged, "1", 0.25, (origin + timedelta(seconds=SECONDS_PER_ROW * i)).isoformat(),
             stored[i % len(stored)], None, None)
            for i in range(first, min(rows, first + FILL_BATCH))])
    db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return time.perf_counter() - start


def measure(path: Path, behind: int, mode: str) -> dict:
    """One case in this (fresh) process: the monitor's read path for the last `behind` rows of the log."""
    imported_at = time.perf_counter()
    from driftloop.flows.deployments import complete_windows, window_ranges
    from driftloop.flows.monitoring import log_to_contract
    from driftloop.serving.log import read_window
    from driftloop.serving.log.sqlite import SqliteLog
    from tests.helpers import make_config

    config = make_config(path.parent / "state", serving={"log_uri": str(path)})
    baseline_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    imports_s = time.perf_counter() - imported_at
    start = time.perf_counter()
    with SqliteLog(path) as log:
        first = log.last_id() - behind + 1
        if mode == "whole":
            logged = log.read(first_id=first)
            windows = complete_windows(config, logged)
            rows = sum(len(log_to_contract(config, w.frame)) for w in windows)
        else:  # monitor_traffic's loop (flows/deployments.py _check_windows) without the drift check
            newest, span, cursor, rows, windows = log.last_id(), config.serving.log_index_rows, first - 1, 0, []
            while True:
                ranges, _ = window_ranges(config, log, cursor, span)
                if not ranges and cursor + span < newest:
                    span *= 2
                    continue
                if not ranges:
                    break
                for low, high in ranges:
                    rows += len(log_to_contract(config, read_window(config, low, high)))
                    cursor = high
                windows.extend(ranges)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"mode": mode, "rows_since_cursor": behind, "windows": len(windows), "rows_read": rows,
            "seconds": round(seconds, 2), "rows_per_s": round(rows / seconds), "peak_rss_mb": round(peak_mb),
            "baseline_rss_mb": round(baseline_mb), "imports_s": round(imports_s, 1)}


def run_case(path: Path, behind: int, mode: str) -> dict:
    """measure() in a child process (its own peak RSS)."""
    done = subprocess.run([sys.executable, __file__, "--measure", str(path), "--behind", str(behind), "--mode", mode],
                          cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"mode": mode, "rows_since_cursor": behind, "error": done.stderr.strip()[-1500:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=5_000_000, help="rows in the log")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 5_000_000],
                        help="rows since the monitor's cursor, one case each")
    parser.add_argument("--whole-max", type=int, default=1_000_000, help="largest case also read the old way")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "driftloop-log-bench")
    parser.add_argument("--keep", action="store_true", help="keep (and reuse) the built log")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--behind", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="chunked", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.measure:
        print(json.dumps(measure(args.measure, args.behind, args.mode)))
        return
    path = args.workdir / f"predictions-{args.rows}.db"
    args.workdir.mkdir(parents=True, exist_ok=True)
    build_s = None
    if not path.exists():
        build_s = round(build(path, args.rows), 1)
        print(f"built {args.rows:,} rows in {build_s} s ({path.stat().st_size / 2**20:,.0f} MB)", flush=True)
    cases = []
    for behind in args.sizes:
        for mode in ("chunked", "whole") if behind <= args.whole_max else ("chunked",):
            case = run_case(path, behind, mode)
            print(json.dumps(case), flush=True)
            cases.append(case)
    chunked = [c for c in cases if c["mode"] == "chunked" and "seconds" in c]
    result = {
        "log_rows": args.rows, "log_mb": round(path.stat().st_size / 2**20), "build_s": build_s,
        "seconds_per_row": SECONDS_PER_ROW, "cases": cases,
        "goal_peak_mb": GOAL_PEAK_MB,
        "goal_met": bool(chunked) and all(c["peak_rss_mb"] <= GOAL_PEAK_MB for c in chunked),
        "seconds_per_million": {c["rows_since_cursor"]: round(c["seconds"] / c["rows_since_cursor"] * 1e6, 2)
                                for c in chunked},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "sqlite": sqlite3.sqlite_version},
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "cases"}, indent=2))
    if not args.keep:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
