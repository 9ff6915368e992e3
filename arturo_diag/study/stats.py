"""Statistics of a study over seeds: means with t confidence intervals, paired tests against a reference.

Pure functions on plain numbers. Conventions:

- A 95 % confidence interval of a mean over ``n`` seeds is ``mean +- t_{0.975, n-1} * sd / sqrt(n)``
  (Student's t, ``sd`` with ``n - 1`` in the denominator); undefined (NaN) for ``n < 2``.
- A paired comparison takes the values of a variant and of the reference (faithful) on the same
  seeds, ``d_i = variant_i - reference_i``, and reports the mean difference with its t interval,
  the paired t-test (:func:`scipy.stats.ttest_rel`), the Wilcoxon signed-rank test
  (:func:`scipy.stats.wilcoxon`, two-sided) and the effect size Cohen's ``d_z = mean(d) / sd(d)``.
- With ``n`` pairs the exact two-sided Wilcoxon test cannot give ``p`` below ``2 / 2**n``
  (0.25 for 3 pairs, 0.0625 for 5): below 6 pairs it can never reach 0.05. Every comparison
  carries that floor (``wilcoxon_min_p``) so a report can say so.
- Degenerate cases give NaN with a ``note``, never an exception: fewer than 2 pairs; every
  difference zero (identical results: nothing to test); every difference the same non-zero value
  up to rounding (zero spread: the t statistic and ``d_z`` are infinite, reported as NaN with the note).
- A verdict (:func:`paired_verdict`) decides "is the variant different from the reference?" from the
  95 % t interval of the mean difference and a practical margin ``m`` (an equivalence margin):
  ``yes`` when the whole interval lies beyond ``m`` (below ``-m`` or above ``+m``, so it also excludes
  0), ``no`` when it lies within ``[-m, m]``, ``inconclusive`` otherwise. A zero-width interval
  (the same difference in every seed) measures no uncertainty: ``inconclusive`` unless every
  difference is exactly 0 (``no``: identical runs), and flagged ``degenerate``; fewer than 3 pairs
  are flagged ``few_seeds`` (with 2 the t interval has 1 degree of freedom, t quantile 12.7); one
  pair gives no interval (``inconclusive``), none ``not_applicable``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats as _stats

__all__ = ["mean_ci", "paired_comparison", "paired_verdict", "holm", "wilcoxon_min_p", "MIN_SEEDS"]

MIN_SEEDS = 3  # fewer paired seeds than this get a caution


def _finite_or_nan(value: Any) -> float:
    value = float(value)
    return value if math.isfinite(value) else math.nan


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """Mean of ``values`` and its ``confidence`` interval from Student's t.

    Returns ``{n, mean, sd, sem, ci_low, ci_high, half_width, confidence}``; a NaN among the values
    makes the mean NaN (a diverged seed is not silently dropped).
    """
    x = np.asarray(list(values), dtype=np.float64)
    n = int(x.size)
    out: dict[str, Any] = {
        "n": n,
        "mean": math.nan,
        "sd": math.nan,
        "sem": math.nan,
        "ci_low": math.nan,
        "ci_high": math.nan,
        "half_width": math.nan,
        "confidence": float(confidence),
    }
    if n == 0:
        return out
    mean = float(np.mean(x))
    out["mean"] = mean
    if n < 2 or not math.isfinite(mean):
        return out
    sd = float(np.std(x, ddof=1))
    sem = sd / math.sqrt(n)
    half = float(_stats.t.ppf(0.5 + confidence / 2.0, n - 1)) * sem
    out.update(sd=sd, sem=sem, half_width=half, ci_low=mean - half, ci_high=mean + half)
    return out


def _zero_spread(d: np.ndarray, sd: float) -> bool:
    """Every difference the same up to rounding (0.1 = 1.1 - 1.0 or 2.1 - 2.0)."""
    return bool(len(d) >= 2 and sd <= 1e-9 * float(np.max(np.abs(d))))


def wilcoxon_min_p(n: int) -> float:
    """The smallest two-sided p the exact Wilcoxon signed-rank test can give with ``n`` non-zero pairs."""
    return min(1.0, 2.0 / 2.0**n) if n >= 1 else math.nan


def paired_comparison(
    variant: Mapping[Any, float], reference: Mapping[Any, float], confidence: float = 0.95
) -> dict[str, Any]:
    """Compare ``variant`` with ``reference`` over the seeds (keys) both have.

    Args:
        variant, reference: seed -> value (e.g. final test accuracy).

    Returns:
        ``{n, seeds, mean_diff, sd_diff, ci_low, ci_high, half_width, t, p_t, wilcoxon_stat,
        p_wilcoxon, wilcoxon_min_p, d_z, note}``. ``note`` is empty unless a number is undefined;
        ``wilcoxon_min_p`` is the floor of the Wilcoxon p with this many non-zero differences.
    """
    seeds = sorted(set(variant) & set(reference), key=lambda s: (str(type(s)), s))
    pairs = [(float(variant[s]), float(reference[s])) for s in seeds]
    pairs_ok = [(v, r) for v, r in pairs if math.isfinite(v) and math.isfinite(r)]
    out: dict[str, Any] = {
        "n": len(pairs_ok),
        "seeds": [s for s, (v, r) in zip(seeds, pairs) if math.isfinite(v) and math.isfinite(r)],
        "mean_diff": math.nan,
        "sd_diff": math.nan,
        "ci_low": math.nan,
        "ci_high": math.nan,
        "half_width": math.nan,
        "t": math.nan,
        "p_t": math.nan,
        "wilcoxon_stat": math.nan,
        "p_wilcoxon": math.nan,
        "wilcoxon_min_p": math.nan,
        "d_z": math.nan,
        "note": "",
    }
    dropped = len(pairs) - len(pairs_ok)
    notes = [f"{dropped} seed(s) with a non-finite value left out"] if dropped else []
    n = len(pairs_ok)
    if n == 0:
        out["note"] = "; ".join(notes + ["no paired seeds"])
        return out
    v = np.array([p[0] for p in pairs_ok])
    r = np.array([p[1] for p in pairs_ok])
    d = v - r
    summary = mean_ci(d, confidence)
    out.update(
        mean_diff=summary["mean"],
        sd_diff=summary["sd"],
        ci_low=summary["ci_low"],
        ci_high=summary["ci_high"],
        half_width=summary["half_width"],
    )
    nonzero = int(np.count_nonzero(d))
    out["wilcoxon_min_p"] = wilcoxon_min_p(nonzero) if nonzero else math.nan
    if n < 2:
        out["note"] = "; ".join(notes + ["fewer than 2 paired seeds: no test"])
        return out
    if nonzero == 0:
        out["note"] = "; ".join(notes + ["identical in every seed: nothing to test"])
        return out
    if _zero_spread(d, summary["sd"]):
        out["note"] = "; ".join(notes + ["the same difference in every seed (zero spread): t and d_z undefined"])
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            t = _stats.ttest_rel(v, r)
        out["t"], out["p_t"] = _finite_or_nan(t.statistic), _finite_or_nan(t.pvalue)
        out["d_z"] = _finite_or_nan(summary["mean"] / summary["sd"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            w = _stats.wilcoxon(v, r, alternative="two-sided")
            out["wilcoxon_stat"], out["p_wilcoxon"] = _finite_or_nan(w.statistic), _finite_or_nan(w.pvalue)
        except ValueError as error:  # e.g. too few non-zero differences for the chosen method
            notes.append(f"Wilcoxon undefined ({error})")
    if out["note"]:
        notes.insert(0, out["note"])
    out["note"] = "; ".join(notes)
    return out


def _decide(low: float, high: float, margin: float) -> str:
    if low > margin or high < -margin:
        return "yes"
    if -margin <= low and high <= margin:
        return "no"
    return "inconclusive"


def paired_verdict(
    variant: Mapping[Any, float], reference: Mapping[Any, float], margin: float, confidence: float = 0.95
) -> dict[str, Any]:
    """Whether ``variant`` differs from ``reference`` (seed -> value) by more than ``margin``.

    The rule is the module docstring's. Returns ``{outcome, n, estimate, ci_low, ci_high, margin,
    df, t_quantile, seeds_lower, seeds_higher, seeds_equal, few_seeds, degenerate}``: ``estimate``
    is the mean paired difference (variant - reference) of :func:`paired_comparison` and its
    interval, ``seeds_*`` count the pairs by the sign of their difference.
    """
    c = paired_comparison(variant, reference, confidence)
    n = c["n"]
    d = np.array([float(variant[s]) - float(reference[s]) for s in c["seeds"]])
    out: dict[str, Any] = {
        "outcome": "not_applicable",
        "n": n,
        "estimate": c["mean_diff"],
        "ci_low": c["ci_low"],
        "ci_high": c["ci_high"],
        "margin": float(margin),
        "df": n - 1 if n >= 2 else math.nan,
        "t_quantile": float(_stats.t.ppf(0.5 + confidence / 2.0, n - 1)) if n >= 2 else math.nan,
        "seeds_lower": int(np.sum(d < 0)),
        "seeds_higher": int(np.sum(d > 0)),
        "seeds_equal": int(np.sum(d == 0)),
        "few_seeds": 0 < n < MIN_SEEDS,
        "degenerate": False,
    }
    if n == 0:
        return out
    if n == 1 or not (math.isfinite(c["ci_low"]) and math.isfinite(c["ci_high"])):
        out["outcome"] = "inconclusive"
        return out
    if not np.any(d):  # identical in every seed: the interval [0, 0]
        out.update(outcome="no", degenerate=True)
    elif _zero_spread(d, c["sd_diff"]):
        out.update(outcome="inconclusive", degenerate=True)
    else:
        out["outcome"] = _decide(c["ci_low"], c["ci_high"], float(margin))
    return out


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN and does not count as a test)."""
    p = [float(x) for x in p_values]
    order = sorted((i for i in range(len(p)) if math.isfinite(p[i])), key=lambda i: p[i])
    m = len(order)
    adjusted = [math.nan] * len(p)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted
