"""Step gauges: pure functions of the optimizer's state and of one step, per layer.

- :func:`trust_region_radius`: how far the KL trust region lets a coordinate move.
- :func:`distance_from_init`: how far the weights are from where training started.
- :func:`precision_drift`: the variance 1/pi against ``var_init``, growth (drift) beside collapse.

Cockpit's alpha (where a step lands on the local quadratic along its own direction) needs the
model at both ends of a step: the ``alpha`` instrument, :mod:`arturo_diag.curvature.alpha`.

Inputs are mappings parameter name -> array or tensor (anything ``np.asarray`` takes); outputs are
plain floats in dicts, "overall" first, then each layer (module path,
:func:`arturo_diag.diagnostics.record.layer_of`, or the ``layers`` mapping given), as
:func:`arturo_diag.diagnostics.agreement.per_layer` groups them. ARTURO.md names the symbols:
``pi`` the precision, ``eps`` the KL bound (the group's ``lr``), ``var_init``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from arturo_diag.diagnostics.agreement import per_layer

__all__ = [
    "distance_from_init",
    "precision_drift",
    "trust_region_radius",
]

_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def _array(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64).reshape(-1)


def _arrays(mapping: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {name: _array(value) for name, value in mapping.items()}


def _quantiles(values: np.ndarray, prefix: str, quantiles: Sequence[float] = _QUANTILES) -> dict[str, float]:
    values = values[np.isfinite(values)]
    found = np.quantile(values, quantiles, overwrite_input=True) if values.size else np.full(len(quantiles), math.nan)
    return {f"{prefix}_q{round(q * 100):02d}": float(v) for q, v in zip(quantiles, found)}


def _same_names(what: str, reference: Mapping[str, Any], other: Mapping[str, Any]) -> None:
    if list(other) != list(reference):
        raise ValueError(f"{what}: parameters {list(other)} do not match {list(reference)}")


# --------------------------------------------------------------------------------------------------
# Trust-region radius


def trust_region_radius(
    precision: Mapping[str, Any],
    kl_bound: float,
    *,
    step: Mapping[str, Any] | None = None,
    layers: Mapping[str, str] | None = None,
) -> dict[str, dict[str, float]]:
    """The parameter-space radius of the KL trust region, r_i = sqrt(2 eps / pi_i), per layer.

    Why: the mean part of the KL is K = 0.5 sum_i pi_i (mu'_i - mu_i)^2 <= eps (ARTURO.md, step 4),
    so a single coordinate can move at most |mu'_i - mu_i| <= r_i, reached when it spends the whole
    budget. With the step taken (``step`` = mu' - mu, same names), u_i = |step_i| / r_i is the share
    of that radius it used, and sum_i u_i^2 = K / eps exactly: ``kl_share`` = the sum over a layer
    is that layer's part of K / eps (1 when the whole bound is spent; pass the precision the step
    was taken with, i.e. before the update).

    Returns per group: ``n``, ``n_nonpositive`` (pi <= 0: no radius, left out), the radius'
    ``radius_median``, ``radius_min``, ``radius_max`` and ``radius_q05`` .. ``radius_q95``; with
    ``step`` also ``usage_median``, ``usage_q95``, ``usage_max`` and ``kl_share``.
    """
    if not (isinstance(kl_bound, (int, float)) and kl_bound > 0):
        raise ValueError(f"kl_bound: got {kl_bound!r}; allowed: a positive number")
    pis = _arrays(precision)
    steps = None
    if step is not None:
        _same_names("step", precision, step)
        steps = _arrays(step)
        for name in pis:
            if steps[name].size != pis[name].size:
                raise ValueError(f"step[{name!r}] has {steps[name].size} entries, precision {pis[name].size}")

    def summary(pi: np.ndarray, moved: np.ndarray | None = None) -> dict[str, float]:
        positive = np.isfinite(pi) & (pi > 0)
        radius = np.sqrt(2.0 * kl_bound / pi[positive])
        result = {
            "n": int(pi.size),
            "n_nonpositive": int(pi.size - np.count_nonzero(positive)),
            "radius_median": float(np.median(radius)) if radius.size else math.nan,
            "radius_min": float(radius.min()) if radius.size else math.nan,
            "radius_max": float(radius.max()) if radius.size else math.nan,
        }
        result.update(_quantiles(radius, "radius"))
        if moved is not None:
            usage = np.abs(moved[positive]) / radius
            result["usage_median"] = float(np.median(usage, overwrite_input=True)) if usage.size else math.nan
            result["usage_q95"] = _quantiles(usage, "u", (0.95,))["u_q95"]
            result["usage_max"] = float(usage.max()) if usage.size else math.nan
            result["kl_share"] = float(np.sum(usage**2))
        return result

    if steps is None:
        return per_layer(summary, {n: (pis[n],) for n in pis}, layers)
    return per_layer(summary, {n: (pis[n], steps[n]) for n in pis}, layers)


# --------------------------------------------------------------------------------------------------
# Distance from initialisation


def distance_from_init(
    params: Mapping[str, Any], init: Mapping[str, Any], *, layers: Mapping[str, str] | None = None
) -> dict[str, dict[str, float]]:
    """||theta - theta_0|| per layer and overall.

    Returns per group: ``n``, ``distance`` (L2), ``relative`` (distance / ||theta_0||; nan when
    theta_0 = 0), ``rms`` (distance / sqrt(n), the typical move of one coordinate) and
    ``max_abs`` (the largest single move).
    """
    _same_names("init", params, init)
    now, start = _arrays(params), _arrays(init)

    def summary(theta: np.ndarray, theta0: np.ndarray) -> dict[str, float]:
        if theta.size != theta0.size:
            raise ValueError("distance_from_init: params and init differ in size")
        delta = theta - theta0
        distance = float(np.linalg.norm(delta))
        base = float(np.linalg.norm(theta0))
        return {
            "n": int(theta.size),
            "distance": distance,
            "relative": distance / base if base > 0 else math.nan,
            "rms": distance / math.sqrt(theta.size) if theta.size else math.nan,
            "max_abs": float(np.abs(delta).max()) if delta.size else math.nan,
        }

    return per_layer(summary, {n: (now[n], start[n]) for n in now}, layers)


# --------------------------------------------------------------------------------------------------
# Precision drift


def precision_drift(
    precision: Mapping[str, Any],
    var_init: float,
    *,
    flag_ratio: float = 10.0,
    collapse_fraction: float = 0.01,
    layers: Mapping[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """The variance 1/pi relative to ``var_init``: drift (growth) beside collapse, per layer.

    ratio_i = (1 / pi_i) / var_init (1 at initialisation, pi = 1 / var_init). arTuRO's
    precision update pi' = (a + c + nu pi) / (rho + nu) (ARTURO.md, step 3) lets 1/pi grow when
    the curvature estimate a is small, which nothing reports otherwise.

    Returns per group: ``n``, ``n_nonpositive`` (pi <= 0: no variance, left out),
    ``ratio_median``, ``ratio_q01``, ``ratio_q99``, ``ratio_max``, ``share_drifted``
    (ratio > ``flag_ratio``), ``share_collapsed`` (ratio < ``collapse_fraction``, the rule of
    :func:`arturo_diag.diagnostics.health.variance_collapse`), and the flags ``drifted`` (the 99th
    percentile above ``flag_ratio``: growth far above var_init in at least 1 % of the
    coordinates) and ``collapsed`` (the 1st percentile below ``collapse_fraction``).
    """
    if not (isinstance(var_init, (int, float)) and var_init > 0):
        raise ValueError(f"var_init: got {var_init!r}; allowed: a positive number")
    if not (isinstance(flag_ratio, (int, float)) and flag_ratio > 1):
        raise ValueError(f"flag_ratio: got {flag_ratio!r}; allowed: a number > 1")
    if not (isinstance(collapse_fraction, (int, float)) and 0 < collapse_fraction < 1):
        raise ValueError(f"collapse_fraction: got {collapse_fraction!r}; allowed: a number in (0, 1)")
    pis = _arrays(precision)

    def summary(pi: np.ndarray) -> dict[str, Any]:
        positive = np.isfinite(pi) & (pi > 0)
        ratio = 1.0 / (pi[positive] * var_init)
        q = _quantiles(ratio, "ratio", (0.01, 0.5, 0.99))
        result: dict[str, Any] = {
            "n": int(pi.size),
            "n_nonpositive": int(pi.size - np.count_nonzero(positive)),
            "ratio_median": q["ratio_q50"],
            "ratio_q01": q["ratio_q01"],
            "ratio_q99": q["ratio_q99"],
            "ratio_max": float(ratio.max()) if ratio.size else math.nan,
            "share_drifted": float(np.mean(ratio > flag_ratio)) if ratio.size else math.nan,
            "share_collapsed": float(np.mean(ratio < collapse_fraction)) if ratio.size else math.nan,
            "flag_ratio": float(flag_ratio),
            "collapse_fraction": float(collapse_fraction),
        }
        result["drifted"] = bool(ratio.size and q["ratio_q99"] > flag_ratio)
        result["collapsed"] = bool(ratio.size and q["ratio_q01"] < collapse_fraction)
        return result

    return per_layer(summary, {n: (pis[n],) for n in pis}, layers)
