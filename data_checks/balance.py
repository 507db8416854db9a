"""The labels of a batch: are both classes there, did their rate move, do they agree with what the champion learned.

Pure functions of the batch (and of the champion's training data or predictions, which flows/governance.py
fetches from the registry): a finding names the check, the figures and the setting that judged them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from driftloop.config import Config
from driftloop.data_checks.findings import Finding
from driftloop.data_checks.leakage import rank_correlation
from driftloop.scoring import score


def labels(frame: pd.DataFrame, config: Config) -> pd.Series:
    """The target as numbers, rows without one left out."""
    return pd.to_numeric(frame[config.data.target], errors="coerce").dropna()


def positive_rate(frame: pd.DataFrame, config: Config) -> float:
    """Share of rows labelled 1 (classification); NaN without labelled rows."""
    y = labels(frame, config)
    return float((y == 1).mean()) if len(y) else float("nan")


def class_balance(frame: pd.DataFrame, config: Config) -> Finding | None:
    """Classification: a finding when the rarer class makes less than governance.min_class_share of the rows."""
    limit = config.governance.min_class_share
    if config.data.task != "classification" or limit is None:
        return None
    rate = positive_rate(frame, config)
    if np.isnan(rate):
        return None
    rarer, share = ("1", rate) if rate <= 0.5 else ("0", 1 - rate)
    if share >= limit:
        return None
    return Finding(
        "balance.classes", True,
        f"class {rarer} of {config.data.target} makes {share:.1%} of the batch's rows (< governance.min_class_share "
        f"{limit:.1%}): too few examples to learn it from",
        {"positive_rate": round(rate, 4), "minority_share": round(share, 4), "limit": limit})


def label_shift(frame: pd.DataFrame, reference: pd.DataFrame, config: Config) -> Finding | None:
    """A finding when the labels moved too far from the champion's training data: the positive rate by more than
    governance.max_label_rate_change (classification), the mean by more than governance.max_target_shift of the
    reference's standard deviations (regression)."""
    batch, known = labels(frame, config), labels(reference, config)
    if batch.empty or known.empty:
        return None
    if config.data.task == "classification":
        limit = config.governance.max_label_rate_change
        now, before = float((batch == 1).mean()), float((known == 1).mean())
        change = abs(now - before)
        if limit is None or change <= limit:
            return None
        return Finding(
            "guard.label_rate", True,
            f"label rate {now:.2f} vs {before:.2f} in the champion's training data (change {change:.2f} > "
            f"governance.max_label_rate_change {limit:g})",
            {"label_rate": round(now, 4), "reference_rate": round(before, 4), "change": round(change, 4),
             "limit": limit})
    limit = config.governance.max_target_shift
    spread = float(known.std())
    if limit is None or not spread > 0:
        return None
    shift = abs(float(batch.mean()) - float(known.mean())) / spread
    if shift <= limit:
        return None
    return Finding(
        "guard.label_rate", True,
        f"mean {config.data.target} {batch.mean():.4g} vs {known.mean():.4g} in the champion's training data "
        f"(shift {shift:.2f} standard deviations > governance.max_target_shift {limit:g})",
        {"mean": round(float(batch.mean()), 6), "reference_mean": round(float(known.mean()), 6),
         "shift": round(shift, 4), "limit": limit})


def champion_agreement(frame: pd.DataFrame, predictions: np.ndarray, version: str, config: Config
                       ) -> Finding | None:
    """A finding when the champion's predictions on the batch score below governance.min_champion_auc
    (classification) or min_champion_correlation (Spearman rho, regression): the batch's labels contradict what the
    champion learned (flipped labels score about 1 - its usual AUC)."""
    y = pd.to_numeric(frame[config.data.target], errors="coerce").to_numpy(dtype="float64")
    known = ~np.isnan(y)
    y, predicted = y[known], np.asarray(predictions, dtype="float64")[known]
    if config.data.task == "classification":
        limit, measure, setting = config.governance.min_champion_auc, "AUC", "governance.min_champion_auc"
        value = score(y, predicted, "classification").get("auc") if len(y) else None
    else:
        limit, measure, setting = (config.governance.min_champion_correlation, "Spearman rho",
                                   "governance.min_champion_correlation")
        value = rank_correlation(pd.Series(predicted), y) if len(y) else None
    if limit is None or value is None or value >= limit:
        return None
    return Finding(
        "guard.champion_score", True,
        f"the champion (v{version}) scores {measure} {value:.3f} on the batch's labels (< {setting} {limit:g}): "
        "the labels contradict what it learned (flipped or mislabelled?)",
        {"score": round(float(value), 4), "limit": limit})
