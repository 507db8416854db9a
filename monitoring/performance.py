"""The model's performance per window: actual once labels arrive, estimated from its confidence before.

The estimate follows NannyML's CBPE (confidence-based performance estimation) for classification: fit a
probability calibration on the reference (isotonic regression of the label on the model's output), read
each window row's calibrated probability p as the chance that its label is 1, and take the expected
confusion counts: expected accuracy = mean(p if predicted 1 else 1 - p), expected ROC curve from the
cumulative sums of p and 1 - p down the ranking, expected log loss likewise. It assumes the relation
between the model's output and the label is the reference's (no concept drift): it sees covariate shift,
never concept drift; only labels see that. Where the reference rows were in the model's training data
the calibration inherits the fit's optimism: pass rows the model did not train on where there are some.

Every figure carries a standard error (of the actual figure on that many rows), so that the policy can
tell a drop from noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from driftloop.config import Config
from driftloop.scoring import HIGHER_IS_BETTER, score

# Probabilities are clipped as driftloop.scoring.score clips them, so log losses agree.
EPSILON = 1e-7
DECISION_THRESHOLD = 0.5


@dataclass(frozen=True)
class Figures:
    """Performance figures of one set of rows, each with its standard error."""

    rows: int
    values: dict[str, float]
    errors: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        """{"rows", "values", "standard_errors"}."""
        return {"rows": self.rows, "values": self.values, "standard_errors": self.errors}


@dataclass(frozen=True)
class Performance:
    """A window's performance next to the reference's: actual (labelled rows) and estimated (CBPE)."""

    metric: str  # the metric the policy judges (config.gate_metric())
    reference: Figures | None  # actual, on the reference
    actual: Figures | None  # on the window's labelled rows; None before any label arrived
    estimated: Figures | None  # CBPE on the whole window (classification)
    reference_estimated: Figures | None  # CBPE on the reference: the baseline of the estimate

    def to_json(self) -> dict:
        """The "performance" entry of the monitor's JSON."""
        def part(figures: Figures | None) -> dict | None:
            return figures.to_json() if figures is not None else None

        return {"metric": self.metric, "reference": part(self.reference), "actual": part(self.actual),
                "estimated": part(self.estimated), "reference_estimated": part(self.reference_estimated)}


@dataclass(frozen=True)
class ReferencePerformance:
    """What a window's performance is compared with, computed once per reference."""

    metric: str
    actual: Figures | None  # on the reference's labelled rows
    estimated: Figures | None  # CBPE on the reference (classification)
    calibrate: Callable[[np.ndarray], np.ndarray] | None  # model output → P(label 1), from the reference


def measure_performance(reference: pd.DataFrame, window: pd.DataFrame, config: Config) -> Performance | None:
    """Actual and estimated performance of `window`; None when the window has no model output column."""
    if not _has_outputs(window, config):
        return None
    return window_performance(reference_performance(reference, config), window, config)


def reference_performance(reference: pd.DataFrame, config: Config) -> ReferencePerformance:
    """The reference's actual figures and the probability calibration CBPE needs (from labelled outputs)."""
    prediction, target = config.monitoring.prediction_column, config.data.target
    known = _labelled(reference, prediction, target)
    if not len(known):
        return ReferencePerformance(config.gate_metric(), None, None, None)
    actual = actual_figures(known[target], known[prediction], config.data.task)
    if config.data.task != "classification" or known[target].nunique() != 2:
        return ReferencePerformance(config.gate_metric(), actual, None, None)
    calibrate = fit_probability_calibration(known[prediction], known[target])
    estimated = estimated_figures(known[prediction], calibrate(known[prediction]))
    return ReferencePerformance(config.gate_metric(), actual, estimated, calibrate)


