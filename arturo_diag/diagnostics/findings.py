"""Findings: the metrics of a run in plain English, each with its numbers.

``findings(metrics)`` turns the dict of :func:`~arturo_diag.diagnostics.analysis.analyze_record`
into a list of ``{"text", "severity", "topic"}``; severity is ``"info"`` or ``"warning"``, topic one
of ``divergence``, ``reference``, ``agreement``, ``movement``, ``calibration``, ``lag``, ``trust_region``, ``health``,
``training``. Rules the wording follows (ARTURO.md, "Diagnostic quantities"):

- an agreement number is always given next to what the constant vector 0.1 scores, and an
  estimate that a constant matches or beats is never described as agreeing well;
- where the lag curve is flat within snapshot noise the text says "No identifiable lag";
- the eta-floor, 5/3 growth and overshoot quirks of the published bisection are named with their
  steps and sizes; a fixed-eta run (trust region off) is described as fixed, never in those words;
- a diverged run's first finding says where it went NaN/inf (step, quantity, layer).

Pure: the same metrics give the same list.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from arturo_diag.numbers import sig

__all__ = ["findings"]

_METRIC_WORDS = {
    "relative_error": "relative error",
    "cosine": "cosine",
    "spearman": "Spearman correlation",
    "sign_agreement": "sign agreement",
    "log_ratio_abs_median": "median |log10(|a|/|h|)|",
}


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _num(x: Any) -> str:
    return sig(x, 3, undefined="undefined")


def _pct(x: Any) -> str:
    if not _is_number(x):
        return "an undefined share"
    if 0 < x < 0.01:
        return "<1%"
    if 0.99 < x < 1:
        return ">99%"
    return f"{100 * x:.0f}%"


def _count(n: Any, noun: str) -> str:
    """``1 step``, ``3 steps``, ``2.5 coordinates``."""
    if isinstance(n, float) and n.is_integer():
        n = int(n)
    return f"{n} {noun}" if n == 1 else f"{n if isinstance(n, int) else _num(n)} {noun}s"


def _get(mapping: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(mapping, Mapping):
            return None
        mapping = mapping.get(key)
    return mapping


class _Findings:
    def __init__(self) -> None:
        self.items: list[dict[str, str]] = []

    def add(self, topic: str, severity: str, text: str) -> None:
        self.items.append({"text": text, "severity": severity, "topic": topic})


def _divergence(out: _Findings, metrics: Mapping[str, Any]) -> None:
    info = _get(metrics, "run", "divergence")
    if not isinstance(info, Mapping):
        return
    message = info.get("message") or f"non-finite {info.get('quantity')} at step {info.get('step')}"
    snapshots = _get(metrics, "run", "snapshot_steps") or []
    covered = f"the findings below cover steps 1-{info.get('step')}" + (
        f" (snapshots up to step {max(snapshots)})" if snapshots else " (no snapshot was taken before it)"
    )
    out.add("divergence", "warning", f"The run diverged: {message}. Training stopped there; {covered}.")


def _unusable(out: _Findings, metrics: Mapping[str, Any]) -> None:
    entries = _get(metrics, "run", "unusable_snapshots") or []
    if not entries:
        return
    steps = ", ".join(str(entry["step"]) for entry in entries[:8]) + (" ..." if len(entries) > 8 else "")
    reasons = list(dict.fromkeys(entry["reason"] for entry in entries))
    reason = reasons[0] + (f" (and {len(reasons) - 1} other reasons)" if len(reasons) > 1 else "")
    out.add(
        "reference",
        "warning",
        f"{_count(len(entries), 'snapshot')} (step{'s' if len(entries) > 1 else ''} {steps}) "
        f"{'are' if len(entries) > 1 else 'is'} left out of agreement, movement, calibration and lag: "
        f"{reason}.",
    )


def _reference(out: _Findings, metrics: Mapping[str, Any]) -> None:
    run = metrics.get("run") or {}
    reference = run.get("reference")
    method = run.get("exact_method")
    method_words = f" ({method})" if isinstance(method, str) and method else ""
    noise_final = _get(metrics, "agreement", "reference_noise", "final")
    samples = run.get("hutchinson_samples")
    samples_words = f" with {samples} samples" if samples is not None else ""
    if reference in (None, "none"):
        out.add(
            "reference",
            "warning",
            "No snapshot carries a reference diagonal Hessian h: agreement, "
            "movement, calibration and lag could not be computed.",
        )
    elif reference == "hutchinson":
        text = (
            f"h is a Hutchinson estimate{samples_words}, not the exact diagonal Hessian, so it carries noise of its own"
        )
        relative_se = _get(noise_final, "relative_se")
        severity = "info"
        if _is_number(relative_se):
            text += (
                f": its standard error is {_num(relative_se)} of ||h|| at the final snapshot (median "
                f"SE/|h| {_num(_get(noise_final, 'median_se_over_abs_h'))}); agreement of a with h "
                "cannot be resolved below that level, and calibration counts h's noise as a's error"
            )
            severity = "warning" if relative_se >= 0.25 else "info"
        out.add("reference", severity, text + ".")
    elif reference == "both":
        final = _get(metrics, "agreement", "hutchinson_vs_exact", "final", "overall")
        estimate = _get(metrics, "agreement", "final", "overall", "estimate")
        out.add(
            "reference",
            "info",
            f"h is the exact diagonal Hessian{method_words} on a fixed probe batch. Hutchinson's "
            f"estimate{samples_words} has relative error {_num(_get(final, 'relative_error'))} against it "
            f"at the final snapshot (Spearman {_num(_get(final, 'spearman'))}), vs "
            f"{_num(_get(estimate, 'relative_error'))} for arTuRO's a.",
        )
    elif reference == "exact":
        out.add(
            "reference",
            "info",
            f"h is the exact diagonal Hessian{method_words} of the training loss on a fixed probe batch.",
        )
    else:
        out.add(
            "reference",
            "info",
            f"The reference h differs between snapshots ({reference}); each "
            "snapshot is compared with the exact h where it has one, else with Hutchinson's.",
        )


def _agreement(out: _Findings, metrics: Mapping[str, Any]) -> None:
    block = metrics.get("agreement") or {}
    final = block.get("final")
    if not final:
        return
    step = final.get("step")
    overall = final["overall"]
    estimate, constant = overall["estimate"], overall["constant"]
    value = overall.get("constant_value", 0.1)
    verdict = overall["beats_constant"]
    lost = overall["beats_constant_summary"]["lost_on"]
    versus = (
        f"relative error {_num(estimate['relative_error'])} vs {_num(constant['relative_error'])} "
        f"for the constant {value:g}"
    )
    if verdict.get("relative_error") is not True:
        out.add(
            "agreement",
            "warning",
            f"The curvature estimate does not beat a constant vector: {versus} at the final snapshot "
            f"(step {step}); Spearman {_num(estimate['spearman'])}, cosine {_num(estimate['cosine'])} "
            f"vs {_num(constant['cosine'])}.",
        )
    elif lost:
        details = "; ".join(f"{_METRIC_WORDS.get(m, m)} {_num(estimate[m])} vs {_num(constant[m])}" for m in lost)
        out.add(
            "agreement",
            "warning",
            f"The curvature estimate beats the constant {value:g} on relative error "
            f"({_num(estimate['relative_error'])} vs {_num(constant['relative_error'])}) at the final "
            f"snapshot (step {step}), but not on: {details}.",
        )
    else:
        out.add(
            "agreement",
            "info",
            f"At the final snapshot (step {step}) the curvature estimate beats the constant {value:g} on "
            f"every agreement metric: {versus}, cosine {_num(estimate['cosine'])} vs "
            f"{_num(constant['cosine'])}, Spearman {_num(estimate['spearman'])} (the constant has no "
            f"ranks), sign agreement {_pct(estimate['sign_agreement'])} vs "
            f"{_pct(constant['sign_agreement'])}.",
        )

    previous = overall.get("previous_h")
    if previous:
        out.add(
            "agreement",
            "info",
            f"For scale, the previous snapshot's h scores relative error {_num(previous['relative_error'])} "
            f"and Spearman {_num(previous['spearman'])} against the final h (the estimate: "
            f"{_num(estimate['relative_error'])} and {_num(estimate['spearman'])}).",
        )

    layers = final.get("layers") or {}
    losing = [layer for layer, entry in layers.items() if _get(entry, "beats_constant", "relative_error") is not True]
    if layers and losing and len(losing) < len(layers):
        shown = ", ".join(losing[:8]) + (f" and {len(losing) - 8} more" if len(losing) > 8 else "")
        out.add(
            "agreement",
            "warning",
            f"In {len(losing)} of {len(layers)} layers the estimate does not beat the constant on "
            f"relative error at the final snapshot: {shown}.",
        )

    entries = block.get("snapshots") or []
    if len(entries) > 1:
        wins = sum(1 for entry in entries if _get(entry, "overall", "beats_constant", "relative_error") is True)
        out.add(
            "agreement",
            "info",
            f"The estimate's relative error was below the constant's at {wins} of {len(entries)} snapshots.",
        )


def _movement(out: _Findings, metrics: Mapping[str, Any]) -> None:
    final = _get(metrics, "movement", "final")
    if not final:
        return
    overall = final["overall"]
    share, median = overall["never_left_share"], overall["median_relative_move"]
    prior = overall.get("prior", 0.1)
    a_range = f"[{_num(overall['a_q01'])}, {_num(overall['a_q99'])}]"
    span = f"a's 1-99% range is {a_range}"
    scale = overall.get("scale_relative_move")
    spread = overall.get("log_spread_ratio")
    if _is_number(share) and share >= 0.1:
        out.add(
            "movement",
            "warning" if share >= 0.5 else "info",
            f"{_pct(share)} of the coordinates of a never left the prior {prior:g} by step {final['step']} "
            f"(moved by less than 1e-3 |h|); the median move |a-{prior:g}|/|h| is {_num(median)} and {span}.",
        )
    elif _is_number(spread) and spread < 0.1:
        out.add(
            "movement",
            "warning",
            f"a stayed near its prior {prior:g}: at step {final['step']} its 1-99% range spans "
            f"{_num(overall['spread_decades_a'])} decades ({a_range}) while |h| "
            f"spans {_num(overall['spread_decades_h'])} decades; single coordinates moved (median |a-{prior:g}|/|h| "
            f"{_num(median)}), but a does not follow h's range.",
        )
    elif _is_number(scale) and scale < 0.1:
        out.add(
            "movement",
            "warning",
            f"a barely moved on the scale of h: the median |a-{prior:g}| is {_num(scale)} times the median |h| "
            f"at step {final['step']}; {span} while h's is [{_num(overall.get('h_q01'))}, "
            f"{_num(overall.get('h_q99'))}].",
        )
    else:
        out.add(
            "movement",
            "info",
            f"a has left its prior {prior:g}: the median move |a-{prior:g}|/|h| is {_num(median)} at step "
            f"{final['step']} ({_pct(share)} of coordinates still at the prior); {span}.",
        )


def _calibration(out: _Findings, metrics: Mapping[str, Any]) -> None:
    final = _get(metrics, "calibration", "final")
    if not final:
        return
    overall = final["overall"]
    coverage, sharpness, label = overall["coverage"], overall["sharpness"], overall["interpretation"]
    where = f"at the final snapshot (step {final['step']})"
    expected = "95% and 0.67 if calibrated"
    if label == "calibrated":
        out.add(
            "calibration",
            "info",
            f"The filter's uncertainty P_aa is calibrated against h {where}: coverage {_pct(coverage)} "
            f"of |a-h| <= 2 sqrt(P_aa) and sharpness (median |a-h|/sqrt(P_aa)) {_num(sharpness)} ({expected}).",
        )
    elif label == "vacuous":
        out.add(
            "calibration",
            "warning",
            f"The filter's claimed uncertainty is vacuous {where}: the median |a-h|/sqrt(P_aa) is "
            f"{_num(sharpness)} (0.67 if calibrated), so its coverage of {_pct(coverage)} says nothing.",
        )
    elif label == "overconfident":
        out.add(
            "calibration",
            "warning",
            f"The filter is overconfident {where}: only {_pct(coverage)} of coordinates have "
            f"|a-h| <= 2 sqrt(P_aa) and the median |a-h|/sqrt(P_aa) is {_num(sharpness)} ({expected}).",
        )
    elif label == "miscalibrated":
        out.add(
            "calibration",
            "warning",
            f"The filter's uncertainty is miscalibrated {where}: coverage {_pct(coverage)}, sharpness "
            f"{_num(sharpness)} ({expected}).",
        )
    else:
        out.add("calibration", "info", f"Calibration is undefined {where} (no coordinate with P_aa > 0).")
    nonpositive = overall.get("n_nonpositive_variance") or 0
    if nonpositive:
        out.add(
            "calibration",
            "warning",
            f"{_count(nonpositive, 'coordinate')} had P_aa <= 0 {where}: the filter's variance of a is not "
            "positive there.",
        )


def _lag(out: _Findings, metrics: Mapping[str, Any]) -> None:
    lag = metrics.get("lag")
    if not lag:
        return
    if lag.get("identifiable"):
        k = lag["best_k"]
        if k == 0:
            out.add("lag", "info", f"a tracks h without a lag: {lag['reason']}.")
        else:
            out.add(
                "lag",
                "info",
                f"a lags h by about {k} snapshot{'s' if k != 1 else ''} ({_num(lag['best_lag_steps'])} "
                f"steps): {lag['reason']}.",
            )
    elif lag.get("max_lag", 0) >= 1:
        reason = lag.get("reason", "")
        text = reason[0].upper() + reason[1:] if reason else "No identifiable lag"
        out.add("lag", "info", text + ".")
    else:
        out.add("lag", "info", f"Lag {lag.get('reason', 'not assessed')}.")


def _trust_region(out: _Findings, metrics: Mapping[str, Any]) -> None:
    tr = metrics.get("trust_region") or {}
    if not tr.get("available"):
        out.add("trust_region", "info", "No trust-region data (eta) was recorded per step.")
        return
    if _get(metrics, "run", "optimizer", "lr") == 0:
        out.add(
            "trust_region",
            "warning",
            "The KL bound eps (lr) is 0: the trust region allows no step of the mean. "
            "The exact dual takes none (eta = inf); the published bisection stops at the top of its bracket "
            "(eta near 1e4) and takes a small one.",
        )
    if tr.get("fixed_eta") is not None:
        _fixed_eta(out, metrics, tr)
        return
    late = tr["regime_share_after_burn_in"]
    burn_in = tr["burn_in"]
    inactive = tr["inactive_share_after_burn_in"]
    if _is_number(inactive) and inactive >= 0.5:
        out.add(
            "trust_region",
            "warning",
            f"The trust-region bisection was inactive in {_pct(inactive)} of steps after step {burn_in}: "
            f"eta grew by 5/3 per step without evaluating K ({_pct(late['growth_5_3'])}) or stayed frozen "
            f"at the floor ({_pct(late['frozen'])}) regardless of the bound.",
        )
    else:
        text = (
            f"The trust-region bisection was active in {_pct(late['bisection'])} of steps after step "
            f"{burn_in} (5/3 growth {_pct(late['growth_5_3'])}, frozen at the floor {_pct(late['frozen'])}"
        )
        if late.get("fixed"):
            text += f", eta fixed {_pct(late['fixed'])}"
        out.add("trust_region", "warning" if _is_number(inactive) and inactive >= 0.1 else "info", text + ").")

    growth = _get(tr, "growth_runs", "longest")
    if growth and growth["length"] >= 3:
        out.add(
            "trust_region",
            "warning" if growth["length"] >= 10 else "info",
            f"eta grew by 5/3 per step without evaluating K for {growth['length']} consecutive steps "
            f"(steps {growth['start_step']}-{growth['end_step']}, eta {_num(growth['eta_start'])} to "
            f"{_num(growth['eta_end'])}), whatever the bound.",
        )
    frozen = _get(tr, "frozen_runs", "longest")
    if frozen and frozen["length"] >= 3:
        start, end = frozen["kl_ratio_start"], frozen["kl_ratio_end"]
        if _is_number(start) and _is_number(end) and end < start:
            kl_words = f"while K/eps fell to {_num(frozen['kl_ratio_min'])}"
            if _is_number(frozen.get("kl_ratio_max")) and frozen["kl_ratio_max"] > 1.1:
                kl_words += f" (and rose to {_num(frozen['kl_ratio_max'])}: the frozen eta neither tracked the bound down nor up)"
        else:
            kl_words = f"while K/eps ranged from {_num(frozen['kl_ratio_min'])} to {_num(frozen['kl_ratio_max'])}"
        total = tr["frozen_runs"]["total_steps"]
        more = f" ({total} frozen steps in all)" if total > frozen["length"] else ""
        out.add(
            "trust_region",
            "warning",
            f"eta was frozen at the floor {_num(frozen['eta_median'])} for {frozen['length']} steps (steps "
            f"{frozen['start_step']}-{frozen['end_step']}) {kl_words}{more}.",
        )

    for drop in tr.get("bound_drops") or []:
        factor = f" (x{_num(drop['factor'])})" if _is_number(drop.get("factor")) else ""
        peak = drop["peak_kl_ratio"]
        if _is_number(peak) and peak > 1.1:
            if drop["recovered"]:
                after = f"took {drop['steps_to_recover']} steps to return below 1.1"
            else:
                after = "had not returned to 1.1 or below by the end of the run"
            out.add(
                "trust_region",
                "warning",
                f"After the KL bound dropped at step {drop['step']}{factor}, K/eps overshot to {_num(peak)} "
                f"and {after}.",
            )
        else:
            out.add(
                "trust_region",
                "info",
                f"After the KL bound dropped at step {drop['step']}{factor}, K/eps stayed at or below 1.1.",
            )

    overshoot = tr["overshoot_share"]
    if _is_number(overshoot) and overshoot > 0:
        out.add(
            "trust_region",
            "warning" if overshoot >= 0.05 else "info",
            f"K/eps exceeded 1.1 in {_pct(overshoot)} of steps ({_pct(tr['overshoot_share_after_burn_in'])} "
            f"after step {burn_in}); it was below 0.9 in {_pct(tr['undershoot_share'])}.",
        )

    snapshots = tr.get("snapshots") or {}
    if snapshots.get("n") and _is_number(snapshots.get("binding_share")):
        text = (
            f"The trust region was binding (K(0)/eps > 1) at {_pct(snapshots['binding_share'])} of "
            f"{_count(snapshots['n'], 'snapshot')}"
        )
        ratio = snapshots.get("eta_over_eta_star_median")
        if _is_number(ratio):
            text += f"; where it was, the rule's eta was a median {_num(ratio)} times the exact root eta*"
        out.add("trust_region", "info", text + ".")


def _fixed_eta(out: _Findings, metrics: Mapping[str, Any], tr: Mapping[str, Any]) -> None:
    """A fixed-eta run (trust region off): said as such, never in the bisection's regimes."""
    option = "--fixed-eta" if _get(metrics, "run", "kind") == "compare" else "fixed_eta"
    kl = _get(metrics, "health", "kl_ratio") or {}
    text = (
        f"eta fixed at {tr['fixed_eta']:g} by {option}: no trust region (the dual is never solved and the "
        "KL bound does not limit the step)"
    )
    if _is_number(kl.get("q50")):
        text += f"; the steps' K/eps had median {_num(kl['q50'])} (max {_num(kl.get('max'))})"
    out.add("trust_region", "info", text + ".")
    snapshots = tr.get("snapshots") or {}
    if snapshots.get("n") and _is_number(snapshots.get("binding_share")):
        text = (
            f"With the trust region on, the KL bound would have been active (K(0)/eps > 1) at "
            f"{_pct(snapshots['binding_share'])} of {_count(snapshots['n'], 'snapshot')}"
        )
        ratio = snapshots.get("eta_over_eta_star_median")
        if _is_number(ratio):
            text += f"; the fixed eta was a median {_num(ratio)} times the exact root eta* there"
        out.add("trust_region", "info", text + ".")


