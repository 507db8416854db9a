"""Leakage: what would make a model's figures lie, found in the batch before it is trained on.

Three ways: a feature that gives the target away (it predicts it almost perfectly on its own), evaluation
rows that are also training rows (the holdout or the gate would score memory), and training rows from
after the evaluation period began (the model would learn from the future it is judged on).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import binom

from driftloop.config import Config
from driftloop.data_checks.contract import category_text, parsed_times
from driftloop.data_checks.findings import Finding

# Out-of-fold target encoding of categories: a category's rate comes from the other folds only, so a column of
# unique ids (each value seen once) encodes to the overall rate and scores 0.5, not a perfect memorised 1.0.
ENCODING_FOLDS = 5
ENCODING_SEED = 0
# A missing category is a category of its own: a column whose missingness gives the label away leaks too.
MISSING_CATEGORY = "\x00missing"
# An overlap beyond what the data's repetition makes expected must also be beyond chance: at most this probability
# by the repetition alone (a holdout of a few rows can differ from the expected rate by a few percent by luck). Both
# must hold, so the chance alone need not be tiny: at 0.001, 10% of a 2,019-row holdout copied into RAND HIE's
# training rows (55% of which repeat anyway) went unseen (p = 0.002); no clean benchmark table comes near 0.01.
OVERLAP_ALPHA = 0.01
# A feature this good alone is a leak whatever the others score (no honest feature in the governance benchmark
# reached it: at most 0.979, a tumour's size in breast cancer; the label plus noise scores about 1.0).
NEAR_PERFECT = 0.99


def feature_scores(frame: pd.DataFrame, config: Config) -> dict[str, float]:
    """How well each feature alone predicts the target: AUC (classification, either direction, 0.5 = nothing)
    or |correlation| (regression: the larger of Spearman's and Pearson's), categories by their out-of-fold target
    encoding."""
    data = config.data
    target = pd.to_numeric(frame[data.target], errors="coerce")
    known = target.notna().to_numpy()
    y = target.to_numpy(dtype="float64")[known]
    scores: dict[str, float] = {}
    for column in data.features:
        if column not in frame.columns:
            continue
        if column in data.categorical:
            values = pd.Series(out_of_fold_encoding(frame[column][known], y))
        else:
            values = pd.to_numeric(frame[column][known], errors="coerce").reset_index(drop=True)
        scores[column] = (rank_auc(values, y) if data.task == "classification"
                          else max(abs(rank_correlation(values, y)), abs(linear_correlation(values, y))))
    return scores


def out_of_fold_encoding(column: pd.Series, y: np.ndarray) -> np.ndarray:
    """Each row's category replaced by the mean target of that category in the other folds (their overall mean
    for a category they lack)."""
    categories = category_text(column).fillna(MISSING_CATEGORY).to_numpy(dtype=object)
    folds = np.random.default_rng(ENCODING_SEED).integers(0, ENCODING_FOLDS, len(categories))
    encoded = np.empty(len(categories))
    for fold in range(ENCODING_FOLDS):
        held, rest = folds == fold, folds != fold
        if not held.any():
            continue
        if not rest.any():
            encoded[held] = y.mean()
            continue
        means = pd.Series(y[rest]).groupby(categories[rest]).mean()
        encoded[held] = pd.Series(categories[held]).map(means).fillna(y[rest].mean()).to_numpy()
    return encoded


def rank_auc(values: pd.Series, y: np.ndarray) -> float:
    """AUC of `values` as a score for y == 1, in whichever direction is better (max(AUC, 1 - AUC)); missing
    values rank together below the rest. 0.5 when y has one class only."""
    positives = y == 1
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        return 0.5
    ranks = pd.Series(values).reset_index(drop=True).rank(method="average", na_option="bottom").to_numpy()
    auc = (ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return float(max(auc, 1 - auc))


def rank_correlation(values: pd.Series, y: np.ndarray) -> float:
    """Spearman's rho of `values` and `y` (missing values ranked together below the rest); 0 when either is
    constant."""
    ranks = pd.Series(values).reset_index(drop=True).rank(method="average", na_option="bottom")
    target = pd.Series(y).rank(method="average")
    if ranks.nunique() < 2 or target.nunique() < 2:
        return 0.0
    return float(np.corrcoef(ranks.to_numpy(), target.to_numpy())[0, 1])


def linear_correlation(values: pd.Series, y: np.ndarray) -> float:
    """Pearson's r of `values` and `y` over the rows where both are finite; 0 when either is constant there.
    Ranks miss a leak of a target that is mostly one value (doctor visits, mostly zeros): the noise decides the
    order among the ties, while the values still follow the target closely."""
    x = pd.to_numeric(pd.Series(values).reset_index(drop=True), errors="coerce").to_numpy(dtype="float64")
    finite = np.isfinite(x) & np.isfinite(y)
    if finite.sum() < 3 or np.ptp(x[finite]) == 0 or np.ptp(y[finite]) == 0:
        return 0.0
    return float(np.corrcoef(x[finite], y[finite])[0, 1])


def stands_out(score: float, others: list[float], ratio: float | None) -> bool:
    """Whether a feature's score is a leak's rather than a strong honest predictor's: nearly perfect (NEAR_PERFECT),
    or its error (1 - score) below `ratio` times the next-best feature's error (a leak leaves every honest feature
    far behind; strong honest predictors come in families: a tumour's radius, perimeter and area). `ratio` None:
    every feature over the limit is a leak."""
    if ratio is None or score >= NEAR_PERFECT:
        return True
    runner_up = max(others, default=0.5)
    return (1 - score) < ratio * (1 - runner_up)


def feature_leakage(frame: pd.DataFrame, config: Config) -> list[Finding]:
    """A finding for every feature that predicts the target beyond the configured score: blocking when it also
    stands out from the other features (governance.feature_leak_ratio), a warning otherwise."""
    classification = config.data.task == "classification"
    limit = config.governance.max_feature_auc if classification else config.governance.max_feature_correlation
    if limit is None:
        return []
    setting = "governance.max_feature_auc" if classification else "governance.max_feature_correlation"
    measure = "AUC" if classification else "|correlation| (Spearman's or Pearson's)"
    ratio = config.governance.feature_leak_ratio
    scores = feature_scores(frame, config)
    findings = []
    for column, score in scores.items():
        if score <= limit:
            continue
        others = [v for k, v in scores.items() if k != column]
        runner_up = max(others, default=float("nan"))
        if stands_out(score, others, ratio):
            findings.append(Finding(
                "leakage.feature", True,
                f"feature {column} alone predicts {config.data.target} with {measure} {score:.3f} (> {setting} "
                f"{limit:g}; the next-best feature {runner_up:.3f}, governance.feature_leak_ratio {ratio}): it gives "
                "the label away; drop it from the config's features or compute it only from what is known at "
                "prediction time",
                {"score": round(score, 4), "limit": limit, "runner_up": round(runner_up, 4)}))
        else:
            findings.append(Finding(
                "leakage.feature", False,
                f"feature {column} alone predicts {config.data.target} with {measure} {score:.3f} (> {setting} "
                f"{limit:g}), but so do others (next-best {runner_up:.3f}; governance.feature_leak_ratio {ratio}): "
                "a strong predictor, not a leak by its figures; check it is known at prediction time",
                {"score": round(score, 4), "limit": limit, "runner_up": round(runner_up, 4)}))
    return findings


def row_keys(frame: pd.DataFrame, config: Config) -> pd.Series:
    """One hash per row of its features and target, normalised (numbers as floats, categories as text) so the
    same row read from CSV, Parquet or the prediction log hashes alike; the timestamp is left out on purpose."""
    data = config.data
    columns = [c for c in data.features + [data.target] if c in frame.columns]
    normal = pd.DataFrame(index=frame.index)
    for column in columns:
        if column in data.categorical:
            normal[column] = category_text(frame[column]).astype(object)
        else:
            normal[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    return pd.util.hash_pandas_object(normal, index=False)


def overlap_count(training: pd.DataFrame, evaluation: pd.DataFrame, config: Config) -> int:
    """How many rows of `evaluation` also appear among the rows of `training` (features and target compared)."""
    if training.empty or evaluation.empty:
        return 0
    return int(row_keys(evaluation, config).isin(set(row_keys(training, config))).sum())


def repeat_rate(training: pd.DataFrame, config: Config) -> float:
    """Share of training rows that another training row repeats exactly (features and target): the overlap the
    data's own repetition makes expected for any new row drawn like them (two people with the same coded answers)."""
    if len(training) < 2:
        return 0.0
    return float(row_keys(training, config).duplicated(keep=False).mean())


