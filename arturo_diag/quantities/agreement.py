"""Agreement of the optimizer's curvature estimate a (arTuRO's a, or any adapter's) with the reference h.

``metrics["agreement"]``: a series (``{snapshots, final}``) of per-layer entries ``{step,
reference, overall: X, layers: {layer: X}}`` with X = ``agreement_with_baselines(a, h, h_prev)``
= ``{estimate, constant, previous_h, constant_value, beats_constant, beats_constant_summary {all,
any, lost_on}, beats_previous_h, scale}`` (``scale``: :func:`~arturo_diag.diagnostics.scale.scale_and_shape`,
the zero/best-constant/median-|h| baselines and a optimally rescaled); plus ``hutchinson_vs_exact``
(a series of per-layer ``agreement(h_hutchinson, h_exact)`` with its ``scale``, or None),
``reference_noise`` (a series of ``{step, relative_se, median_se_over_abs_h, samples}``, or None;
at a control-variate snapshot also ``cv_se_rms, plain_se_rms, cv_variance_reduction(_lo, _hi)``:
plain Hutchinson on the same probes, snapshots.csv's columns)
and ``bootstrap`` (the final snapshot's intervals behind the verdicts ``agreement.beats_constant``,
``agreement.scale``, ``agreement.shape``: :mod:`arturo_diag.quantities.agreement_verdicts`) and
``like_for_like`` (for an estimate whose target is ``gradient_second_moment``, Adam's v-hat: the
same comparison with the measured E[g_B^2], :mod:`arturo_diag.quantities._agreement_like`; else
None). Everything here reads the snapshots' ``curvature``, whatever optimizer stored it: the
question "how close is the estimate to diag H" is the same for every method, so the numbers and
verdicts are computed alike; only the words name whose estimate it is and what it estimates.

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

from arturo_diag.curvature.references import CV_COMPARISON_COLUMNS, REFERENCE_ESTIMATORS, estimator_for_field
from arturo_diag.diagnostics.agreement import per_layer
from arturo_diag.diagnostics.scale import agreement_scaled, agreement_with_baselines_scaled
from arturo_diag.quantities._agreement_bootstrap import final_bootstrap
from arturo_diag.quantities._agreement_like import LIKE_TARGET, LikeForLike, like_for_like_blocks
from arturo_diag.quantities._agreement_tables import _METRIC_ROWS, agreement_tables, hutchinson_table
from arturo_diag.quantities._blocks import _no_reference_reason, _not_computed
from arturo_diag.quantities._estimator import TARGET_WORDS, estimate_words, estimator_of, is_arturo
from arturo_diag.quantities._estimator import estimator as run_estimator
from arturo_diag.quantities._ranks import layer_groups, snapshot_ranks
from arturo_diag.quantities._scale_tables import scale_shape_blocks
from arturo_diag.quantities._words import _get, _num
from arturo_diag.quantities.agreement_verdicts import (
    agreement_verdicts,
    beats_constant_findings,
    layer_findings,
    layer_verdicts,
    lost_metrics,
    verdict,
)
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
from arturo_diag.report.format import get, num, plural

__all__ = ["QUANTITY"]


class _Observer:
    def __init__(self, context: Context) -> None:
        self.constant = context.options.constant
        self.record = context.record
        self.entries: list[dict[str, Any]] = []
        self.hutchinson: list[dict[str, Any]] = []
        self.noise: list[dict[str, Any]] = []
        self.final: tuple[int, dict[str, tuple[np.ndarray, np.ndarray]]] | None = None  # for the verdicts
        self.final_ranks: tuple[np.ndarray, np.ndarray] | None = None  # its a and h ranked, all coordinates
        target = (estimator_of(context.record.manifest) or {}).get("target")
        self.like = LikeForLike(context) if target == LIKE_TARGET else None

    def snapshot(self, view: SnapshotView) -> None:
        if self.like is not None:  # needs the estimate and the noise arrays, not h
            self.like.snapshot(view)
        if not view.usable:
            return
        names, a, h, snapshot, layers = view.names, view.a, view.h, view.snapshot, self.record.layers
        self.entries.append(split(self._per_layer(view), view.step, reference=view.field))
        self.final = (view.step, {name: (a[name], h[name]) for name in names})
        ranked = snapshot_ranks(view, "a", layers), snapshot_ranks(view, "h", layers)
        self.final_ranks = (ranked[0].overall, ranked[1].overall)  # the same concatenation as the bootstrap's
        if view.label == "both":
            self.hutchinson.append(
                split(
                    per_layer(
                        agreement_scaled,
                        {name: (snapshot[name]["h_hutchinson"], snapshot[name]["h_exact"]) for name in names},
                        layers,
                    ),
                    view.step,
                )
            )
        noisy = next((e for e in REFERENCE_ESTIMATORS.values() if e.se_field and view.has[e.se_field]), None)
        if noisy is not None and view.has[noisy.field]:  # an estimated h with its SE: Hutchinson's, the CV's
            h_hat = concat([snapshot[n][noisy.field] for n in names])
            se = concat([snapshot[n][noisy.se_field] for n in names])
            nonzero = h_hat != 0
            table = self.record.snapshots
            entry = {
                "step": view.step,
                "relative_se": relative_norm(se, h_hat),
                "median_se_over_abs_h": float(np.median(se[nonzero] / np.abs(h_hat[nonzero]), overwrite_input=True))
                if nonzero.any()
                else math.nan,
                "samples": snapshot_value(table, view.step, "hutchinson_samples"),
            }
            # the control variate's snapshots: plain Hutchinson's error on the same probes beside its own
            # (a record written before these columns has none: left out, not NaN)
            if snapshot_value(table, view.step, "reference") == "cv" and CV_COMPARISON_COLUMNS[0] in table.columns:
                entry.update({c: number(snapshot_value(table, view.step, c)) for c in CV_COMPARISON_COLUMNS})
            self.noise.append(entry)

    def _per_layer(self, view: SnapshotView) -> dict[str, Any]:
        """``per_layer(agreement_with_baselines_scaled, ...)`` over a, h and h_prev, with each array
        ranked once for all coordinates and every layer (:mod:`arturo_diag.quantities._ranks`)."""
        layers, constant = self.record.layers, self.constant
        ranked = {key: snapshot_ranks(view, key, layers) for key in ("a", "h", "h_prev") if getattr(view, key)}

        def entry(arrays: dict[str, np.ndarray | None], rank: dict[str, np.ndarray]) -> dict[str, Any]:
            return agreement_with_baselines_scaled(
                arrays["a"],
                arrays["h"],
                arrays["h_prev"],
                constant=constant,
                **{f"{k}_ranks": r for k, r in rank.items()},
            )

        overall = {key: ranked[key].values if key in ranked else None for key in ("a", "h", "h_prev")}
        result = {"overall": entry(overall, {key: r.overall for key, r in ranked.items()})}
        for layer, members in layer_groups(view.names, layers).items():
            arrays = {
                key: concat([getattr(view, key)[n] for n in members]) if key in ranked else None
                for key in ("a", "h", "h_prev")
            }
            result[layer] = entry(arrays, {key: r.layer(layer) for key, r in ranked.items()})
        return result


def compute(context: Context) -> dict[str, Any]:
    observer = context.observers["agreement"]
    return {
        **series(observer.entries),
        "hutchinson_vs_exact": series(observer.hutchinson) if observer.hutchinson else None,
        "reference_noise": series(observer.noise) if observer.noise else None,
        "bootstrap": final_bootstrap(
            *observer.final, context.record.layers, observer.constant, ranks=observer.final_ranks
        )
        if observer.final
        else None,
        "like_for_like": observer.like.result() if observer.like is not None else None,
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
        # the run's verdict agreement.beats_constant (interval and margin), not the bare comparison:
        # yes 1, no 0, inconclusive or not decided NaN (not assessed); a record analysed before the
        # verdicts existed falls back to the comparison of the point estimates
        decided = [v for v in metrics.get("verdicts") or () if v.get("id") == "agreement.beats_constant"]
        if decided:
            out["beats_constant"] = {"yes": 1.0, "no": 0.0}.get(decided[0].get("outcome"), math.nan)
        else:
            verdict = (overall.get("beats_constant") or {}).get("relative_error")
            out["beats_constant"] = math.nan if verdict is None else float(bool(verdict))
    return out


def _agreement(out: Findings, metrics: Mapping[str, Any]) -> None:
    block = metrics.get("agreement") or {}
    final = block.get("final")
    if not final:
        return
    overall = final["overall"]
    estimate = overall["estimate"]
    beats_constant_findings(out, metrics)  # a against the constant, its scale and its shape: the verdicts

    previous = overall.get("previous_h")
    if previous:
        out.add(
            "agreement",
            "info",
            f"For scale, the previous snapshot's h scores relative error {_num(previous['relative_error'])} "
            f"and Spearman {_num(previous['spearman'])} against the final h (the estimate: "
            f"{_num(estimate['relative_error'])} and {_num(estimate['spearman'])}).",
        )

    layer_findings(out, metrics)
    _like_finding(out, metrics)

    entries = block.get("snapshots") or []
    if len(entries) > 1:
        wins = sum(1 for entry in entries if _get(entry, "overall", "beats_constant", "relative_error") is True)
        out.add(
            "agreement",
            "info",
            f"The estimate's relative error was below the constant's at {wins} of {len(entries)} snapshots.",
        )


def _like_finding(out: Findings, metrics: Mapping[str, Any]) -> None:
    """The like-for-like comparison (target gradient_second_moment), said to be the other one."""
    like = _get(metrics, "agreement", "like_for_like")
    if not like:
        return
    final = like.get("final")
    if not final:
        out.add("agreement", "info", f"Like with like (the estimate against the measured E[g_B^2]): {like['reason']}.")
        return
    overall = final["overall"]
    out.add(
        "agreement",
        "info",
        f"Like with like: {estimate_words(metrics)} estimates E[g_B^2], not diag H; against the measured E[g_B^2] "
        f"at step {final['step']} its scale c* is {_num(_get(overall, 'scale', 'rescaled', 'factor'))} and Spearman "
        f"{_num(overall.get('spearman'))} (the comparisons above are with h).",
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
    if is_arturo(metrics):
        words = (
            f"At the final snapshot (step {step}) arTuRO's curvature estimate a is compared with {reference}. Every "
            f"number stands beside what two baselines score: the {constant_name} (arTuRO's initial a) and the "
        )
    else:
        target = (run_estimator(metrics) or {}).get("target")
        claim = (
            ""
            if target == "hessian_diagonal"
            else f" It estimates {TARGET_WORDS.get(target, target)}: this asks how well it stands in for diag H."
        )
        words = (
            f"At the final snapshot (step {step}) {estimate_words(metrics)}, a below, is compared with "
            f"{reference}.{claim} Every number stands beside what two baselines score: the {constant_name} and the "
        )
    blocks.append(
        Paragraph(
            words + "previous snapshot's h (a perfect estimate one snapshot late). An agreement number means something "
            "only next to what a constant scores."
        )
    )
    layers = final.get("layers") or {}
    blocks.append(Paragraph(_verdict_spans(block, overall, layers, constant_name)))
    blocks += agreement_tables(step, overall, layers, constant_name)
    blocks += scale_shape_blocks(metrics)
    blocks += like_for_like_blocks(block, estimate_words(metrics))
    hutchinson = get(block, "hutchinson_vs_exact", "final")
    if hutchinson:
        who = "arTuRO's a" if is_arturo(metrics) else estimate_words(metrics)
        blocks.append(hutchinson_table(hutchinson, overall, layers, who))
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
    beats = verdict({"agreement": block}, "agreement.beats_constant")
    said = text if beats.outcome == "yes" else strong
    sentence: Inline = (said(beats.text),)
    worse, equal = lost_metrics(overall)
    words = {m: label.split(" (")[0] for m, label, _ in _METRIC_ROWS}
    if worse:
        sentence += (
            text(
                " Its point estimates are worse than the constant's on: "
                + ", ".join(words.get(m, m) for m in worse)
                + "."
            ),
        )
    if equal:
        sentence += (text(" Equal to the constant's on: " + ", ".join(words.get(m, m) for m in equal) + "."),)
    per = layer_verdicts({"agreement": block})
    for outcome, says in (("no", "does not beat the constant by the margin"), ("inconclusive", "is inconclusive")):
        losing = [layer for layer, v in per.items() if v.outcome == outcome]
        if losing and len(per) > 1:
            sentence += (
                text(
                    f" Per layer, on relative error (same rule), the estimate {says} in {len(losing)} of {len(per)}: "
                    + ", ".join(losing[:12])
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
        "snapshots: a (curvature), h (h_exact, h_ggn, h_cv or h_hutchinson), h_cv_se or h_hutchinson_se",
        "snapshots.csv: hutchinson_samples",
    ),
    compute=compute,
    observer=_Observer,
    findings=_agreement,
    verdicts=agreement_verdicts,
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
