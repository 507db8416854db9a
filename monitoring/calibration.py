"""Per-column drift thresholds learned from the reference, holding false alarms to a stated rate per window.

Evidently's fixed thresholds (0.1 for both of its default distances) know nothing of the window size or
of the column: a 200-row window trips them on noise, a 5,000-row window hides a real shift under them.
Here the reference itself says what no drift looks like at the monitor's window size:

1. draw `draws` windows of `window_rows` rows from the reference (whole rows, so that correlated
   columns stay correlated), and score each against the rest of the reference with the column's
   statistic (monitoring.statistics, identical to Evidently's); a drawn window and the rest are two
   disjoint samples of one distribution, i.e. exactly "no drift" (the rest is a little smaller than the
   reference: a slightly conservative null);
2. max-statistic calibration over the columns: a window alarms when any column's score is among the
   top `rank` of that column's null scores; `rank` is the largest for which the alarming null windows
   put the rate at most `false_alarm_rate` with 95% confidence (Clopper-Pearson upper bound: the
   thresholds come from a finite sample of draws, and an estimate right at the rate would overshoot
   it half the time). That controls the family-wise rate across all columns (and is less
   conservative than Bonferroni when columns are correlated);
3. each column's threshold sits just above its rank-th largest null score.

Results are cached as JSON under state_dir, keyed by the reference's fingerprint, the window size and
the settings, so each reference pays once per window size.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from driftloop.config import Config
from driftloop.data import fingerprint
from driftloop.monitoring.statistics import (
    JENSEN_SHANNON,
    WASSERSTEIN,
    CategoricalReference,
    ColumnReference,
    NumericReference,
)
from driftloop.state import state_path

# Bump when the statistics or the rule change: old cache entries then no longer match.
CALIBRATION_VERSION = 2
# Draws use a fixed seed: a reference and its settings always give the same thresholds.
CALIBRATION_SEED = 0
# Enough draws that even the top rank (about one alarm per column) bounds the rate:
# draws >= (DRAWS_PER_ALARM x columns + DRAWS_SLACK) / rate.
DRAWS_PER_ALARM, DRAWS_SLACK = 2, 5
# Null windows drawn (and scored) together.
DRAW_CHUNK = 500
# Confidence that the rate of the learned thresholds is within the stated one (finite draws).
RATE_CONFIDENCE = 0.95


@dataclass(frozen=True)
class Calibration:
    """Thresholds of every monitored column for windows of `window_rows` rows, and what they promise."""

    window_rows: int
    draws: int
    false_alarm_rate: float  # the per-window rate asked for (all columns together)
    expected_rate: float  # share of the null windows that alarm with these thresholds
    rate_bound: float  # RATE_CONFIDENCE upper bound on the rate (<= false_alarm_rate)
    rank: int  # a column alarms when its score beats all but rank - 1 of its null scores
    methods: dict[str, str]
    thresholds: dict[str, float]
    reference: str  # fingerprint of the reference columns it was learned from

    def to_json(self) -> dict:
        """Plain JSON (the cache file)."""
        return asdict(self)


def column_references(reference: pd.DataFrame, kinds: dict[str, str]) -> dict[str, ColumnReference]:
    """Summaries of each reference column: numerical → Wasserstein, categorical → Jensen-Shannon."""
    return {name: NumericReference.build(reference[name]) if kind == "numerical"
            else CategoricalReference.build(reference[name]) for name, kind in kinds.items()}


def methods_for(kinds: dict[str, str]) -> dict[str, str]:
    """The Evidently method of each column: the statistics Evidently defaults to on references over 1,000 rows."""
    return {name: WASSERSTEIN if kind == "numerical" else JENSEN_SHANNON for name, kind in kinds.items()}


def draw_count(config: Config, columns: int) -> int:
    """How many null windows: the configured number, raised until the rate can be resolved over the columns."""
    rate = config.monitoring.false_alarm_rate
    return max(config.monitoring.calibration_draws, math.ceil((DRAWS_PER_ALARM * columns + DRAWS_SLACK) / rate))


def calibrate(reference: pd.DataFrame, kinds: dict[str, str], window_rows: int, draws: int,
              false_alarm_rate: float) -> Calibration:
    """Learn the thresholds from `reference` (columns typed as the monitor types them) for windows of window_rows."""
    if window_rows >= len(reference):
        raise ValueError(f"window of {window_rows} rows cannot be drawn from a {len(reference)}-row reference")
    rng = np.random.default_rng(CALIBRATION_SEED)
    summaries = column_references(reference, kinds)
    scores = np.empty((draws, len(kinds)))
    # Draws in chunks: all of them at once would hold draws x window_rows indices (GBs for large windows).
    for start in range(0, draws, DRAW_CHUNK):
        rows = np.stack([rng.choice(len(reference), window_rows, replace=False)
                         for _ in range(min(DRAW_CHUNK, draws - start))])
        for j, name in enumerate(kinds):
            scores[start:start + len(rows), j] = summaries[name].null_scores(rows)
    rank, alarms = _alarm_rank(scores, false_alarm_rate)
    thresholds = {name: _threshold(scores[:, j], rank) for j, name in enumerate(kinds)}
    return Calibration(window_rows, draws, false_alarm_rate, alarms / draws, _rate_bound(alarms, draws), rank,
                       methods_for(kinds), thresholds, fingerprint(reference[list(kinds)]))


def cached_calibration(reference: pd.DataFrame, kinds: dict[str, str], window_rows: int,
                       config: Config) -> Calibration:
    """calibrate(), read from the cache under state_dir when this reference and these settings were seen."""
    draws = draw_count(config, len(kinds))
    rate = config.monitoring.false_alarm_rate
    key = {"version": CALIBRATION_VERSION, "reference": fingerprint(reference[list(kinds)]), "kinds": kinds,
           "window_rows": window_rows, "draws": draws, "false_alarm_rate": rate, "seed": CALIBRATION_SEED}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    path = state_path(config, "cache", "calibration", f"{digest}.json")
    cached = _read(path)
    if cached is not None:
        return cached
    calibration = calibrate(reference, kinds, window_rows, draws, rate)
    _write(path, calibration)
    return calibration


def calibration_rows(rows: int, reference_rows: int, config: Config) -> int:
    """The window size to calibrate for (and to check at) given a window of `rows` rows.

    Windows over the limit (max_window_rows, or half the reference) are checked on a sample of the
    limit. Smaller ones are calibrated at their size rounded down to two significant digits (so
    that time windows of similar sizes share one calibration); a smaller window has the wider null,
    so rounding down keeps the false-alarm rate at or below the stated one.
    """
    limit = window_limit(reference_rows, config)
    if rows >= limit:
        return limit
    step = 10 ** max(0, len(str(rows)) - 2)
    return rows // step * step


def window_limit(reference_rows: int, config: Config) -> int:
    """The most rows a window is checked on: max_window_rows, and at most half the reference."""
    return max(1, min(config.monitoring.max_window_rows, reference_rows // 2))


def _alarm_rank(scores: np.ndarray, rate: float) -> tuple[int, int]:
    """The largest rank whose alarming null windows bound the rate by `rate`, and how many windows alarm."""
    draws = len(scores)
    # ranks[b, j]: how many null scores of column j are >= draw b's (1 = the largest).
    ranks = np.column_stack([draws - np.searchsorted(np.sort(column), column, side="left") for column in scores.T])
    lowest = ranks.min(axis=1)
    rank, alarms = 0, 0
    for candidate in range(1, draws + 1):
        count = int((lowest <= candidate).sum())
        if _rate_bound(count, draws) > rate:
            break
        rank, alarms = candidate, count
    if rank == 0:
        raise ValueError(f"{draws} null windows cannot resolve a false-alarm rate of {rate}; raise "
                         "monitoring.calibration_draws")
    return rank, alarms


def _rate_bound(alarms: int, draws: int) -> float:
    """Clopper-Pearson upper bound on an alarm probability seen `alarms` times in `draws`."""
    from scipy.stats import beta  # only when calibrating: scipy.stats costs a cached check most of a second

    return float(beta.ppf(RATE_CONFIDENCE, alarms + 1, draws - alarms))


def _threshold(null: np.ndarray, rank: int) -> float:
    """A score above all but rank - 1 null scores: midway from the rank-th largest to the next larger one."""
    ordered = np.sort(null)[::-1]
    at = ordered[rank - 1]
    above = ordered[:rank - 1][ordered[:rank - 1] > at]
    if len(above):
        return float((at + above.min()) / 2)
    return float(np.nextafter(at, np.inf))


def _read(path: Path) -> Calibration | None:
    """A cached calibration, or None when absent or unreadable (then it is recomputed)."""
    try:
        return Calibration(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def _write(path: Path, calibration: Calibration) -> None:
    """Write atomically: a reader never sees half a file."""
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(json.dumps(calibration.to_json(), indent=1), encoding="utf-8")
    partial.replace(path)
