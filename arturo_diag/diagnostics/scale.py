"""Scale apart from shape: how far a curvature estimate ``a`` is from a reference ``h`` once its
overall scale is corrected, beside the baselines that know nothing of ``h``'s shape.

Baselines (issue 11): the zero vector (relative error 1 by definition), the best constant
``c0 = argmin_c ||c 1 - h|| = mean(h)``, and the constant at the median ``|h|``. The estimate
optimally rescaled is ``c* a`` with ``c* = <a,h>/<a,a>`` (the least-squares factor minimising
``||c a - h||``): ``c* = 0.068`` means ``a`` is about 15x too large. Its relative error
``||c* a - h|| / ||h||`` is the error left once the scale is right, i.e. the error of the shape;
it equals ``sqrt(1 - cos^2(a, h))``, just as the best constant's equals ``sqrt(1 - cos^2(1, h))``,
so "a's shape beats a constant" on rescaled error is the same question as on cosine.

Pure functions: numpy arrays in (any shape; flattened, float64; non-finite coordinates dropped),
plain floats out, NaN where undefined.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from arturo_diag.diagnostics.agreement import INITIAL_CURVATURE, agreement, agreement_with_baselines

__all__ = ["agreement_scaled", "agreement_with_baselines_scaled", "optimal_scale", "relative_error", "scale_and_shape"]


def _flat_finite(a: Any, h: Any) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    h = np.asarray(h, dtype=np.float64).reshape(-1)
    if a.shape != h.shape:
        raise ValueError(f"scale_and_shape: a has {a.size} coordinates, h has {h.size}")
    finite = np.isfinite(a) & np.isfinite(h)
    return (a, h) if finite.all() else (a[finite], h[finite])


def relative_error(x: np.ndarray, h: np.ndarray) -> float:
    """``||x - h|| / ||h||`` (NaN when ``||h|| = 0``)."""
    norm_h = float(np.linalg.norm(h))
    return float(np.linalg.norm(x - h)) / norm_h if norm_h > 0 else math.nan


def optimal_scale(a: np.ndarray, h: np.ndarray) -> float:
    """``c* = <a,h> / <a,a>`` minimising ``||c a - h||`` (NaN when ``a = 0``)."""
    aa = float(np.dot(a, a))
    return float(np.dot(a, h)) / aa if aa > 0 else math.nan


def _cosine(x: np.ndarray, h: np.ndarray) -> float:
    nx, nh = float(np.linalg.norm(x)), float(np.linalg.norm(h))
    return float(np.clip(np.dot(x, h) / (nx * nh), -1.0, 1.0)) if nx > 0 and nh > 0 else math.nan


def _constant_entry(value: float, h: np.ndarray) -> dict[str, float]:
    c = np.full_like(h, value)
    return {"value": float(value), "relative_error": relative_error(c, h), "cosine": _cosine(c, h)}


def scale_and_shape(a: Any, h: Any) -> dict[str, Any]:
    """The scale-vs-shape entry of ``a`` against ``h``.

    Returns ``{"zero": {relative_error}, "best_constant": {value, relative_error, cosine},
    "median_constant": {value, relative_error, cosine}, "rescaled": {factor, relative_error,
    cosine}, "a_all_positive", "n"}``: ``zero`` scores 1 (NaN if ``||h|| = 0``); ``best_constant``
    is ``mean(h)``; ``median_constant`` is ``median(|h|)``; ``rescaled`` is ``c* a`` with
    ``factor = c*``; ``a_all_positive`` says every ``a > 0`` (then a's sign agreement equals any
    positive constant's by construction).
    """
    a, h = _flat_finite(a, h)
    n = int(h.size)
    if n == 0:
        nan = {"value": math.nan, "relative_error": math.nan, "cosine": math.nan}
        return {
            "zero": {"relative_error": math.nan},
            "best_constant": dict(nan),
            "median_constant": dict(nan),
            "rescaled": {"factor": math.nan, "relative_error": math.nan, "cosine": math.nan},
            "a_all_positive": False,
            "n": 0,
        }
    norm_h = float(np.linalg.norm(h))
    factor = optimal_scale(a, h)
    rescaled = factor * a if math.isfinite(factor) else np.full_like(h, math.nan)
    return {
        "zero": {"relative_error": 1.0 if norm_h > 0 else math.nan},
        "best_constant": _constant_entry(float(np.mean(h)), h),
        "median_constant": _constant_entry(float(np.median(np.abs(h))), h),
        "rescaled": {
            "factor": factor,
            "relative_error": relative_error(rescaled, h) if math.isfinite(factor) else math.nan,
            "cosine": _cosine(rescaled, h) if math.isfinite(factor) else math.nan,
        },
        "a_all_positive": bool(np.all(a > 0)),
        "n": n,
    }


def agreement_with_baselines_scaled(
    a: Any, h: Any, h_prev: Any | None = None, constant: float = INITIAL_CURVATURE, **ranks: Any
) -> dict[str, Any]:
    """:func:`~arturo_diag.diagnostics.agreement.agreement_with_baselines` plus ``"scale"``
    (:func:`scale_and_shape` of ``a`` against ``h``); the other keys are unchanged. ``ranks``:
    ``a_ranks``, ``h_ranks``, ``h_prev_ranks`` passed on (precomputed ranks)."""
    return {**agreement_with_baselines(a, h, h_prev, constant=constant, **ranks), "scale": scale_and_shape(a, h)}


def agreement_scaled(estimate: Any, h: Any) -> dict[str, Any]:
    """:func:`~arturo_diag.diagnostics.agreement.agreement` plus ``"scale"`` (:func:`scale_and_shape`)."""
    return {**agreement(estimate, h), "scale": scale_and_shape(estimate, h)}
