"""Agreement of arTuRO's curvature estimate a with the reference diagonal Hessian h.

``metrics["agreement"]``: a series (``{snapshots, final}``) of per-layer entries ``{step,
reference, overall: X, layers: {layer: X}}`` with X = ``agreement_with_baselines(a, h, h_prev)``
= ``{estimate, constant, previous_h, constant_value, beats_constant, beats_constant_summary {all,
any, lost_on}, beats_previous_h}``; plus ``hutchinson_vs_exact`` (a series of per-layer
``agreement(h_hutchinson, h_exact)``, or None) and ``reference_noise`` (a series of ``{step,
relative_se, median_se_over_abs_h, samples}``, or None).

Wording (ARTURO.md, "Diagnostic quantities"): an agreement number is always given next to what
the constant vector 0.1 scores, and an estimate that a constant matches or beats is never
described as agreeing well. A study gets the final snapshot's relative error, the constant's,
Spearman and whether the estimate beat the constant, per run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from arturo_diag.curvature.references import estimator_for_field
from arturo_diag.diagnostics.agreement import agreement, agreement_with_baselines, per_layer
from arturo_diag.quantities._agreement_tables import _METRIC_ROWS, agreement_tables, hutchinson_table
from arturo_diag.quantities._blocks import _no_reference_reason, _not_computed
from arturo_diag.quantities._words import _FINDING_WORDS, _get, _num, _pct
from arturo_diag.quantities.base import (
    Context,
    Findings,
    Quantity,
    SnapshotView,
    StudyColumn,
    at_last_snapshot,
    concat,
    number,
    relative_norm,
    series,
    snapshot_value,
    split,
)
from arturo_diag.report.document import Block, Heading, Inline, Paragraph, strong, text
from arturo_diag.report.figures.agreement import FIGURE
from arturo_diag.report.format import distinguishing_digits, get, num, plural

__all__ = ["QUANTITY"]


class _Observer:
    def __init__(self, context: Context) -> None:
        self.constant = context.options.constant
        self.record = context.record
        self.entries: list[dict[str, Any]] = []
        self.hutchinson: list[dict[str, Any]] = []
        self.noise: list[dict[str, Any]] = []

    def snapshot(self, view: SnapshotView) -> None:
        if not view.usable:
            return
        names, a, h, h_prev, snapshot, layers = (
            view.names,
            view.a,
            view.h,
            view.h_prev,
            view.snapshot,
            self.record.layers,
        )
        constant = self.constant
        self.entries.append(
            split(
                per_layer(
                    lambda a, h, h_prev: agreement_with_baselines(a, h, h_prev, constant=constant),
                    {
                        name: {"a": a[name], "h": h[name], "h_prev": None if h_prev is None else h_prev[name]}
                        for name in names
                    },
                    layers,
                ),
                view.step,
                reference=view.field,
            )
        )
        if view.label == "both":
            self.hutchinson.append(
                split(
                    per_layer(
                        agreement,
                        {name: (snapshot[name]["h_hutchinson"], snapshot[name]["h_exact"]) for name in names},
                        layers,
                    ),
                    view.step,
                )
            )
        if view.has["h_hutchinson"] and view.has["h_hutchinson_se"]:
            h_hat = concat([snapshot[n]["h_hutchinson"] for n in names])
            se = concat([snapshot[n]["h_hutchinson_se"] for n in names])
            nonzero = h_hat != 0
            self.noise.append(
                {
                    "step": view.step,
                    "relative_se": relative_norm(se, h_hat),
                    "median_se_over_abs_h": float(np.median(se[nonzero] / np.abs(h_hat[nonzero])))
                    if nonzero.any()
                    else math.nan,
                    "samples": snapshot_value(self.record.snapshots, view.step, "hutchinson_samples"),
                }
            )


def compute(context: Context) -> dict[str, Any]:
    observer = context.observers["agreement"]
    return {
        **series(observer.entries),
        "hutchinson_vs_exact": series(observer.hutchinson) if observer.hutchinson else None,
        "reference_noise": series(observer.noise) if observer.noise else None,
    }


def study_columns(metrics: Mapping[str, Any], record: Any) -> dict[str, Any]:
    """The final snapshot's agreement (a run whose last snapshot was unusable is not assessed)."""
    final = at_last_snapshot(metrics, (metrics.get("agreement") or {}).get("final"))
    out: dict[str, Any] = {}
    steps = (metrics.get("run") or {}).get("snapshot_steps") or []
    if steps and not final:
        out["snapshot_step"] = steps[-1]
    if final:
        overall = final.get("overall") or {}
        out["snapshot_step"] = final.get("step")
        out["agreement_relative_error"] = number((overall.get("estimate") or {}).get("relative_error"))
        out["constant_relative_error"] = number((overall.get("constant") or {}).get("relative_error"))
        out["agreement_spearman"] = number((overall.get("estimate") or {}).get("spearman"))
        verdict = (overall.get("beats_constant") or {}).get("relative_error")
        out["beats_constant"] = math.nan if verdict is None else float(bool(verdict))
    return out


def _agreement(out: Findings, metrics: Mapping[str, Any]) -> None:
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
        details = "; ".join(f"{_FINDING_WORDS.get(m, m)} {_num(estimate[m])} vs {_num(constant[m])}" for m in lost)
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


