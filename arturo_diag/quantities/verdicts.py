"""Verdicts: every yes/no the report states, decided by a stated rule from an estimate and its interval.

A :class:`Verdict` is ``{"id", "outcome", "estimate", "ci_low", "ci_high", "rule", "text"}`` with
``outcome`` one of :data:`OUTCOMES`; ``metrics.json`` carries them as the list ``"verdicts"``
(``docs/metrics.md``). A quantity returns its verdicts from ``Quantity.verdicts(metrics)``; a
finding that states a conclusion quotes its verdict's text, so nothing is concluded that the
interval does not support: where the interval straddles the margin the outcome is
``"inconclusive"`` and the text gives the interval.

The rule of :func:`decide_above` (one-sided, with a practical margin ``m``): ``yes`` when the
whole interval is above ``m``, ``no`` when the whole interval is below ``m``, else ``inconclusive``;
undefined numbers give ``not_applicable``. Intervals come from :func:`bootstrap_ci` (percentile
bootstrap over coordinates, or over snapshots where the question is about time) or from an
analytic formula stated in the rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

__all__ = [
    "BOOTSTRAP_SAMPLES",
    "MAX_RESAMPLED",
    "OUTCOMES",
    "Verdict",
    "bootstrap_ci",
    "decide_above",
    "fixed_subset",
    "interval_words",
    "not_applicable",
]

OUTCOMES = ("yes", "no", "inconclusive", "not_applicable")
BOOTSTRAP_SAMPLES = 200  # resamples of the percentile bootstrap (fixed seed: the same record, the same interval)
MAX_RESAMPLED = 20_000  # coordinates a bootstrap over coordinates resamples (a fixed random subset above this)
LEVEL = 0.95


@dataclass(frozen=True)
class Verdict:
    """One decided question (see the module docstring)."""

    id: str
    outcome: str
    estimate: float
    ci_low: float
    ci_high: float
    rule: str
    text: str

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome {self.outcome!r}; allowed: {', '.join(OUTCOMES)}")

    def as_dict(self) -> dict:
        return asdict(self)


def not_applicable(id: str, rule: str, why: str) -> Verdict:
    """A question that cannot be asked of this run (no reference, too few snapshots, ...)."""
    return Verdict(id, "not_applicable", math.nan, math.nan, math.nan, rule, why)


def _finite(*values: float) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def decide_above(estimate: float, ci_low: float, ci_high: float, margin: float = 0.0) -> str:
    """``yes`` if the interval lies above ``margin``, ``no`` if below, else ``inconclusive``."""
    if not _finite(estimate, ci_low, ci_high, margin):
        return "not_applicable"
    if ci_low > margin:
        return "yes"
    if ci_high < margin:
        return "no"
    return "inconclusive"


def bootstrap_ci(
    statistic: Callable[[np.ndarray], float],
    n: int,
    *,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(indices)`` over ``n`` units resampled with replacement.

    ``statistic`` receives an index array (length ``n``) and returns a number; the generator is
    seeded, so the same data give the same interval. NaN resamples are dropped; fewer than half
    finite gives ``(nan, nan)``.
    """
    if n < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, n, size=n)) for _ in range(samples)], dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) < samples / 2:
        return math.nan, math.nan
    tail = (1 - level) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return float(low), float(high)


def fixed_subset(n: int, limit: int = MAX_RESAMPLED) -> np.ndarray | None:
    """The sorted indices of a fixed random subset (seed 0) of ``limit`` of ``n`` units when ``n > limit``,
    else None (resample them all): a bootstrap over many coordinates runs on the subset, which
    widens its interval (conservative) while the estimate itself uses every coordinate."""
    if n <= limit:
        return None
    return np.sort(np.random.default_rng(0).choice(n, limit, replace=False))


def interval_words(estimate: float, ci_low: float, ci_high: float, digits: int = 3) -> str:
    """``0.123 (95 % CI [0.101, 0.145])``, with enough digits to tell the three apart."""
    if not _finite(estimate):
        return "undefined"
    if not _finite(ci_low, ci_high):
        return f"{estimate:.{digits}g} (no interval)"
    values: Sequence[float] = (estimate, ci_low, ci_high)
    d = digits
    while d < 12 and len({f"{v:.{d}g}" for v in values}) < len(set(values)):
        d += 1
    return f"{estimate:.{d}g} (95 % CI [{ci_low:.{d}g}, {ci_high:.{d}g}])"
