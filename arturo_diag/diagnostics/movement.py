"""Movement: how far the curvature estimate ``a`` has left its initial value 0.1.

ARTURO.md, "Diagnostic quantities": an estimate that never left its prior says so. The move of a
coordinate is measured against the size of what it should track, ``|h|``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from arturo_diag.diagnostics.agreement import INITIAL_CURVATURE

__all__ = ["LEFT_PRIOR_FACTOR", "NEVER_LEFT_RELATIVE", "left_prior", "movement"]

# A coordinate "never left the prior" if |a - 0.1| < NEVER_LEFT_RELATIVE * max(|h|, h_floor).
NEVER_LEFT_RELATIVE = 1e-3
# A coordinate "left the prior" (the verdict movement.left_prior) if a is outside [prior/2, 2 prior].
LEFT_PRIOR_FACTOR = 2.0


def movement(a: Any, h: Any, *, prior: float = INITIAL_CURVATURE, h_floor: float = 1e-5) -> dict[str, float]:
    """How far ``a`` moved from ``prior`` (0.1), relative to ``|h|``.

    Args:
        a: the curvature estimate; h: the reference diagonal Hessian (same size).
        prior: arTuRO's initial ``a``.
        h_floor: the smallest ``|h|`` the "never left" threshold uses, so that coordinates with
            ``h == 0`` get the threshold ``1e-3 * h_floor = 1e-8`` (above the float32 rounding of
            0.1, 1.5e-9) instead of an exact-equality test.

    Returns:
        median_relative_move: median of ``|a - prior| / |h|`` over coordinates with ``h != 0``
            (``n_h_zero`` of them excluded); 1 means ``a`` moved by about the size of ``h``.
        never_left_share: share of coordinates with
            ``|a - prior| < 1e-3 * max(|h|, h_floor)``: they "never left the prior".
        a_q01, a_median, a_q99: quantiles of ``a`` (its 1-99 % range); h_q01, h_q99 likewise of ``h``.
        scale_relative_move: ``median |a - prior| / median |h|`` (``h != 0``): the move against the
            typical size of ``h``. The per-coordinate median above is dominated by the many tiny
            ``|h|``; this one says whether ``a`` moved on the scale of the curvature at all.
        spread_decades_a, spread_decades_h: width in decades of the 1-99 % range of ``log10|a|`` and
            of ``log10|h|`` (zeros left out); log_spread_ratio: their ratio. An estimate that tracks
            ``h`` must spread over about as many decades as ``h``; one that stays near 0.1 while ``h``
            spans many decades has a ratio near 0, however far single coordinates moved.
        n, n_h_zero, n_nonfinite: coordinates used, with ``h == 0``, dropped as non-finite.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    h = np.asarray(h, dtype=np.float64).reshape(-1)
    if a.shape != h.shape:
        raise ValueError(f"movement: a has {a.size} coordinates, h has {h.size}")
    finite = np.isfinite(a) & np.isfinite(h)
    n_nonfinite = int(a.size - np.count_nonzero(finite))
    a, h = a[finite], h[finite]
    n = int(a.size)
    move = np.abs(a - prior)
    abs_h = np.abs(h)
    nonzero = abs_h > 0
    relative = move[nonzero] / abs_h[nonzero]
    threshold = NEVER_LEFT_RELATIVE * np.maximum(abs_h, h_floor)
    if n:
        q01, q50, q99 = (float(v) for v in np.quantile(a, (0.01, 0.5, 0.99)))
        h01, h99 = (float(v) for v in np.quantile(h, (0.01, 0.99)))
    else:
        q01 = q50 = q99 = h01 = h99 = math.nan
    typical_h = float(np.median(abs_h[nonzero], overwrite_input=True)) if np.any(nonzero) else math.nan
    spread_a = _decades(np.abs(a))
    spread_h = _decades(abs_h)
    return {
        "n": n,
        "median_relative_move": float(np.median(relative, overwrite_input=True)) if relative.size else math.nan,
        "never_left_share": float(np.mean(move < threshold)) if n else math.nan,
        "a_q01": q01,
        "a_median": q50,
        "a_q99": q99,
        "h_q01": h01,
        "h_q99": h99,
        "spread_decades_a": spread_a,
        "spread_decades_h": spread_h,
        "log_spread_ratio": spread_a / spread_h if spread_h > 0 else math.nan,
        "scale_relative_move": (float(np.median(move)) / typical_h) if n and typical_h > 0 else math.nan,
        "n_h_zero": int(n - np.count_nonzero(nonzero)),
        "n_nonfinite": n_nonfinite,
        "prior": float(prior),
    }


def _decades(magnitudes: np.ndarray) -> float:
    """Width of the 1-99 % range of ``log10`` of the non-zero magnitudes (NaN with fewer than two)."""
    positive = magnitudes[magnitudes > 0]
    if positive.size < 2:
        return math.nan
    lo, hi = np.quantile(np.log10(positive), (0.01, 0.99), overwrite_input=True)
    return float(hi - lo)


def left_prior(a: Any, *, prior: float = INITIAL_CURVATURE, factor: float = LEFT_PRIOR_FACTOR) -> dict[str, Any]:
    """How many coordinates of ``a`` left ``prior`` by more than ``factor``: ``|log10(a/prior)| > log10 factor``.

    A coordinate with ``a <= 0`` has left a positive prior (it counts as left); non-finite ones
    are dropped. Returns ``{"n", "n_left", "share", "factor", "prior", "median_abs_log10"}`` (the
    last: the median of ``|log10(a/prior)|`` over the positive coordinates, in decades).
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    a = a[np.isfinite(a)]
    positive = a > 0
    with np.errstate(divide="ignore"):
        decades = np.abs(np.log10(a[positive] / prior))
    n_left = int(np.count_nonzero(decades > math.log10(factor)) + np.count_nonzero(~positive))
    n = int(a.size)
    return {
        "n": n,
        "n_left": n_left,
        "share": n_left / n if n else math.nan,
        "factor": float(factor),
        "prior": float(prior),
        "median_abs_log10": float(np.median(decades, overwrite_input=True)) if decades.size else math.nan,
    }
