"""`driftloop backtest`: replay a labelled, time-stamped file window by window and compare retraining policies.

The first model trains on the rows before `--train-until`; the later rows are cut into windows
(`monitoring.window`) and replayed in order. Side by side, on the same windows:

- `never`: the first model forever;
- `every`: the network retrained after every window, on the rows the retraining data policy
  (`retraining`, training/data_policy.py) picks;
- `policy`: what the deployed loop does: after each window the calibrated drift check and the window's
  performance (monitoring/drift.py) go to the retraining policy (monitoring/policy.py); a retraining trains
  on the data policy's rows before the window and the champion/challenger gate (registry/gate.py `evaluate`)
  judges it on that window, as the demo and the deployed retraining do; a promoted model serves from the
  next window on. The governance checks and MLflow registration are left out (nothing is registered);
- `gbdt_every`: scikit-learn's HistGradientBoosting refitted after every window on all labelled history.

Each policy scores a window with the model it has *before* that window's labels are used; only then are the
labels learnt from. Everything runs in this process (networks train with one stage: a pipeline of any schedule
gives the same weights), so a window costs its training, not start-up.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from driftloop.config import Config
from driftloop.data import Window, event_times, read_table, reference_frame, require_columns, sort_by_time
from driftloop.errors import DataError
from driftloop.monitoring.drift import check_drift
from driftloop.monitoring.policy import PolicyState, decide, new_champion
from driftloop.monitoring.windows import cut_windows
from driftloop.registry.gate import BaselineCheck, evaluate
from driftloop.scoring import score
from driftloop.training.artifacts import predict
from driftloop.training.baseline import baseline_matrix, baseline_model
from driftloop.training.data_policy import select_training_rows
from driftloop.training.features import fit_spec, numeric_column
from driftloop.training.trainer import TrainResult, train
from driftloop.training.warm_start import WarmStart

POLICIES = ("never", "every", "policy", "gbdt_every")

Scorer = Callable[[pd.DataFrame], np.ndarray]


@dataclass(frozen=True)
class Model:
    """A model a policy serves: how it scores rows, what it learnt from, and its holdout figures."""

    predict: Scorer
    trained_through: pd.Timestamp  # the latest row time it learnt from (a leak shows as a time inside the window)
    rows: pd.DataFrame  # the rows it trained on (its holdout included), the monitor's reference
    metrics: dict[str, float] = field(default_factory=dict)
    holdout: pd.DataFrame | None = None
    result: TrainResult | None = None  # the network's weights, for a warm start


@dataclass
class PolicyRun:
    """One policy's record over the replay."""

    name: str
    per_window: list[float | None] = field(default_factory=list)
    trained_through: list[pd.Timestamp] = field(default_factory=list)  # of the model that scored each window
    retrains: list[int] = field(default_factory=list)  # windows whose labels started a retraining
    promotions: list[int] = field(default_factory=list)  # ... and whose retraining then served
    train_seconds: float = 0.0
    reasons: list[str] = field(default_factory=list)  # `policy`: the monitor's decision (and gate) after each window

    def summary(self) -> dict:
        """The policy's entry in `--json`."""
        known = [value for value in self.per_window if value is not None]
        return {"per_window": self.per_window, "mean": float(np.mean(known)) if known else None,
                "min": float(np.min(known)) if known else None, "retrains": len(self.retrains),
                "promotions": len(self.promotions), "train_seconds": round(self.train_seconds, 2),
                **({"reasons": self.reasons} if self.reasons else {})}


@dataclass(frozen=True)
class Backtest:
    """The replay's outcome: the metric, the windows' starts and every policy's record."""

    metric: str
    windows: list[pd.Timestamp]
    runs: dict[str, PolicyRun]

    def to_json(self) -> dict:
        """`driftloop backtest --json`."""
        return {"metric": self.metric, "windows": [start.isoformat() for start in self.windows],
                "policies": {name: run.summary() for name, run in self.runs.items()}}


