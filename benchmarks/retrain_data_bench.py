"""Retraining data policies on the demo's flights: the network retrained every `--every` weeks on the rows each policy
selects (training/data_policy.py, the same function the flows use), scored on every later week before its labels
are used. A quick, fixed-schedule comparison of the policies themselves; `driftloop backtest` judges the whole loop.

    nice -n 10 .venv/bin/python benchmarks/retrain_data_bench.py [--every 4] [--policies all recent ...]

Prints one line per policy (mean and min weekly AUC, seconds of training) and writes results/retrain_data.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from driftloop.config import Config, RetrainingConfig, demo_config_path, load_config
from driftloop.data import Window
from driftloop.datasets import load_flights
from driftloop.monitoring.windows import cut_windows
from driftloop.scoring import score
from driftloop.training.data_policy import select_training_rows
from driftloop.training.trainer import TrainResult, train
from driftloop.training.warm_start import WarmStart

RESULTS = Path(__file__).parent / "results"
POLICIES: dict[str, dict[str, Any]] = {
    "all": {"data": "all"},
    "recent": {"data": "recent", "max_age": "28D"},
    "recent_12w": {"data": "recent", "max_age": "84D"},
    "all_100k": {"data": "all", "max_rows": 100_000},
    "all_halflife_90d": {"data": "all", "recency_half_life": "90D"},
    "all_warm": {"data": "all", "warm_start": True},
}


def bench_config(state_dir: Path) -> Config:
    """The demo's config in one process (the pipeline's exactness is tested elsewhere), no baseline."""
    config = load_config(demo_config_path())
    training = config.training.model_copy(update={"stages": 1, "baseline": False})
    return config.model_copy(update={"training": training, "state_dir": state_dir})


def weekly_auc(result: TrainResult, window: Window) -> float:
    """The model's AUC on one week."""
    predicted = result.model().eval()
    from driftloop.training.artifacts import predict

    truth = window.frame[result.spec.target].to_numpy(dtype=float)
    return score(truth, predict(predicted, result.spec, window.frame), "classification")["auc"]


def run_policy(name: str, flights: pd.DataFrame, weeks: list[Window], config: Config, every: int) -> dict[str, Any]:
    """One policy over the replayed weeks: retrain before weeks every, 2 x every, ...; score each week."""
    policy = RetrainingConfig(**POLICIES[name])
    until = pd.Timestamp(config.demo.train_until, tz="UTC")
    times = flights["time_hour"]
    result = train(flights[times < until].reset_index(drop=True), config, progress=False)
    seconds, retrains, per_week = 0.0, 0, []
    for index, week in enumerate(weeks):
        if index and index % every == 0:
            rows, weights = select_training_rows(flights[times < week.start], policy, week.start, "time_hour")
            warm = WarmStart(result.spec, result.state, "previous") if policy.warm_start else None
            started = time.perf_counter()
            result = train(rows, config, progress=False, sample_weights=weights, warm_start=warm)
            seconds += time.perf_counter() - started
            retrains += 1
        per_week.append(weekly_auc(result, week))
    return {"per_week": per_week, "mean": float(np.mean(per_week)), "min": float(np.min(per_week)),
            "retrains": retrains, "train_seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=int, default=4, help="retrain before every this-many weeks")
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES))
    parser.add_argument("--state-dir", type=Path, default=Path(".driftloop/bench-retrain"))
    parser.add_argument("--out", type=Path, default=RESULTS / "retrain_data.json", help="results (JSON, merged)")
    args = parser.parse_args()
    config = bench_config(args.state_dir)
    flights = load_flights().sort_values("time_hour", kind="stable").reset_index(drop=True)
    live = flights[(flights["time_hour"] >= pd.Timestamp(config.demo.train_until, tz="UTC"))
                   & (flights["time_hour"] < pd.Timestamp(config.demo.replay_until, tz="UTC"))]
    weeks = list(cut_windows(live.reset_index(drop=True), config))
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    found: dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {}
    for name in args.policies:
        figures = run_policy(name, flights, weeks, config, args.every)
        found[name] = {**figures, "policy": POLICIES[name], "every": args.every, "weeks": len(weeks)}
        out.write_text(json.dumps(found, indent=1))
        print(f"{name:18s} mean weekly AUC {figures['mean']:.4f}  min {figures['min']:.4f}  "
              f"{figures['retrains']} retrains  {figures['train_seconds']:.0f} s training", flush=True)


if __name__ == "__main__":
    main()