def _health(out: _Findings, metrics: Mapping[str, Any]) -> None:
    health = metrics.get("health") or {}
    eta = health.get("eta") or {}
    iterations = health.get("iterations") or {}
    fixed = _get(metrics, "trust_region", "fixed_eta")
    if eta.get("n") and fixed is not None:
        out.add("health", "info", f"eta: {fixed:g} at every step (fixed; no dual solve).")
    elif eta.get("n"):
        out.add(
            "health",
            "info",
            f"eta: median {_num(eta['median'])} (range {_num(eta['min'])} to {_num(eta['max'])}, last "
            f"{_num(eta['last'])}); the dual solve took {_num(iterations.get('mean'))} K evaluations per "
            f"step on average.",
        )

    events = health.get("nonpositive") or {}
    recorded = False
    for key, words in (
        ("precision_nonpos", "the new precision pi' <= 0"),
        ("denominator_nonpos", "the denominator a + c + eta*pi <= 0"),
    ):
        entry = events.get(key) or {}
        recorded = recorded or bool(entry.get("recorded"))
        if entry.get("steps"):
            out.add(
                "health",
                "warning",
                f"{words[0].upper() + words[1:]} at {_count(entry['steps'], 'step')} (first at step "
                f"{entry['first_step']}, up to {_count(entry['max_count'], 'coordinate')} in one step): a "
                "negative curvature estimate "
                "can make it so, and the published rule does not guard against it.",
            )
    if recorded and not any((events.get(k) or {}).get("steps") for k in ("precision_nonpos", "denominator_nonpos")):
        out.add("health", "info", "No step had a non-positive precision pi' or denominator a + c + eta*pi.")
    guard = events.get("guard_acted") or {}
    if guard.get("steps"):
        out.add("health", "info", f"The positivity guard acted at {_count(guard['steps'], 'step')}.")

    final = health.get("final") or {}
    collapse = final.get("variance_collapse")
    if collapse:
        share = collapse["share_collapsed"]
        fraction = collapse.get("fraction", 0.01)
        where = f"by the final snapshot (step {final['step']})"
        if _is_number(share) and share > 0:
            out.add(
                "health",
                "warning" if share >= 0.01 else "info",
                f"Variance collapse: the variance 1/pi of {_pct(share)} of coordinates fell below "
                f"{_pct(fraction)} of var_init ({_num(collapse['threshold'])}) {where}.",
            )
        elif _is_number(share):
            out.add(
                "health",
                "info",
                f"No variance collapse: no coordinate's variance 1/pi is below {_pct(fraction)} of var_init "
                f"{where} (median variance {_num(collapse.get('variance_q50'))}).",
            )
        if collapse.get("n_nonpositive"):
            out.add(
                "health",
                "warning",
                f"{_count(collapse['n_nonpositive'], 'coordinate')} had a non-positive precision pi {where}.",
            )
    negative_a, negative_h = final.get("negative_a_share"), final.get("negative_h_share")
    if _is_number(negative_a):
        text = f"At the final snapshot {_pct(negative_a)} of the curvature estimate a is negative"
        if _is_number(negative_h):
            text += f" ({_pct(negative_h)} of h)"
        out.add("health", "info", text + ".")