def load_replay(config: Config, path: Path, train_until: str) -> tuple[pd.DataFrame, list[Window]]:
    """The labelled rows before `train_until` and the windows after it; DataError naming what is wrong."""
    column = config.data.timestamp
    if not column:
        raise DataError("backtest needs data.timestamp in the config: windows are replayed in time order")
    frame = read_table(path)
    require_columns(frame, [column, *config.data.features, config.data.target], str(path))
    frame = frame[frame[config.data.target].notna()]
    if frame.empty:
        raise DataError(f"{path}: no labelled rows (column {config.data.target} is empty)")
    frame = sort_by_time(frame, config.data)
    times = event_times(frame, config.data)
    until = _utc(train_until)
    first, last = times.min(), times.max()
    if not first < until <= last:
        raise DataError(f"--train-until {train_until} is outside the data: {path} runs from {first:%Y-%m-%d %H:%M} "
                        f"to {last:%Y-%m-%d %H:%M}; pick a date with rows on both sides")
    history = frame[times < until].reset_index(drop=True)
    windows = [w for w in cut_windows(frame[times >= until].reset_index(drop=True), config) if len(w.frame)]
    if len(history) < 2 or not windows:
        raise DataError(f"--train-until {train_until}: {len(history)} row(s) before it and {len(windows)} "
                        "window(s) after it; the first model needs rows and the replay at least one window")
    return history, windows


def _utc(moment: str) -> pd.Timestamp:
    """A date from the command line as a UTC timestamp; DataError when it does not parse."""
    try:
        stamp = pd.Timestamp(moment)
    except ValueError:
        raise DataError(f"--train-until {moment!r} is not a date such as 2013-03-15") from None
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def latest_time(config: Config, rows: pd.DataFrame) -> pd.Timestamp:
    """The latest event time among `rows`."""
    return event_times(rows, config.data).max()


def after(config: Config, window: Window) -> pd.Timestamp:
    """The moment the window's labels are all known: its end, or just after its last row (row-count windows end
    at their last row's time)."""
    return max(window.end, latest_time(config, window.frame) + pd.Timedelta(1, "us"))


def fit_network(config: Config, rows: pd.DataFrame, weights: np.ndarray | None = None,
                start: Model | None = None) -> tuple[Model, float]:
    """Train the configured network in this process on `rows` (time-ordered); the model and the seconds it took.

    `weights`: the data policy's sample weights; `start`: the serving model, continued from when
    retraining.warm_start says so."""
    started = time.perf_counter()
    warm = None
    if config.retraining.warm_start and start is not None and start.result is not None:
        warm = WarmStart(start.result.spec, start.result.state, "the serving model")
    result = train(rows, config, stages=1, progress=False, sample_weights=weights, warm_start=warm)
    net, spec = result.model(), result.spec
    holdout = rows.iloc[len(rows) - result.holdout_rows:].reset_index(drop=True)
    model = Model(lambda frame: predict(net, spec, frame), latest_time(config, rows), rows, dict(result.metrics),
                  holdout, result)
    return model, time.perf_counter() - started


def fit_gbdt(config: Config, rows: pd.DataFrame) -> tuple[Model, float]:
    """The training baseline (training/baseline.py: HistGradientBoosting with scikit-learn's defaults, categories
    native) fitted on all of `rows`."""
    from threadpoolctl import threadpool_limits

    started = time.perf_counter()
    spec = fit_spec(rows, config.data, config.model)
    model = baseline_model(spec, config.training.seed)
    target = numeric_column(rows, spec.target)
    with threadpool_limits(config.training.threads_per_rank):
        model.fit(baseline_matrix(rows, spec), target.astype(int) if spec.task == "classification" else target)

    def scorer(frame: pd.DataFrame) -> np.ndarray:
        with threadpool_limits(config.training.threads_per_rank):
            x = baseline_matrix(frame, spec)
            return model.predict_proba(x)[:, 1] if spec.task == "classification" else model.predict(x)

    return Model(scorer, latest_time(config, rows), rows), time.perf_counter() - started


