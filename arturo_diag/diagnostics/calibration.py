"""Calibration of the filter's claimed uncertainty ``Var(a) = P_aa`` against the actual error.

ARTURO.md, "Diagnostic quantities": coverage is the share of coordinates with
``|a-h| <= 2*sqrt(P_aa)`` (about 95 % if the filter is calibrated and ``h`` is what it tracks);
sharpness is the median of ``|a-h| / sqrt(P_aa)`` (about 0.67 when calibrated). Coverage alone
is not enough: a claimed uncertainty far wider than the error gives 100 % coverage that means
nothing, which is why both are reported and interpreted together.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from arturo_diag.diagnostics.intervals import Z95, wilson_interval

__all__ = [
    "COVERAGE_CALIBRATED",
    "GAUSSIAN_COVERAGE",
    "GAUSSIAN_SHARPNESS",
    "SHARPNESS_CALIBRATED",
    "calibration",
    "calibration_intervals",
    "interpret_calibration",
    "median_interval",
]

# What an exactly calibrated Gaussian error gives: P(|z| <= 2) and median |z|.
GAUSSIAN_COVERAGE = 0.9544997361036416
GAUSSIAN_SHARPNESS = 0.6744897501960817
COVERAGE_CALIBRATED = (0.85, 0.99)
SHARPNESS_CALIBRATED = (0.4, 1.0)
SHARPNESS_VACUOUS = 0.2
COVERAGE_OVERCONFIDENT = 0.5
SHARPNESS_OVERCONFIDENT = 2.0


def interpret_calibration(coverage: float, sharpness: float) -> str:
    """Label a (coverage, sharpness) pair.

    - ``"calibrated"``: coverage in [0.85, 0.99] and sharpness in [0.4, 1.0];
    - ``"vacuous"``: sharpness < 0.2, the claimed uncertainty is far wider than the error, so
      coverage is meaningless;
    - ``"overconfident"``: coverage < 0.5 or sharpness > 2, the error is far larger than claimed;
    - ``"miscalibrated"``: anything else; ``"undefined"`` if either number is NaN.

    The three named cases cannot overlap: a median ``|z|`` below 0.2 puts more than half the
    coordinates inside ``|z| <= 2``.
    """
    if math.isnan(coverage) or math.isnan(sharpness):
        return "undefined"
    if sharpness < SHARPNESS_VACUOUS:
        return "vacuous"
    if coverage < COVERAGE_OVERCONFIDENT or sharpness > SHARPNESS_OVERCONFIDENT:
        return "overconfident"
    if (
        COVERAGE_CALIBRATED[0] <= coverage <= COVERAGE_CALIBRATED[1]
        and SHARPNESS_CALIBRATED[0] <= sharpness <= SHARPNESS_CALIBRATED[1]
    ):
        return "calibrated"
    return "miscalibrated"


def calibration(a: Any, h: Any, p_aa: Any) -> dict[str, Any]:
    """Coverage and sharpness of the filter's ``P_aa`` for the error ``a - h``.

    Coordinates with ``P_aa <= 0`` (no standard deviation) are excluded and counted
    (``n_nonpositive_variance``); non-finite ones are dropped (``n_nonfinite``).

    Returns:
        coverage: share with ``|a-h| <= 2*sqrt(P_aa)``;
        sharpness: median of ``|a-h| / sqrt(P_aa)``;
        interpretation: :func:`interpret_calibration` of the two;
        gaussian_coverage, gaussian_sharpness: what a calibrated filter would give (0.954, 0.674);
        median_sqrt_p_aa, median_abs_error: the two scales compared; n and the counts above.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    h = np.asarray(h, dtype=np.float64).reshape(-1)
    p_aa = np.asarray(p_aa, dtype=np.float64).reshape(-1)
    if not a.shape == h.shape == p_aa.shape:
        raise ValueError(f"calibration: a, h, p_aa have {a.size}, {h.size}, {p_aa.size} coordinates")
    finite = np.isfinite(a) & np.isfinite(h) & np.isfinite(p_aa)
    n_nonfinite = int(a.size - np.count_nonzero(finite))
    positive = finite & (p_aa > 0)
    n_nonpositive = int(np.count_nonzero(finite & ~positive))
    error = np.abs(a[positive] - h[positive])
    std = np.sqrt(p_aa[positive])
    n = int(error.size)
    if n:
        z = error / std
        coverage = float(np.mean(error <= 2.0 * std))
        # the three are temporaries, last used here: partitioned in place (the same medians)
        sharpness = float(np.median(z, overwrite_input=True))
        median_std = float(np.median(std, overwrite_input=True))
        median_error = float(np.median(error, overwrite_input=True))
    else:
        coverage = sharpness = median_std = median_error = math.nan
    return {
        "n": n,
        "coverage": coverage,
        "sharpness": sharpness,
        "interpretation": interpret_calibration(coverage, sharpness),
        "gaussian_coverage": GAUSSIAN_COVERAGE,
        "gaussian_sharpness": GAUSSIAN_SHARPNESS,
        "median_sqrt_p_aa": median_std,
        "median_abs_error": median_error,
        "n_nonpositive_variance": n_nonpositive,
        "n_nonfinite": n_nonfinite,
    }


def median_interval(values: np.ndarray, z: float = Z95) -> tuple[float, float]:
    """Distribution-free 95 % interval of the median: the order statistics ``n/2 -+ z sqrt(n)/2``.

    The ranks (1-based) are ``floor(n/2 - z sqrt(n)/2)`` and ``ceil(n/2 + z sqrt(n)/2) + 1``,
    clipped to ``[1, n]`` (the normal approximation of the binomial count below the median).
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    n = values.size
    if n < 2:
        return math.nan, math.nan
    half = z * math.sqrt(n) / 2
    low = min(max(int(math.floor(n / 2 - half)), 1), n)
    high = min(max(int(math.ceil(n / 2 + half)) + 1, 1), n)
    ordered = np.partition(values, sorted({low - 1, high - 1}))
    return float(ordered[low - 1]), float(ordered[high - 1])


def calibration_intervals(a: Any, h: Any, p_aa: Any) -> dict[str, Any]:
    """Coverage and sharpness (as :func:`calibration`) with their 95 % intervals over coordinates.

    Coverage: Wilson's interval of ``n_covered`` of ``n``; sharpness: :func:`median_interval` of
    ``|a-h| / sqrt(P_aa)``. Same coordinates as :func:`calibration` (finite, ``P_aa > 0``).
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    h = np.asarray(h, dtype=np.float64).reshape(-1)
    p_aa = np.asarray(p_aa, dtype=np.float64).reshape(-1)
    keep = np.isfinite(a) & np.isfinite(h) & np.isfinite(p_aa) & (p_aa > 0)
    error, std = np.abs(a[keep] - h[keep]), np.sqrt(p_aa[keep])
    n = int(error.size)
    n_covered = int(np.count_nonzero(error <= 2.0 * std))
    z = error / std
    coverage_low, coverage_high = wilson_interval(n_covered, n)
    sharpness_low, sharpness_high = median_interval(z)
    return {
        "n": n,
        "n_covered": n_covered,
        "coverage": n_covered / n if n else math.nan,
        "coverage_low": coverage_low,
        "coverage_high": coverage_high,
        "sharpness": float(np.median(z)) if n else math.nan,
        "sharpness_low": sharpness_low,
        "sharpness_high": sharpness_high,
    }
