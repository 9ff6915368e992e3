"""Lag: does the curvature estimate ``a_t`` track the reference of an earlier snapshot, ``h_{t-k}``?

ARTURO.md, "Diagnostic quantities": the agreement of ``a_t`` with ``h_{t-k}`` over earlier
snapshots ``k``; the best ``k`` is the lag, reported with the spread of the agreement over ``k``.
Unless the best ``k`` beats ``k = 0`` by a margin with a bootstrap interval over snapshots, the
report says "no identifiable lag", with the interval, instead of a number.

Definitions used here:

- ``A[t, k]`` = agreement (Spearman and relative error) of ``a_t`` with ``h_{t-k}``, ``t`` and
  ``k`` counted in snapshots.
- lag curve ``C[k]`` = mean of ``A[t, k]`` over ``t``. By default (``window="common"``) every
  ``k`` is averaged over the SAME snapshots ``t >= K``, so the curve compares lags and not
  different stretches of training (agreement usually changes as training proceeds);
  ``window="all"`` averages each ``k`` over every ``t`` where ``t-k`` exists.
- snapshot noise = mean ``|A[t, 0] - A[t-1, 0]|`` over consecutive snapshots: how much the
  agreement moves from one snapshot to the next without any change of lag.
- the lag test (:func:`lag_test`, issue 11): ``k*`` = the best ``k >= 1`` of the curve; the gain
  ``G_t = s (A[t, k*] - A[t, 0])`` (``s = +1`` for Spearman, ``-1`` for relative error, so that a
  positive gain means ``h_(t-k*)`` fits better) over the snapshots of the common window, its mean
  and a 95 % circular block bootstrap interval over those snapshots. The lag is identified
  (``yes``) when the whole interval is above the margin (0.02 of Spearman; 2 % of the k = 0
  relative error), ``no`` (no lag) when it is entirely below, else ``inconclusive``; with fewer
  than :data:`MIN_LAG_SNAPSHOTS` snapshots in the window it is not assessed. Only on ``yes`` is
  ``best_k`` the lag, in snapshots, and in steps the mean of ``step_t - step_{t-k}``. The curve's
  range and the snapshot noise are still reported, as a description of the curve.

Memory: :class:`LagAccumulator` keeps only the last ``K+1`` references, so a long run is
processed snapshot by snapshot.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from arturo_diag.diagnostics.agreement import ranks, spearman
from arturo_diag.diagnostics.intervals import block_bootstrap_indices

__all__ = [
    "LAG_MARGIN",
    "LAG_METRICS",
    "MIN_LAG_SNAPSHOTS",
    "LagAccumulator",
    "lag_analysis",
    "lag_pair",
    "lag_table",
    "lag_test",
    "summarize_lag",
]

# metric -> True if larger is better
LAG_METRICS: dict[str, bool] = {"spearman": True, "relative_error": False}
_WORDS = {"spearman": "Spearman", "relative_error": "relative error"}
# the practical margin of the lag test: absolute for Spearman, relative to the k = 0 value for the error
LAG_MARGIN: dict[str, tuple[float, str]] = {"spearman": (0.02, "absolute"), "relative_error": (0.02, "relative")}
MIN_LAG_SNAPSHOTS = 8  # snapshots in the common window below which the lag is not assessed
LAG_BOOTSTRAP_SAMPLES = 2000


def lag_pair(
    a: Any, h: Any, *, a_ranks: np.ndarray | None = None, h_ranks: np.ndarray | None = None
) -> dict[str, float]:
    """The agreement numbers of one (``a_t``, ``h_{t-k}``) pair: Spearman and relative error.

    Coordinates where either is non-finite are dropped. ``a_ranks``/``h_ranks`` are optional
    precomputed ranks (``agreement.ranks``), used only when nothing is dropped.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    h = np.asarray(h, dtype=np.float64).reshape(-1)
    if a.shape != h.shape:
        raise ValueError(f"lag_pair: a has {a.size} coordinates, h has {h.size}")
    finite = np.isfinite(a) & np.isfinite(h)
    if not finite.all():
        a, h = a[finite], h[finite]
        a_ranks = h_ranks = None
    norm_h = float(np.linalg.norm(h))
    return {
        "spearman": spearman(a, h, a_ranks=a_ranks, h_ranks=h_ranks),
        "relative_error": float(np.linalg.norm(a - h)) / norm_h if norm_h > 0 else math.nan,
    }


def _ranks_if_usable(x: np.ndarray) -> np.ndarray | None:
    if x.size < 2 or not np.isfinite(x).all() or np.all(x == x[0]):
        return None
    return ranks(x)


