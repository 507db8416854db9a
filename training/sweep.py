"""The pipeline sweep (`driftloop tune-pipeline`): a grid of stages x schedule x microbatches, each trained for a
few steps on the real data, measured against the ideal pipeline, so that a set-up can be picked from data.

Efficiency is ideal / measured step time, the ideal being the one-process step with the same microbatches
(gradient accumulation, one thread: small microbatches make each product slower, which is not the pipeline's
fault) times (m + p - 1) / (m * p), the bubble of p stages and m microbatches. The one-process runs are in the
table as the rows with 1 stage. Memory per rank is what training keeps: parameters, gradients and AdamW's two
moments (4 float32 tensors per parameter), plus the rank process's peak RSS as measured.
"""

from __future__ import annotations

import math
import statistics
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from rich.table import Table

from driftloop.config import Config
from driftloop.errors import TrainingError
from driftloop.training.features import fit_spec
from driftloop.training.model import build_model
from driftloop.training.partition import unit_parameters
from driftloop.training.pipeline import check_settings, schedule_name
from driftloop.training.trainer import TrainResult, train

DEFAULT_STAGES = (2, 4)
DEFAULT_SCHEDULES = ("GPipe", "1F1B", "Interleaved1F1B")
DEFAULT_MICROBATCHES = (4, 8)
DEFAULT_STEPS = 4  # the first is left out of the timings (warm-up)
HOLDOUT_ROWS = 16  # the runs are scored too (train() always does): keep that negligible
BYTES_PER_PARAMETER = 4 * 4  # float32 weight, gradient, exp_avg, exp_avg_sq


@dataclass(frozen=True)
class SweepRow:
    """One configuration of the grid and what it measured (NaN where it did not run)."""

    stages: int
    schedule: str  # "-" for the one-process rows
    microbatches: int
    status: str  # "ok", "skipped" (refused by the settings check) or "failed"
    reason: str = ""
    ranks: int = 0
    step_seconds: float = math.nan  # median of the steps after the warm-up, slowest rank
    samples_per_second: float = math.nan
    ideal_seconds: float = math.nan
    efficiency: float = math.nan
    bubble: float = math.nan  # measured idle share of the ranks' steps
    imbalance: float = math.nan  # max / mean of the stages' measured compute
    peak_state_bytes: int = 0  # the largest rank's parameters + gradients + optimizer state
    peak_rss_bytes: int = 0  # the largest rank process's peak resident memory

    @property
    def ok(self) -> bool:
        """Whether it ran and was measured."""
        return self.status == "ok"