def window_performance(reference: ReferencePerformance, window: pd.DataFrame, config: Config
                       ) -> Performance | None:
    """The window's actual figures (labelled rows) and CBPE estimate, next to the reference's."""
    if not _has_outputs(window, config):
        return None
    prediction, target = config.monitoring.prediction_column, config.data.target
    labelled = _labelled(window, prediction, target)
    actual = actual_figures(labelled[target], labelled[prediction], config.data.task) if len(labelled) else None
    estimated = None
    if reference.calibrate is not None:
        outputs = window[prediction].dropna().to_numpy("float64")
        estimated = estimated_figures(outputs, reference.calibrate(outputs))
    return Performance(reference.metric, reference.actual, actual, estimated, reference.estimated)


def actual_figures(labels: pd.Series, outputs: pd.Series, task: str) -> Figures:
    """driftloop.scoring.score of the labelled rows, with standard errors."""
    y = np.asarray(labels, dtype="float64")
    p = np.asarray(outputs, dtype="float64")
    values = score(y, p, task)
    if task == "regression":
        errors = p - y
        return Figures(len(y), values, {"rmse": _rmse_error(errors), "mae": _mean_error(np.abs(errors))})
    clipped = np.clip(p, EPSILON, 1 - EPSILON)
    losses = -(y * np.log(clipped) + (1 - y) * np.log(1 - clipped))
    correct = (clipped >= DECISION_THRESHOLD) == (y == 1)
    errors = {"accuracy": _mean_error(correct.astype("float64")), "log_loss": _mean_error(losses)}
    if "auc" in values:
        errors["auc"] = auc_error(values["auc"], float(y.sum()), float(len(y) - y.sum()))
    return Figures(len(y), values, errors)


def estimated_figures(outputs: pd.Series | np.ndarray, calibrated: np.ndarray) -> Figures:
    """CBPE: expected accuracy, AUC and log loss when each label is 1 with its calibrated probability."""
    s = np.clip(np.asarray(outputs, dtype="float64"), EPSILON, 1 - EPSILON)
    p = np.asarray(calibrated, dtype="float64")
    n = len(s)
    if n == 0:
        return Figures(0, {})
    hit = np.where(s >= DECISION_THRESHOLD, p, 1 - p)
    loss_one, loss_zero = -np.log(s), -np.log(1 - s)
    expected_loss = p * loss_one + (1 - p) * loss_zero
    loss_square = p * loss_one ** 2 + (1 - p) * loss_zero ** 2
    accuracy, log_loss = float(hit.mean()), float(expected_loss.mean())
    values = {"accuracy": accuracy, "log_loss": log_loss}
    # The spread the actual figures would have on these rows (labels drawn with probability p).
    errors = {"accuracy": math.sqrt(max(accuracy * (1 - accuracy), 0.0) / n),
              "log_loss": math.sqrt(max(float(loss_square.mean()) - log_loss ** 2, 0.0) / n)}
    positives = float(p.sum())
    if 0 < positives < n:
        values["auc"] = expected_auc(s, p)
        errors["auc"] = auc_error(values["auc"], positives, n - positives)
    return Figures(n, values, errors)


def expected_auc(outputs: np.ndarray, calibrated: np.ndarray) -> float:
    """Area under the expected ROC curve: expected true and false positives at each output threshold."""
    order = np.argsort(-outputs, kind="stable")
    s, p = outputs[order], calibrated[order]
    # One ROC point per distinct output: tied outputs move together (the diagonal step between them).
    last = np.r_[s[1:] != s[:-1], True]
    tp = np.r_[0.0, np.cumsum(p)[last]]
    fp = np.r_[0.0, np.cumsum(1 - p)[last]]
    tpr, fpr = tp / tp[-1], fp / fp[-1]
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def fit_probability_calibration(outputs: pd.Series, labels: pd.Series) -> Callable[[np.ndarray], np.ndarray]:
    """Isotonic map from the model's output to the observed frequency of label 1 on the reference: scikit-learn's
    IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip") fitted and applied, in numpy (equal to 1e-12,
    tests/test_scoring.py; scikit-learn's import cost `driftloop monitor` a second or more)."""
    x = np.asarray(outputs, dtype="float64")
    y = np.asarray(labels, dtype="float64")
    order = np.lexsort((y, x))
    knots, means, weights = _tied_means(x[order], y[order])
    fitted = np.clip(_pool_adjacent_violators(means, weights), 0.0, 1.0)
    # Linear between the fitted points, their end values beyond them (out_of_bounds clip).
    return lambda values: np.interp(np.asarray(values, dtype="float64"), knots, fitted)


