"""Step gauges per snapshot and layer: the trust region's radius, the precision drift, the distance moved.

Uses the pure functions of :mod:`arturo_diag.diagnostics.gauges` on what every snapshot stores:

- ``radius``: the parameter-space radius of the KL trust region r_i = sqrt(2 eps / pi_i)
  (:func:`~arturo_diag.diagnostics.gauges.trust_region_radius`; eps = ``kl_bound`` of
  ``snapshots.csv`` at that snapshot), ``{"overall": X, "layers": {layer: X}}`` with X = ``{n,
  n_nonpositive, radius_median, radius_min, radius_max, radius_q05 .. radius_q95}``;
- ``drift``: the variance 1/pi against ``var_init``, ratio_i = (1/pi_i) / var_init
  (:func:`~arturo_diag.diagnostics.gauges.precision_drift`, flagged above ``drift_ratio``, beside
  the collapse below ``collapse_fraction``), X = ``{n, n_nonpositive, ratio_median, ratio_q01,
  ratio_q99, ratio_max, share_drifted, share_collapsed, drifted, collapsed, ...}``;
- ``distance``: ||theta - theta_0|| of the weights (field ``weight``) from the weights when the
  Monitor started (``initial_weights.npz``: step 0, initialisation;
  :func:`~arturo_diag.diagnostics.gauges.distance_from_init`), or, in a record without that file,
  from the FIRST snapshot's weights (then not the distance from initialisation); X = ``{n,
  distance, relative, rms, max_abs}``; ``reference_step`` is 0 or that first snapshot's step;
- ``alpha``: Cockpit's alpha of the snapshot's step, from the ``alpha`` instrument's
  ``snapshots.csv`` columns (:mod:`arturo_diag.curvature.alpha`): ``{alpha, f0, f1, df0, df1}``, or
  None where the snapshot has none (the instrument not run, a snapshot taken by hand). -1: the step
  made no progress along its direction, 0: it landed on the 1-D minimum, 1: on the mirror point,
  > 0 overshot the minimum.

``metrics["gauges"]`` = ``{drift_ratio, collapse_fraction, var_init, distance_reference,
first_snapshot_step, drift_verdict, alpha, snapshots: [{step, kl_bound, radius, drift, distance,
reference_step, alpha, skipped: {part: reason}}], final}``; the top-level ``alpha`` summarises the
snapshots' alpha, ``{n, median, q10, q90, share_overshoot}`` (over the snapshots with a finite or
infinite alpha; ``share_overshoot`` the share with alpha > 0), or None when no snapshot has one; a
part a snapshot cannot give (no precision, no weights, no kl_bound, no var_init) is None with its
reason in ``skipped`` (alpha excepted: a run without the instrument is not a skipped part).
``drift_verdict`` = ``{step, n, n_resampled, estimate, ci_low, ci_high, threshold}`` (or None): the median over
coordinates of (1/pi) / var_init at the final snapshot with its percentile-bootstrap interval over
the coordinates (200 resamples, seed 0; above 20 000 coordinates over a fixed random subset).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from arturo_diag.diagnostics.gauges import distance_from_init, precision_drift, trust_region_radius
from arturo_diag.quantities._blocks import _not_computed
from arturo_diag.quantities._estimator import is_arturo, not_arturo_reason
from arturo_diag.quantities._words import _get, _is_number, _num, _pct
from arturo_diag.quantities.base import Context, Findings, Quantity, SnapshotView, series, snapshot_value
from arturo_diag.quantities.verdicts import (
    MAX_RESAMPLED,
    Verdict,
    bootstrap_ci,
    decide_above,
    fixed_subset,
    interval_words,
    not_applicable,
)
from arturo_diag.report.document import Block, Heading, Paragraph, Table, text
from arturo_diag.report.figures.gauges import FIGURE
from arturo_diag.report.format import num, pct

__all__ = ["DRIFT_RATIO", "DRIFT_RULE", "MAX_RESAMPLED", "QUANTITY", "drift_verdicts"]

DRIFT_RATIO = 10.0  # 1/pi more than 10x var_init is drift (precision_drift's flag_ratio)
WEIGHT_FIELD = "weight"  # the Monitor's snapshot field of the weights
#: an entry's ``alpha`` keys -> the alpha instrument's snapshots.csv columns
ALPHA_COLUMNS = {"alpha": "alpha", "f0": "alpha_f0", "f1": "alpha_f1", "df0": "alpha_df0", "df1": "alpha_df1"}
DISTANCE_REFERENCE = (
    "the weights when the Monitor started (initial_weights.npz, step 0): the distance from initialisation"
)
DISTANCE_FALLBACK = (
    "the first snapshot's weights: the record holds no step-0 weights (initial_weights.npz, written since "
    "issue 12), so this is the distance from the first snapshot, not from initialisation"
)
DRIFT_RULE = (
    "estimate: median over coordinates (pi > 0) of (1/pi) / var_init at the final snapshot; 95 % percentile "
    "bootstrap over the coordinates (200 resamples, seed 0; above 20 000 coordinates over a fixed random "
    f"subset); yes (drifted) if the interval lies above {DRIFT_RATIO:g}, no if below, else inconclusive; "
    "not applicable without var_init or without the precision at the final snapshot"
)


def _split(result: Mapping[str, Any]) -> dict[str, Any]:
    return {"overall": result["overall"], "layers": {k: v for k, v in result.items() if k != "overall"}}


def _ratios(precision: Mapping[str, np.ndarray], var_init: float) -> np.ndarray:
    pi = np.concatenate([np.asarray(v, dtype=np.float64).reshape(-1) for v in precision.values()])
    pi = pi[np.isfinite(pi) & (pi > 0)]
    return 1.0 / (pi * var_init)


class _Observer:
    """Every snapshot: radius, drift and distance from initialisation (or the first snapshot), each or its reason."""

    def __init__(self, context: Context) -> None:
        self.var_init = context.var_init
        self.fraction = context.options.collapse_fraction
        self.table = context.record.snapshots
        initial = context.record.initial_weights()
        self.first: dict[str, np.ndarray] | None = (
            {n: np.asarray(w, dtype=np.float64).reshape(-1) for n, w in initial.items()} if initial else None
        )
        self.first_step: int | None = 0 if initial else None
        self.final_ratios: np.ndarray | None = None
        self.entries: list[dict[str, Any]] = []

    def snapshot(self, view: SnapshotView) -> None:
        fields = view.snapshot
        precision = {n: f["precision"] for n, f in fields.items() if "precision" in f}
        weights = {n: f[WEIGHT_FIELD] for n, f in fields.items() if WEIGHT_FIELD in f}
        kl_bound = snapshot_value(self.table, view.step, "kl_bound")
        entry: dict[str, Any] = {"step": view.step, "kl_bound": kl_bound, "radius": None, "drift": None,
                                 "distance": None, "reference_step": self.first_step, "alpha": self._alpha(view.step),
                                 "skipped": {}}  # fmt: skip
        skipped = entry["skipped"]
        if not precision:
            skipped["radius"] = skipped["drift"] = "the snapshot holds no precision pi"
        else:
            if _is_number(kl_bound) and kl_bound > 0:
                entry["radius"] = _split(trust_region_radius(precision, float(kl_bound)))
            else:
                skipped["radius"] = f"snapshots.csv has no positive kl_bound at step {view.step} (got {kl_bound})"
            if self.var_init is not None and self.var_init > 0:
                entry["drift"] = _split(
                    precision_drift(precision, self.var_init, flag_ratio=DRIFT_RATIO, collapse_fraction=self.fraction)
                )
            else:
                skipped["drift"] = "var_init is not known for this run"
        self.final_ratios = _ratios(precision, self.var_init) if entry["drift"] else None
        self._distance(entry, weights)
        self.entries.append(entry)

    def _alpha(self, step: int) -> dict[str, Any] | None:
        """The alpha instrument's columns at ``step`` (None without its ``alpha``)."""
        values = {key: snapshot_value(self.table, step, column) for key, column in ALPHA_COLUMNS.items()}
        return values if isinstance(values["alpha"], (int, float)) else None

    def _distance(self, entry: dict[str, Any], weights: Mapping[str, Any]) -> None:
        if not weights:
            entry["skipped"]["distance"] = "the snapshot holds no weights"
            return
        now = {n: np.asarray(w, dtype=np.float64).reshape(-1) for n, w in weights.items()}
        if self.first is None:
            self.first, self.first_step = now, entry["step"]
            entry["reference_step"] = entry["step"]
        common = [n for n in self.first if n in now and now[n].size == self.first[n].size]
        if not common:
            entry["skipped"]["distance"] = "no parameter's weights match the reference weights'"
            return
        result = distance_from_init({n: now[n] for n in common}, {n: self.first[n] for n in common})
        entry["distance"] = _split(result)


