"""Bootstrap intervals over coordinates for the agreement verdicts, at the final snapshot.

``metrics["agreement"]["bootstrap"]`` = ``{"step", "overall": X, "layers": {layer: X}}`` or None,
with X = ``{n, n_resampled, samples, constant, relative_error, constant_relative_error,
difference {estimate, ci_low, ci_high}, margin}`` and, overall only, ``factor`` (c* = <a,h>/<a,a>)
and ``spearman`` (each ``{estimate, ci_low, ci_high}``). Estimates use every finite coordinate;
intervals are 95 % percentile bootstraps (:func:`~arturo_diag.quantities.verdicts.bootstrap_ci`,
200 resamples, seed 0) over the coordinates, or, above ``MAX_RESAMPLED`` coordinates, over a fixed
random subset of that many (seed 0): a wider, conservative interval.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from arturo_diag.diagnostics.agreement import per_layer, spearman
from arturo_diag.diagnostics.scale import optimal_scale, relative_error
from arturo_diag.quantities import verdicts
from arturo_diag.quantities.verdicts import BOOTSTRAP_SAMPLES, bootstrap_ci

__all__ = ["BEATS_MARGIN", "MAX_RESAMPLED", "final_bootstrap"]

MAX_RESAMPLED = verdicts.MAX_RESAMPLED  # coordinates resampled (a fixed random subset above this)
BEATS_MARGIN = 0.01  # practical margin of agreement.beats_constant: 1 % of the constant's relative error


def _flat_finite(a: Any, h: Any) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    h = np.asarray(h, dtype=np.float64).reshape(-1)
    finite = np.isfinite(a) & np.isfinite(h)
    return a[finite], h[finite]


def _interval(estimate: float, statistic, n: int) -> dict[str, float]:
    low, high = bootstrap_ci(statistic, n) if math.isfinite(estimate) else (math.nan, math.nan)
    return {"estimate": float(estimate), "ci_low": low, "ci_high": high}


def _weighted_sums(columns: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Column sums over the resample ``idx`` (a coordinate drawn k times counts k times)."""
    return columns @ np.bincount(idx, minlength=columns.shape[1]).astype(np.float64)


def _entry(
    a: Any, h: Any, constant: float, *, overall: bool, ranks: tuple[np.ndarray, np.ndarray] | None = None
) -> dict[str, Any]:
    size = int(np.size(a))
    a, h = _flat_finite(a, h)
    n = int(a.size)
    if n != size:  # precomputed ranks are of every coordinate
        ranks = None
    sub_a, sub_h = a, h
    keep = verdicts.fixed_subset(n, MAX_RESAMPLED)
    if keep is not None:
        sub_a, sub_h = a[keep], h[keep]
    m = int(sub_a.size)
    error_a, error_c = relative_error(a, h), relative_error(np.full_like(h, constant), h)
    # per coordinate: (a-h)^2, (c-h)^2, h^2, a h, a^2; a resample's statistics are sums of these
    columns = np.stack([(sub_a - sub_h) ** 2, (constant - sub_h) ** 2, sub_h**2, sub_a * sub_h, sub_a**2])

    def difference(idx: np.ndarray) -> float:
        ea, ec, hh, _, _ = _weighted_sums(columns, idx)
        return math.sqrt(ec / hh) - math.sqrt(ea / hh) if hh > 0 else math.nan

    def factor(idx: np.ndarray) -> float:
        _, _, _, ah, aa = _weighted_sums(columns, idx)
        return ah / aa if aa > 0 else math.nan

    entry: dict[str, Any] = {
        "n": n,
        "n_resampled": m,
        "samples": BOOTSTRAP_SAMPLES,
        "constant": float(constant),
        "relative_error": error_a,
        "constant_relative_error": error_c,
        "difference": _interval(error_c - error_a, difference, m),
        "margin": BEATS_MARGIN * error_c,
    }
    if overall:
        entry["factor"] = _interval(optimal_scale(a, h), factor, m)
        entry["spearman"] = _interval(
            spearman(a, h, a_ranks=ranks and ranks[0], h_ranks=ranks and ranks[1]) if n > 1 else math.nan,
            lambda idx: spearman(sub_a[idx], sub_h[idx]),
            m,
        )
    return entry


def final_bootstrap(
    step: int,
    pairs: Mapping[str, tuple[Any, Any]],
    layers: Mapping[str, str],
    constant: float,
    *,
    ranks: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """The intervals of the final snapshot, over all coordinates and per layer (see the module docstring).

    ``pairs``: parameter name -> ``(a, h)`` of the final usable snapshot; ``ranks``: optional
    ``agreement.ranks`` of a and h over all coordinates (the parameters in ``pairs``' order), so
    that the overall Spearman does not rank them again.
    """
    per = per_layer(lambda a, h: _entry(a, h, constant, overall=False), pairs, layers)
    overall = _entry(
        np.concatenate([np.ravel(p[0]) for p in pairs.values()]),
        np.concatenate([np.ravel(p[1]) for p in pairs.values()]),
        constant,
        overall=True,
        ranks=ranks,
    )
    return {"step": int(step), "overall": overall, "layers": {k: v for k, v in per.items() if k != "overall"}}
