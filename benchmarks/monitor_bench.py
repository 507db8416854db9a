"""`driftloop monitor` on a 1,000-row window with its calibration cached: wall time and CPU, this checkout against an
older one, with and without the model's output and labels (issue 13: ≤ 3 s wall).

Files: reference = the demo's flights before 2013-04-01 (77,809 rows), window = the first 1,000 flights of June. The
labelled case adds the label (the config's target, as in the data) and a model output column
(monitoring.prediction_column): a fixed logistic score of the departure hour and the humidity, in (0, 1); the
monitor's cost does not depend on how good the output is. One warm-up run per checkout and case learns and caches
the thresholds (state dir per checkout); then the runs alternate old, new, old, new. Each run is
`driftloop monitor --config C --current W --reference R --json` in a child process, the console script's way.

    git worktree add /tmp/old <commit>     # the code before
    nice -n 10 .venv/bin/python benchmarks/monitor_bench.py --old /tmp/old --runs 3

Writes benchmarks/results/monitor.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_bench import environment, link_tree  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "monitor.json"
GOAL_WALL_S = 3.0
MAKE_FILES = """
import sys
import numpy as np, pandas as pd
from driftloop.datasets import load_flights
flights = load_flights()
reference = flights[flights["time_hour"] < pd.Timestamp("2013-04-01", tz="UTC")]
window = flights[flights["time_hour"] >= pd.Timestamp("2013-06-01", tz="UTC")].head(1000)
folder = sys.argv[1]
reference.to_parquet(f"{folder}/reference.parquet", index=False)
window.to_parquet(f"{folder}/window.parquet", index=False)
for name, frame in (("reference", reference), ("window", window)):
    score = 0.08 * (frame["dep_hour"] - 13) + 0.02 * (frame["humid"].fillna(60) - 60) - 1.2
    frame.assign(prediction=1 / (1 + np.exp(-score))).to_parquet(f"{folder}/{name}-labelled.parquet", index=False)
"""


def run_once(python: str, env: dict[str, str], config: Path, current: Path, reference: Path, state: Path) -> dict:
    """One `driftloop monitor` in `state`: wall, CPU (the command and its children), exit code, drift verdict."""
    state.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run([python, "-m", "driftloop.cli", "monitor", "--config", str(config), "--current",
                           str(current), "--reference", str(reference), "--json"], cwd=state, env=env,
                          capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    result = {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "load_at_start": round(load, 1),
              "exit": proc.returncode}
    if proc.returncode != 0:
        result["stderr"] = proc.stderr[-2000:]
    else:
        verdict = json.loads(proc.stdout)
        result["drift_detected"] = verdict["drift_detected"]
        result["performance"] = verdict.get("performance") is not None
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, help="a checkout of the code before (git worktree add /tmp/old <commit>)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each checkout and case (default 3)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    python = str(ROOT / ".venv" / "bin" / "python")
    with tempfile.TemporaryDirectory(prefix="monitor-bench-") as tmp:
        work = Path(tmp)
        subprocess.run([python, "-c", MAKE_FILES, str(work)], check=True)
        variants = {}
        if args.old is not None:
            old = args.old.resolve()
            config = old / "core" / "configs" / "flights.yaml"
            variants["old"] = (environment(link_tree(old, work / "old-tree")), config)
        variants["new"] = (environment(None), ROOT / "core" / "configs" / "flights.yaml")
        cases = {"features": ("window.parquet", "reference.parquet"),
                 "with output and labels": ("window-labelled.parquet", "reference-labelled.parquet")}
        runs: dict[str, dict[str, list[dict]]] = {v: {c: [] for c in cases} for v in variants}
        for case, (current, reference) in cases.items():
            for variant, (env, config) in variants.items():  # warm-up: learns and caches the calibration
                run_once(python, env, config, work / current, work / reference, work / variant)
            for index in range(args.runs):
                for variant, (env, config) in variants.items():
                    record = run_once(python, env, config, work / current, work / reference, work / variant)
                    runs[variant][case].append(record)
                    print(f"{case}, run {index + 1}/{args.runs}, {variant}: wall {record['wall_s']} s, CPU "
                          f"{record['cpu_s']} s, load {record['load_at_start']}, exit {record['exit']}",
                          file=sys.stderr, flush=True)
    summary = {v: {c: {"wall_s": [r["wall_s"] for r in runs[v][c]], "cpu_s": [r["cpu_s"] for r in runs[v][c]],
                       "wall_median_s": statistics.median(r["wall_s"] for r in runs[v][c]),
                       "load": [r["load_at_start"] for r in runs[v][c]]} for c in cases} for v in variants}
    result = {"command": "driftloop monitor --config flights.yaml --current <1,000 June flights> --reference "
                         "<77,809 flights before April> --json", "goal_wall_s": GOAL_WALL_S, "old": str(args.old),
              "summary": summary, "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("| checkout | case | wall s (runs) | CPU s (runs) | load |")
    print("|---|---|---|---|---|")
    for variant in variants:
        for case in cases:
            s = summary[variant][case]
            print(f"| {variant} | {case} | {', '.join(map(str, s['wall_s']))} | {', '.join(map(str, s['cpu_s']))} "
                  f"| {min(s['load'])}-{max(s['load'])} |")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
