"""A study's verdicts: each variant against faithful, per metric, yes / no / inconclusive with its interval.

``study_verdicts(data, summary)`` returns the verdicts ``study.<variant>.<metric>`` (metric
``test_accuracy`` and ``test_loss``; ``study.<setup>.<variant>.<metric>`` when the study has several
setups): a :class:`~arturo_diag.quantities.verdicts.Verdict` (``id, outcome, estimate, ci_low,
ci_high, rule, text``) plus ``setup, variant, metric, n, seeds_lower, seeds_higher, seeds_equal,
margin, cautions``. ``study.json`` carries them as the list ``"verdicts"``; the comparison findings
quote their texts.

The rule (:func:`~arturo_diag.study.stats.paired_verdict`): d = variant - faithful per seed (the
same seeds), the 95 % t interval of mean(d); a difference (``yes``) when the interval lies entirely
beyond the practical margin (:data:`ACCURACY_MARGIN` of test accuracy = 0.25 points;
:data:`LOSS_MARGIN_RELATIVE` = 1 % of faithful's mean final test loss), ``no`` (equal within the
margin) when it lies entirely within, else ``inconclusive``. A zero-width interval (the same
difference in every seed) is ``inconclusive`` (``no`` if every difference is 0) and its text says
so; fewer than 3 seeds carry a caution (2 seeds: 1 degree of freedom); one seed is
``inconclusive``, no paired seed ``not_applicable``. The estimate is in the metric's unit (accuracy
as a fraction: 0.01 = 1 point); the text in points. The p-value in the text is the paired t-test's,
uncorrected.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from arturo_diag.numbers import sig
from arturo_diag.quantities.verdicts import Verdict
from arturo_diag.study.aggregate import REFERENCE_VARIANT, StudyData
from arturo_diag.study.stats import MIN_SEEDS, paired_verdict

__all__ = ["study_verdicts", "ACCURACY_MARGIN", "LOSS_MARGIN_RELATIVE", "METRICS"]

ACCURACY_MARGIN = 0.0025  # test accuracy (a fraction): 0.25 percentage points
LOSS_MARGIN_RELATIVE = 0.01  # test loss: 1 % of faithful's mean final test loss
METRICS = {"test_accuracy": ("test accuracy", 100.0, " points"), "test_loss": ("test loss", 1.0, "")}


def _p(p: float) -> str:
    return sig(p, 2)


def _baseline_settings(values: dict[str, Any]) -> str:
    parts = [f"{k} {v:g}" for k, v in values.items() if k != "lr_gamma"]
    return ", ".join(parts)


def _subject(variant, setup, every: int) -> str:
    if variant.family == "baseline":
        settings = _baseline_settings(dict(setup.baselines.values.get(variant.kind, {})))
        return f"{variant.describe()} ({settings})" if settings else variant.describe()
    phrase = variant.describe(every)
    return phrase[0].upper() + phrase[1:]


def _numbers(metric: str, *values: float) -> list[str]:
    """Signed numbers in the metric's unit (points of accuracy, or loss), with enough digits to tell
    apart the values that differ (beyond rounding)."""
    scale = METRICS[metric][1]
    x = [v * scale for v in values]
    distinct = len({f"{v:.9g}" for v in x})
    digits = 2 if metric == "test_accuracy" else 3
    fmt = (lambda v, d: f"{v:+.{d}f}") if metric == "test_accuracy" else (lambda v, d: f"{v:+.{d}g}")
    while digits < 8 and len({fmt(v, digits) for v in x}) < distinct:
        digits += 1
    return [fmt(v, digits) for v in x]


def _directions(v: dict[str, Any]) -> str:
    """``lower in 3 of 3 seeds``; the other directions after (``lower in 2 of 3 seeds, higher in 1``)."""
    counts = {"lower": v["seeds_lower"], "higher": v["seeds_higher"], "equal": v["seeds_equal"]}
    first = "lower" if v["estimate"] < 0 else "higher" if v["estimate"] > 0 else "equal"
    n = v["n"]
    parts = [f"{first} in {counts[first]} of {n} seed{'s' if n != 1 else ''}"]
    return ", ".join(parts + [f"{k} in {c}" for k, c in counts.items() if k != first and c])


def _verdict_words(subject: str, baseline: bool, metric: str, v: dict[str, Any], p: float) -> str:
    """A verdict in words: the outcome, the estimate, its interval, the seeds per direction (and the
    cautions: fewer than 3 seeds, a zero-width interval)."""
    name, _, unit = METRICS[metric]
    n, outcome = v["n"], v["outcome"]
    if outcome == "not_applicable":
        return f"{subject}: no seed paired with faithful arTuRO, so no verdict on {name}."
    est, lo, hi = _numbers(metric, v["estimate"], v["ci_low"], v["ci_high"])
    size, margin = est.lstrip("+-"), _numbers(metric, v["margin"])[0].lstrip("+")
    tail = _directions(v) + (f"; p = {_p(p)}" if math.isfinite(p) else "")
    ci = f"95 % CI [{lo}, {hi}]{unit}"
    if n == 1:
        return f"{subject}: {name} {est}{unit} against faithful arTuRO from 1 seed, inconclusive (1 seed: no interval)."
    if v["degenerate"] and v["seeds_equal"] == n:
        text = (
            f"{subject} gives exactly the {name} of faithful arTuRO in each of the {n} seeds (no difference; "
            f"caution: the 95 % CI [{lo}, {hi}] has zero width: identical runs, not a measured uncertainty)."
        )
    elif v["degenerate"]:
        text = (
            f"{subject}: {name} {est}{unit} against faithful arTuRO in each of the {n} seeds, inconclusive "
            f"(caution: the {ci} has zero width, the same difference in every seed measures no uncertainty; "
            f"{_directions(v)})."
        )
    elif outcome == "yes" and baseline:
        where = "below" if v["estimate"] < 0 else "above"
        text = f"{subject} ends {size}{unit} {where} faithful arTuRO in {name} ({ci}; {tail})."
    elif outcome == "yes":
        text = f"{subject} {'lowers' if v['estimate'] < 0 else 'raises'} {name} by {size}{unit} ({ci}; {tail})."
    elif outcome == "no":
        text = f"{subject}: {name} equal to faithful arTuRO within ±{margin}{unit}: {est}{unit} ({ci}; {tail})."
    else:
        text = f"{subject}: {name} {est}{unit} against faithful arTuRO, inconclusive ({ci}; {tail})."
    if v["few_seeds"]:
        text += (
            f" Caution: {n} seeds give the t interval {v['df']} degree{'s' if v['df'] != 1 else ''} of freedom "
            f"(t quantile {v['t_quantile']:.1f}); too few for a verdict to rely on: run at least {MIN_SEEDS}."
        )
    return text


def _rule(metric: str, margin: float) -> str:
    name, scale, unit = METRICS[metric]
    if metric == "test_accuracy":
        size = f"{ACCURACY_MARGIN:g} ({ACCURACY_MARGIN * scale:g}{unit})"
    else:
        size = f"{LOSS_MARGIN_RELATIVE:.0%} of faithful's mean final {name} (here {margin:.3g})"
    return (
        f"d = variant - faithful, final {name}, paired by seed; 95 % t interval of mean(d): yes if it lies "
        f"entirely beyond +-{size}, no if entirely within, else inconclusive; a zero-width interval is "
        "inconclusive (no if every d is 0); one seed: inconclusive"
    )


def study_verdicts(data: StudyData, summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The verdicts ``study.<variant>.<metric>`` (``study.<setup>.<variant>.<metric>`` when the study
    has several setups): each variant against faithful on test accuracy and test loss, decided by
    :func:`~arturo_diag.study.stats.paired_verdict` (rule in the module docstring)."""
    study, runs = data.study, data.runs
    names = [v.name for v in study.variants]
    if REFERENCE_VARIANT not in names:
        return []
    out = []
    for setup in study.setups:
        p_values = {(c["variant"], c["metric"]): c["p_t"] for c in summary[setup.name]["comparisons"]}
        for metric in METRICS:
            reference = _by_seed(runs, setup.name, REFERENCE_VARIANT, metric)
            finite = [x for x in reference.values() if math.isfinite(x)]
            mean = float(np.mean(finite)) if finite else math.nan
            margin = ACCURACY_MARGIN if metric == "test_accuracy" else LOSS_MARGIN_RELATIVE * abs(mean)
            for variant in study.variants:
                if variant.name == REFERENCE_VARIANT:
                    continue
                v = paired_verdict(_by_seed(runs, setup.name, variant.name, metric), reference, margin)
                subject = _subject(variant, setup, setup.config.oracle_every)
                p = p_values.get((variant.name, metric), math.nan)
                words = _verdict_words(subject, variant.family != "arturo", metric, v, p)
                where = f"{setup.name}." if len(study.setups) > 1 else ""
                verdict = Verdict(
                    f"study.{where}{variant.name}.{metric}",
                    v["outcome"],
                    v["estimate"],
                    v["ci_low"],
                    v["ci_high"],
                    _rule(metric, margin),
                    words,
                )
                cautions = [c for c in ("few_seeds", "degenerate") if v[c]]
                extra = {k: v[k] for k in ("n", "seeds_lower", "seeds_higher", "seeds_equal", "margin")}
                out.append(
                    {
                        **verdict.as_dict(),
                        "setup": setup.name,
                        "variant": variant.name,
                        "metric": metric,
                        **extra,
                        "cautions": cautions,
                    }
                )
    return out


def _by_seed(runs: pd.DataFrame, setup: str, variant: str, column: str) -> dict[int, float]:
    rows = runs[(runs.setup == setup) & (runs.variant == variant) & (runs.status == "complete")]
    return {int(s): float(v) for s, v in zip(rows.seed, pd.to_numeric(rows[column], errors="coerce"))}
