"""Model quality figures, shared by training, monitoring and the release gate."""

from __future__ import annotations

import numpy as np

# Metrics where a larger value is better; the others are errors.
HIGHER_IS_BETTER = {"auc": True, "accuracy": True, "log_loss": False, "rmse": False, "mae": False}


def score(y_true: np.ndarray, y_pred: np.ndarray, task: str) -> dict[str, float]:
    """AUC, accuracy and log loss for classification (y_true 0/1, y_pred: P(1)); RMSE and MAE for regression.

    In numpy: the same figures as scikit-learn's roc_auc_score, accuracy_score, log_loss and mean_absolute_error
    (equal to 1e-12, tests/test_scoring.py), without its import (a second or more of CPU for `driftloop monitor`)."""
    y_true = np.asarray(y_true, dtype=float)
    y_pred = np.asarray(y_pred, dtype=float)
    if len(y_true) == 0:
        return {}
    if task == "regression":
        return {
            "rmse": float(np.sqrt(np.mean((y_true - y_pred) ** 2))),
            "mae": float(np.mean(np.abs(y_true - y_pred))),
        }
    clipped = np.clip(y_pred, 1e-7, 1 - 1e-7)
    positive = y_true == 1
    figures = {
        "accuracy": float(np.mean((clipped >= 0.5) == positive)),
        "log_loss": float(np.mean(np.where(positive, -np.log(clipped), -np.log(1 - clipped)))),
    }
    if len(np.unique(y_true)) == 2:
        figures["auc"] = roc_auc(positive, clipped)
    return figures


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of `values`, ties sharing their average rank."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values), dtype=float)
    ranks[order] = np.repeat((starts + 1 + ends) / 2, ends - starts)
    return ranks


def roc_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve by the rank formula (Mann-Whitney U / positives x negatives): the chance that a
    positive scores above a negative, ties counting half, which is what the ROC curve's trapezoids add up to."""
    positive = np.asarray(positive, dtype=bool)
    positives = int(positive.sum())
    negatives = len(positive) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    rank_sum = float(average_ranks(np.asarray(scores, dtype=float))[positive].sum())
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def better(metric: str, candidate: float, incumbent: float, margin: float = 0.0) -> bool:
    """True if `candidate` beats `incumbent` on `metric` by more than `margin`."""
    if HIGHER_IS_BETTER[metric]:
        return candidate > incumbent + margin
    return candidate < incumbent - margin