class LagAccumulator:
    """Collects ``A[t, k]`` for ``k = 0..max_lag`` as snapshots arrive in step order."""

    def __init__(self, max_lag: int) -> None:
        if int(max_lag) < 0:
            raise ValueError(f"max_lag: got {max_lag}; allowed: an integer >= 0")
        self.max_lag = int(max_lag)
        # (t, step, h_t, ranks of h_t): each array is ranked once, not once per lag
        self._window: deque[tuple[int, int, np.ndarray, np.ndarray | None]] = deque(maxlen=self.max_lag + 1)
        self._rows: list[dict[str, Any]] = []
        self._count = 0

    def add(
        self, step: int, a: Any, h: Any, *, a_ranks: np.ndarray | None = None, h_ranks: np.ndarray | None = None
    ) -> None:
        """Add the snapshot at ``step`` (later than every snapshot added before). ``a_ranks``/``h_ranks``:
        optional precomputed ``agreement.ranks`` of ``a``/``h`` (else they are ranked here)."""
        if self._window and int(step) <= self._window[-1][1]:
            raise ValueError(f"LagAccumulator.add: step {step} is not after step {self._window[-1][1]}")
        t = self._count
        a = np.asarray(a, dtype=np.float64).reshape(-1)
        h = np.asarray(h, dtype=np.float64).reshape(-1)
        a_ranks = _ranks_if_usable(a) if a_ranks is None else a_ranks
        self._window.append((t, int(step), h, _ranks_if_usable(h) if h_ranks is None else h_ranks))
        for t_h, step_h, h_earlier, h_ranks in reversed(self._window):
            row: dict[str, Any] = {"t": t, "step": int(step), "k": t - t_h, "h_step": step_h}
            row.update(lag_pair(a, h_earlier, a_ranks=a_ranks, h_ranks=h_ranks))
            self._rows.append(row)
        self._count += 1

    def table(self) -> pd.DataFrame:
        """One row per (t, k): ``t``, ``step``, ``k``, ``h_step``, ``spearman``, ``relative_error``."""
        return pd.DataFrame(self._rows, columns=["t", "step", "k", "h_step", *LAG_METRICS])


def lag_table(snapshots: Iterable[tuple[int, Any, Any]], max_lag: int) -> pd.DataFrame:
    """``A[t, k]`` for an iterable of ``(step, a_t, h_t)`` in step order (see :class:`LagAccumulator`)."""
    accumulator = LagAccumulator(max_lag)
    for step, a, h in snapshots:
        accumulator.add(step, a, h)
    return accumulator.table()


