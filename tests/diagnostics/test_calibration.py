"""Coverage, sharpness and their interpretation, by hand."""

from __future__ import annotations

import numpy as np
import pytest

from arturo_diag.diagnostics.calibration import calibration, interpret_calibration


def test_calibration_by_hand():
    result = calibration([1, 2, 3, 4], [1, 1, 1, 1], [1.0, 1.0, 0.25, -1.0])
    # P_aa <= 0 excluded; errors [0, 1, 2], sqrt(P_aa) [1, 1, 0.5], z = [0, 1, 4]
    assert result["n"] == 3 and result["n_nonpositive_variance"] == 1
    assert result["coverage"] == pytest.approx(2 / 3)
    assert result["sharpness"] == 1.0
    assert result["interpretation"] == "miscalibrated"


def test_vacuous_uncertainty_is_not_called_calibrated():
    h = np.linspace(-1, 1, 101)
    result = calibration(h + 0.01, h, np.ones(101))
    assert result["coverage"] == 1.0
    assert result["sharpness"] == pytest.approx(0.01)
    assert result["interpretation"] == "vacuous"


def test_gaussian_errors_with_their_true_variance_are_calibrated():
    rng = np.random.default_rng(1)
    std = rng.uniform(0.1, 2.0, size=20_000)
    h = rng.normal(size=20_000)
    result = calibration(h + std * rng.normal(size=20_000), h, std**2)
    assert result["coverage"] == pytest.approx(0.954, abs=0.01)
    assert result["sharpness"] == pytest.approx(0.674, abs=0.02)
    assert result["interpretation"] == "calibrated"


@pytest.mark.parametrize(
    ("coverage", "sharpness", "label"),
    [
        (0.95, 0.67, "calibrated"),
        (0.85, 0.4, "calibrated"),
        (0.99, 1.0, "calibrated"),
        (1.0, 0.19, "vacuous"),
        (1.0, 0.3, "miscalibrated"),
        (0.7, 0.9, "miscalibrated"),
        (0.49, 1.5, "overconfident"),
        (0.6, 2.5, "overconfident"),
        (float("nan"), 1.0, "undefined"),
    ],
)
def test_interpretation_labels(coverage, sharpness, label):
    assert interpret_calibration(coverage, sharpness) == label