@dataclass(frozen=True)
class Sweep:
    """Every row of the grid, the best one, and how the runs were made."""

    rows: list[SweepRow]
    steps: int
    batch_size: int
    model_parameters: int

    @property
    def best(self) -> SweepRow | None:
        """The pipeline (2 stages or more) with the highest throughput; the one process if none ran."""
        ran = [row for row in self.rows if row.ok]
        piped = [row for row in ran if row.stages > 1] or ran
        return max(piped, key=lambda row: row.samples_per_second) if piped else None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON (NaN as null) for --json and MLflow."""
        def clean(row: SweepRow) -> dict[str, Any]:
            return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(row).items()}

        best = self.best
        return {"rows": [clean(row) for row in self.rows], "best": clean(best) if best else None,
                "steps": self.steps, "batch_size": self.batch_size, "model_parameters": self.model_parameters}


def ideal_seconds(one_process_seconds: float, stages: int, microbatches: int) -> float:
    """The step time of a perfect pipeline: the one-process microbatched step x (m + p - 1) / (m * p)."""
    return one_process_seconds * (microbatches + stages - 1) / (microbatches * stages)


def parse_grid(text: str | None, default: Sequence[Any], kind: Callable[[str], Any], flag: str) -> list[Any]:
    """A comma-separated CLI list ('1,2,4'), or the default; TrainingError naming the flag when malformed."""
    if not text:
        return list(default)
    try:
        return [kind(part.strip()) for part in text.split(",") if part.strip()]
    except (ValueError, TrainingError) as error:
        raise TrainingError(f"{flag} {text!r}: {error}") from None


def _trial_config(config: Config, state_dir: Path) -> Config:
    """The config of a trial run: its own state (metrics file, checkpoints), one epoch, nothing saved, and ranks
    on this machine (the sweep measures set-ups here, even when the config trains with torchrun)."""
    update: dict[str, Any] = {"epochs": 1, "checkpoint_every": 0, "resume": "never"}
    if config.training.launcher == "torchrun":
        update["launcher"] = "local"
    training = config.training.model_copy(update=update)
    return config.model_copy(update={"state_dir": state_dir, "training": training})


def _state_bytes(result: TrainResult, config: Config) -> int:
    """The largest rank's parameters + gradients + AdamW moments, from the stages it ran."""
    with torch.random.fork_rng(devices=[]):
        units = unit_parameters(build_model(result.spec, config.model, 0))
    ranges = result.partition.ranges if result.partition else [range(0, config.model.blocks)]
    per_stage = [sum(units[1 + b] for b in r) for r in ranges]
    per_stage[0] += units[0]
    per_stage[-1] += units[-1]
    ranks = result.telemetry.rank_stages if result.telemetry and result.telemetry.rank_stages else [[0]]
    return int(max(sum(per_stage[s] for s in stages) for stages in ranks) * BYTES_PER_PARAMETER)


def _measure(frame: pd.DataFrame, holdout: pd.DataFrame, config: Config, stages: int, schedule: str,
             microbatches: int) -> tuple[TrainResult, float]:
    """Train one configuration for the sweep's steps; (the result, its median steady step time). No baseline: the
    sweep compares pipeline set-ups, not models."""
    config = config.model_copy(update={"training": config.training.model_copy(update={"baseline": False})})
    result = train(frame, config, holdout, stages=stages, schedule=schedule, microbatches=microbatches,
                   progress=False)
    telemetry = result.telemetry
    assert telemetry is not None
    steady = telemetry.step_seconds[telemetry.warmup_steps:] or telemetry.step_seconds
    return result, statistics.median(steady)


def run_sweep(frame: pd.DataFrame, config: Config, *, stages: Sequence[int] = DEFAULT_STAGES,
              schedules: Sequence[str] = DEFAULT_SCHEDULES, microbatches: Sequence[int] = DEFAULT_MICROBATCHES,
              steps: int = DEFAULT_STEPS, on_row: Callable[[SweepRow], None] | None = None) -> Sweep:
    """Train every configuration of the grid for `steps` steps of training.batch_size rows on the start of
    `frame` (time-ordered) and measure it; refused combinations are rows with the reason. The one-process run
    of each microbatch count comes first: the others' efficiency is measured against it."""
    if steps < 2:
        raise TrainingError(f"--steps ({steps}) must be at least 2: the first step is a warm-up")
    batch = config.training.batch_size
    if len(frame) < batch * steps + HOLDOUT_ROWS:
        raise TrainingError(f"the sweep needs {batch * steps + HOLDOUT_ROWS} rows (training.batch_size {batch} x "
                            f"--steps {steps}, and a few to score), the data has {len(frame)}: lower --steps or "
                            "training.batch_size")
    train_rows = frame.iloc[:batch * steps]
    holdout = frame.iloc[batch * steps:batch * steps + HOLDOUT_ROWS]
    names = [schedule_name(s) for s in schedules]
    with torch.random.fork_rng(devices=[]):
        parameters = sum(unit_parameters(build_model(fit_spec(train_rows, config.data), config.model, 0)))
    rows: list[SweepRow] = []

    def add(row: SweepRow) -> None:
        rows.append(row)
        if on_row is not None:
            on_row(row)

    with tempfile.TemporaryDirectory(prefix="driftloop-sweep-") as tmp:
        trial = _trial_config(config, Path(tmp))
        baseline: dict[int, float] = {}
        for m in microbatches:
            try:
                result, seconds = _measure(train_rows, holdout, trial, 1, names[0] if names else "1F1B", m)
            except TrainingError as error:
                add(SweepRow(1, "-", m, "skipped", str(error)))
                continue
            baseline[m] = seconds
            add(_row(result, trial, 1, "-", m, seconds, seconds))
        for p in stages:
            if p == 1:
                continue  # the one-process rows above
            for name in names:
                for m in microbatches:
                    try:
                        check_settings(trial, stages=p, schedule=name, microbatches=m)
                    except TrainingError as error:
                        add(SweepRow(p, name, m, "skipped", str(error)))
                        continue
                    try:
                        result, seconds = _measure(train_rows, holdout, trial, p, name, m)
                    except TrainingError as error:
                        add(SweepRow(p, name, m, "failed", str(error)))
                        continue
                    ideal = ideal_seconds(baseline[m], p, m) if m in baseline else math.nan
                    add(_row(result, trial, p, name, m, seconds, ideal))
    return Sweep(rows, steps, batch, int(parameters))


