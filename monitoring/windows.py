"""Cutting traffic into monitored windows. The reference itself is `driftloop.data.reference_frame`."""

from __future__ import annotations

from collections.abc import Iterator

import pandas as pd

from driftloop.config import Config
from driftloop.data import Window, event_times, reference_frame, sort_by_time, time_windows

__all__ = ["cut_windows", "reference_frame"]

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
