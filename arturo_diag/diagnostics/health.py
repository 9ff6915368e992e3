"""Health of an arTuRO run: eta, the bisection, achieved KL, precision and its failure modes.

ARTURO.md, "Diagnostic quantities" (Health): ``eta`` per step and where it sits in its bracket,
bisection iterations, achieved ``K(eta)/eps``, quantiles of ``pi`` and of the variance ``1/pi``,
the share of coordinates with ``pi' <= 0`` or denominator ``a + c + eta*pi <= 0`` (nothing in the
published code keeps them positive; negative curvature estimates can cause both), and variance
collapse: the variance shrunk below a set fraction of ``var_init``.

Step-level numbers come from ``steps.csv``; coordinate-level ones from snapshot arrays.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "curvature_signs",
    "eta_health",
    "iteration_histogram",
    "kl_ratio_quantiles",
    "nonpositive_events",
    "precision_over_time",
    "snapshot_health",
    "variance_collapse",
]

_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def _column(table: pd.DataFrame, name: str) -> np.ndarray:
    if name not in table.columns:
        return np.full(len(table), math.nan)
    return pd.to_numeric(table[name], errors="coerce").to_numpy(dtype=np.float64)


def _finite(values: np.ndarray) -> np.ndarray:
    return values[np.isfinite(values)]


def _stat(values: np.ndarray, fn) -> float:
    values = _finite(values)
    return float(fn(values)) if values.size else math.nan


def _quantiles(values: np.ndarray, quantiles=_QUANTILES, prefix: str = "q") -> dict[str, float]:
    values = _finite(values)
    if values.size:
        found = np.quantile(values, quantiles, overwrite_input=True)  # _finite's copy
    else:
        found = np.full(len(quantiles), math.nan)
    return {f"{prefix}{round(q * 100):02d}": float(v) for q, v in zip(quantiles, found)}


def _ordered(steps: pd.DataFrame) -> pd.DataFrame:
    return steps.sort_values("step", kind="stable").reset_index(drop=True) if "step" in steps else steps


def eta_health(steps: pd.DataFrame) -> dict[str, Any]:
    """Summary of ``eta`` over the steps and of where it sits in its final bracket.

    ``bracket_position = (eta - eta_lo) / (eta_hi - eta_lo)`` (0.5 is the midpoint the published
    rule returns; NaN where the bracket has zero width or is not recorded).
    """
    steps = _ordered(steps)
    eta = _column(steps, "eta")
    lo, hi = _column(steps, "eta_lo"), _column(steps, "eta_hi")
    with np.errstate(invalid="ignore", divide="ignore"):
        width = hi - lo  # NaN for an infinite bracket (eta = inf: a zero KL bound)
        position = np.where(width > 0, (eta - lo) / width, math.nan)
    finite_eta = _finite(eta)
    return {
        "n": int(finite_eta.size),
        "median": _stat(eta, np.median),
        "min": _stat(eta, np.min),
        "max": _stat(eta, np.max),
        "first": float(finite_eta[0]) if finite_eta.size else math.nan,
        "last": float(finite_eta[-1]) if finite_eta.size else math.nan,
        "bracket_position": _quantiles(position, (0.05, 0.5, 0.95)),
    }


def iteration_histogram(steps: pd.DataFrame) -> dict[str, Any]:
    """Counts of steps by number of ``K`` evaluations of the dual solve (keys as strings, for JSON)."""
    iterations = _finite(_column(steps, "iterations")).astype(int)
    values, counts = np.unique(iterations, return_counts=True)
    return {
        "histogram": {str(int(v)): int(c) for v, c in zip(values, counts)},
        "mean": float(np.mean(iterations)) if iterations.size else math.nan,
        "max": int(np.max(iterations)) if iterations.size else None,
        "zero_share": float(np.mean(iterations == 0)) if iterations.size else math.nan,
    }


def kl_ratio_quantiles(steps: pd.DataFrame) -> dict[str, Any]:
    """Quantiles of the achieved ``K(eta)/eps`` (1 is on the bound) over the steps."""
    ratio = _column(steps, "kl_ratio")
    result: dict[str, Any] = {"n": int(_finite(ratio).size)}
    result.update(_quantiles(ratio))
    result["max"] = _stat(ratio, np.max)
    return result


def precision_over_time(steps: pd.DataFrame, *, max_points: int = 50) -> dict[str, Any]:
    """The precision quantiles ``precision_q01/q50/q99`` recorded in ``steps.csv`` over time.

    Returns the first and last recorded rows, the smallest ``q01`` and a series thinned to at most
    ``max_points`` evenly spaced rows (first and last included), each ``{step, q01, q50, q99}``.
    """
    steps = _ordered(steps)
    step = _column(steps, "step")
    q01, q50, q99 = (_column(steps, f"precision_q{q}") for q in ("01", "50", "99"))
    recorded = np.flatnonzero(np.isfinite(q50) | np.isfinite(q01) | np.isfinite(q99))

    def row(i: int) -> dict[str, float]:
        return {"step": int(step[i]), "q01": float(q01[i]), "q50": float(q50[i]), "q99": float(q99[i])}

    if recorded.size == 0:
        return {"n": 0, "first": None, "last": None, "min_q01": math.nan, "series": []}
    picks = np.unique(np.round(np.linspace(0, recorded.size - 1, min(max_points, recorded.size))).astype(int))
    return {
        "n": int(recorded.size),
        "first": row(int(recorded[0])),
        "last": row(int(recorded[-1])),
        "min_q01": _stat(q01, np.min),
        "series": [row(int(recorded[i])) for i in picks],
    }


def nonpositive_events(steps: pd.DataFrame) -> dict[str, Any]:
    """Steps where some coordinate had ``pi' <= 0`` or denominator ``<= 0``, and guard actions.

    For each of ``precision_nonpos``, ``denominator_nonpos``, ``guard_acted``: ``steps`` (number of
    steps with a count > 0), ``first_step``, ``max_count`` (most coordinates in one step) and
    ``total`` (coordinate-steps); ``recorded`` is False when the column is absent or empty.
    """
    steps = _ordered(steps)
    step = _column(steps, "step")
    result: dict[str, Any] = {}
    for name in ("precision_nonpos", "denominator_nonpos", "guard_acted"):
        counts = _column(steps, name)
        known = np.isfinite(counts)
        hit = known & (counts > 0)
        result[name] = {
            "recorded": bool(known.any()),
            "steps": int(np.count_nonzero(hit)),
            "first_step": int(step[np.argmax(hit)]) if hit.any() else None,
            "max_count": float(np.max(counts[known])) if known.any() else math.nan,
            "total": float(np.sum(counts[known])) if known.any() else math.nan,
        }
    return result


def variance_collapse(precision: Any, var_init: float, fraction: float = 0.01) -> dict[str, Any]:
    """Share of coordinates whose variance ``1/pi`` fell below ``fraction * var_init``.

    Coordinates with ``pi <= 0`` have no variance; they are excluded and counted (``n_nonpositive``).

    Returns ``share_collapsed``, ``threshold`` (``fraction * var_init``), ``n``, ``n_nonpositive``
    and the variance quantiles ``variance_q01/q50/q99``.
    """
    if not (var_init > 0):
        raise ValueError(f"var_init: got {var_init!r}; allowed: a positive number")
    pi = np.asarray(precision, dtype=np.float64).reshape(-1)
    pi = pi[np.isfinite(pi)]
    positive = pi > 0
    variance = 1.0 / pi[positive]
    threshold = fraction * var_init
    result: dict[str, Any] = {
        "n": int(variance.size),
        "threshold": float(threshold),
        "fraction": float(fraction),
        "share_collapsed": float(np.mean(variance < threshold)) if variance.size else math.nan,
        "n_nonpositive": int(pi.size - np.count_nonzero(positive)),
    }
    result.update(_quantiles(variance, (0.01, 0.5, 0.99), prefix="variance_q"))
    return result


def curvature_signs(a: Any | None, h: Any | None) -> dict[str, Any]:
    """Shares of negative curvature: ``a < 0`` (the estimate) and ``h < 0`` (the reference).

    A negative ``a`` can make the precision or the denominator non-positive (ARTURO.md, step 3).
    """
    result: dict[str, Any] = {}
    for key, values in (("negative_a_share", a), ("negative_h_share", h)):
        if values is None:
            result[key] = math.nan
            continue
        values = _finite(np.asarray(values, dtype=np.float64).reshape(-1))
        result[key] = float(np.mean(values < 0)) if values.size else math.nan
    return result


def snapshot_health(
    *,
    precision: Any | None,
    curvature: Any | None,
    reference: Any | None,
    var_init: float | None,
    fraction: float = 0.01,
) -> dict[str, Any]:
    """Coordinate-level health at one snapshot: precision quantiles, variance collapse, signs."""
    result: dict[str, Any] = {}
    if precision is not None:
        pi = np.asarray(precision, dtype=np.float64).reshape(-1)
        result.update(_quantiles(pi, (0.01, 0.5, 0.99), prefix="precision_q"))
        result["precision_nonpositive_share"] = float(np.mean(pi[np.isfinite(pi)] <= 0)) if pi.size else math.nan
        if var_init is not None:
            result["variance_collapse"] = variance_collapse(pi, var_init, fraction)
    result.update(curvature_signs(curvature, reference))
    return result
