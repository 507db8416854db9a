"""Model quality figures, shared by training, monitoring and the release gate."""

from __future__ import annotations

import numpy as np

# Metrics where a larger value is better; the others are errors.
HIGHER_IS_BETTER = {"auc": True, "accuracy": True, "log_loss": False, "rmse": False, "mae": False}


def score(y_true: np.ndarray, y_pred: np.ndarray, task: str) -> dict[str, float]:
    """AUC, accuracy and log loss for classification (y_pred: P(positive)); RMSE and MAE for regression."""
    # Imported here: scikit-learn's import costs a second, and `driftloop monitor` scores only labelled windows.
    from sklearn.metrics import accuracy_score, log_loss, mean_absolute_error, roc_auc_score

    y_true = np.asarray(y_true, dtype=float)
    y_pred = np.asarray(y_pred, dtype=float)
    if len(y_true) == 0:
        return {}
    if task == "regression":
        return {
            "rmse": float(np.sqrt(np.mean((y_true - y_pred) ** 2))),
            "mae": float(mean_absolute_error(y_true, y_pred)),
        }
    clipped = np.clip(y_pred, 1e-7, 1 - 1e-7)
    figures = {
        "accuracy": float(accuracy_score(y_true, clipped >= 0.5)),
        "log_loss": float(log_loss(y_true, clipped, labels=[0, 1])),
    }
    if len(np.unique(y_true)) == 2:
        figures["auc"] = float(roc_auc_score(y_true, clipped))
    return figures


def better(metric: str, candidate: float, incumbent: float, margin: float = 0.0) -> bool:
    """True if `candidate` beats `incumbent` on `metric` by more than `margin`."""
    if HIGHER_IS_BETTER[metric]:
        return candidate > incumbent + margin
    return candidate < incumbent - margin
