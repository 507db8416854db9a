"""driftloop.scoring and the monitor's probability calibration compute in numpy what scikit-learn computed before
(roc_auc_score, accuracy_score, log_loss, mean_absolute_error, IsotonicRegression): the same figures to 1e-12, so that
`driftloop monitor` on labelled outputs need not import scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import accuracy_score, log_loss, mean_absolute_error, roc_auc_score

from driftloop.monitoring.performance import fit_probability_calibration
from driftloop.scoring import average_ranks, roc_auc, score

TOLERANCE = 1e-12


def cases(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and outputs of several shapes: ties (rounded outputs), outputs beyond the clip, rare positives."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 3000))
    y = (rng.random(n) < rng.uniform(0.02, 0.9)).astype(float)
    p = rng.beta(2, 5, n) * 0.6 + 0.3 * y
    if seed % 3 == 0:
        p = np.round(p, 2)  # many ties
    if seed % 5 == 0:
        p[: n // 4] = 0.0  # beyond the 1e-7 clip, tied there
    if y.min() == y.max():
        y[0] = 1 - y[0]
    return y, p


@pytest.mark.parametrize("seed", range(30))
def test_classification_figures_equal_scikit_learns(seed: int) -> None:
    y, p = cases(seed)
    clipped = np.clip(p, 1e-7, 1 - 1e-7)
    figures = score(y, p, "classification")
    assert figures["auc"] == pytest.approx(roc_auc_score(y, clipped), abs=TOLERANCE)
    assert figures["accuracy"] == pytest.approx(accuracy_score(y, clipped >= 0.5), abs=TOLERANCE)
    assert figures["log_loss"] == pytest.approx(log_loss(y, clipped, labels=[0, 1]), abs=TOLERANCE)


def test_regression_figures_equal_scikit_learns() -> None:
    rng = np.random.default_rng(0)
    y, p = rng.normal(size=500), rng.normal(size=500)
    figures = score(y, p, "regression")
    assert figures["mae"] == pytest.approx(mean_absolute_error(y, p), abs=TOLERANCE)
    assert figures["rmse"] == pytest.approx(float(np.sqrt(np.mean((y - p) ** 2))), abs=TOLERANCE)


def test_ranks_share_ties_and_auc_counts_ties_half() -> None:
    assert average_ranks(np.array([0.3, 0.1, 0.3, 0.2])).tolist() == [3.5, 1.0, 3.5, 2.0]
    assert roc_auc(np.array([True, False]), np.array([0.5, 0.5])) == 0.5
    assert roc_auc(np.array([True, False, False]), np.array([0.9, 0.1, 0.9])) == 0.75
    assert np.isnan(roc_auc(np.array([True, True]), np.array([0.1, 0.2])))
    assert "auc" not in score(np.ones(3), np.array([0.1, 0.5, 0.9]), "classification")  # one class: no AUC


@pytest.mark.parametrize("seed", range(20))
def test_the_isotonic_calibration_equals_scikit_learns(seed: int) -> None:
    y, p = cases(seed)
    if seed % 4 == 1:  # values within float64's resolution of each other: one knot for scikit-learn
        p[1::7] = p[::7][: len(p[1::7])] + 4e-16
    isotonic = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p, y)
    calibrate = fit_probability_calibration(p, y)
    rng = np.random.default_rng(seed + 100)
    probe = np.r_[p, rng.uniform(-0.2, 1.2, 500), p.min(), p.max()]  # the fitted points, between and beyond them
    np.testing.assert_allclose(calibrate(probe), isotonic.predict(probe), rtol=0, atol=TOLERANCE)


def test_calibration_of_one_output_value_is_its_label_frequency() -> None:
    calibrate = fit_probability_calibration(np.full(4, 0.3), np.array([1.0, 0.0, 0.0, 0.0]))
    assert calibrate(np.array([0.0, 0.3, 1.0])).tolist() == [0.25, 0.25, 0.25]
