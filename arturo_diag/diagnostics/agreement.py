"""Agreement of the curvature estimate ``a`` with a reference diagonal Hessian ``h``.

ARTURO.md, "Diagnostic quantities": relative error ``||a-h||/||h||``, cosine, Spearman rank
correlation, sign agreement and the distribution of ``log10(|a|/|h|)``, overall and per layer,
each next to the same numbers for two baselines: the constant vector ``0.1`` (arTuRO's initial
``a``) and the previous snapshot's ``h``. An agreement figure means something only next to what
a constant would score.

All functions are pure: numpy arrays in (any shape; flattened, computed in float64), plain
Python floats and dicts out. NaN marks a number that is undefined (e.g. Spearman of a constant).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from arturo_diag.diagnostics.record import layer_of

__all__ = [
    "AGREEMENT_METRICS",
    "INITIAL_CURVATURE",
    "LOG_RATIO_QUANTILES",
    "agreement",
    "agreement_with_baselines",
    "group_ranks",
    "per_layer",
    "ranks",
    "ranks_from_order",
    "sort_order",
    "spearman",
]

# arTuRO's initial a (ARTURO.md, "State per coordinate").
INITIAL_CURVATURE = 0.1
LOG_RATIO_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
# metric -> True if larger is better; the metrics a baseline verdict is given on.
AGREEMENT_METRICS: dict[str, bool] = {
    "relative_error": False,
    "cosine": True,
    "spearman": True,
    "sign_agreement": True,
    "log_ratio_abs_median": False,
}


def _flat(x: Any) -> np.ndarray:
    return np.asarray(x, dtype=np.float64).reshape(-1)


def _is_constant(x: np.ndarray) -> bool:
    return x.size == 0 or bool(np.all(x == x[0]))


# above this many coordinates ranks are computed by :func:`sort_order` and :func:`ranks_from_order`
# (the same numbers as ``scipy.stats.rankdata``, several times faster on millions of coordinates)
_FAST_RANKS = 4096


def ranks(x: Any) -> np.ndarray:
    """Ranks of ``x`` (1-based, ties get their average rank), as ``scipy.stats.rankdata``."""
    x = _flat(x)
    if x.size <= _FAST_RANKS or not np.isfinite(x).all():
        return stats.rankdata(x).astype(np.float64)
    return ranks_from_order(x, sort_order(x))


def sort_order(x: np.ndarray) -> np.ndarray:
    """An ordering permutation of the finite 1-D float64 ``x`` (``x[order]`` ascending; ties in any order).

    Where every value is a float32 number (a float32 record read as float64) and there are fewer
    than 2**32 of them, it sorts 64-bit keys (the float32's order-preserving bits above the index),
    which numpy sorts far faster than it argsorts floats; otherwise ``np.argsort``.
    """
    n = x.size
    if n < 2**32:
        x32 = x.astype(np.float32)
        if np.array_equal(x32, x):
            bits = x32.view(np.uint32)
            # sign-magnitude -> unsigned order: flip every bit of a negative, the sign bit of a positive
            keys = np.where(bits >= np.uint32(0x80000000), ~bits, bits | np.uint32(0x80000000)).astype(np.uint64)
            keys <<= np.uint64(32)
            keys |= np.arange(n, dtype=np.uint64)
            keys.sort()
            keys &= np.uint64(0xFFFFFFFF)
            return keys.astype(np.intp)
    return np.argsort(x)


def _average_ranks(sorted_values: np.ndarray, breaks: np.ndarray | None = None) -> np.ndarray:
    """Average ranks (1-based) in sorted order of ``sorted_values``; ``breaks`` (bool, optional) marks
    where a new group starts (ranks restart at 1 there), for several groups sorted one after the other."""
    n = sorted_values.size
    position = np.arange(n)
    if breaks is not None:  # positions counted from the start of each group
        position -= np.maximum.accumulate(np.where(breaks, position, 0))
    out = (position + 1).astype(np.float64)  # 0.5 * (start + end + 1) of a value without ties
    tied = np.empty(n, dtype=bool)
    tied[:1] = False
    np.equal(sorted_values[1:], sorted_values[:-1], out=tied[1:])
    if breaks is not None:
        tied &= ~breaks
    if not tied.any():
        return out
    # runs of equal values: positions i with tied[i] continue the run that starts before them
    continues = np.flatnonzero(tied)
    cut = np.flatnonzero(np.diff(continues) != 1) + 1
    starts = continues[np.concatenate(([0], cut))] - 1
    lengths = continues[np.concatenate((cut - 1, [continues.size - 1]))] - starts + 1
    first = position[starts]
    # scipy's rankdata: 0.5 * (count[dense] + count[dense - 1] + 1), the same half-integers exactly
    average = 0.5 * (first + lengths + first + 1)
    offsets = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out[np.repeat(starts, lengths) + offsets] = np.repeat(average, lengths)
    return out


def ranks_from_order(x: np.ndarray, order: np.ndarray) -> np.ndarray:
    """:func:`ranks` of ``x`` given an ordering permutation (:func:`sort_order`): the same numbers."""
    out = np.empty(x.size, dtype=np.float64)
    out[order] = _average_ranks(x[order])
    return out


def group_ranks(x: np.ndarray, order: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Ranks of ``x`` within each group of coordinates (``labels``: small non-negative integers), from
    an ordering permutation of the whole ``x``: ``out[labels == g]`` equals ``ranks(x[labels == g])``.

    One stable sort of the labels in sorted order (a radix sort for 8/16-bit labels) splits the
    whole order into each group's order, so the groups need no sort of their own.
    """
    by_group = order[np.argsort(labels[order], kind="stable")]
    sorted_labels = labels[by_group]
    breaks = np.empty(x.size, dtype=bool)
    breaks[:1] = True
    np.not_equal(sorted_labels[1:], sorted_labels[:-1], out=breaks[1:])
    out = np.empty(x.size, dtype=np.float64)
    out[by_group] = _average_ranks(x[by_group], breaks)
    return out


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x = x - x.mean()
    y = y - y.mean()
    denominator = float(np.linalg.norm(x)) * float(np.linalg.norm(y))
    return float(np.clip(np.dot(x, y) / denominator, -1.0, 1.0)) if denominator > 0 else math.nan


def spearman(a: Any, h: Any, *, a_ranks: np.ndarray | None = None, h_ranks: np.ndarray | None = None) -> float:
    """Spearman rank correlation of ``a`` and ``h``: the Pearson correlation of their ranks.

    Equal to ``scipy.stats.spearmanr(a, h).statistic`` (ties get average ranks). NaN when fewer
    than two coordinates or either input is constant (ranks undefined); such inputs are caught
    first, so no ``ConstantInputWarning`` is emitted. Inputs must be finite (see
    :func:`agreement`, which drops non-finite coordinates). ``a_ranks``/``h_ranks`` are
    precomputed :func:`ranks`, to rank an array once when it is compared with several others.
    """
    a, h = _flat(a), _flat(h)
    if a.shape != h.shape:
        raise ValueError(f"spearman: a has {a.size} coordinates, h has {h.size}")
    if a.size < 2 or _is_constant(a) or _is_constant(h):
        return math.nan
    return _pearson(ranks(a) if a_ranks is None else a_ranks, ranks(h) if h_ranks is None else h_ranks)


def agreement(
    a: Any, h: Any, *, a_ranks: np.ndarray | None = None, h_ranks: np.ndarray | None = None
) -> dict[str, float]:
    """How well ``a`` matches the reference ``h`` (ARTURO.md, "Diagnostic quantities").

    Coordinates where ``a`` or ``h`` is not finite are dropped and counted (``n_nonfinite``);
    ``n`` is the number of coordinates used. ``a_ranks``/``h_ranks`` (optional, :func:`ranks` of
    the full arrays) save re-ranking; they are used only when no coordinate is dropped.

    Returns (flat dict of floats):
        relative_error: ``||a-h|| / ||h||`` (NaN if ``||h|| = 0``); 0 is perfect, 1 is what
            ``a = 0`` scores.
        cosine: ``<a,h> / (||a|| ||h||)`` (NaN if either is zero).
        spearman: rank correlation (NaN if either is constant).
        sign_agreement: share of the coordinates with ``h != 0`` where ``sign(a) == sign(h)``
            (``a == 0`` matches neither sign). Coordinates with ``h == 0`` have no sign to agree
            with and are left out (counted in ``n_zero_h``): with many exact zeros in ``h``
            (dead ReLUs, padding-only taps) counting them would measure the zeros, not the signs.
        log_ratio_q05 ... log_ratio_q95: quantiles of ``log10(|a|/|h|)`` over the coordinates where
            neither is zero (0 means the right magnitude, 1 ten times too large);
        log_ratio_abs_median: median of ``|log10(|a|/|h|)|``, the typical error in orders of
            magnitude; n_log_excluded: coordinates left out because ``a == 0`` or ``h == 0``.
        n_zero_a, n_zero_h: counts of exact zeros.
    """
    a, h = _flat(a), _flat(h)
    if a.shape != h.shape:
        raise ValueError(f"agreement: a has {a.size} coordinates, h has {h.size}")
    finite = np.isfinite(a) & np.isfinite(h)
    n_nonfinite = int(a.size - np.count_nonzero(finite))
    if n_nonfinite:
        a, h = a[finite], h[finite]
        a_ranks = h_ranks = None
    n = int(a.size)

    norm_h = float(np.linalg.norm(h))
    norm_a = float(np.linalg.norm(a))
    relative_error = float(np.linalg.norm(a - h)) / norm_h if norm_h > 0 else math.nan
    cosine = float(np.dot(a, h)) / (norm_a * norm_h) if norm_a > 0 and norm_h > 0 else math.nan
    signed = h != 0
    sign_agreement = float(np.mean(np.sign(a[signed]) == np.sign(h[signed]))) if np.any(signed) else math.nan

    usable = (a != 0) & (h != 0)
    log_ratio = np.log10(np.abs(a[usable])) - np.log10(np.abs(h[usable]))
    if log_ratio.size:
        quantiles = np.quantile(log_ratio, LOG_RATIO_QUANTILES, overwrite_input=True)  # a temporary
        abs_median = float(np.median(np.abs(log_ratio), overwrite_input=True))
    else:
        quantiles = np.full(len(LOG_RATIO_QUANTILES), math.nan)
        abs_median = math.nan

    result: dict[str, float] = {
        "n": n,
        "relative_error": relative_error,
        "cosine": cosine,
        "spearman": spearman(a, h, a_ranks=a_ranks, h_ranks=h_ranks),
        "sign_agreement": sign_agreement,
    }
    for q, value in zip(LOG_RATIO_QUANTILES, quantiles):
        result[f"log_ratio_q{round(q * 100):02d}"] = float(value)
    result["log_ratio_abs_median"] = abs_median
    result["n_log_excluded"] = int(n - np.count_nonzero(usable))
    result["n_zero_a"] = int(np.count_nonzero(a == 0))
    result["n_zero_h"] = int(np.count_nonzero(h == 0))
    result["n_nonfinite"] = n_nonfinite
    return result


def _beats(
    estimate: Mapping[str, float], baseline: Mapping[str, float], *, baseline_is_constant: bool
) -> dict[str, bool | None]:
    verdict: dict[str, bool | None] = {}
    for metric, larger_is_better in AGREEMENT_METRICS.items():
        mine, theirs = estimate[metric], baseline[metric]
        if metric == "spearman" and baseline_is_constant and math.isnan(theirs):
            theirs = 0.0  # a constant carries no rank information
        if math.isnan(mine) or math.isnan(theirs):
            verdict[metric] = None
        else:
            verdict[metric] = bool(mine > theirs) if larger_is_better else bool(mine < theirs)
    return verdict


def _summary(verdict: Mapping[str, bool | None]) -> dict[str, Any]:
    decided = [v for v in verdict.values() if v is not None]
    return {
        "all": bool(decided) and all(decided),
        "any": any(decided),
        "lost_on": [metric for metric, v in verdict.items() if v is False],
    }


def agreement_with_baselines(
    a: Any,
    h: Any,
    h_prev: Any | None = None,
    constant: float = INITIAL_CURVATURE,
    *,
    a_ranks: np.ndarray | None = None,
    h_ranks: np.ndarray | None = None,
    h_prev_ranks: np.ndarray | None = None,
) -> dict[str, Any]:
    """:func:`agreement` of ``a`` with ``h`` beside the same numbers for two baselines.

    Baselines (ARTURO.md, "Diagnostic quantities"): the constant vector ``constant`` (default 0.1,
    arTuRO's initial ``a``) and ``h_prev``, the previous snapshot's reference (what a perfect but
    one-snapshot-late estimate would score; ``None`` at the first snapshot).

    Returns:
        ``{"estimate": agreement(a, h), "constant": agreement(constant, h),
        "previous_h": agreement(h_prev, h) or None, "constant_value": constant,
        "beats_constant": {metric: bool|None}, "beats_constant_summary": {"all", "any", "lost_on"},
        "beats_previous_h": {metric: bool|None} or None}``.
        A verdict is True when ``a`` is strictly better on that metric (lower relative error and
        ``log_ratio_abs_median``; higher cosine, Spearman, sign agreement), None when undefined.
        The constant's Spearman is undefined (no ranks); ``a`` beats it when its Spearman is > 0.
        ``a_ranks``, ``h_ranks``, ``h_prev_ranks``: optional precomputed :func:`ranks` of the arrays
        (as in :func:`agreement`, used only where no coordinate is dropped).
    """
    a_flat, h_flat = _flat(a), _flat(h)
    # h is compared three times: rank it once (when finite and not constant)
    if h_ranks is None:
        usable = h_flat.size > 1 and np.isfinite(h_flat).all() and not _is_constant(h_flat)
        h_ranks = ranks(h_flat) if usable else None
    estimate = agreement(a_flat, h_flat, a_ranks=a_ranks, h_ranks=h_ranks)
    constant_metrics = agreement(np.full_like(h_flat, float(constant)), h_flat)
    beats_constant = _beats(estimate, constant_metrics, baseline_is_constant=True)
    previous = beats_previous = None
    if h_prev is not None:
        previous = agreement(_flat(h_prev), h_flat, a_ranks=h_prev_ranks, h_ranks=h_ranks)
        beats_previous = _beats(estimate, previous, baseline_is_constant=False)
    return {
        "estimate": estimate,
        "constant": constant_metrics,
        "previous_h": previous,
        "constant_value": float(constant),
        "beats_constant": beats_constant,
        "beats_constant_summary": _summary(beats_constant),
        "beats_previous_h": beats_previous,
    }


def per_layer(
    fn: Callable[..., Any], arrays_by_param: Mapping[str, Any], layers: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Apply ``fn`` to all coordinates ("overall") and to each layer's coordinates.

    ``arrays_by_param`` maps parameter name -> the arrays ``fn`` takes, either a sequence (passed
    positionally: ``{"net.0.weight": (a, h)}`` -> ``fn(a, h)``) or a mapping (passed as keywords:
    ``{"net.0.weight": {"a": a, "h": h}}`` -> ``fn(a=a, h=h)``). Parameters of one layer
    (``layers[name]``, default :func:`~arturo_diag.diagnostics.record.layer_of`) are flattened and
    concatenated in the given order; ``None`` entries (an array that is absent) propagate as
    ``None`` if absent for every parameter of the group. Layers appear in the order of their first
    parameter, after ``"overall"``.
    """
    layers = layers or {}
    groups: dict[str, list[str]] = {}
    for name in arrays_by_param:
        groups.setdefault(layers.get(name) or layer_of(name), []).append(name)
    result = {"overall": _apply(fn, [arrays_by_param[name] for name in arrays_by_param])}
    for layer, names in groups.items():
        result[layer] = _apply(fn, [arrays_by_param[name] for name in names])
    return result


def _concat(parts: Sequence[Any]) -> np.ndarray | None:
    present = [p for p in parts if p is not None]
    if not present:
        return None
    if len(present) != len(parts):
        raise ValueError("per_layer: an array is present for some parameters of a group and absent for others")
    return np.concatenate([_flat(p) for p in present])


def _apply(fn: Callable[..., Any], items: Sequence[Any]) -> Any:
    first = items[0]
    if isinstance(first, Mapping):
        keys = list(first)
        return fn(**{key: _concat([item.get(key) for item in items]) for key in keys})
    width = len(first)
    return fn(*[_concat([item[i] for item in items]) for i in range(width)])
