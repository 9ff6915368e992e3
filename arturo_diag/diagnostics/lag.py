"""Lag: does the curvature estimate ``a_t`` track the reference of an earlier snapshot, ``h_{t-k}``?

ARTURO.md, "Diagnostic quantities": the agreement of ``a_t`` with ``h_{t-k}`` over earlier
snapshots ``k``; the best ``k`` is the lag, reported with the spread of the agreement over ``k``.
Where that curve is flat (its range is within the snapshot-to-snapshot noise) the report says
"no identifiable lag" instead of a number.

Definitions used here:

- ``A[t, k]`` = agreement (Spearman and relative error) of ``a_t`` with ``h_{t-k}``, ``t`` and
  ``k`` counted in snapshots.
- lag curve ``C[k]`` = mean of ``A[t, k]`` over ``t``. By default (``window="common"``) every
  ``k`` is averaged over the SAME snapshots ``t >= K``, so the curve compares lags and not
  different stretches of training (agreement usually changes as training proceeds);
  ``window="all"`` averages each ``k`` over every ``t`` where ``t-k`` exists.
- snapshot noise = mean ``|A[t, 0] - A[t-1, 0]|`` over consecutive snapshots: how much the
  agreement moves from one snapshot to the next without any change of lag.
- the lag is identifiable when the curve's range ``max C - min C`` exceeds that noise; then
  ``best_k`` is the arg-best of ``C`` (highest Spearman / lowest relative error), in snapshots,
  and in steps the mean of ``step_t - step_{t-k}`` (``k`` times the interval when regular).

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

__all__ = ["LAG_METRICS", "LagAccumulator", "lag_analysis", "lag_pair", "lag_table", "summarize_lag"]

# metric -> True if larger is better
LAG_METRICS: dict[str, bool] = {"spearman": True, "relative_error": False}
_WORDS = {"spearman": "Spearman", "relative_error": "relative error"}


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

    def add(self, step: int, a: Any, h: Any) -> None:
        """Add the snapshot at ``step`` (later than every snapshot added before)."""
        if self._window and int(step) <= self._window[-1][1]:
            raise ValueError(f"LagAccumulator.add: step {step} is not after step {self._window[-1][1]}")
        t = self._count
        a = np.asarray(a, dtype=np.float64).reshape(-1)
        h = np.asarray(h, dtype=np.float64).reshape(-1)
        a_ranks = _ranks_if_usable(a)
        self._window.append((t, int(step), h, _ranks_if_usable(h)))
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
    result["curves"] = curves
    chosen = curves[metric]
    if chosen["argbest"] is None:
        result["reason"] = (
            f"no identifiable lag: the {_WORDS[metric]} of a_t with h_(t-k) is undefined (a or h constant)"
        )
        return result
    if not chosen["identifiable"]:
        result["reason"] = (
            f"no identifiable lag: the lag curve is flat within snapshot noise "
            f"({_WORDS[metric]} range {chosen['range']:.3g} over k = 0..{lag_max} "
            f"vs snapshot noise {chosen['noise']:.3g})"
        )
        return result
    result.update(_identified_lag(table, chosen, metric, lag_max, window))
    return result


def _identified_lag(
    table: pd.DataFrame, chosen: dict[str, Any], metric: str, lag_max: int, window: str
) -> dict[str, Any]:
    """The entries of an identifiable lag: ``best_k``, its length in steps and the reason in words."""
    best_k = int(chosen["best_k"])
    pairs = table[table["k"] == best_k]
    if window == "common":
        pairs = pairs[pairs["t"] >= lag_max]
    lag_steps = float(np.mean(pairs["step"] - pairs["h_step"])) if best_k > 0 else 0.0
    means = chosen["mean"]
    if best_k == 0:
        others = [m for m in means[1:] if math.isfinite(m)]
        runner_up = (max if LAG_METRICS[metric] else min)(others) if others else math.nan
        reason = (
            f"a_t agrees best with the same snapshot's h: {_WORDS[metric]} {means[0]:.3g} at k = 0 vs "
            f"{runner_up:.3g} at best for k = 1..{lag_max}"
        )
    else:
        reason = f"a_t agrees best with h_(t-{best_k}): {_WORDS[metric]} {means[best_k]:.3g} vs {means[0]:.3g} at k = 0"
    return {
        "identifiable": True,
        "best_k": best_k,
        "best_lag_steps": lag_steps,
        "reason": f"{reason} (curve range {chosen['range']:.3g} > snapshot noise {chosen['noise']:.3g})",
    }


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