def _drift_interval(ratios: np.ndarray | None, step: int | None) -> dict[str, Any] | None:
    if ratios is None or not ratios.size:
        return None
    n = int(ratios.size)
    keep = fixed_subset(n)
    sub = ratios if keep is None else ratios[keep]
    low, high = bootstrap_ci(lambda idx: float(np.median(sub[idx])), int(sub.size))
    return {"step": step, "n": n, "n_resampled": int(sub.size), "estimate": float(np.median(ratios)),
            "ci_low": low, "ci_high": high, "threshold": DRIFT_RATIO}  # fmt: skip


def _alpha_summary(entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Median, 10 %/90 % quantiles (numpy's default, linear) and the share > 0 (overshoot) of the
    snapshots' alpha."""
    values = np.array([e["alpha"]["alpha"] for e in entries if e.get("alpha")], dtype=np.float64)
    if not values.size:
        return None
    q10, q90 = (float(v) for v in np.quantile(values, (0.1, 0.9)))
    return {"n": int(values.size), "median": float(np.median(values)), "q10": q10, "q90": q90,
            "share_overshoot": float(np.mean(values > 0))}  # fmt: skip


def compute(context: Context) -> dict[str, Any]:
    observer = context.observers["gauges"]
    entries = observer.entries
    last_step = entries[-1]["step"] if entries else None
    return {
        "drift_ratio": DRIFT_RATIO,
        "collapse_fraction": float(context.options.collapse_fraction),
        "var_init": context.var_init,
        "distance_reference": DISTANCE_REFERENCE if observer.first_step == 0 else DISTANCE_FALLBACK,
        "first_snapshot_step": observer.first_step,
        "drift_verdict": _drift_interval(observer.final_ratios, last_step),
        "alpha": _alpha_summary(entries),
        **series(entries),
    }


def drift_verdicts(metrics: Mapping[str, Any]) -> list[Verdict]:
    """``gauges.precision_drift``: did the variance 1/pi drift far above var_init (:data:`DRIFT_RULE`)."""
    gauges = metrics.get("gauges") or {}
    found = gauges.get("drift_verdict")
    vid = "gauges.precision_drift"
    if not is_arturo(metrics):  # pi is arTuRO's posterior precision; another optimizer has none
        return [
            not_applicable(vid, DRIFT_RULE, not_arturo_reason(metrics, "a precision pi whose 1/pi can drift") + ".")
        ]
    if not gauges.get("snapshots"):
        return [not_applicable(vid, DRIFT_RULE, "The record has no snapshots, so the precision drift is not assessed.")]
    if not found:
        why = (gauges.get("final") or {}).get("skipped", {}).get("drift", "no precision at the final snapshot")
        return [not_applicable(vid, DRIFT_RULE, f"Precision drift not assessed: {why}.")]
    estimate, low, high = found["estimate"], found["ci_low"], found["ci_high"]
    outcome = decide_above(estimate, low, high, DRIFT_RATIO)
    words = (
        f"median (1/pi) / var_init = {interval_words(estimate, low, high)} at the final snapshot (step {found['step']})"
    )
    if outcome == "yes":
        says = f"The variance 1/pi drifted far above var_init: {words}, above the threshold {DRIFT_RATIO:g}x."
    elif outcome == "no":
        says = f"The variance 1/pi did not drift far above var_init: {words}, below the threshold {DRIFT_RATIO:g}x."
    elif outcome == "inconclusive":
        says = f"Precision drift inconclusive: {words}; the interval straddles the threshold {DRIFT_RATIO:g}x."
    else:
        says = f"Precision drift not assessed: {words}."
    return [Verdict(vid, outcome, estimate, low, high, DRIFT_RULE, says)]


def _findings(out: Findings, metrics: Mapping[str, Any]) -> None:
    gauges = metrics.get("gauges") or {}
    final = gauges.get("final")
    if not final:
        return
    for verdict in drift_verdicts(metrics):
        if verdict.outcome in ("yes", "no", "inconclusive"):
            severity = "warning" if verdict.outcome == "yes" else "info"
            grew = f"The variance 1/pi grew {_num(verdict.estimate)}x above var_init at the median. "
            out.add("gauges", severity, (grew if verdict.outcome == "yes" else "") + verdict.text)
    drift = _get(final, "drift", "overall") or {}
    if drift.get("drifted") and _is_number(drift.get("share_drifted")):
        out.add(
            "gauges",
            "warning" if drift["share_drifted"] >= 0.01 else "info",
            f"{_pct(drift['share_drifted'])} of coordinates have 1/pi above {_num(DRIFT_RATIO)}x var_init at the "
            f"final snapshot (99% quantile {_num(drift['ratio_q99'])}x, largest {_num(drift['ratio_max'])}x); "
            "the collapse check only looks the other way.",
        )
    radius = _get(final, "radius", "overall") or {}
    if _is_number(radius.get("radius_median")):
        out.add(
            "gauges",
            "info",
            f"Trust-region radius sqrt(2 eps/pi) at the final snapshot (step {final['step']}, eps "
            f"{_num(final.get('kl_bound'))}): median {_num(radius['radius_median'])} (5%-95% "
            f"{_num(radius['radius_q05'])} to {_num(radius['radius_q95'])}), the most one coordinate can move in a step.",
        )
    distance = _get(final, "distance", "overall") or {}
    if _is_number(distance.get("distance")) and final.get("reference_step") == 0:
        out.add(
            "gauges",
            "info",
            f"The weights moved {_num(distance['distance'])} (L2; {_num(distance['relative'])} of their norm) from "
            f"initialisation to the final snapshot (step {final['step']}).",
        )
    elif _is_number(distance.get("distance")) and final.get("reference_step") != final["step"]:
        out.add(
            "gauges",
            "info",
            f"The weights moved {_num(distance['distance'])} (L2; {_num(distance['relative'])} of their norm) from the "
            f"first snapshot (step {final.get('reference_step')}) to the final one (step {final['step']}); the record "
            "holds no step-0 weights, so this is the distance from the first snapshot, not from initialisation.",
        )
    alpha = alpha_words(gauges.get("alpha"))
    if alpha:
        out.add("gauges", "info", alpha)
    for part, reason in (final.get("skipped") or {}).items() if is_arturo(metrics) else ():
        out.add("gauges", "info", f"Gauges: {part} not computed at the final snapshot: {reason}.")


def alpha_words(summary: Mapping[str, Any] | None) -> str | None:
    """The snapshots' alpha in one sentence (None without any)."""
    if not summary:
        return None
    return (
        "Cockpit's alpha of the snapshot steps (where a step lands on the 1-D quadratic along its own "
        "direction, on the reference batch: -1 no progress, 0 the minimum, 1 the mirror point): median "
        f"{_num(summary['median'])} over {summary['n']} snapshots (10%-90% {_num(summary['q10'])} to "
        f"{_num(summary['q90'])}); {_pct(summary['share_overshoot'])} of them overshoot the 1-D minimum (alpha > 0)."
    )


def _layer_rows(final: Mapping[str, Any]) -> list[tuple[str, ...]]:
    names: dict[str, None] = {"overall": None}
    for part in ("radius", "drift", "distance"):
        for layer in _get(final, part, "layers") or {}:
            names.setdefault(layer, None)
    rows = []
    for layer in names:

        def value(part: str, key: str, layer: str = layer) -> Any:
            group = _get(final, part, "overall") if layer == "overall" else _get(final, part, "layers", layer)
            return (group or {}).get(key)

        rows.append(
            (
                "all coordinates" if layer == "overall" else layer,
                num(value("radius", "radius_median")),
                f"{num(value('radius', 'radius_q05'))} / {num(value('radius', 'radius_q95'))}",
                num(value("drift", "ratio_median")),
                num(value("drift", "ratio_q99")),
                pct(value("drift", "share_drifted")),
                pct(value("drift", "share_collapsed")),
                num(value("distance", "distance")),
                num(value("distance", "relative")),
            )
        )
    return rows


def gauges_section(metrics: Mapping[str, Any]) -> list[Block]:
    """The final snapshot's gauges per layer, the drift verdict, and the parts a snapshot could not give."""
    blocks: list[Block] = [Heading(2, (text("Gauges"),))]
    gauges = metrics.get("gauges") or {}
    final = gauges.get("final")
    if not final:
        return blocks + [_not_computed("the record has no snapshots, so there are no gauges.")]
    if not is_arturo(metrics):
        what = "the trust region's radius sqrt(2 eps/pi) and the drift of the variance 1/pi (its precision pi)"
        blocks.append(
            _not_computed(not_arturo_reason(metrics, what) + "; the distance moved and alpha apply to any optimizer.")
        )
    blocks.append(
        Paragraph(
            "Step gauges per layer: the trust region's parameter-space radius sqrt(2 eps/pi) (how far one "
            "coordinate may move in a step), the variance 1/pi against var_init (drift above "
            f"{num(DRIFT_RATIO)}x, collapse below {pct(gauges.get('collapse_fraction'))}), and the distance of "
            + (
                "the weights from initialisation (the weights when the Monitor started)."
                if final.get("reference_step") == 0
                else "the weights from the first snapshot: the record holds no step-0 weights, so it is not the "
                "distance from initialisation."
            )
        )
    )
    blocks.append(
        Table(
            (
                "layer",
                "radius median",
                "radius 5% / 95%",
                "(1/pi)/var_init median",
                "99%",
                f"share > {num(DRIFT_RATIO)}x",
                "share collapsed",
                "distance from init" if final.get("reference_step") == 0 else "distance from first snapshot",
                "relative",
            ),
            tuple(_layer_rows(final)),
            caption=f"At the final snapshot (step {final['step']}, eps = kl_bound {num(final.get('kl_bound'))}, "
            f"var_init {num(gauges.get('var_init'))}; distance from step {final.get('reference_step')}).",
        )  # fmt: skip
    )
    blocks += [Paragraph(v.text) for v in drift_verdicts(metrics)]
    alpha = alpha_words(gauges.get("alpha"))
    if alpha:
        blocks.append(Paragraph(alpha))
    skipped = [(e["step"], part, why) for e in gauges.get("snapshots") or [] for part, why in e["skipped"].items()]
    if skipped:
        rows = tuple((str(step), part, why) for step, part, why in skipped[:30])
        blocks.append(Table(("step", "part skipped", "reason"), rows, caption=f"{len(skipped)} parts skipped."))
    return blocks


QUANTITY = Quantity(
    name="gauges",
    needs=(
        "snapshots: precision, weight",
        "snapshots.csv: kl_bound, alpha (the alpha instrument)",
        "settings: var_init",
    ),
    compute=compute,
    observer=_Observer,
    findings=_findings,
    blocks=gauges_section,
    figures=(FIGURE,),
    verdicts=drift_verdicts,
)
