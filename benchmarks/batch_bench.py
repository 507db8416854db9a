"""Batch scoring benchmark: `driftloop predict` on 1 million rows, rows/s and the process's peak memory.

Set-up, in a fresh temporary state dir: `driftloop train` on 4,000 January 2013 flights registers version 1 as
`champion` (as benchmarks/serve_bench.py does). The input: 1,000,000 real flights drawn with replacement from all of
2013 (the demo's table, 336,776 rows), with a `row_id` key column, written once as Parquet and once as CSV.

Each run is `python -m driftloop.cli predict --config C --data FILE --out FILE --json` in a child process:

- scoring rows/s: rows / the command's own scoring time (reading, checking, scoring and writing every chunk; the
  registry's model load and the imports before it are timed apart, as start-up), and rows per CPU second of the
  same span (all threads of the process): the steadier figure when other processes share the cores;
- wall: the whole process, imports and model load included;
- peak RSS: the child's maximum resident set (os.wait4's ru_maxrss), everything included.

Runs: Parquet → Parquet and CSV → Parquet at the default chunk size, Parquet with --log (1M rows into the SQLite
prediction log), and Parquet at other serving.batch_chunk_rows values (the default's evidence).
Goals (issue 18): ≥ 100,000 rows/s and ≤ 1 GB peak on 2 cores.

    nice -n 10 .venv/bin/python benchmarks/batch_bench.py              # ~5 min on 2 cores
    nice -n 10 .venv/bin/python benchmarks/batch_bench.py --rows 200000 --no-sweep   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import serve_bench  # noqa: E402  (the shared set-up: config, training, child environment)

GOAL_ROWS_S, GOAL_PEAK_MB = 100_000, 1024
SWEEP_CHUNKS = (8192, 262144)


def make_input(folder: Path, rows: int) -> tuple[Path, Path]:
    """`rows` real flights drawn with replacement, with a row_id key, as Parquet and CSV."""
    import numpy as np

    from driftloop.datasets import load_flights

    flights = load_flights().sample(rows, replace=True, random_state=0).reset_index(drop=True)
    flights.insert(0, "row_id", np.arange(rows))
    parquet, csv = folder / "flights.parquet", folder / "flights.csv"
    flights.to_parquet(parquet, index=False)
    flights.to_csv(csv, index=False)
    return parquet, csv


def chunk_config(config: Path, chunk_rows: int) -> Path:
    """A copy of the config with serving.batch_chunk_rows set."""
    import yaml

    raw = yaml.safe_load(config.read_text())
    raw.setdefault("serving", {})["batch_chunk_rows"] = chunk_rows
    path = config.with_name(f"config-{chunk_rows}.yaml")
    path.write_text(yaml.safe_dump(raw))
    return path


def run_predict(config: Path, data: Path, out: Path, folder: Path, log: bool, label: str) -> dict:
    """One `driftloop predict` child: its JSON summary, wall seconds and peak RSS (MB)."""
    command = [sys.executable, "-m", "driftloop.cli", "predict", "--config", str(config), "--data", str(data),
               "--out", str(out), "--json"] + (["--log"] if log else [])
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    with open(folder / "predict.out", "wb") as stdout, open(folder / "predict.err", "wb") as stderr:
        pid = os.posix_spawn(sys.executable, command, serve_bench.child_env(), file_actions=[
            (os.POSIX_SPAWN_DUP2, stdout.fileno(), 1), (os.POSIX_SPAWN_DUP2, stderr.fileno(), 2)])
        _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{label}: driftloop predict failed:\n{(folder / 'predict.err').read_text()[-3000:]}")
    summary = json.loads((folder / "predict.out").read_text())
    out.unlink()
    peak_mb = usage.ru_maxrss / 1024  # KiB on Linux
    result = {"run": label, "rows": summary["rows"], "scoring_s": summary["seconds"],
              "rows_per_s": summary["rows"] / summary["seconds"], "scoring_cpu_s": summary["cpu_seconds"],
              "rows_per_cpu_s": summary["rows"] / summary["cpu_seconds"], "wall_s": wall,
              "startup_s": wall - summary["seconds"], "peak_rss_mb": peak_mb, "load_before": load_before,
              "goal_met": summary["rows"] / summary["seconds"] >= GOAL_ROWS_S and peak_mb <= GOAL_PEAK_MB}
    print(f"  {label:34} {result['rows_per_s']:>9,.0f} rows/s ({result['rows_per_cpu_s']:,.0f} per CPU s)  scoring "
          f"{summary['seconds']:5.1f} s  wall "
          f"{wall:5.1f} s  peak {peak_mb:6.0f} MB  (load {load_before:.1f})", file=sys.stderr)
    return result


def markdown(results: list[dict]) -> str:
    """The runs as a markdown table, for benchmarks/README.md."""
    lines = ["| run | rows | scoring rows/s | rows per CPU s | scoring s | wall s (imports, model load) | "
             "peak RSS MB | load before | goal met |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        lines.append(f"| {r['run']} | {r['rows']:,} | {r['rows_per_s']:,.0f} | {r['rows_per_cpu_s']:,.0f} | "
                     f"{r['scoring_s']:.1f} | "
                     f"{r['wall_s']:.1f} ({r['startup_s']:.1f}) | {r['peak_rss_mb']:,.0f} | {r['load_before']:.1f} | "
                     f"{'**yes**' if r['goal_met'] else 'no'} |")
    return "\n".join(lines)


def main() -> None:
    """Set up, run each case, print and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows to score (default 1,000,000)")
    parser.add_argument("--no-sweep", action="store_true", help="skip the chunk-size sweep")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "batch.json")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="batch-bench-") as tmp:
        folder = Path(tmp)
        train_data, _, _, _ = serve_bench.prepare_data(folder)
        config = serve_bench.write_config(folder)
        print(f"training on {serve_bench.TRAIN_ROWS} January flights ...", file=sys.stderr)
        serve_bench.train(config, train_data, folder)
        print(f"writing {args.rows:,} rows as Parquet and CSV ...", file=sys.stderr)
        parquet, csv = make_input(folder, args.rows)
        out = folder / "scored.parquet"
        from driftloop.config import load_config

        default_chunk = load_config(config).serving.batch_chunk_rows
        results = [run_predict(config, parquet, out, folder, False, f"parquet → parquet, chunk {default_chunk}"),
                   run_predict(config, csv, out, folder, False, f"csv → parquet, chunk {default_chunk}"),
                   run_predict(config, parquet, out, folder, True, f"parquet → parquet --log, chunk {default_chunk}")]
        if not args.no_sweep:
            for chunk in SWEEP_CHUNKS:
                results.append(run_predict(chunk_config(config, chunk), parquet, out, folder, False,
                                           f"parquet → parquet, chunk {chunk}"))
    payload = {"rows": args.rows, "cores": os.cpu_count(), "cpu": serve_bench.cpu_model(),
               "versions": serve_bench.versions(), "goal": {"rows_per_s": GOAL_ROWS_S, "peak_rss_mb": GOAL_PEAK_MB},
               "runs": results, "seconds": time.perf_counter() - started}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=1), encoding="utf-8")
    print(markdown(results))
    print(f"\ntotal {payload['seconds']:.0f} s; results in {args.out}")


if __name__ == "__main__":
    main()