def baseline_gate(config: Config, challenger: Model) -> BaselineCheck | None:
    """The gate's baseline check (registry.max_baseline_shortfall) from the challenger's own training figures."""
    tolerance, metric = config.registry.max_baseline_shortfall, config.gate_metric()
    result = challenger.result
    if tolerance is None or result is None or result.baseline is None:
        return None
    if metric not in result.baseline.metrics or metric not in result.metrics:
        return None
    return BaselineCheck(result.baseline.model, metric, result.metrics[metric], result.baseline.metrics[metric],
                         tolerance)


def backtest_config(config: Config) -> Config:
    """The config the replay trains with: the training baseline is fitted only when the gate judges it."""
    needed = config.registry.max_baseline_shortfall is not None
    return config.model_copy(update={"training": config.training.model_copy(update={"baseline": needed})})


def window_score(config: Config, window: Window, predictions: np.ndarray) -> float | None:
    """The gate metric of `predictions` on the window's labels; None where undefined (one class only)."""
    value = score(window.frame[config.data.target].to_numpy(), predictions, config.data.task).get(config.gate_metric())
    return value if value is not None and math.isfinite(value) else None


class Labelled:
    """The labelled rows known so far: the history, then each window once its labels are used."""

    def __init__(self, history: pd.DataFrame) -> None:
        self.parts = [history]

    def add(self, window: Window) -> None:
        """The window's labels have arrived."""
        self.parts.append(window.frame)

    def rows(self) -> pd.DataFrame:
        """Every labelled row so far, oldest first."""
        return pd.concat(self.parts, ignore_index=True)


class Policy:
    """A policy: the model it serves now, and what it does once a window's labels arrive."""

    def __init__(self, name: str, model: Model) -> None:
        self.run = PolicyRun(name)
        self.model = model

    def learn(self, config: Config, window: Window, predictions: np.ndarray, labelled: Labelled) -> None:
        """The labels of `window` (scored with `predictions`) have arrived: `labelled` holds them now."""


class Every(Policy):
    """The network retrained after every window on the retraining data policy's rows."""

    def learn(self, config: Config, window: Window, predictions: np.ndarray, labelled: Labelled) -> None:
        rows, weights = select_training_rows(labelled.rows(), config.retraining, after(config, window),
                                             config.data.timestamp)
        self.model, seconds = fit_network(config, rows, weights, self.model)
        self.run.train_seconds += seconds
        self.run.retrains.append(window.index)
        self.run.promotions.append(window.index)


class GbdtEvery(Policy):
    """HistGradientBoosting refitted after every window on all labelled history."""

    def learn(self, config: Config, window: Window, predictions: np.ndarray, labelled: Labelled) -> None:
        self.model, seconds = fit_gbdt(config, labelled.rows())
        self.run.train_seconds += seconds
        self.run.retrains.append(window.index)
        self.run.promotions.append(window.index)


class Deployed(Policy):
    """The configured monitor, retraining policy and gate, as the deployed loop runs them."""

    def __init__(self, name: str, model: Model, config: Config) -> None:
        super().__init__(name, model)
        self.state = new_champion(PolicyState(), model.metrics)
        self.reference = champion_reference(config, model)

    def learn(self, config: Config, window: Window, predictions: np.ndarray, labelled: Labelled) -> None:
        current = window.frame.assign(**{config.monitoring.prediction_column: predictions})
        decision = decide(self.state, check_drift(self.reference, current, config), config)
        self.state = decision.state
        self.run.reasons.append(decision.reason)
        if not decision.retrain:
            return
        # As deployed: train on the labelled rows before the window, judge on the window itself.
        before = labelled.rows().iloc[:-len(window.frame)]
        rows, weights = select_training_rows(before, config.retraining, window.start, config.data.timestamp)
        challenger, seconds = fit_network(config, rows, weights, self.model)
        self.run.train_seconds += seconds
        self.run.retrains.append(window.index)
        holdout = challenger.holdout if config.registry.gate_on_holdout else None
        gate = evaluate(config, "challenger", "champion", window.frame, holdout, challenger.predict,
                        self.model.predict, "exact", baseline=baseline_gate(config, challenger))
        self.run.reasons[-1] += f"; gate: {gate.reason}"
        if gate.promoted:
            self.model = challenger
            self.reference = champion_reference(config, challenger)
            self.state = new_champion(self.state, challenger.metrics)
            self.run.promotions.append(window.index)


