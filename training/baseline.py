"""The baseline of every training: scikit-learn's HistGradientBoosting on the same rows, scored on the same holdout.

A network that trails a plain gradient-boosting model on its own data is worth knowing about (issue 13); the gate
can refuse one (registry.max_baseline_shortfall). Categories enter as the network's vocabulary codes, natively
categorical up to MAX_NATIVE_LEVELS levels (HistGB's limit; a larger column, an id, enters as its ordinal code);
numbers enter unscaled, missing values as NaN (the trees route them).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from driftloop.training.features import FeatureSpec, category_strings, numeric_column

MAX_NATIVE_LEVELS = 250  # HistGB's native categories take codes below max_bins (255)


@dataclass(frozen=True)
class BaselineResult:
    """The baseline model's name and its holdout figures (driftloop.scoring.score's names)."""

    model: str
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self) -> dict:
        """The `train --json` entry: {"model": ..., "metrics": {...}}."""
        return {"model": self.model, "metrics": dict(self.metrics)}


def baseline_matrix(frame: pd.DataFrame, spec: FeatureSpec) -> np.ndarray:
    """Numbers as they are (NaN kept), then each category's code in the network's vocabulary (0: unknown)."""
    parts = [numeric_column(frame, column) for column in spec.numerical]
    for column in spec.categorical:
        lookup = {value: index + 1 for index, value in enumerate(spec.vocab[column])}
        parts.append(category_strings(frame[column]).map(lookup).fillna(0).to_numpy(dtype="float64"))
    return np.stack(parts, axis=1) if parts else np.zeros((len(frame), 0))


def baseline_model(spec: FeatureSpec, seed: int):  # noqa: ANN201 - a scikit-learn estimator
    """HistGradientBoosting (classifier or regressor by task) with scikit-learn's defaults."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    native = [False] * len(spec.numerical) + [len(spec.vocab[c]) + 1 <= MAX_NATIVE_LEVELS for c in spec.categorical]
    mask = native if any(native) else None
    if spec.task == "classification":
        return HistGradientBoostingClassifier(categorical_features=mask, random_state=seed)
    return HistGradientBoostingRegressor(categorical_features=mask, random_state=seed)


def fit_baseline(rows: pd.DataFrame, holdout: pd.DataFrame, spec: FeatureSpec, seed: int = 0,
                 sample_weights: np.ndarray | None = None, threads: int = 1) -> BaselineResult:
    """Fit the baseline on `rows` (with the network's sample weights, if any) and score it on `holdout`, with
    `threads` OpenMP threads (training.threads_per_rank: on a busy machine scikit-learn's default, every core, spun
    25 s of wall time on 1,500 rows where one thread takes under one)."""
    from threadpoolctl import threadpool_limits

    from driftloop.scoring import score  # scikit-learn: imported by the parent only, never by the ranks

    started = time.perf_counter()
    model = baseline_model(spec, seed)
    name = type(model).__name__
    target = numeric_column(rows, spec.target)
    if holdout.empty or (spec.task == "classification" and len(np.unique(target)) < 2):
        return BaselineResult(name, {}, time.perf_counter() - started)  # nothing to fit or to score
    if spec.task == "classification":
        target = target.astype(int)
    x = baseline_matrix(holdout, spec)
    with threadpool_limits(threads):
        model.fit(baseline_matrix(rows, spec), target, sample_weight=sample_weights)
        predicted = model.predict_proba(x)[:, 1] if spec.task == "classification" else model.predict(x)
    metrics = score(numeric_column(holdout, spec.target), predicted, spec.task)
    return BaselineResult(name, metrics, time.perf_counter() - started)
