"""The verdicts of lag, movement, calibration and the trust region (issue 11), from ``metrics``.

Each function takes the analysis' ``metrics`` and returns its quantity's list of
:class:`~arturo_diag.quantities.verdicts.Verdict` (wired in as ``Quantity.verdicts``); the rules
are the ``*_RULE`` strings below, copied into every verdict and into ``docs/metrics.md``:

- ``lag.identified``: the lag test of :func:`arturo_diag.diagnostics.lag.lag_test` (gain of the
  best ``k >= 1`` over ``k = 0``, block bootstrap over snapshots, margin, minimum window);
- ``movement.left_prior``: share of coordinates of ``a`` outside ``[0.1/2, 2 * 0.1]``, Wilson
  interval over coordinates, yes above one half, no below;
- ``calibration.calibrated``: coverage (Wilson) within [0.90, 0.99] and sharpness (order-statistic
  interval of the median) within [0.4, 1.0];
- ``trust_region.binding``: share of steps after the burn-in with ``K/eps >= 0.9`` (Wilson), yes
  above one half, no below; a fixed-eta run is not applicable.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from arturo_diag.diagnostics.intervals import wilson_interval
from arturo_diag.diagnostics.lag import LAG_MARGIN, MIN_LAG_SNAPSHOTS
from arturo_diag.diagnostics.movement import LEFT_PRIOR_FACTOR
from arturo_diag.quantities._estimator import is_arturo, variance_words
from arturo_diag.quantities.base import Findings
from arturo_diag.quantities.verdicts import Verdict, decide_above, interval_words, not_applicable

__all__ = [
    "CALIBRATION_RULE",
    "COVERAGE_BAND",
    "LAG_RULE",
    "LEFT_PRIOR_RULE",
    "SHARPNESS_BAND",
    "TRUST_REGION_RULE",
    "calibration_verdicts",
    "lag_verdicts",
    "movement_verdicts",
    "trust_region_verdicts",
    "verdict_finding",
    "with_finding",
]

COVERAGE_BAND = (0.90, 0.99)  # the practical margin around the Gaussian 0.954
SHARPNESS_BAND = (0.4, 1.0)  # around the Gaussian 0.674 (the band of the "calibrated" label)
MAJORITY = 0.5

LAG_RULE = (
    "gain = s (A[t, k*] - A[t, 0]) over the snapshots t >= K of the common window, A the lag metric "
    f"(s = +1 Spearman, -1 relative error), k* the best k >= 1; 95 % circular block bootstrap over snapshots "
    f"(blocks of ceil(n^(1/3))); yes if the interval is above the margin (Spearman {LAG_MARGIN['spearman'][0]:g}; "
    f"relative error {LAG_MARGIN['relative_error'][0]:.0%} of its k = 0 value), no if below, else inconclusive; "
    f"at least {MIN_LAG_SNAPSHOTS} snapshots in the window. estimate: k*, the best candidate lag in snapshots "
    "(a lag is identified only on yes); ci: 95 % interval of the best k (0 included) over the resamples"
)
LEFT_PRIOR_RULE = (
    f"share of coordinates with |log10(a / prior)| > log10 {LEFT_PRIOR_FACTOR:g} (a <= 0 counts as left) at the "
    f"final snapshot, Wilson 95 % interval over coordinates; yes if the interval is above {MAJORITY:g}, "
    "no if below, else inconclusive"
)
CALIBRATION_RULE = (
    "coverage = share of coordinates with |a-h| <= 2 sqrt(P_aa) (Wilson 95 % interval over coordinates), "
    "sharpness = median |a-h|/sqrt(P_aa) (order-statistic 95 % interval), at the final snapshot; yes if the "
    f"coverage interval lies within [{COVERAGE_BAND[0]:g}, {COVERAGE_BAND[1]:g}] and the sharpness interval within "
    f"[{SHARPNESS_BAND[0]:g}, {SHARPNESS_BAND[1]:g}] (0.954 and 0.674 if calibrated); no if either interval lies "
    "entirely outside its band; else inconclusive. estimate: the coverage"
)
TRUST_REGION_RULE = (
    "share of the steps after the burn-in (with a recorded K/eps) at which the KL bound was reached, "
    f"K/eps >= 0.9; Wilson 95 % interval over steps; yes if the interval is above {MAJORITY:g}, no if below, "
    "else inconclusive; not applicable with a fixed eta (trust region off)"
)


def _pct(x: float) -> str:
    return f"{100 * x:.3g} %" if isinstance(x, (int, float)) and math.isfinite(x) else "undefined"


def _share_words(share: float, low: float, high: float) -> str:
    """``38.2 % (95 % CI [32.1 %, 44.5 %])`` with enough digits to tell the three apart."""
    values = [100 * v for v in (share, low, high)]
    if not all(math.isfinite(v) for v in values):
        return f"{_pct(share)} (no interval)"
    digits = 3
    while digits < 8 and len({f"{v:.{digits}g}" for v in values}) < len(set(values)):
        digits += 1
    est, lo, hi = (f"{v:.{digits}g} %" for v in values)
    return f"{est} (95 % CI [{lo}, {hi}])"


def lag_verdicts(metrics: Mapping[str, Any]) -> list[Verdict]:
    """``lag.identified``: the lag in snapshots, decided by the lag test (see :data:`LAG_RULE`)."""
    lag = metrics.get("lag") or {}
    test = lag.get("test")
    if not lag.get("curves") or not test:
        why = lag.get("reason") or "not assessed (no reference h to compare a with)"
        return [not_applicable("lag.identified", LAG_RULE, why)]
    if test["outcome"] == "not_applicable":
        return [not_applicable("lag.identified", LAG_RULE, test["why"])]
    yes = test["outcome"] == "yes"
    estimate = float(test["best_k"])  # the candidate lag; identified only on yes (the outcome)
    if yes:
        k, steps = test["best_k"], lag.get("best_lag_steps")
        steps_words = f", {steps:.4g} steps" if isinstance(steps, (int, float)) else ""
        text = (
            f"a lags h by {k} snapshot{'s' if k != 1 else ''}{steps_words} (best k over the resamples: 95 % CI "
            f"[{test['lag_ci_low']:.0f}, {test['lag_ci_high']:.0f}]): {lag['reason']}"
        )
    else:
        reason = str(lag.get("reason") or "")
        text = reason[:1].upper() + reason[1:]
    return [
        Verdict(
            "lag.identified",
            test["outcome"],
            estimate,
            float(test["lag_ci_low"]),
            float(test["lag_ci_high"]),
            LAG_RULE,
            text,
        )
    ]


def movement_verdicts(metrics: Mapping[str, Any]) -> list[Verdict]:
    """``movement.left_prior``: did a leave its prior 0.1 (see :data:`LEFT_PRIOR_RULE`)?

    None for an optimizer other than arTuRO: 0.1 is arTuRO's initial a, not another estimate's start."""
    if not is_arturo(metrics):
        return []
    left = (metrics.get("movement") or {}).get("left_prior")
    if not left or not left.get("n"):
        return [not_applicable("movement.left_prior", LEFT_PRIOR_RULE, "no usable snapshot with a and h")]
    share = float(left["share"])
    low, high = wilson_interval(left["n_left"], left["n"])
    outcome = decide_above(share, low, high, MAJORITY)
    prior, factor = left["prior"], left["factor"]
    verb = {"yes": "a left its prior", "no": "a did not leave its prior"}.get(outcome, "inconclusive whether a left")
    text = (
        f"{verb} {prior:g} (step {left['step']}): {_share_words(share, low, high)} of its {left['n']} coordinates "
        f"are outside [{prior / factor:g}, {prior * factor:g}] (yes above {MAJORITY:.0%}); median |log10(a/{prior:g})| "
        f"{left['median_abs_log10']:.3g} decades"
    )
    return [Verdict("movement.left_prior", outcome, share, low, high, LEFT_PRIOR_RULE, text)]


def _within(low: float, high: float, band: tuple[float, float]) -> str:
    """``yes`` if [low, high] lies inside ``band``, ``no`` if entirely outside, else ``inconclusive``."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return "not_applicable"
    if band[0] <= low and high <= band[1]:
        return "yes"
    if high < band[0] or low > band[1]:
        return "no"
    return "inconclusive"


