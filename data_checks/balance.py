"""The labels of a batch: are both classes there, did their rate move, do they agree with what the champion learned.

Pure functions of the batch (and of the champion's training data or predictions, which flows/governance.py
fetches from the registry): a finding names the check, the figures and the setting that judged them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import norm

from driftloop.config import Config
from driftloop.data import split_by_fraction
from driftloop.data_checks.findings import Finding
from driftloop.data_checks.leakage import rank_correlation
from driftloop.scoring import roc_auc

# The champion's score in one slice of the batch (a feature's half or frequent value) must fall below the limit by
# this many standard errors, and by the Bonferroni bar for SLICE_FALSE_ALARM over all slices searched, to block.
SLICE_Z = 3.0
SLICE_FALSE_ALARM = 0.001
SLICE_MIN_ROWS = 50
SLICE_MIN_SHARE = 0.05


def labels(frame: pd.DataFrame, config: Config) -> pd.Series:
    """The target as numbers, rows without one left out."""
    return pd.to_numeric(frame[config.data.target], errors="coerce").dropna()


def positive_rate(frame: pd.DataFrame, config: Config) -> float:
    """Share of rows labelled 1 (classification); NaN without labelled rows."""
    y = labels(frame, config)
    return float((y == 1).mean()) if len(y) else float("nan")


def class_counts(frame: pd.DataFrame, config: Config) -> tuple[str, int, int]:
    """The rarer class ("0" or "1") and its rows in the training part and in the holdout (the trainer's own
    time-later split by training.holdout_fraction)."""
    rate = positive_rate(frame, config)
    rarer = 1 if rate <= 0.5 else 0
    fit, holdout = split_by_fraction(frame, config.training.holdout_fraction) if len(frame) >= 2 else (frame, frame[:0])
    return str(rarer), int((labels(fit, config) == rarer).sum()), int((labels(holdout, config) == rarer).sum())


def class_balance(frame: pd.DataFrame, config: Config) -> Finding | None:
    """Classification: a blocking finding when the rarer class has fewer rows than governance.min_class_rows in the
    training part or governance.min_holdout_class_rows in the holdout (too few to learn it or to evaluate it); a
    warning when it merely makes less than governance.min_class_share of the rows (rare events are normal)."""
    rules = config.governance
    if config.data.task != "classification" or len(frame) == 0:
        return None
    rate = positive_rate(frame, config)
    if np.isnan(rate):
        return None
    rarer, fit_rows, holdout_rows = class_counts(frame, config)
    share = rate if rarer == "1" else 1 - rate
    figures = {"positive_rate": round(rate, 4), "minority_share": round(share, 4), "training_rows": fit_rows,
               "holdout_rows": holdout_rows}
    counts = f"{fit_rows:,} training rows and {holdout_rows:,} holdout rows of class {rarer} of {config.data.target}"
    minimums = (("governance.min_class_rows", fit_rows, rules.min_class_rows),
                ("governance.min_holdout_class_rows", holdout_rows, rules.min_holdout_class_rows))
    short = [f"{what} {limit:,}" for what, rows, limit in minimums if limit is not None and rows < limit]
    if short:
        return Finding(
            "balance.classes", True,
            f"{counts} (< {', '.join(short)}): too few to learn the class or to evaluate the model on it; add labelled "
            "rows of that class, or lower those settings if the figures may be that uncertain",
            {**figures, "limit": float(rules.min_class_rows or 0)})
    if rules.min_class_share is not None and share < rules.min_class_share:
        return Finding(
            "balance.classes", False,
            f"class {rarer} of {config.data.target} makes {share:.1%} of the batch's rows (< "
            f"governance.min_class_share {rules.min_class_share:.1%}; {counts}): enough to train on, but its figures "
            "are less certain; consider a class weight",
            {**figures, "limit": rules.min_class_share})
    return None


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
    else:
        limit, measure, setting = (config.governance.min_champion_correlation, "Spearman rho",
                                   "governance.min_champion_correlation")
    figures = signed_score(y, predicted, config.data.task) if len(y) else None
    if limit is None or figures is None:
        return None
    value, error = figures
    # Below the limit beyond chance, as for the slices: a weak champion scoring 0.49 on a few hundred labels is
    # noise around chance, flipped labels sit many standard errors below it.
    z = (limit - value) / error
    if z > SLICE_Z:
        return Finding(
            "guard.champion_score", True,
            f"the champion (v{version}) scores {measure} {value:.3f} on the batch's labels (< {setting} {limit:g} by "
            f"{z:.1f} standard errors): the labels contradict what it learned (flipped or mislabelled?)",
            {"score": round(float(value), 4), "limit": limit, "z": round(float(z), 2)})
    return slice_agreement(frame[known].reset_index(drop=True), y, predicted, version, config, limit)


def slices(frame: pd.DataFrame, config: Config) -> list[tuple[str, np.ndarray]]:
    """Slices of the batch by one feature each: a number's halves at its median, a category's frequent values (at
    least SLICE_MIN_SHARE of the rows): where a source or a segment whose labels went wrong would show."""
    found = []
    least = max(SLICE_MIN_ROWS, SLICE_MIN_SHARE * len(frame))
    for column in config.data.numerical:
        if column in frame.columns:
            values = pd.to_numeric(frame[column], errors="coerce")
            middle = values.median()
            found += [(f"{column} <= {middle:.4g}", (values <= middle).to_numpy()),
                      (f"{column} > {middle:.4g}", (values > middle).to_numpy())]
    for column in config.data.categorical:
        if column in frame.columns:
            text = frame[column].astype(str)
            found += [(f"{column} = {value}", (text == value).to_numpy())
                      for value, count in text.value_counts().items() if count >= least]
    return [(name, mask) for name, mask in found if least <= mask.sum() < len(frame)]


def signed_score(y: np.ndarray, predicted: np.ndarray, task: str) -> tuple[float, float] | None:
    """The champion's AUC (classification) or Spearman rho (regression) and its standard error (Hanley-McNeil;
    Fisher's 1/sqrt(n - 3)); None when undefined (one class, constant values)."""
    if task != "classification":
        if len(y) < 4:
            return None
        return rank_correlation(pd.Series(predicted), y), 1 / np.sqrt(len(y) - 3)
    positives = y == 1
    n1, n2 = int(positives.sum()), int((~positives).sum())
    if n1 == 0 or n2 == 0:
        return None
    auc = roc_auc(positives, predicted)
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    variance = (auc * (1 - auc) + (n1 - 1) * (q1 - auc**2) + (n2 - 1) * (q2 - auc**2)) / (n1 * n2)
    return auc, float(np.sqrt(max(variance, 1e-12)))


