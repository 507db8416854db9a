"""Turning a table into the model's input tensor, with statistics learned from the training data."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch
from scipy.special import ndtri

from driftloop.config import DataConfig, ModelConfig
from driftloop.errors import DataError

UNKNOWN = 0  # embedding index for a category never seen in training, or a missing one


@dataclass(frozen=True)
class FeatureSpec:
    """What the model needs to encode rows the way it saw them in training."""

    task: str
    target: str
    numerical: list[str]
    means: list[float]
    stds: list[float]
    categorical: list[str]
    vocab: dict[str, list[str]]
    target_mean: float = 0.0
    target_std: float = 1.0
    # How numbers are scaled before the network (model.scaling); a spec saved before scaling existed is "standard".
    scaling: str = "standard"
    # "robust": per column, (x - median) / interquartile range.
    centers: list[float] | None = None
    scales: list[float] | None = None
    # "quantile": per column, the training values at evenly spaced quantile levels, mapped to a standard normal.
    quantiles: list[list[float]] | None = None

    @property
    def cardinalities(self) -> list[int]:
        """Embedding table sizes, one per categorical column (index 0 is 'unknown')."""
        return [len(self.vocab[c]) + 1 for c in self.categorical]

    @property
    def width(self) -> int:
        """Columns of the encoded input tensor."""
        return len(self.numerical) + len(self.categorical)

    def to_json(self) -> str:
        """Serialise for storage beside the weights (no pickle)."""
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> FeatureSpec:
        """Inverse of to_json."""
        return cls(**json.loads(text))


def category_strings(series: pd.Series) -> pd.Series:
    """Categories as strings; integral numbers print without '.0' so 3 and 3.0 are one category."""
    if pd.api.types.is_numeric_dtype(series):
        values = pd.to_numeric(series)
        integral = values.dropna().eq(values.dropna().round()).all()
        if integral:
            return values.astype("Int64").astype("string")
    return series.astype("string")


def numeric_column(frame: pd.DataFrame, column: str) -> np.ndarray:
    """A numerical column as float64, or DataError naming it."""
    try:
        return pd.to_numeric(frame[column], errors="raise").to_numpy(dtype="float64", na_value=np.nan)
    except (ValueError, TypeError):
        raise DataError(f"column {column}: expected numbers, found text") from None


def _robust(values: np.ndarray) -> tuple[float, float]:
    """Median and interquartile range (the standard deviation where the IQR is 0, e.g. a mostly-constant column)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    low, median, high = np.quantile(finite, [0.25, 0.5, 0.75])
    spread = float(high - low) or float(np.std(finite)) or 1.0
    return float(median), spread


def _quantiles(values: np.ndarray, levels: int) -> list[float]:
    """The training values at `levels` evenly spaced quantile levels (constant columns give one value)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return [0.0]
    return np.unique(np.quantile(finite, np.linspace(0.0, 1.0, levels))).tolist()


def fit_spec(frame: pd.DataFrame, data: DataConfig, model: ModelConfig | None = None) -> FeatureSpec:
    """Learn the numbers' scaling (model.scaling), means, spreads and category vocabularies from training rows."""
    model = model or ModelConfig()
    means, stds, centers, scales, quantiles = [], [], [], [], []
    for column in data.numerical:
        values = numeric_column(frame, column)
        mean = float(np.nanmean(values)) if np.isfinite(values).any() else 0.0
        std = float(np.nanstd(values)) if np.isfinite(values).any() else 1.0
        means.append(mean)
        stds.append(std if std > 0 else 1.0)
        center, scale = _robust(values)
        centers.append(center)
        scales.append(scale)
        quantiles.append(_quantiles(values, model.quantiles))
    vocab = {c: sorted(category_strings(frame[c]).dropna().unique().tolist()) for c in data.categorical}
    target_mean, target_std = 0.0, 1.0
    if data.task == "regression":
        target = numeric_column(frame, data.target)
        target_mean, target_std = float(np.nanmean(target)), float(np.nanstd(target) or 1.0)
    return FeatureSpec(data.task, data.target, list(data.numerical), means, stds, list(data.categorical), vocab,
                       target_mean, target_std, scaling=model.scaling,
                       centers=centers if model.scaling == "robust" else None,
                       scales=scales if model.scaling == "robust" else None,
                       quantiles=quantiles if model.scaling == "quantile" else None)


def scale_column(values: np.ndarray, spec: FeatureSpec, index: int) -> np.ndarray:
    """Numerical column `index` of the spec scaled as in training; missing and infinite values become 0 (the
    centre), after the scaling so that no NaN reaches the network."""
    if spec.scaling == "quantile" and spec.quantiles is not None:
        points = np.asarray(spec.quantiles[index])
        if points.size < 2:
            scaled = np.zeros_like(values)
        else:
            # The empirical CDF, kept inside (0, 1) so that the normal's inverse stays finite at the extremes.
            edge = 0.5 / points.size
            cdf = np.interp(values, points, np.linspace(edge, 1.0 - edge, points.size))
            scaled = ndtri(cdf)
    elif spec.scaling == "robust" and spec.centers is not None and spec.scales is not None:
        scaled = (values - spec.centers[index]) / spec.scales[index]
    else:
        scaled = (values - spec.means[index]) / spec.stds[index]
    return np.nan_to_num(scaled, nan=0.0, posinf=0.0, neginf=0.0)


def encode(frame: pd.DataFrame, spec: FeatureSpec) -> torch.Tensor:
    """Rows as one float32 tensor: scaled numbers (missing -> 0), then category indices."""
    parts = []
    for index, column in enumerate(spec.numerical):
        parts.append(scale_column(numeric_column(frame, column), spec, index))
    for column in spec.categorical:
        lookup = {value: index + 1 for index, value in enumerate(spec.vocab[column])}
        codes = category_strings(frame[column]).map(lookup).fillna(UNKNOWN)
        parts.append(codes.to_numpy(dtype="float64"))
    matrix = np.stack(parts, axis=1) if parts else np.zeros((len(frame), 0))
    return torch.from_numpy(matrix.astype("float32"))


def encode_target(frame: pd.DataFrame, spec: FeatureSpec) -> torch.Tensor:
    """The label as float32: 0/1 for classification, standardised for regression."""
    values = numeric_column(frame, spec.target)
    if np.isnan(values).any():
        raise DataError(f"column {spec.target}: the label has missing values")
    if spec.task == "classification":
        if not np.isin(values, (0.0, 1.0)).all():
            raise DataError(f"column {spec.target}: a classification label must be 0 or 1")
    else:
        values = (values - spec.target_mean) / spec.target_std
    return torch.from_numpy(values.astype("float32"))
