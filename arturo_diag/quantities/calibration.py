"""Calibration: does the claimed variance of a (the filter's P_aa, or the optimizer's) cover |a - h|?

``metrics["calibration"]``: a series of per-layer entries ``{step, reference, overall: X, layers}``
with X = ``calibration(a, h, P_aa)`` (:mod:`arturo_diag.diagnostics.calibration`), for the
snapshots that carry ``filter_cov_aa``, and ``intervals`` (``calibration_intervals`` of the last such
snapshot, with its ``step``): coverage and sharpness with their 95 % intervals, for the verdict
``calibration.calibrated`` (:mod:`arturo_diag.quantities.topic_verdicts`). A study gets the final
snapshot's coverage and sharpness.

The variance is arTuRO's ``filter_cov_aa`` (P_aa) where the snapshots hold it, else ``curvature_var``
(the variance another optimizer's adapter claims for its estimate; such an entry carries
``"variance": "curvature_var"``); ``variance_field`` says which (None: neither), ``reason`` why
nothing was computed ("the optimizer claims no variance" for an optimizer whose adapter gives
none: Adam, IVON's hess, AdaHessian, Sophia). The texts written for P_aa are worded for the
optimizer's V by :func:`words` (the same sentences, arTuRO's unchanged).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from arturo_diag.diagnostics.agreement import per_layer
from arturo_diag.diagnostics.calibration import calibration, calibration_intervals
from arturo_diag.quantities._blocks import _no_reference_reason, _not_computed
from arturo_diag.quantities._estimator import ARTURO, estimator_of, variance_words
from arturo_diag.quantities._words import _count, _get, _num, _pct
from arturo_diag.quantities.base import (
    Context,
    Findings,
    Quantity,
    SnapshotView,
    StudyColumn,
    at_last_snapshot,
    concat,
    number,
    series,
    split,
)
from arturo_diag.quantities.topic_verdicts import calibration_verdicts, with_finding
from arturo_diag.report.document import Block, Heading, Paragraph, Table, strong, text
from arturo_diag.report.figures.calibration import FIGURE
from arturo_diag.report.format import count, get, num, pct, plural

__all__ = ["QUANTITY"]


#: the snapshot fields a claimed variance of a is read from, in order of preference
VARIANCE_FIELDS = ("filter_cov_aa", "curvature_var")
NO_VARIANCE = (
    "the optimizer claims no variance for its curvature estimate (its adapter gives none), so there is "
    "nothing to calibrate against |a-h|"
)


def words(metrics: Mapping[str, Any], sentence: str) -> str:
    """``sentence`` (written for arTuRO's filter and P_aa) for the run's variance (:func:`variance_words`)."""
    return variance_words(metrics, sentence)


class _Observer:
    def __init__(self, context: Context) -> None:
        self.layers = context.record.layers
        self.entries: list[dict[str, Any]] = []
        self.intervals: dict[str, Any] | None = None
        self.field: str | None = None  # the variance read at the last calibrated snapshot
        self.usable = 0  # usable snapshots (a and h), with a variance or not

    def snapshot(self, view: SnapshotView) -> None:
        if not view.usable:
            return
        self.usable += 1
        field = next((f for f in VARIANCE_FIELDS if view.has.get(f)), None)
        if field is None:
            return
        self.field = field
        a, h, snapshot = view.a, view.h, view.snapshot
        self.intervals = {
            "step": view.step,
            **calibration_intervals(
                *(concat([source[n] for n in view.names]) for source in (a, h)),
                concat([snapshot[n][field] for n in view.names]),
            ),
        }
        extra = {} if field == "filter_cov_aa" else {"variance": field}  # arTuRO's entries as before
        self.entries.append(
            split(
                per_layer(calibration, {n: (a[n], h[n], snapshot[n][field]) for n in view.names}, self.layers),
                view.step,
                reference=view.field,
                **extra,
            )
        )


def compute(context: Context) -> dict[str, Any]:
    observer = context.observers["calibration"]
    reason = None
    if not observer.entries and observer.usable:
        arturo = (estimator_of(context.record.manifest) or {}).get("name") == ARTURO
        reason = (
            "no snapshot holds the filter variance P_aa (filter_cov_aa) of every parameter" if arturo else NO_VARIANCE
        )
    return {
        **series(observer.entries),
        "intervals": observer.intervals,
        "variance_field": observer.field,
        "reason": reason,
    }


def study_columns(metrics: Mapping[str, Any], record: Any) -> dict[str, Any]:
    final = at_last_snapshot(metrics, (metrics.get("calibration") or {}).get("final"))
    if not final:
        return {}
    overall = final.get("overall") or {}
    return {
        "calibration_coverage": number(overall.get("coverage")),
        "calibration_sharpness": number(overall.get("sharpness")),
    }


class _Worded:
    """A :class:`Findings` whose texts go through :func:`words` first."""

    def __init__(self, out: Findings, metrics: Mapping[str, Any]) -> None:
        self.out, self.metrics = out, metrics

    def add(self, topic: str, severity: str, sentence: str) -> None:
        self.out.add(topic, severity, words(self.metrics, sentence))


def _calibration(out: Findings, metrics: Mapping[str, Any]) -> None:
    final = _get(metrics, "calibration", "final")
    if not final:
        return
    overall = final["overall"]
    coverage, sharpness, label = overall["coverage"], overall["sharpness"], overall["interpretation"]
    where = f"at the final snapshot (step {final['step']})"
    expected = "95% and 0.67 if calibrated"
    (verdict,) = calibration_verdicts(metrics)
    out = _Worded(out, metrics)
    if label == "calibrated" and verdict.outcome != "yes":
        pass  # the label's point estimates only: the verdict's finding (with_finding) gives the intervals
    elif label == "calibrated":
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


def calibration_section(metrics: Mapping[str, Any]) -> list[Block]:
    """Coverage beside sharpness of the filter's P_aa, with the interpretation, per layer."""
    blocks: list[Block] = [Heading(2, (text("Calibration"),))]
    block = metrics.get("calibration") or {}
    final = block.get("final")
    if not final:
        reason = (
            _no_reference_reason(metrics)
            if not get(metrics, "agreement", "final")
            else (
                block.get("reason") or "no snapshot holds the filter variance P_aa (filter_cov_aa) of every parameter"
            )
            + "."
        )
        return blocks + [_not_computed(reason)]

    def w(sentence: str) -> str:
        return words(metrics, sentence)

    overall = final["overall"]
    blocks.append(
        Paragraph(
            (
                "The filter claims Var(a) = P_aa. "
                if block.get("variance_field") != "curvature_var"
                else "The optimizer claims Var(a) = V (curvature_var, the variance its adapter gives). "
            )
            + w(
                f"Coverage is the share of coordinates with |a-h| <= 2 sqrt(P_aa) "
                f"({pct(overall.get('gaussian_coverage'))} if calibrated); sharpness is the median of |a-h| / sqrt(P_aa) "
                f"({num(overall.get('gaussian_sharpness'))} if calibrated). Coverage alone is not enough: a claimed "
                "uncertainty far wider than the error gives full coverage that means nothing. Labels: calibrated "
                "(coverage 85%-99% and sharpness 0.4-1), vacuous (sharpness below 0.2), overconfident (coverage below "
                "50% or sharpness above 2), miscalibrated otherwise."
            )
        )
    )
    label = overall.get("interpretation")
    (verdict,) = calibration_verdicts(metrics)
    if label == "calibrated" and verdict.outcome != "yes":
        label = f"calibrated on the point estimates ({verdict.outcome} with the intervals)"
    blocks.append(
        Paragraph(
            (
                text(w(f"At the final snapshot (step {final['step']}) the filter is ")),
                strong(str(label)),
                text(
                    w(
                        f": coverage {pct(overall.get('coverage'))}, sharpness {num(overall.get('sharpness'))} "
                        f"(median sqrt(P_aa) {num(overall.get('median_sqrt_p_aa'))} vs median |a-h| "
                        f"{num(overall.get('median_abs_error'))})."
                    )
                ),
            )
        )
    )
    blocks.append(
        Paragraph((strong(f"Calibrated ({verdict.outcome}):"), text(f" {verdict.text}. Rule: {verdict.rule}.")))
    )
    rows = []
    for name, entry in [("all coordinates", overall), *(final.get("layers") or {}).items()]:
        rows.append(
            (
                name,
                pct(entry.get("coverage")),
                num(entry.get("sharpness")),
                str(entry.get("interpretation")),
                num(entry.get("median_sqrt_p_aa")),
                num(entry.get("median_abs_error")),
                count(entry.get("n_nonpositive_variance")),
            )
        )
    blocks.append(
        Table(
            (
                "Layer",
                "coverage",
                "sharpness",
                "interpretation",
                w("median sqrt(P_aa)"),
                "median |a-h|",
                w("P_aa <= 0"),
            ),
            tuple(rows),
            align=("l", "r", "r", "l", "r", "r", "r"),
        )
    )
    entries = block.get("snapshots") or []
    if len(entries) > 1:
        labels: dict[str, int] = {}
        for entry in entries:
            key = str(get(entry, "overall", "interpretation"))
            labels[key] = labels.get(key, 0) + 1
        blocks.append(
            Paragraph(
                f"Over all {len(entries)} snapshots the overall label was: "
                + ", ".join(f"{key} at {plural(n, 'snapshot')}" for key, n in labels.items())
                + "."
            )
        )
    return blocks


QUANTITY = Quantity(
    name="calibration",
    needs=("snapshots: a (curvature), h, filter_cov_aa or curvature_var",),
    compute=compute,
    observer=_Observer,
    findings=with_finding(_calibration, calibration_verdicts, "calibration"),
    blocks=calibration_section,
    figures=(FIGURE,),
    verdicts=calibration_verdicts,
    study_columns=study_columns,
    study_keys=("calibration_coverage", "calibration_sharpness"),
    study_table=(
        StudyColumn("calibration_coverage", "coverage (2 sd)"),
        StudyColumn("calibration_sharpness", "sharpness"),
    ),
)
