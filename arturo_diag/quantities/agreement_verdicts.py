"""The agreement verdicts (issue 11) and the findings that follow them.

Each verdict is decided at the final snapshot from ``metrics["agreement"]["bootstrap"]``
(:mod:`arturo_diag.quantities._agreement_bootstrap`: 95 % percentile bootstrap over coordinates):

- ``agreement.beats_constant``: estimate = the constant's relative error minus a's; yes when the
  whole interval is above the margin (1 % of the constant's error), no when below, else inconclusive.
- ``agreement.scale``: estimate = c* = <a,h>/<a,a>, the factor minimising ||c a - h||; yes when the
  whole interval is within [1/1.5, 1.5], no when it is wholly outside, else inconclusive.
- ``agreement.shape``: estimate = Spearman(a, h); yes when the interval's lower bound exceeds 0.1,
  no when its upper bound is below 0.1, else inconclusive; not applicable when a or h is constant.

Findings never state "beats"/"does not beat" beyond what the verdict says, never list a tie by
construction (a > 0 everywhere: its sign agreement equals any positive constant's), and print the
compared numbers with enough digits to tell them apart.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from arturo_diag.numbers import distinguishing_digits, num
from arturo_diag.quantities._agreement_bootstrap import BEATS_MARGIN, MAX_RESAMPLED
from arturo_diag.quantities._words import _FINDING_WORDS, _get
from arturo_diag.quantities.base import Findings
from arturo_diag.quantities.verdicts import (
    BOOTSTRAP_SAMPLES,
    Verdict,
    decide_above,
    interval_words,
    not_applicable,
)

__all__ = [
    "SCALE_FACTOR",
    "SHAPE_MARGIN",
    "agreement_verdicts",
    "beats_constant_findings",
    "layer_verdicts",
    "lost_metrics",
    "verdict",
]

SCALE_FACTOR = 1.5  # agreement.scale: right within this factor either way
SHAPE_MARGIN = 0.1  # agreement.shape: Spearman's lower bound must exceed this

_INTERVAL = (
    f"95 % percentile bootstrap over the coordinates of the final snapshot ({BOOTSTRAP_SAMPLES} resamples, "
    f"seed 0; above {MAX_RESAMPLED} coordinates, over a fixed random subset of that many)"
)
RULES = {
    "agreement.beats_constant": (
        "estimate = relative error of the constant minus a's, ||c-h||/||h|| - ||a-h||/||h||; "
        f"{_INTERVAL}; yes when the whole interval is above the margin {BEATS_MARGIN:.0%} of the constant's "
        "relative error, no when it is below, else inconclusive"
    ),
    "agreement.scale": (
        f"estimate = c* = <a,h>/<a,a>, minimising ||c a - h||; {_INTERVAL}; yes when the whole interval is "
        f"within [1/{SCALE_FACTOR:g}, {SCALE_FACTOR:g}], no when it is wholly outside, else inconclusive"
    ),
    "agreement.shape": (
        f"estimate = Spearman(a, h); {_INTERVAL}; yes when the lower bound exceeds {SHAPE_MARGIN:g}, no when the "
        f"upper bound is below {SHAPE_MARGIN:g}, else inconclusive; the text adds the error of c* a against the "
        "best constant mean(h) (equivalently their cosines)"
    ),
}


def _pair(x: float, y: float) -> tuple[str, str]:
    d = distinguishing_digits((x, y))
    return num(x, d), num(y, d)


def _beats(entry: Mapping[str, Any], step: Any) -> Verdict:
    vid = "agreement.beats_constant"
    diff, margin, c = entry["difference"], entry["margin"], entry["constant"]
    est, lo, hi = diff["estimate"], diff["ci_low"], diff["ci_high"]
    outcome = decide_above(est, lo, hi, margin)
    if outcome == "not_applicable":
        return not_applicable(vid, RULES[vid], "The relative errors or their interval are undefined (||h|| = 0?).")
    ea, ec = _pair(entry["relative_error"], entry["constant_relative_error"])
    errors = f"relative error {ea} vs {ec} for the constant {c:g} at the final snapshot (step {step})"
    words = f"difference {interval_words(est, lo, hi)}, margin {num(margin, 2)}"
    if outcome == "yes":
        sentence = f"The estimate a beats the constant {c:g}: {errors}; {words}"
    elif outcome == "inconclusive":
        sentence = (
            f"Inconclusive whether the estimate a beats the constant {c:g}: {errors}; {words} (the interval "
            "straddles the margin)"
        )
    elif hi < -margin:
        sentence = f"The estimate a does worse than the constant {c:g}: {errors}; {words}"
    elif lo >= -margin:
        sentence = f"The estimate a and the constant {c:g} are equal within the margin: {errors}; {words}"
    else:
        sentence = f"The estimate a does not beat the constant {c:g} by the margin: {errors}; {words}"
    return Verdict(vid, outcome, est, lo, hi, RULES[vid], sentence + ".")


def _scale(entry: Mapping[str, Any], step: Any) -> Verdict:
    vid = "agreement.scale"
    f = entry.get("factor") or {}
    est, lo, hi = (f.get(k, math.nan) for k in ("estimate", "ci_low", "ci_high"))
    if not all(math.isfinite(v) for v in (est, lo, hi)):
        return not_applicable(vid, RULES[vid], "c* = <a,h>/<a,a> or its interval is undefined (a = 0?).")
    band = (1 / SCALE_FACTOR, SCALE_FACTOR)
    words = f"c* = {interval_words(est, lo, hi)} at the final snapshot (step {step})"
    if lo >= band[0] and hi <= band[1]:
        return Verdict(
            vid, "yes", est, lo, hi, RULES[vid], f"The scale of a is right within {SCALE_FACTOR:g}x: {words}."
        )
    if hi < band[0] or lo > band[1]:
        if est <= 0:
            what = "The estimate a points against h overall (a negative best factor)"
        elif est < 1:
            what = f"The estimate a is ~{num(1 / est, 2)}x too large"
        else:
            what = f"The estimate a is ~{num(est, 2)}x too small"
        return Verdict(vid, "no", est, lo, hi, RULES[vid], f"{what}: {words}.")
    return Verdict(
        vid,
        "inconclusive",
        est,
        lo,
        hi,
        RULES[vid],
        f"Inconclusive whether the scale of a is right within {SCALE_FACTOR:g}x: {words}.",
    )


def _shape(entry: Mapping[str, Any], scale: Mapping[str, Any] | None, step: Any) -> Verdict:
    vid = "agreement.shape"
    s = entry.get("spearman") or {}
    est, lo, hi = (s.get(k, math.nan) for k in ("estimate", "ci_low", "ci_high"))
    if not math.isfinite(est):
        return not_applicable(vid, RULES[vid], "The estimate a or h is constant: no ranks, so no shape to compare.")
    outcome = decide_above(est, lo, hi, SHAPE_MARGIN)
    words = f"Spearman {interval_words(est, lo, hi)} at the final snapshot (step {step})"
    if outcome == "not_applicable":
        return not_applicable(vid, RULES[vid], f"The interval of Spearman is undefined ({words}).")
    extra = ""
    rescaled, best = _get(scale, "rescaled", "relative_error"), _get(scale, "best_constant", "relative_error")
    if isinstance(rescaled, float) and isinstance(best, float) and math.isfinite(rescaled) and math.isfinite(best):
        r, b = _pair(rescaled, best)
        extra = (
            f"; optimally rescaled (c* a), its relative error is {r} vs {b} for the best constant mean(h) = "
            f"{num(scale['best_constant']['value'])} (point estimates, no interval)"
        )
    if outcome == "yes":
        sentence = f"The ranks of a agree with h's beyond a constant: {words}, above {SHAPE_MARGIN:g}"
    elif outcome == "no":
        sentence = f"The ranks of a do not agree with h's beyond {SHAPE_MARGIN:g}: {words}"
    else:
        sentence = f"Inconclusive whether the ranks of a agree with h's beyond {SHAPE_MARGIN:g}: {words}"
    return Verdict(vid, outcome, est, lo, hi, RULES[vid], sentence + extra + ".")


def agreement_verdicts(metrics: Mapping[str, Any]) -> list[Verdict]:
    """``agreement.beats_constant``, ``agreement.scale``, ``agreement.shape`` (the module docstring's rules)."""
    boot = _get(metrics, "agreement", "bootstrap")
    if not boot:
        why = "No usable snapshot with both a and a reference h."
        return [not_applicable(vid, rule, why) for vid, rule in RULES.items()]
    overall, step = boot["overall"], boot["step"]
    scale = _get(metrics, "agreement", "final", "overall", "scale")
    return [_beats(overall, step), _scale(overall, step), _shape(overall, scale, step)]


def verdict(metrics: Mapping[str, Any], vid: str) -> Verdict | None:
    """The agreement verdict ``vid`` of ``metrics`` (None when unknown)."""
    return next((v for v in agreement_verdicts(metrics) if v.id == vid), None)


def layer_verdicts(metrics: Mapping[str, Any]) -> dict[str, Verdict]:
    """Per layer, ``agreement.beats_constant`` over that layer's coordinates (same rule)."""
    boot = _get(metrics, "agreement", "bootstrap") or {}
    return {layer: _beats(entry, boot.get("step")) for layer, entry in (boot.get("layers") or {}).items()}


def lost_metrics(overall: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """``(worse, equal)``: the metrics on which a's point estimate is worse than the constant's, and
    those exactly equal; a tie by construction (sign agreement when a > 0 everywhere and the
    constant is positive) is in neither."""
    lost = list((overall.get("beats_constant_summary") or {}).get("lost_on") or [])
    by_construction = bool(_get(overall, "scale", "a_all_positive")) and (overall.get("constant_value", 0.1) > 0)
    worse, equal = [], []
    for metric in lost:
        if metric == "sign_agreement" and by_construction:
            continue
        mine, theirs = _get(overall, "estimate", metric), _get(overall, "constant", metric)
        (equal if mine == theirs else worse).append(metric)
    return worse, equal


def _metric_pairs(overall: Mapping[str, Any], metrics: list[str]) -> str:
    parts = []
    for m in metrics:
        x, y = _pair(overall["estimate"][m], overall["constant"][m])
        parts.append(f"{_FINDING_WORDS.get(m, m)} {x} vs {y}")
    return "; ".join(parts)


def beats_constant_findings(out: Findings, metrics: Mapping[str, Any]) -> None:
    """The findings on a against the constant and on its scale and shape, each quoting its verdict."""
    final = _get(metrics, "agreement", "final")
    if not final:
        return
    overall = final["overall"]
    v = {x.id: x for x in agreement_verdicts(metrics)}
    beats = v["agreement.beats_constant"]
    worse, equal = lost_metrics(overall)
    if beats.outcome == "yes":
        tail = ""
        if worse:
            tail += (
                f" Its point estimates are worse than the constant's on: {_metric_pairs(overall, worse)} (no interval)."
            )
        if equal:
            tail += f" Equal to the constant's on: {', '.join(_FINDING_WORDS.get(m, m) for m in equal)}."
        if _get(overall, "scale", "a_all_positive"):
            tail += " (a > 0 everywhere, so its sign agreement equals the constant's by construction.)"
        out.add("agreement", "warning" if worse else "info", beats.text + tail)
    elif beats.outcome != "not_applicable":
        out.add("agreement", "warning", beats.text)
    for vid in ("agreement.scale", "agreement.shape"):
        x = v[vid]
        if x.outcome != "not_applicable":
            out.add("agreement", "info" if x.outcome == "yes" else "warning", x.text)
    _two_estimates_finding(out, metrics, overall)


def _two_estimates_finding(out: Findings, metrics: Mapping[str, Any], overall: Mapping[str, Any]) -> None:
    """Reference "both": a and Hutchinson's estimate of the same exact h, side by side on shape."""
    hv = _get(metrics, "agreement", "hutchinson_vs_exact", "final", "overall")
    if not hv or not hv.get("scale") or not overall.get("scale"):
        return
    a_scale, h_scale = overall["scale"]["rescaled"], hv["scale"]["rescaled"]
    parts = [
        ("Spearman", overall["estimate"]["spearman"], hv["spearman"]),
        ("cosine", overall["estimate"]["cosine"], hv["cosine"]),
        ("relative error after rescaling", a_scale["relative_error"], h_scale["relative_error"]),
    ]
    shown = "; ".join(f"{name} {' vs '.join(_pair(x, y))}" for name, x, y in parts)
    out.add(
        "agreement",
        "info",
        f"Shape of the two estimates of the exact h, a vs Hutchinson's (point estimates, no interval): {shown}; "
        f"their scales: c* = {num(a_scale['factor'])} for a, {num(h_scale['factor'])} for Hutchinson's.",
    )


def layer_findings(out: Findings, metrics: Mapping[str, Any]) -> None:
    """Layers where a does not beat the constant by the margin, and where that is inconclusive."""
    per = layer_verdicts(metrics)
    no = [layer for layer, x in per.items() if x.outcome == "no"]
    unsure = [layer for layer, x in per.items() if x.outcome == "inconclusive"]

    def shown(names: list[str]) -> str:
        return ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")

    parts = []
    if no:
        parts.append(
            f"in {len(no)} of {len(per)} layers the estimate does not beat the constant by the margin: {shown(no)}"
        )
    if unsure:
        parts.append(f"in {len(unsure)} of {len(per)} it is inconclusive: {shown(unsure)}")
    if parts and len(per) > 1:
        out.add(
            "agreement",
            "warning",
            "On relative error at the final snapshot (per layer, the rule of agreement.beats_constant), "
            + "; ".join(parts)
            + ".",
        )