def calibration_verdicts(metrics: Mapping[str, Any]) -> list[Verdict]:
    """``calibration.calibrated``: coverage and sharpness with their intervals (see :data:`CALIBRATION_RULE`)."""
    block = metrics.get("calibration") or {}
    iv = block.get("intervals")
    rule = variance_words(metrics, CALIBRATION_RULE)  # P_aa, or the optimizer's claimed variance V
    if not iv or not iv.get("n"):
        why = (
            (block.get("reason") or "no snapshot holds the filter variance P_aa with a reference h")
            if not iv
            else variance_words(metrics, "no coordinate with P_aa > 0")
        )
        return [not_applicable("calibration.calibrated", rule, why)]
    coverage = _within(iv["coverage_low"], iv["coverage_high"], COVERAGE_BAND)
    sharpness = _within(iv["sharpness_low"], iv["sharpness_high"], SHARPNESS_BAND)
    parts = (coverage, sharpness)
    outcome = "no" if "no" in parts else "yes" if parts == ("yes", "yes") else "inconclusive"
    if "not_applicable" in parts and outcome != "no":
        outcome = "inconclusive"
    head = {"yes": "P_aa is calibrated", "no": "P_aa is not calibrated"}.get(outcome, "calibration is inconclusive")
    text = variance_words(
        metrics,
        f"{head} at step {iv['step']}: coverage of |a-h| <= 2 sqrt(P_aa) "
        f"{_share_words(iv['coverage'], iv['coverage_low'], iv['coverage_high'])} of {iv['n']} coordinates "
        f"(band [{COVERAGE_BAND[0]:.0%}, {COVERAGE_BAND[1]:.0%}], 95.4 % if calibrated); sharpness "
        f"{interval_words(iv['sharpness'], iv['sharpness_low'], iv['sharpness_high'])} (band "
        f"[{SHARPNESS_BAND[0]:g}, {SHARPNESS_BAND[1]:g}], 0.67 if calibrated)",
    )
    return [
        Verdict(
            "calibration.calibrated",
            outcome,
            float(iv["coverage"]),
            float(iv["coverage_low"]),
            float(iv["coverage_high"]),
            rule,
            text,
        )
    ]