def agreement_section(metrics: Mapping[str, Any]) -> list[Block]:
    """Agreement of a with h at the final snapshot, per layer, each metric beside the constant-0.1 and
    previous-h baselines; says explicitly where the estimate does not beat the constant."""
    blocks: list[Block] = [Heading(2, (text("Agreement"),))]
    block = metrics.get("agreement") or {}
    final = block.get("final")
    if not final:
        return blocks + [_not_computed(_no_reference_reason(metrics))]
    step, overall = final["step"], final["overall"]
    value = overall.get("constant_value", 0.1)
    constant_name = f"constant {num(value)}"
    estimator = estimator_for_field(final.get("reference"))
    reference = f"the {estimator.words}" if estimator is not None else "h"  # "the exact diagonal Hessian h"
    blocks.append(
        Paragraph(
            f"At the final snapshot (step {step}) arTuRO's curvature estimate a is compared with {reference}. Every "
            f"number stands beside what two baselines score: the {constant_name} (arTuRO's initial a) and the "
            "previous snapshot's h (a perfect estimate one snapshot late). An agreement number means something only "
            "next to what a constant scores."
        )
    )
    layers = final.get("layers") or {}
    blocks.append(Paragraph(_verdict_spans(block, overall, layers, constant_name)))
    blocks += agreement_tables(step, overall, layers, constant_name)
    hutchinson = get(block, "hutchinson_vs_exact", "final")
    if hutchinson:
        blocks.append(hutchinson_table(hutchinson, overall, layers))
    noise = get(block, "reference_noise", "final")
    if noise:
        blocks.append(
            Paragraph(
                f"Noise of the Hutchinson reference at step {noise['step']}: standard error {num(noise.get('relative_se'))} "
                f"of ||h|| (median SE/|h| {num(noise.get('median_se_over_abs_h'))}, "
                f"{plural(noise.get('samples'), 'sample')}); agreement below that level cannot be resolved."
            )
        )
    return blocks


def _verdict_spans(
    block: Mapping[str, Any], overall: Mapping[str, Any], layers: Mapping[str, Any], constant_name: str
) -> Inline:
    """Whether a beats the constant on relative error over all coordinates, the metrics and layers
    where it does not, the previous h's score and the share of snapshots a won."""
    estimate, constant = overall["estimate"], overall["constant"]
    verdict = overall.get("beats_constant") or {}
    pair = (estimate["relative_error"], constant["relative_error"])
    digits = distinguishing_digits(pair)
    versus = f"({num(pair[0], digits)} vs {num(pair[1], digits)})"
    if verdict.get("relative_error") is not True:
        sentence = (
            strong(f"The estimate does not beat the {constant_name}"),
            text(f" on relative error over all coordinates {versus}."),
        )
    else:
        sentence = (text(f"The estimate beats the {constant_name} on relative error over all coordinates {versus}."),)
    lost = (overall.get("beats_constant_summary") or {}).get("lost_on") or []
    words = {m: label.split(" (")[0] for m, label, _ in _METRIC_ROWS}
    if lost:
        sentence += (text(" It does not beat the constant on: " + ", ".join(words.get(m, m) for m in lost) + "."),)
    losing = [layer for layer, entry in layers.items() if get(entry, "beats_constant", "relative_error") is not True]
    if losing:
        sentence += (
            text(
                f" Per layer, the estimate does not beat the constant on relative error in "
                f"{len(losing)} of {len(layers)}: {', '.join(losing[:12])}"
                + (f" and {len(losing) - 12} more" if len(losing) > 12 else "")
                + "."
            ),
        )
    previous = overall.get("previous_h")
    if previous:
        better = (overall.get("beats_previous_h") or {}).get("relative_error")
        sentence += (
            text(
                f" The previous snapshot's h scores relative error {num(previous['relative_error'])} "
                + ("(the estimate is closer)." if better else "(closer than the estimate).")
            ),
        )
    entries = block.get("snapshots") or []
    if len(entries) > 1:
        wins = sum(1 for e in entries if get(e, "overall", "beats_constant", "relative_error") is True)
        sentence += (
            text(
                f" Over the run, the estimate's relative error was below the constant's at {wins} of "
                f"{len(entries)} snapshots."
            ),
        )
    return sentence


QUANTITY = Quantity(
    name="agreement",
    needs=(
        "snapshots: a (curvature), h (h_exact or h_hutchinson), h_hutchinson_se",
        "snapshots.csv: hutchinson_samples",
    ),
    compute=compute,
    observer=_Observer,
    findings=_agreement,
    blocks=agreement_section,
    figures=(FIGURE,),
    study_columns=study_columns,
    study_keys=(
        "snapshot_step",
        "agreement_relative_error",
        "constant_relative_error",
        "agreement_spearman",
        "beats_constant",
    ),
    study_table=(
        StudyColumn("agreement_relative_error", "rel. error ||a-h||/||h||"),
        StudyColumn("constant_relative_error", "constant 0.1's"),
        StudyColumn("agreement_spearman", "Spearman"),
        StudyColumn("beats_constant", "beats constant (seeds)", kind="seeds"),
    ),
)