def _training(out: _Findings, metrics: Mapping[str, Any]) -> None:
    final = _get(metrics, "training", "final")
    if not final:
        return
    parts = []
    if _is_number(final.get("test_accuracy")):
        parts.append(f"test accuracy {100 * final['test_accuracy']:.2f}%")
    if _is_number(final.get("test_loss")):
        parts.append(f"test loss {_num(final['test_loss'])}")
    if _is_number(final.get("train_accuracy")):
        parts.append(f"train accuracy {100 * final['train_accuracy']:.2f}%")
    if _is_number(final.get("train_loss")):
        parts.append(f"train loss {_num(final['train_loss'])}")
    if parts:
        when = f" (epoch {final['epoch']}, step {final['step']})" if final.get("epoch") is not None else ""
        label = "Last evaluation before the divergence" if _get(metrics, "run", "divergence") else "Final evaluation"
        out.add("training", "info", f"{label}{when}: " + ", ".join(parts) + ".")


def findings(metrics: Mapping[str, Any]) -> list[dict[str, str]]:
    """Plain-English findings with numbers, from the metrics dict of ``analyze_record``.

    Returns a list of ``{"text": str, "severity": "info" | "warning", "topic": str}`` in a fixed
    topic order (divergence, reference, agreement, movement, calibration, lag, trust_region, health,
    training): a diverged run's first finding says where it went NaN/inf.
    Missing parts of ``metrics`` are skipped, not errors.
    """
    out = _Findings()
    for part in (
        _divergence,
        _reference,
        _unusable,
        _agreement,
        _movement,
        _calibration,
        _lag,
        _trust_region,
        _health,
        _training,
    ):
        part(out, metrics)
    return out.items