def trust_region_verdicts(metrics: Mapping[str, Any]) -> list[Verdict]:
    """``trust_region.binding``: does the KL bound bind after the burn-in (see :data:`TRUST_REGION_RULE`)?

    None for an optimizer other than arTuRO: the KL bound and its dual are arTuRO's alone, so the
    question is not asked (the section says why)."""
    if not is_arturo(metrics):
        return []
    tr = metrics.get("trust_region") or {}
    if not tr.get("available"):
        return [not_applicable("trust_region.binding", TRUST_REGION_RULE, "no eta recorded per step")]
    if tr.get("fixed_eta") is not None:
        why = f"trust region off (eta fixed at {tr['fixed_eta']:g}): no KL bound is solved for"
        return [not_applicable("trust_region.binding", TRUST_REGION_RULE, why)]
    steps = tr.get("binding_steps_after_burn_in") or {}
    if not steps.get("n"):
        why = f"no step after step {tr.get('burn_in')} recorded K/eps"
        return [not_applicable("trust_region.binding", TRUST_REGION_RULE, why)]
    share = float(steps["share"])
    low, high = wilson_interval(steps["n_binding"], steps["n"])
    outcome = decide_above(share, low, high, MAJORITY)
    head = {
        "yes": "The KL bound binds the steps taken",
        "no": "The KL bound does not bind the step taken in most steps",
    }.get(outcome, "Whether the KL bound binds the steps taken is inconclusive")
    text = (
        f"{head}: K/eps >= {steps['threshold']:g} in {_share_words(share, low, high)} of the {steps['n']} steps "
        f"after step {tr['burn_in']} (yes above {MAJORITY:.0%})"
    )
    snapshots = tr.get("snapshots") or {}
    active = snapshots.get("binding_share")
    if isinstance(active, (int, float)) and math.isfinite(active) and snapshots.get("n"):
        text += (
            f"; the unconstrained step would exceed the bound (K(0)/eps > 1) at {_pct(active)} of "
            f"{snapshots['n']} snapshots"
        )
    return [Verdict("trust_region.binding", outcome, share, low, high, TRUST_REGION_RULE, text)]


def verdict_finding(out: Findings, topic: str, verdict: Verdict, severity: str = "info") -> None:
    """Append the verdict's text as a finding of ``topic`` (not for not-applicable verdicts)."""
    if verdict.outcome != "not_applicable":
        out.add(topic, severity, verdict.text + ".")


def with_finding(
    findings: Callable[[Findings, Mapping[str, Any]], None],
    verdicts: Callable[[Mapping[str, Any]], list[Verdict]],
    topic: str,
) -> Callable[[Findings, Mapping[str, Any]], None]:
    """``findings``, then every verdict of ``verdicts`` as one more finding of ``topic``."""

    def both(out: Findings, metrics: Mapping[str, Any]) -> None:
        findings(out, metrics)
        if metrics.get(topic):
            for verdict in verdicts(metrics):
                verdict_finding(out, topic, verdict)

    both.__doc__ = findings.__doc__
    return both
