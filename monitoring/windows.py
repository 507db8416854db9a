"""Cutting traffic into monitored windows, and the reference that moves with the champion."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd

from driftloop.config import Config
from driftloop.data import Window, event_times, sort_by_time, time_windows

# The reference sample is drawn with a fixed seed, like the registry's: one training set, one reference.
REFERENCE_SEED = 0


def cut_windows(frame: pd.DataFrame, config: Config) -> Iterator[Window]:
    """Consecutive windows as monitoring.window says: a duration cuts by time, a row count by rows.

    Row windows follow time order when there is a timestamp column; a last, shorter window is kept
    (its calibration is for its own size).
    """
    size = config.monitoring.window
    if not isinstance(size, int):
        yield from time_windows(frame, config.data, size)
        return
    ordered = sort_by_time(frame, config.data)
    timed = config.data.timestamp is not None and config.data.timestamp in ordered
    times = event_times(ordered, config.data) if timed else None
    for index, start in enumerate(range(0, len(ordered), size)):
        rows = ordered.iloc[start:start + size].reset_index(drop=True)
        first = times.iloc[start] if times is not None else pd.NaT
        last = times.iloc[min(start + size, len(ordered)) - 1] if times is not None else pd.NaT
        yield Window(index, first, last, rows)


def reference_frame(training: pd.DataFrame, config: Config, predictions: np.ndarray | pd.Series | None = None
                    ) -> pd.DataFrame:
    """The monitor's reference from a champion's training rows: features, target, timestamp and, when given,
    the champion's outputs on those rows (for output drift and performance); never pii; at most
    monitoring.reference_max_rows rows, the same ones every time.

    When a new champion is promoted, build its reference with this and pass it to check_drift: the
    calibration cache is keyed by the reference's content, so it follows by itself.
    """
    data = config.data
    keep = [c for c in [*data.features, data.target, data.timestamp] if c and c in training]
    frame = training[keep].reset_index(drop=True)
    if predictions is not None:
        outputs = np.asarray(predictions, dtype="float64")
        if len(outputs) != len(frame):
            raise ValueError(f"{len(outputs)} predictions for {len(frame)} training rows")
        frame[config.monitoring.prediction_column] = outputs
    if len(frame) > config.monitoring.reference_max_rows:
        frame = frame.sample(config.monitoring.reference_max_rows, random_state=REFERENCE_SEED).sort_index()
    return frame.reset_index(drop=True)
