"""The retraining data policy: which labelled rows a retraining trains on, and how much each weighs.

One implementation for every retraining: the demo's, the deployed `retrain-from-log` flows' and the backtest's
(config `retraining`: data all | recent, max_age, max_rows, recency_half_life).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from driftloop.config import RetrainingConfig
from driftloop.errors import DataError


def as_utc(moment: pd.Timestamp | str) -> pd.Timestamp:
    """A timestamp in UTC; a naive one is taken as UTC already."""
    stamp = pd.Timestamp(moment)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def row_times(frame: pd.DataFrame, time_column: str) -> pd.Series:
    """The time column parsed as UTC datetimes; DataError naming the column when it is missing or unparseable."""
    if time_column not in frame.columns:
        raise DataError(f"retraining rows have no time column {time_column!r} (data.timestamp)")
    try:
        return pd.to_datetime(frame[time_column], utc=True)
    except (ValueError, TypeError, OverflowError):
        raise DataError(f"column {time_column}: not parseable as timestamps") from None


def recency_weights(ages: pd.Series, half_life: str) -> np.ndarray:
    """0.5 ** (age / half_life) per row, scaled to mean 1 so the loss keeps its size."""
    halves = ages.dt.total_seconds().to_numpy(dtype="float64") / pd.Timedelta(half_life).total_seconds()
    weights = np.power(0.5, np.clip(halves, 0.0, None))
    return weights / weights.mean()


def select_training_rows(labelled: pd.DataFrame, policy: RetrainingConfig, now: pd.Timestamp,
                         time_column: str | None) -> tuple[pd.DataFrame, np.ndarray | None]:
    """The rows a retraining at `now` trains on, oldest first, and their sample weights (None: all equal).

    With a time column: rows stamped at or after `now` are not known yet and are dropped; `policy.data` recent keeps
    rows no older than `policy.max_age`; `policy.max_rows` keeps the latest that many; `policy.recency_half_life`
    weighs each row by its age at `now`. Without one (windows by row count), `labelled` is taken as already in
    order: recent and all keep the latest `max_rows` (recent needs it), and rows cannot be weighed by age.
    """
    if time_column is None:
        if policy.recency_half_life is not None:
            raise DataError("retraining.recency_half_life needs data.timestamp: rows without times have no age")
        if policy.data == "recent" and policy.max_rows is None:
            raise DataError("retraining.data recent without data.timestamp needs retraining.max_rows")
        chosen = labelled if policy.max_rows is None else labelled.iloc[-policy.max_rows:]
        return chosen.reset_index(drop=True), None
    now = as_utc(now)
    times = row_times(labelled, time_column)
    keep = times < now
    if policy.data == "recent" and policy.max_age is not None:
        keep &= times >= now - pd.Timedelta(policy.max_age)
    order = np.argsort(times[keep].to_numpy(), kind="stable")
    chosen = labelled.loc[keep].iloc[order]
    if policy.max_rows is not None:
        chosen = chosen.iloc[-policy.max_rows:]
    chosen = chosen.reset_index(drop=True)
    if policy.recency_half_life is None or chosen.empty:
        return chosen, None
    return chosen, recency_weights(now - pd.to_datetime(chosen[time_column], utc=True), policy.recency_half_life)


def describe_policy(policy: RetrainingConfig) -> str:
    """The policy in a few words, for logs and MLflow params ("recent 28D, at most 50,000 rows, half-life 90D")."""
    words = "all history" if policy.data == "all" else f"recent {policy.max_age or ''}".rstrip()
    if policy.max_rows is not None:
        words += f", at most {policy.max_rows:,} rows"
    if policy.recency_half_life is not None:
        words += f", half-life {policy.recency_half_life}"
    return words + (", warm start" if policy.warm_start else "")