def _row(result: TrainResult, config: Config, stages: int, schedule: str, microbatches: int, seconds: float,
         ideal: float) -> SweepRow:
    """The measured row of one run."""
    telemetry = result.telemetry
    assert telemetry is not None
    rss = max(telemetry.rank_max_rss_bytes, default=0)
    return SweepRow(stages, schedule, microbatches, "ok", ranks=result.ranks, step_seconds=seconds,
                    samples_per_second=result.train_rows / len(telemetry.step_seconds) / seconds
                    if seconds > 0 and telemetry.step_seconds else math.nan,
                    ideal_seconds=ideal, efficiency=ideal / seconds if seconds > 0 else math.nan,
                    bubble=telemetry.bubble_fraction if stages > 1 else 0.0,
                    imbalance=telemetry.measured_imbalance, peak_state_bytes=_state_bytes(result, config),
                    peak_rss_bytes=rss)


def _size(count: int) -> str:
    """Bytes as KiB, MiB or GiB."""
    if not count:
        return "-"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
        if count >= scale:
            return f"{count / scale:,.1f} {unit}"
    return f"{count / 2**10:,.1f} KiB"


def _fixed(value: float, digits: int) -> str:
    return f"{value:,.{digits}f}" if math.isfinite(value) else "-"


def sweep_table(sweep: Sweep) -> Table:
    """The sweep as a rich table, the best row marked."""
    best = sweep.best
    table = Table(title=f"pipeline sweep: {sweep.steps} steps of {sweep.batch_size} rows, "
                        f"{sweep.model_parameters:,} parameters")
    for header in ("stages", "schedule", "microbatches", "ranks", "step ms", "samples/s", "ideal ms", "efficiency",
                   "bubble", "imbalance", "state/rank", "peak RSS", "note"):
        table.add_column(header, justify="left" if header in ("schedule", "note") else "right")
    for row in sweep.rows:
        note = "best" if row is best else ("" if row.ok else f"{row.status} (below)")
        table.add_row(str(row.stages), row.schedule, str(row.microbatches), str(row.ranks or "-"),
                      _fixed(row.step_seconds * 1000, 1), _fixed(row.samples_per_second, 0),
                      _fixed(row.ideal_seconds * 1000, 1), _fixed(row.efficiency, 2), _fixed(row.bubble, 2),
                      _fixed(row.imbalance, 2), _size(row.peak_state_bytes), _size(row.peak_rss_bytes), note,
                      style="bold green" if row is best else ("dim" if not row.ok else None))
    return table


def sweep_notes(sweep: Sweep) -> list[str]:
    """Why each row that did not run was skipped or failed (one line each, for below the table)."""
    return [f"stages {row.stages} {row.schedule} m={row.microbatches} {row.status}: {row.reason}"
            for row in sweep.rows if not row.ok]
