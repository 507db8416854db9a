"""`driftloop tune-pipeline`: a grid of pipeline set-ups trained for a few steps each, the table recorded in MLflow."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from driftloop.config import Config
from driftloop.data import read_table, sort_by_time
from driftloop.flows.training import prepare_training_data
from driftloop.registry.sweep_log import log_sweep
from driftloop.training.sweep import Sweep, SweepRow, run_sweep


@dataclass(frozen=True)
class SweepRun:
    """A measured sweep and the MLflow run that records it."""

    sweep: Sweep
    run_id: str

    def to_json(self) -> dict:
        """The `driftloop tune-pipeline --json` object: the sweep's table and the run id."""
        return {**self.sweep.to_json(), "run_id": self.run_id}


def tune_pipeline(config: Config, data: Path | None, *, stages: Sequence[int], schedules: Sequence[str],
                  microbatches: Sequence[int], steps: int,
                  on_row: Callable[[SweepRow], None] | None = None) -> SweepRun:
    """Measure every set-up of the grid on `data` (default: the demo's training months) and record the sweep as
    one MLflow run; `on_row` sees each row as it is measured."""
    frame = sort_by_time(read_table(data if data is not None else prepare_training_data(config, None)), config.data)
    sweep = run_sweep(frame, config, stages=stages, schedules=schedules, microbatches=microbatches, steps=steps,
                      on_row=on_row)
    return SweepRun(sweep, log_sweep(config, sweep))