def champion_reference(config: Config, model: Model) -> pd.DataFrame:
    """The monitor's reference as the registry stores it: the champion's training rows with its outputs."""
    return reference_frame(model.rows, config, model.predict(model.rows))


def build_policies(config: Config, names: Iterable[str], history: pd.DataFrame,
                   first: Model | None = None) -> dict[str, Policy]:
    """The named policies, each with its first model: the network's trained once and shared, or `first`."""
    names = list(names)
    policies: dict[str, Policy] = {}
    network: tuple[Model, float] | None = (first, 0.0) if first is not None else None
    if network is None and any(name != "gbdt_every" for name in names):
        network = fit_network(config, history)
    for name in names:
        if name == "gbdt_every":
            model, seconds = fit_gbdt(config, history)
            policies[name] = GbdtEvery(name, model)
        else:
            assert network is not None
            model, seconds = network
            kind = {"never": Policy, "every": Every}.get(name)
            policies[name] = kind(name, model) if kind else Deployed(name, model, config)
        policies[name].run.train_seconds += seconds
    return policies


def parse_policies(text: str | None) -> list[str]:
    """--policies as a list (default: all four); DataError naming an unknown one."""
    if not text:
        return list(POLICIES)
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in POLICIES]
    if unknown or not names:
        raise DataError(f"--policies: unknown policy {', '.join(unknown) or '(none)'}; choose from "
                        f"{', '.join(POLICIES)}")
    return list(dict.fromkeys(names))


def replay(config: Config, history: pd.DataFrame, windows: list[Window], names: Iterable[str],
           on_window: Callable[[Window, dict[str, PolicyRun]], None] | None = None,
           first: Model | None = None) -> Backtest:
    """Score every window with each policy's current model, then let each learn from the window's labels.

    `first`: the network the policies start from (e.g. the demo's registered first model), instead of training
    one on `history`."""
    policies = build_policies(config, names, history, first)
    labelled = Labelled(history)
    for window in windows:
        scored = {}
        for name, policy in policies.items():
            scored[name] = np.asarray(policy.model.predict(window.frame), dtype="float64")
            policy.run.per_window.append(window_score(config, window, scored[name]))
            policy.run.trained_through.append(policy.model.trained_through)
        labelled.add(window)  # from here on the window's labels may be used
        if window is not windows[-1]:  # a model trained on the last window would score nothing
            for name, policy in policies.items():
                policy.learn(config, window, scored[name], labelled)
        if on_window is not None:
            on_window(window, {name: policy.run for name, policy in policies.items()})
    return Backtest(config.gate_metric(), [w.start for w in windows],
                    {name: policy.run for name, policy in policies.items()})


def run_backtest(config: Config, data: Path, train_until: str, policies: str | None = None,
                 progress: bool = True) -> Backtest:
    """`driftloop backtest`: load, check and replay; a rich progress bar on stderr when `progress`."""
    names = parse_policies(policies)
    config = backtest_config(config)
    history, windows = load_replay(config, data, train_until)
    if not progress:
        return replay(config, history, windows, names)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as bar:
        task = bar.add_task(f"first model on {len(history):,} rows", total=len(windows))

        def on_window(window: Window, runs: dict[str, PolicyRun]) -> None:
            figures = "  ".join(f"{name} {_fmt(run.per_window[-1])}"
                                + ("↻" if window.index in run.retrains else "") for name, run in runs.items())
            bar.console.print(f"w{window.index:02d} {window.start:%Y-%m-%d} {len(window.frame):>6,} rows  {figures}",
                              soft_wrap=True)
            bar.update(task, advance=1, description=f"replayed to {window.end:%Y-%m-%d}")

        return replay(config, history, windows, names, on_window)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