def overlap_excess(shared: int, rows: int, expected: float, training_rows: int) -> tuple[float, float]:
    """The observed overlap's excess over `expected` as a share of the rows the repetition leaves distinct
    ((share - expected) / (1 - expected): copying c of the holdout into training gives c, however often the data
    repeats itself), and the chance of seeing `shared` or more by the data's repetition alone (binomial; the
    expected rate add-one smoothed, as a few training rows only estimate it)."""
    rate = (expected * training_rows + 1) / (training_rows + 1)
    distinct = 1.0 - expected
    excess = (shared / rows - expected) / distinct if distinct > 0 else 0.0
    return excess, float(binom.sf(shared - 1, rows, min(rate, 1.0)))


def overlap_finding(training: pd.DataFrame, evaluation: pd.DataFrame, config: Config, what: str) -> Finding | None:
    """A blocking finding when the share of evaluation rows (`what`: the holdout, the gate window) that are training
    rows too exceeds what the training rows' own repetition makes expected by more than
    governance.max_overlap_fraction, and beyond chance (OVERLAP_ALPHA)."""
    limit = config.governance.max_overlap_fraction
    if limit is None or evaluation.empty:
        return None
    shared = overlap_count(training, evaluation, config)
    share, expected = shared / len(evaluation), repeat_rate(training, config)
    excess, chance = overlap_excess(shared, len(evaluation), expected, len(training))
    if excess <= limit or chance >= OVERLAP_ALPHA:
        return None
    return Finding(
        "leakage.overlap", True,
        f"{shared:,} of {len(evaluation):,} rows of the {what} ({share:.2%}) also appear among the training rows "
        f"(features and target compared, not the timestamp), where the training rows' own repetition makes "
        f"{expected:.2%} expected: {excess:.2%} of the rows that should be new are copies (> "
        f"governance.max_overlap_fraction {limit:.2%}): the {what}'s figures "
        f"would score memory; remove the copied rows (or raise governance.max_overlap_fraction if they are distinct "
        "records that happen to be equal)",
        {"rows": shared, "evaluation_rows": len(evaluation), "share": round(share, 6),
         "expected": round(expected, 6), "excess": round(excess, 6), "limit": limit})


