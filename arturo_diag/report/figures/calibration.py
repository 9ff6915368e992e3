"""Figure of the calibration of the filter's claimed variance P_aa against the error a - h."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import PercentFormatter
from scipy.special import erf

from arturo_diag.diagnostics.calibration import GAUSSIAN_COVERAGE, GAUSSIAN_SHARPNESS
from arturo_diag.diagnostics.record import RunRecord
from arturo_diag.report.figures.common import (
    _C,
    FigureSkipped,
    FigureSpec,
    _final_arrays,
    _layer_colors,
    _layer_label,
    _legend_outside,
    _no_reference_reason,
    _plot_per_layer,
    _series_layers,
    _values,
)
from arturo_diag.report.format import count, get, num, pct

__all__ = ["FIGURE", "plot_calibration"]


def plot_calibration(record: RunRecord, metrics: dict[str, Any], fig: Figure) -> None:
    """Is the filter's claimed uncertainty ``Var(a) = P_aa`` right about the actual error ``a - h``?

    Top left: coverage, the share of coordinates with ``|a-h| <= 2 sqrt(P_aa)``, per snapshot (95%
    if calibrated, dashed; green band: the range called calibrated). Top right: sharpness, the
    median of ``|a-h|/sqrt(P_aa)`` (0.67 if calibrated; far below means the claimed uncertainty is
    vacuous and full coverage says nothing, far above means overconfident). Bottom: the histogram
    of ``|a-h|/sqrt(P_aa)`` over coordinates at the final snapshot, beside what a calibrated
    filter would give (``|N(0,1)|``, dashed).

    Needs ``metrics["calibration"]["snapshots"]`` (``overall``/``layers`` -> ``coverage``,
    ``sharpness``) and, for the histogram, the arrays ``curvature``, ``filter_cov_aa`` and the
    reference of the final calibration snapshot.
    """
    entries = get(metrics, "calibration", "snapshots") or []
    if not entries:
        if not get(metrics, "agreement", "snapshots"):
            raise FigureSkipped(_no_reference_reason(metrics))
        raise FigureSkipped(
            get(metrics, "calibration", "reason")
            or "no snapshot holds the filter variance P_aa (filter_cov_aa) of every parameter"
        )
    steps = np.asarray([e["step"] for e in entries], dtype=np.float64)
    axes = fig.subplot_mosaic([["coverage", "sharpness"], ["hist", "hist"]], height_ratios=[1, 1.1])
    _panel_coverage(axes["coverage"], steps, entries)
    _panel_sharpness(axes["sharpness"], steps, entries)
    final = entries[-1]
    _panel_histogram(axes["hist"], record, final)
    if "variance" in final:  # another optimizer's claimed variance V (curvature_var), not P_aa
        for ax in axes.values():
            ax.set_ylabel(ax.get_ylabel().replace("P_aa", "V"))
            ax.set_xlabel(ax.get_xlabel().replace("P_aa", "V"))
    label = get(final, "overall", "interpretation") or "undefined"
    claim = "the filter's claimed Var(a) = P_aa" if "variance" not in final else "the optimizer's claimed Var(a) = V"
    fig.suptitle(
        f"Calibration of {claim} against h: {label} at the final snapshot "
        f"(coverage {pct(get(final, 'overall', 'coverage'))}, "
        f"sharpness {num(get(final, 'overall', 'sharpness'))})"
    )


def _panel_coverage(ax: Any, steps: np.ndarray, entries: list[dict[str, Any]]) -> None:
    """Top left: coverage per snapshot and layer, the calibrated value (dashed) and range (green)."""
    _plot_per_layer(ax, steps, entries, "coverage")
    ax.set_xlabel("optimizer step (snapshots)")
    ax.axhspan(0.85, 0.99, color=_C["calibrated"], alpha=0.12, lw=0)
    ax.axhline(GAUSSIAN_COVERAGE, color=_C["calibrated"], ls="--", lw=1.4)
    ax.set_ylim(-0.03, 1.03)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_ylabel("coverage: share with\n|a-h| <= 2 sqrt(P_aa)")
    ax.set_title(f"coverage (calibrated: {pct(GAUSSIAN_COVERAGE)}, dashed)")


def _panel_sharpness(ax: Any, steps: np.ndarray, entries: list[dict[str, Any]]) -> None:
    """Top right (log y): sharpness per snapshot and layer, the calibrated value and the vacuous,
    calibrated and overconfident bands; the legend of both top panels."""
    _plot_per_layer(ax, steps, entries, "sharpness")
    ax.set_xlabel("optimizer step (snapshots)")
    layers = _series_layers(entries)
    values = np.concatenate(
        [_values(entries, "overall", "sharpness")]
        + [_values(entries, "layers", layer, "sharpness") for layer in layers]
    )
    finite = values[np.isfinite(values) & (values > 0)]
    low = min(float(finite.min()) if finite.size else 0.1, 0.1) / 2
    high = max(float(finite.max()) if finite.size else 3.0, 3.0) * 2
    ax.set_yscale("log")
    ax.set_ylim(low, high)
    ax.axhspan(0.4, 1.0, color=_C["calibrated"], alpha=0.12, lw=0)
    ax.axhspan(low, 0.2, color="#d62728", alpha=0.06, lw=0)
    ax.axhspan(2.0, high, color="#ff7f0e", alpha=0.06, lw=0)
    ax.axhline(GAUSSIAN_SHARPNESS, color=_C["calibrated"], ls="--", lw=1.4)
    ax.set_ylabel("sharpness: median\n|a-h| / sqrt(P_aa)")
    ax.set_title(f"sharpness (calibrated: {num(GAUSSIAN_SHARPNESS, 2)}, dashed)")
    colors, many = _layer_colors(layers)
    legend = [
        Line2D([], [], color=colors[layer], lw=1.1, label=_layer_label(layer, i, layers, many))
        for i, layer in enumerate(layers)
    ]
    legend = [h for h in legend if not h.get_label().startswith("_")]
    legend += [
        Line2D([], [], color=_C["overall"], lw=2.4, label="all coordinates"),
        Line2D([], [], color=_C["calibrated"], ls="--", lw=1.4, label="calibrated value"),
        Patch(color=_C["calibrated"], alpha=0.25, label="calibrated range"),
        Patch(color="#d62728", alpha=0.15, label="vacuous (< 0.2)"),
        Patch(color="#ff7f0e", alpha=0.15, label="overconfident (> 2)"),
    ]
    _legend_outside(ax, legend)


def _panel_histogram(ax: Any, record: RunRecord, final: dict[str, Any]) -> None:
    """Bottom: the histogram of |a-h|/sqrt(P_aa) over the coordinates of the final calibration
    snapshot against |N(0,1)|, or the reason it cannot be drawn, written in the empty axes."""
    step = int(final["step"])
    field = str(final.get("reference") or "h_exact")
    try:
        variance = str(final.get("variance") or "filter_cov_aa")  # arTuRO's P_aa, or curvature_var
        arrays, _ = _final_arrays(record, step, ("curvature", variance, field))
    except FigureSkipped as skipped:
        _histogram_skipped(ax, skipped.reason)
        return
    a, p_aa, h = arrays["curvature"], arrays[variance], arrays[field]
    ok = np.isfinite(a) & np.isfinite(h) & np.isfinite(p_aa) & (p_aa > 0)
    z = np.abs(a[ok] - h[ok]) / np.sqrt(p_aa[ok])
    positive = z[z > 0]
    if positive.size == 0:
        _histogram_skipped(ax, "a = h exactly wherever P_aa > 0")
        return
    lo = min(float(positive.min()), 0.01)
    hi = max(float(positive.max()), 10.0)
    bins = np.logspace(math.log10(lo), math.log10(hi) + 1e-9, 60)
    counts, _ = np.histogram(positive, bins=bins)
    ax.stairs(
        counts,
        bins,
        fill=True,
        alpha=0.55,
        color="#1f77b4",
        label=f"coordinates at step {step} ({count(positive.size)})",
    )
    expected = positive.size * np.diff(erf(bins / math.sqrt(2.0)))
    ax.stairs(expected, bins, color="black", ls="--", lw=1.2, label="if calibrated: |N(0,1)|")
    ax.axvline(
        GAUSSIAN_SHARPNESS,
        color=_C["calibrated"],
        lw=1.4,
        label=f"median if calibrated ({num(GAUSSIAN_SHARPNESS, 2)})",
    )
    ax.axvline(2.0, color="0.3", ls=":", lw=1.4, label="2: coverage bound")
    observed = float(np.median(z))
    ax.axvline(observed, color="#d62728", lw=1.6, label=f"observed median ({num(observed)})")
    ax.set_xscale("log")
    ax.set_xlabel("|a - h| / sqrt(P_aa)  (error in units of the claimed standard deviation)")
    ax.set_ylabel("coordinates")
    zeros = int(z.size - positive.size)
    note = f"; {count(zeros)} with a = h exactly not drawn" if zeros else ""
    ax.set_title(f"distribution of |a-h| / sqrt(P_aa) at the final snapshot (step {step}){note}")
    _legend_outside(ax)


def _histogram_skipped(ax: Any, reason: str) -> None:
    ax.text(0.5, 0.5, f"histogram skipped: {reason}", ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


#: This figure, listed in its quantity's ``figures`` (:mod:`arturo_diag.quantities`).
FIGURE = FigureSpec(
    "calibration",
    plot_calibration,
    (11.0, 7.5),
    "Calibration of P_aa: coverage (95% if calibrated) and sharpness (0.67 if calibrated) per snapshot, "
    "and the histogram of |a-h|/sqrt(P_aa) at the final snapshot against |N(0,1)|.",
)