def _tied_means(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted `x` made unique, with the mean of `y` and the count at each value. Values closer than float64's
    resolution (1e-15) to their group's first value count as one, as scikit-learn's isotonic fit counts them."""
    resolution = np.finfo(np.float64).resolution
    if len(x) and bool((np.diff(np.unique(x)) >= resolution).all()):
        knots, group, counts = np.unique(x, return_inverse=True, return_counts=True)
        return knots, np.bincount(group, weights=y) / counts, counts.astype("float64")
    knots_list, sums, counts_list = [], [], []
    for value, label in zip(x.tolist(), y.tolist(), strict=True):
        if knots_list and value - knots_list[-1] < resolution:
            sums[-1] += label
            counts_list[-1] += 1.0
        else:
            knots_list.append(value)
            sums.append(label)
            counts_list.append(1.0)
    counts = np.asarray(counts_list)
    return np.asarray(knots_list), np.asarray(sums) / counts, counts


def _pool_adjacent_violators(means: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The non-decreasing sequence closest to `means` in weighted least squares (pool adjacent violators)."""
    values: list[float] = []
    totals: list[float] = []
    sizes: list[int] = []
    for mean, weight in zip(means.tolist(), weights.tolist(), strict=True):
        values.append(mean)
        totals.append(weight)
        sizes.append(1)
        while len(values) > 1 and values[-2] >= values[-1]:
            weight_last, weight_before = totals.pop(), totals[-1]
            value_last = values.pop()
            values[-1] = (values[-1] * weight_before + value_last * weight_last) / (weight_before + weight_last)
            totals[-1] = weight_before + weight_last
            size_last = sizes.pop()
            sizes[-1] += size_last
    return np.repeat(np.asarray(values, dtype="float64"), sizes)


def auc_error(auc: float, positives: float, negatives: float) -> float:
    """Hanley & McNeil (1982) standard error of an AUC from that many positives and negatives."""
    if positives <= 0 or negatives <= 0:
        return float("nan")
    q1, q2 = auc / (2 - auc), 2 * auc ** 2 / (1 + auc)
    variance = (auc * (1 - auc) + (positives - 1) * (q1 - auc ** 2) + (negatives - 1) * (q2 - auc ** 2))
    return math.sqrt(max(variance, 0.0) / (positives * negatives))


def worse_by(metric: str, value: float, baseline: float) -> float:
    """How much worse `value` is than `baseline` on `metric` (positive: worse), whatever its direction."""
    return baseline - value if HIGHER_IS_BETTER[metric] else value - baseline


def _has_outputs(frame: pd.DataFrame, config: Config) -> bool:
    """Whether the frame holds some model outputs."""
    column = config.monitoring.prediction_column
    return column in frame and bool(frame[column].notna().any())


def _labelled(frame: pd.DataFrame, prediction: str, target: str) -> pd.DataFrame:
    """Rows with both the model's output and the label."""
    if prediction not in frame or target not in frame:
        return frame.iloc[:0]
    return frame[[prediction, target]].dropna()


def _mean_error(per_row: np.ndarray) -> float:
    """Standard error of a mean of per-row values."""
    return float(np.std(per_row, ddof=1) / math.sqrt(len(per_row))) if len(per_row) > 1 else float("nan")


def _rmse_error(errors: np.ndarray) -> float:
    """Standard error of an RMSE (delta method on the mean squared error)."""
    if len(errors) < 2:
        return float("nan")
    squared = errors ** 2
    rmse = math.sqrt(float(squared.mean()))
    return _mean_error(squared) / (2 * rmse) if rmse > 0 else 0.0