def slice_agreement(frame: pd.DataFrame, y: np.ndarray, predicted: np.ndarray, version: str, config: Config,
                    limit: float) -> Finding | None:
    """A finding when the champion scores below `limit` in one slice of the batch beyond chance (SLICE_Z standard
    errors, Bonferroni over the slices): labels flipped in one segment, which the whole batch's score averages away."""
    candidates = slices(frame, config)
    if not candidates:
        return None
    bar = max(SLICE_Z, float(norm.isf(SLICE_FALSE_ALARM / len(candidates))))
    worst: tuple[float, str, float, int] | None = None
    for name, mask in candidates:
        figures = signed_score(y[mask], predicted[mask], config.data.task)
        if figures is None:
            continue
        value, error = figures
        z = (limit - value) / error
        if z > bar and (worst is None or z > worst[0]):
            worst = (z, name, value, int(mask.sum()))
    if worst is None:
        return None
    z, name, value, rows = worst
    setting = "governance.min_champion_auc" if config.data.task == "classification" else \
        "governance.min_champion_correlation"
    return Finding(
        "guard.champion_score", True,
        f"the champion (v{version}) scores {value:.3f} on the {rows:,} rows where {name} (< {setting} {limit:g} by "
        f"{z:.1f} standard errors; {len(candidates)} slices searched): the labels of that slice contradict what it "
        "learned (flipped or mislabelled at one source?); fix that slice's labels or leave it out",
        {"score": round(value, 4), "limit": limit, "rows": rows, "z": round(z, 2)})
