"""The probe loss's Hessian spectrum per spectrum snapshot, and the diagonal's share of it.

Reads the ``spectrum`` instrument (:mod:`arturo_diag.curvature.spectrum_instrument`): its
``snapshots.csv`` columns (``spectrum_trace``, ``spectrum_trace_hutchpp``, ``spectrum_top_k``,
``spectrum_min``, ...) and its per-probe arrays (``instruments/step_*.npz``: ``spectrum/row_sq``,
S x tensors, ||(H z_s)_tensor||^2; ``spectrum/ritz_nodes``/``ritz_weights``, SLQ). With the
snapshot's exact reference diagonal ``h_exact`` (the diagonal of the same H: same batch, same mode):

- ``diag_share`` = ||diag H|| / ||H||_F, ||diag H||^2 = sum h_exact^2 and ||H||_F^2 estimated by
  F2 = mean_s ||H z_s||^2 (E ||Hz||^2 = tr H^2 for Rademacher z); ``diag_share_se`` the delta
  method's share * se(F2) / (2 F2); per layer the same with the layer's rows of H (E ||(Hz)_l||^2 =
  the squared Frobenius norm of H's rows of layer l: the share of those rows' curvature a diagonal
  model holds). The squared share is the fraction of ||H||_F^2 on the diagonal: a diagonal model
  leaves ||H - diag H||_F^2 = (1 - share^2) ||H||_F^2 out;
- ``mass_negative``, ``mass_near_zero``, ``mass_positive``: SLQ's estimates of the fractions of H's
  eigenvalues below -tau, within [-tau, tau] and above tau, tau = ``zero_band`` = 1 % of the top
  eigenvalue (the weights of the Ritz values in each band, averaged over the SLQ probes; a few
  probes and steps: rough figures, and the sign of the near-zero bulk is not resolved).

Without ``h_exact`` (a Hutchinson reference: ||h||^2 overestimates ||diag H||^2 by its noise) the
share is not computed and says why.

``metrics["spectrum"]`` = ``{threshold, verdict, snapshots: [{step, trace, trace_se, trace_hutchpp,
trace_hutchpp_se, top: [...], min, converged, hvps, frobenius_sq, frobenius_sq_se, diagonal_norm,
diag_share, diag_share_se, mass_negative, mass_near_zero, mass_positive, zero_band, slq_probes,
share_problem, layers: {layer: {n, diag_share,
diag_share_se}}}], final}``; ``verdict`` = ``{step, probes, estimate, se, ci_low, ci_high}`` or None.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from arturo_diag.quantities._blocks import _not_computed
from arturo_diag.quantities._words import _is_number
from arturo_diag.quantities.base import Context, Findings, Quantity, SnapshotView, series, snapshot_value
from arturo_diag.quantities.verdicts import Verdict, bootstrap_ci, decide_above, interval_words, not_applicable
from arturo_diag.report.document import Block, Heading, Paragraph, Table, text
from arturo_diag.report.figures.spectrum import DENSITY_FIGURE, FIGURE
from arturo_diag.report.format import num

__all__ = ["QUANTITY", "RULE", "THRESHOLD", "spectrum_verdicts"]

THRESHOLD = 1 / math.sqrt(2)  # share above 1/sqrt(2): the diagonal holds most of ||H||_F^2
RULE = (
    "estimate: ||diag H|| / ||H||_F at the final spectrum snapshot, diag H the exact reference diagonal "
    "(h_exact) and ||H||_F^2 the mean of ||H z||^2 over the spectrum instrument's Rademacher probes; 95 % "
    "percentile bootstrap over the probes (200 resamples, seed 0); yes (a diagonal model can capture most of "
    f"the Hessian: most of ||H||_F^2) if the interval lies above 1/sqrt(2) = {THRESHOLD:.3f}, no if below, else "
    "inconclusive; not applicable without the spectrum instrument or without h_exact at that snapshot"
)
_PREFIX = "spectrum_"


class _Observer:
    """Every snapshot the spectrum instrument measured: its scalars, the share (whole, per layer)."""

    def __init__(self, context: Context) -> None:
        self.record = context.record
        self.parameters = list(context.record.parameters)
        self.layers = context.record.layers
        self.entries: list[dict[str, Any]] = []
        self.final_terms: tuple[float, np.ndarray] | None = None  # (||diag H||, per-probe F2) at the last

    def snapshot(self, view: SnapshotView) -> None:
        snapshots = self.record.snapshots
        if snapshot_value(snapshots, view.step, "spectrum_trace") is None:
            return
        value = {
            key: snapshot_value(snapshots, view.step, _PREFIX + key)
            for key in (
                "trace",
                "trace_se",
                "trace_hutchpp",
                "trace_hutchpp_se",
                "min",
                "hvps",
                "frobenius_sq",
                "frobenius_sq_se",
            )  # fmt: skip
        }
        top, k = [], 1
        while f"{_PREFIX}top_{k}" in snapshots.columns:
            top.append(snapshot_value(snapshots, view.step, f"{_PREFIX}top_{k}"))
            k += 1
        converged = snapshot_value(snapshots, view.step, "spectrum_converged")
        extras = self.record.instrument_arrays(view.step)
        entry: dict[str, Any] = {"step": view.step, **value, "top": top, "converged": _truth(converged)}
        entry.update(_masses(extras, top[0] if top else None))
        entry.update(self._share(view, extras))
        self.entries.append(entry)

    def _share(self, view: SnapshotView, extras: Mapping[str, np.ndarray]) -> dict[str, Any]:
        empty = {"diagonal_norm": None, "diag_share": None, "diag_share_se": None, "layers": {}}
        rows = extras.get("spectrum/row_sq")
        if rows is None or rows.ndim != 2 or rows.shape[1] != len(self.parameters) or rows.shape[0] < 2:
            return {**empty, "share_problem": "the snapshot holds no per-probe Frobenius terms (spectrum/row_sq)"}
        if self.record.subsampled:
            return {
                **empty,
                "share_problem": "the snapshots keep only some coordinates (--subsample): ||diag H|| of the "
                "whole model is not in the record",
            }
        diag = {n: f.get("h_exact") for n, f in view.snapshot.items()}
        if any(diag.get(n) is None for n in self.parameters):
            return {
                **empty,
                "share_problem": "no exact reference diagonal (h_exact) at this snapshot: a Hutchinson "
                "diagonal's norm overestimates ||diag H|| by its noise",
            }
        squares = np.array([float(np.sum(np.asarray(diag[n]) ** 2)) for n in self.parameters])
        whole = _share_of(float(squares.sum()), rows.sum(1))
        groups: dict[str, list[int]] = {}
        for j, name in enumerate(self.parameters):
            groups.setdefault(self.layers.get(name, name), []).append(j)
        layers = {}
        for layer, columns in groups.items():
            share, se = _share_of(float(squares[columns].sum()), rows[:, columns].sum(1))
            n = int(sum(np.asarray(diag[self.parameters[j]]).size for j in columns))
            layers[layer] = {"n": n, "diag_share": share, "diag_share_se": se}
        self.final_terms = (math.sqrt(float(squares.sum())), rows.sum(1))
        return {"diagonal_norm": math.sqrt(float(squares.sum())), "diag_share": whole[0], "diag_share_se": whole[1],
                "layers": layers, "share_problem": None}  # fmt: skip


def _truth(value: Any) -> bool | None:
    if isinstance(value, str):
        return value.strip().lower() == "true"
    return bool(value) if value is not None else None


def _share_of(diagonal_sq: float, f2_per_probe: np.ndarray) -> tuple[float | None, float | None]:
    """||diag|| / sqrt(mean F2) and its delta-method SE, share * se(F2) / (2 F2)."""
    f2 = float(np.mean(f2_per_probe))
    if not f2 > 0:
        return None, None
    share = math.sqrt(diagonal_sq / f2)
    se_f2 = float(np.std(f2_per_probe, ddof=1) / math.sqrt(f2_per_probe.size))
    return share, share * se_f2 / (2 * f2)


ZERO_BAND = 0.01  # |lambda| below 1 % of the top eigenvalue counts as near zero in the SLQ masses


def _masses(extras: Mapping[str, np.ndarray], top: float | None) -> dict[str, Any]:
    """SLQ's estimates of the fractions of H's eigenvalues below -tau, within [-tau, tau] and above
    tau, tau = ZERO_BAND |lambda_1|: the quadrature's weights of the Ritz values in each band,
    averaged over the probes. The sign of the near-zero bulk is not resolved by a few Lanczos
    steps, so no count of negative eigenvalues is claimed beyond the band."""
    nodes, weights = extras.get("spectrum/ritz_nodes"), extras.get("spectrum/ritz_weights")
    none = {"mass_negative": None, "mass_near_zero": None, "mass_positive": None, "zero_band": None, "slq_probes": 0}
    if nodes is None or weights is None or nodes.shape != weights.shape or nodes.ndim != 2 or not _is_number(top):
        return none
    band = ZERO_BAND * abs(float(top))
    parts = []
    for n, w in zip(nodes, weights):
        kept = np.isfinite(n) & np.isfinite(w)
        n, w = n[kept], w[kept]
        parts.append((float(w[n < -band].sum()), float(w[np.abs(n) <= band].sum()), float(w[n > band].sum())))
    if not parts:
        return none
    below, near, above = (float(np.mean(column)) for column in zip(*parts))
    return {"mass_negative": below, "mass_near_zero": near, "mass_positive": above, "zero_band": band,
            "slq_probes": len(parts)}  # fmt: skip


def _interval(observer: _Observer, step: int | None) -> dict[str, Any] | None:
    if observer.final_terms is None or not observer.entries or observer.entries[-1]["diag_share"] is None:
        return None
    norm, f2 = observer.final_terms
    final = observer.entries[-1]
    low, high = bootstrap_ci(lambda idx: norm / math.sqrt(float(np.mean(f2[idx]))), int(f2.size))
    return {"step": step, "probes": int(f2.size), "estimate": final["diag_share"], "se": final["diag_share_se"],
            "ci_low": low, "ci_high": high}  # fmt: skip


def compute(context: Context) -> dict[str, Any]:
    observer = context.observers["spectrum"]
    entries = observer.entries
    step = entries[-1]["step"] if entries else None
    return {"threshold": THRESHOLD, "verdict": _interval(observer, step), **series(entries)}


def spectrum_verdicts(metrics: Mapping[str, Any]) -> list[Verdict]:
    """``spectrum.diag_share``: can a diagonal model capture most of the Hessian (:data:`RULE`)."""
    spectrum = metrics.get("spectrum") or {}
    vid = "spectrum.diag_share"
    entries = spectrum.get("snapshots") or []
    if not entries:
        why = "No snapshot holds the spectrum instrument's measurements (--instruments spectrum)."
        return [not_applicable(vid, RULE, why)]
    found = spectrum.get("verdict")
    if not found:
        problem = entries[-1].get("share_problem") or "the Frobenius norm estimate is not positive"
        return [
            not_applicable(vid, RULE, f"The diagonal's share is not computed at step {entries[-1]['step']}: {problem}.")
        ]
    estimate, low, high = found["estimate"], found["ci_low"], found["ci_high"]
    outcome = decide_above(estimate, low, high, THRESHOLD)
    words = (
        f"the diagonal's share of the Frobenius norm, ||diag H|| / ||H||, is {interval_words(estimate, low, high)} "
        f"at the final spectrum snapshot (step {found['step']})"
    )
    captured = f"{100 * estimate**2:.2g} %" if _is_number(estimate) else "?"
    says = {
        "yes": f"A diagonal model can capture most of the Hessian: {words}, above 1/sqrt(2); the diagonal holds "
        f"about {captured} of the squared norm.",
        "no": f"A diagonal model cannot capture most of the Hessian: {words}, below 1/sqrt(2); the diagonal holds "
        f"about {captured} of the squared norm, the rest is off the diagonal.",
        "inconclusive": f"Whether the diagonal holds most of the Hessian is inconclusive: {words}; the interval "
        "contains 1/sqrt(2).",
    }.get(outcome, f"The diagonal's share is not decided: {words}.")
    return [Verdict(vid, outcome, estimate, low, high, RULE, says)]


def _findings(out: Findings, metrics: Mapping[str, Any]) -> None:
    spectrum = metrics.get("spectrum") or {}
    final = spectrum.get("final")
    if not final:
        return
    top = ", ".join(num(v) for v in final.get("top") or [] if _is_number(v))
    negative, near = final.get("mass_negative"), final.get("mass_near_zero")
    tail = (
        f"; SLQ ({final.get('slq_probes')} probes, rough) puts {negative:.0%} of the eigenvalues below "
        f"-{num(final['zero_band'])} and {near:.0%} within +-{num(final['zero_band'])} (1 % of the top eigenvalue)"
        if _is_number(negative) and _is_number(near)
        else ""
    )
    converged = "" if final.get("converged") is not False else " (Lanczos did not converge: the eigenvalues are rough)"
    out.add(
        "spectrum",
        "info",
        f"Hessian of the probe loss at step {final['step']}: trace {num(final['trace_hutchpp'])} "
        f"(Hutch++, SE {num(final['trace_hutchpp_se'])}; Hutchinson {num(final['trace'])}, SE {num(final['trace_se'])}), "
        f"top eigenvalues {top}, most negative {num(final['min'])}{converged}{tail}.",
    )
    (verdict,) = spectrum_verdicts(metrics)
    if verdict.outcome != "not_applicable":
        out.add("spectrum", "warning" if verdict.outcome == "no" else "info", verdict.text)


def spectrum_section(metrics: Mapping[str, Any]) -> list[Block]:
    """Trace, extreme eigenvalues and the diagonal's share per spectrum snapshot; share per layer."""
    blocks: list[Block] = [Heading(2, (text("Curvature spectrum"),))]
    spectrum = metrics.get("spectrum") or {}
    entries = spectrum.get("snapshots") or []
    if not entries:
        return blocks + [
            _not_computed("no snapshot holds the spectrum instrument's measurements (--instruments spectrum).")
        ]
    blocks.append(
        Paragraph(
            "The Hessian H of the probe loss (the reference's batch and mode), from Hessian-vector products: its "
            "trace (Hutchinson and Hutch++, with standard errors), its largest and most negative eigenvalues "
            "(Lanczos), and the diagonal's share ||diag H|| / ||H||_F (exact diagonal over a Hutchinson estimate of "
            "the Frobenius norm, +- its standard error): the squared share is the fraction of ||H||_F^2 a "
            "diagonal model such as arTuRO's a can hold at best."
        )
    )
    k = max(len(e.get("top") or []) for e in entries)
    header = ("step", "trace (Hutch++)", "trace (Hutchinson)", *(f"lambda_{i + 1}" for i in range(k)), "lambda_min",
              "share +- SE", "below / near / above 0")  # fmt: skip
    rows = []
    for e in entries:
        top = list(e.get("top") or []) + [None] * (k - len(e.get("top") or []))
        share = f"{num(e['diag_share'])} +- {num(e['diag_share_se'])}" if _is_number(e.get("diag_share")) else "-"
        neg = (
            f"{e['mass_negative']:.0%} / {e['mass_near_zero']:.0%} / {e['mass_positive']:.0%}"
            if _is_number(e.get("mass_negative"))
            else "-"
        )
        rows.append((str(e["step"]), f"{num(e['trace_hutchpp'])} +- {num(e['trace_hutchpp_se'])}",
                     f"{num(e['trace'])} +- {num(e['trace_se'])}", *(num(v) for v in top), num(e["min"]), share, neg))  # fmt: skip
    blocks.append(
        Table(
            header,
            tuple(rows),
            caption="Per spectrum snapshot; the last column: SLQ's shares of the eigenvalues below, within and above "
            "+-1 % of lambda_1 (rough).",
        )
    )
    final = entries[-1]
    if final.get("layers"):
        layer_rows = tuple(
            (layer, str(g["n"]), f"{num(g['diag_share'])} +- {num(g['diag_share_se'])}")
            for layer, g in final["layers"].items()
        )
        caption = f"At step {final['step']}: the share of each layer's rows of H (||diag H_l|| / ||H_l,:||_F)."
        blocks.append(Table(("layer", "coordinates", "diagonal share +- SE"), layer_rows, caption=caption))
    elif final.get("share_problem"):
        blocks.append(_not_computed(f"the diagonal's share: {final['share_problem']}."))
    blocks += [Paragraph(v.text) for v in spectrum_verdicts(metrics)]
    return blocks


QUANTITY = Quantity(
    name="spectrum",
    needs=(
        "snapshots.csv: spectrum_* columns (the spectrum instrument)",
        "instruments/step_*.npz: spectrum/row_sq, spectrum/ritz_nodes, spectrum/ritz_weights",
        "snapshots: h_exact (for the diagonal's share)",
    ),
    compute=compute,
    observer=_Observer,
    findings=_findings,
    blocks=spectrum_section,
    figures=(FIGURE, DENSITY_FIGURE),
    verdicts=spectrum_verdicts,
)