def late_rows(training: pd.DataFrame, evaluation: pd.DataFrame, config: Config) -> tuple[int, pd.Timestamp | None]:
    """How many training rows are stamped later than the first evaluation row, and that first time (None, 0
    without a timestamp column on both sides)."""
    column = config.data.timestamp
    if not column or column not in training.columns or column not in evaluation.columns:
        return 0, None
    start = parsed_times(evaluation[column]).min()
    if pd.isna(start):
        return 0, None
    return int((parsed_times(training[column]) > start).sum()), start


def time_finding(training: pd.DataFrame, evaluation: pd.DataFrame, config: Config, what: str) -> Finding | None:
    """A blocking finding when more than governance.max_late_fraction of the training rows come from after the
    start of the evaluation period (`what`)."""
    limit = config.governance.max_late_fraction
    if limit is None or training.empty:
        return None
    late, start = late_rows(training, evaluation, config)
    share = late / len(training)
    if start is None or share <= limit:
        return None
    return Finding(
        "leakage.time", True,
        f"{late:,} of {len(training):,} training rows ({share:.2%}) are stamped later than the start of the {what} "
        f"({start.isoformat()}) (> governance.max_late_fraction {limit:.2%}): the model would learn from the "
        "period it is judged on; train on rows before it",
        {"rows": late, "training_rows": len(training), "share": round(share, 6), "limit": limit})
