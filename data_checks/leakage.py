"""Leakage: what would make a model's figures lie, found in the batch before it is trained on.

Three ways: a feature that gives the target away (it predicts it almost perfectly on its own), evaluation
rows that are also training rows (the holdout or the gate would score memory), and training rows from
after the evaluation period began (the model would learn from the future it is judged on).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from driftloop.config import Config
from driftloop.data_checks.contract import category_text, parsed_times
from driftloop.data_checks.findings import Finding

# Out-of-fold target encoding of categories: a category's rate comes from the other folds only, so a column of
# unique ids (each value seen once) encodes to the overall rate and scores 0.5, not a perfect memorised 1.0.
ENCODING_FOLDS = 5
ENCODING_SEED = 0
# A missing category is a category of its own: a column whose missingness gives the label away leaks too.
MISSING_CATEGORY = "\x00missing"


def feature_scores(frame: pd.DataFrame, config: Config) -> dict[str, float]:
    """How well each feature alone predicts the target: AUC (classification, either direction, 0.5 = nothing)
    or |Spearman rho| (regression), numbers by rank, categories by their out-of-fold target encoding."""
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
                          else abs(rank_correlation(values, y)))
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


def feature_leakage(frame: pd.DataFrame, config: Config) -> list[Finding]:
    """A blocking finding for every feature that predicts the target beyond the configured score."""
    classification = config.data.task == "classification"
    limit = config.governance.max_feature_auc if classification else config.governance.max_feature_correlation
    if limit is None:
        return []
    setting = "governance.max_feature_auc" if classification else "governance.max_feature_correlation"
    measure = "AUC" if classification else "|Spearman rho|"
    findings = []
    for column, score in feature_scores(frame, config).items():
        if score > limit:
            findings.append(Finding(
                "leakage.feature", True,
                f"feature {column} alone predicts {config.data.target} with {measure} {score:.3f} (> {setting} "
                f"{limit:g}): it gives the label away; drop it from the config's features or compute it only "
                "from what is known at prediction time",
                {"score": round(score, 4), "limit": limit}))
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


def overlap_finding(training: pd.DataFrame, evaluation: pd.DataFrame, config: Config, what: str) -> Finding | None:
    """A blocking finding when more than governance.max_overlap_fraction of the evaluation rows (`what`: the
    holdout, the gate window) are training rows too."""
    limit = config.governance.max_overlap_fraction
    if limit is None or evaluation.empty:
        return None
    shared = overlap_count(training, evaluation, config)
    share = shared / len(evaluation)
    if share <= limit:
        return None
    return Finding(
        "leakage.overlap", True,
        f"{shared:,} of {len(evaluation):,} rows of the {what} ({share:.2%}) also appear among the training rows "
        f"(features and target compared, not the timestamp) (> governance.max_overlap_fraction {limit:.2%}): the "
        f"{what}'s figures would score memory; remove the duplicated rows",
        {"rows": shared, "evaluation_rows": len(evaluation), "share": round(share, 6), "limit": limit})


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