def _nan_stat(fn, values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(fn(values)) if values.size else math.nan


def _curve(
    table: pd.DataFrame,
    metric: str,
    larger_is_better: bool,
    lag_max: int,
    window: str,
) -> dict[str, Any]:
    rows = table[table["k"] <= lag_max]
    if window == "common":
        rows = rows[rows["t"] >= lag_max]
    ks = list(range(lag_max + 1))
    means, counts = [], []
    for k in ks:
        values = rows.loc[rows["k"] == k, metric].to_numpy(dtype=np.float64)
        means.append(_nan_stat(np.mean, values))
        counts.append(int(np.count_nonzero(np.isfinite(values))))
    series = table[table["k"] == 0].sort_values("t")[metric].to_numpy(dtype=np.float64)
    noise = _nan_stat(np.mean, np.abs(np.diff(series)))
    curve = np.asarray(means)
    if np.isfinite(curve).any():
        spread = float(np.nanmax(curve) - np.nanmin(curve))
        best = int(np.nanargmax(curve) if larger_is_better else np.nanargmin(curve))
    else:
        spread, best = math.nan, None
    identifiable = bool(best is not None and math.isfinite(noise) and spread > noise)
    return {
        "k": ks,
        "mean": [float(m) for m in means],
        "n": counts,
        "range": spread,
        "noise": noise,
        "argbest": best,
        "identifiable": identifiable,
        "best_k": best if identifiable else None,
    }


def summarize_lag(
    table: pd.DataFrame, *, max_lag: int | None = None, metric: str = "spearman", window: str = "common"
) -> dict[str, Any]:
    """Lag curves, best lag and whether it is identifiable, from a :func:`lag_table`.

    Args:
        table: ``A[t, k]`` rows from :func:`lag_table` / :class:`LagAccumulator`.
        max_lag: the largest ``k`` considered (default: the table's); it is further limited to
            ``min(T - 2, T // 2)`` for ``T`` snapshots, so that with the common window every ``k``
            is averaged over at least 2 snapshots and at least half of them.
        metric: the metric that decides the lag (``"spearman"``, scale-free, or
            ``"relative_error"``, which also shifts when ``||h||`` changes over training); the
            other's curve is reported too.
        window: ``"common"`` (every ``k`` over the same snapshots) or ``"all"``.

    Returns:
        ``{"metric", "window", "n_snapshots", "max_lag", "snapshot_interval", "interval_regular",
        "identifiable", "best_k", "best_lag_steps", "reason", "curves": {metric: {"k", "mean",
        "n", "range", "noise", "argbest", "identifiable", "best_k"}}}``. ``best_k`` is ``None``
        when no lag is identifiable; ``reason`` says why in words.
    """
    if metric not in LAG_METRICS:
        raise ValueError(f"metric: got {metric!r}; allowed: {', '.join(map(repr, LAG_METRICS))}")
    if window not in ("common", "all"):
        raise ValueError(f"window: got {window!r}; allowed: 'common' or 'all'")
    steps = table[table["k"] == 0].sort_values("t")["step"].astype(int).tolist()
    n_snapshots = len(steps)
    diffs = np.diff(steps)
    result: dict[str, Any] = {
        "metric": metric,
        "window": window,
        "n_snapshots": n_snapshots,
        "max_lag": 0,
        "snapshot_interval": float(np.median(diffs)) if diffs.size else math.nan,
        "interval_regular": bool(diffs.size and np.all(diffs == diffs[0])),
        "identifiable": False,
        "best_k": None,
        "best_lag_steps": None,
        "reason": "",
        "curves": {},
    }
    table_max = int(table["k"].max()) if len(table) else 0
    # with the common window, lags up to T//2 keep at least half of the snapshots in every mean
    lag_max = min(table_max if max_lag is None else int(max_lag), table_max, n_snapshots - 2, n_snapshots // 2)
    if n_snapshots < 3 or lag_max < 1:
        result["reason"] = f"not assessed: {n_snapshots} snapshot(s); at least 3 are needed to compare lags"
        return result
    result["max_lag"] = lag_max
    curves = {name: _curve(table, name, better, lag_max, window) for name, better in LAG_METRICS.items()}
    for name, curve in curves.items():
        curve["test"] = lag_test(table, name, lag_max)
        curve["identifiable"] = curve["test"]["outcome"] == "yes"
        curve["best_k"] = curve["test"]["best_k"] if curve["identifiable"] else None
    result["curves"] = curves
    chosen = curves[metric]
    test = result["test"] = chosen["test"]
    if chosen["argbest"] is None:
        result["reason"] = (
            f"no identifiable lag: the {_WORDS[metric]} of a_t with h_(t-k) is undefined (a or h constant)"
        )
        return result
    if test["outcome"] == "yes":
        result.update(_identified_lag(table, chosen, metric, lag_max, window))
    else:
        result["reason"] = _no_lag_reason(test, lag_max)
    return result


def _gain_words(test: dict[str, Any]) -> str:
    """``the Spearman gain of h_(t-2) over h_t 0.05 (95 % CI [0.03, 0.07]), margin 0.02``."""
    digits = 3
    values = (test["estimate"], test["ci_low"], test["ci_high"], test["margin"])
    while digits < 8 and len({f"{v:.{digits}g}" for v in values}) < len(set(values)):
        digits += 1
    est, lo, hi, margin = (f"{v:.{digits}g}" for v in values)
    return (
        f"the {_WORDS[test['metric']]} gain of h_(t-{test['best_k']}) over h_t is {est} "
        f"(95 % CI [{lo}, {hi}] over {test['n_window']} snapshots), margin {margin}"
    )


def _no_lag_reason(test: dict[str, Any], lag_max: int) -> str:
    if test["outcome"] == "not_applicable":
        return f"no identifiable lag: {test['why']}"
    if test["outcome"] == "no":
        return (
            f"no identifiable lag: no k = 1..{lag_max} fits a_t better than k = 0 by the margin; at the best k, "
            f"{_gain_words(test)}: the interval is below the margin"
        )
    return f"no identifiable lag (inconclusive): {_gain_words(test)}: the interval includes the margin"


def lag_test(
    table: pd.DataFrame, metric: str, lag_max: int, *, samples: int = LAG_BOOTSTRAP_SAMPLES, seed: int = 0
) -> dict[str, Any]:
    """Does the best ``k >= 1`` fit ``a_t`` better than ``k = 0``? (the module docstring's lag test).

    Returns ``{"metric", "outcome" (yes | no | inconclusive | not_applicable), "why", "best_k",
    "estimate" (mean gain at best_k), "ci_low", "ci_high" (its 95 % block bootstrap interval),
    "lag_ci_low", "lag_ci_high" (95 % interval of the best k, 0 included, over the same resamples),
    "margin", "n_window", "needed", "samples", "window_start"}``.
    """
    rows = table[(table["k"] <= lag_max) & (table["t"] >= lag_max)]
    values = rows.pivot(index="t", columns="k", values=metric).reindex(columns=range(lag_max + 1))
    values = values.to_numpy(dtype=np.float64)
    n = int(values.shape[0])
    result: dict[str, Any] = {
        "metric": metric,
        "outcome": "not_applicable",
        "why": "",
        "best_k": None,
        "estimate": math.nan,
        "ci_low": math.nan,
        "ci_high": math.nan,
        "lag_ci_low": math.nan,
        "lag_ci_high": math.nan,
        "margin": math.nan,
        "n_window": n,
        "needed": MIN_LAG_SNAPSHOTS,
        "samples": int(samples),
        "window_start": int(lag_max),
    }
    if n < MIN_LAG_SNAPSHOTS:
        result["why"] = (
            f"not enough snapshots: {n} of {MIN_LAG_SNAPSHOTS} needed (the snapshots t >= {lag_max}, "
            f"where every k = 0..{lag_max} is compared)"
        )
        return result
    gain = (1.0 if LAG_METRICS[metric] else -1.0) * (values - values[:, :1])
    mean_gain = np.array([_nan_stat(np.mean, gain[:, k]) for k in range(lag_max + 1)])
    if not np.isfinite(mean_gain[1:]).any() or not np.isfinite(values[:, 0]).any():
        result["why"] = f"the {_WORDS[metric]} of a_t with h_(t-k) is undefined (a or h constant)"
        return result
    best_k = 1 + int(np.nanargmax(mean_gain[1:]))
    value, kind = LAG_MARGIN[metric]
    margin = value if kind == "absolute" else value * abs(_nan_stat(np.mean, values[:, 0]))
    means = _resampled_means(gain, samples, seed)
    lo, hi = np.nanquantile(means[:, best_k], [0.025, 0.975])
    ranked = np.where(np.isfinite(means), means, -np.inf)
    ranked[:, 0] = 0.0  # k = 0 wins ties: a lag must fit strictly better
    k_lo, k_hi = np.quantile(np.argmax(ranked, axis=1), [0.025, 0.975], method="inverted_cdf")
    outcome = "yes" if lo > margin else "no" if hi < margin else "inconclusive"
    result.update(
        outcome=outcome,
        best_k=best_k,
        estimate=float(mean_gain[best_k]),
        ci_low=float(lo),
        ci_high=float(hi),
        lag_ci_low=float(k_lo),
        lag_ci_high=float(k_hi),
        margin=float(margin),
    )
    return result


def _resampled_means(gain: np.ndarray, samples: int, seed: int) -> np.ndarray:
    """Per resample (circular block bootstrap over the rows) the NaN-skipping column means of ``gain``."""
    n = gain.shape[0]
    finite = np.isfinite(gain)
    filled = np.where(finite, gain, 0.0)
    indices = block_bootstrap_indices(n, samples, seed=seed)
    out = np.empty((samples, gain.shape[1]))
    for start in range(0, samples, 200):
        chunk = indices[start : start + 200]
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start : start + 200] = filled[chunk].sum(axis=1) / finite[chunk].sum(axis=1)
    return out


def _identified_lag(
    table: pd.DataFrame, chosen: dict[str, Any], metric: str, lag_max: int, window: str
) -> dict[str, Any]:
    """The entries of a lag the test identified: ``best_k``, its length in steps and the reason in words."""
    best_k = int(chosen["best_k"])
    pairs = table[table["k"] == best_k]
    if window == "common":
        pairs = pairs[pairs["t"] >= lag_max]
    lag_steps = float(np.mean(pairs["step"] - pairs["h_step"]))
    means, test = chosen["mean"], chosen["test"]
    reason = (
        f"a_t agrees best with h_(t-{best_k}): {_WORDS[metric]} {means[best_k]:.4g} vs {means[0]:.4g} at k = 0; "
        f"{_gain_words(test)}: the interval is above the margin (best k over the resamples: 95 % CI "
        f"[{test['lag_ci_low']:.0f}, {test['lag_ci_high']:.0f}] snapshots)"
    )
    return {"identifiable": True, "best_k": best_k, "best_lag_steps": lag_steps, "reason": reason}


def lag_analysis(
    steps: Iterable[int],
    a_seq: Iterable[Any],
    h_seq: Iterable[Any],
    *,
    max_lag: int = 5,
    metric: str = "spearman",
    window: str = "common",
) -> dict[str, Any]:
    """:func:`summarize_lag` of :func:`lag_table` for in-memory sequences of snapshots."""
    table = lag_table(zip(steps, a_seq, h_seq), max_lag)
    return summarize_lag(table, max_lag=max_lag, metric=metric, window=window)
