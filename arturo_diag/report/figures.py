"""The report's figures: one function per plot (seaborn styling on matplotlib's Agg backend).

Every figure function has the signature ``plot_NAME(record, metrics, fig) -> None``: it draws
into the empty :class:`matplotlib.figure.Figure` ``fig`` from the run record
(:class:`~arturo_diag.diagnostics.record.RunRecord`) and the metrics dict of
:func:`~arturo_diag.diagnostics.analysis.analyze_record`. Its docstring says what the plot means
and which record/metrics fields it needs. When those are missing it raises
:class:`FigureSkipped` with the reason, which the report lists instead of the figure (a missing
quantity is never a crash).

:func:`draw_figure` renders one of :data:`FIGURES` to PNG bytes, deterministically: fixed size
and DPI, fixed style (``rc_context``, nothing global is changed), no pyplot state, and PNG
metadata without the matplotlib version, so the same record gives byte-identical files.
"""
from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")  # the report only ever writes files

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import PercentFormatter
from scipy.special import erf

from arturo_diag.diagnostics.agreement import INITIAL_CURVATURE
from arturo_diag.diagnostics.calibration import GAUSSIAN_COVERAGE, GAUSSIAN_SHARPNESS
from arturo_diag.diagnostics.record import RunRecord
from arturo_diag.diagnostics.trust_region import OVERSHOOT, classify_regimes
from arturo_diag.report.format import count, get, is_number, num, pct

__all__ = [
    "DPI",
    "FIGURES",
    "MAX_SCATTER_POINTS",
    "FigureSkipped",
    "FigureSpec",
    "draw_figure",
    "plot_agreement",
    "plot_calibration",
    "plot_lag",
    "plot_precision",
    "plot_scatter",
    "plot_training",
    "plot_trust_region",
]

DPI = 100
MAX_SCATTER_POINTS = 20_000
_SCATTER_SEED = 0
_MANY_LAYERS = 10  # above this, layers are coloured by depth instead of named in the legend

# seaborn's whitegrid look, fixed fonts; applied with rc_context around each figure only.
_RC: dict[str, Any] = {
    **sns.axes_style("whitegrid"),
    **sns.plotting_context("notebook", font_scale=0.8),
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "font.family": "DejaVu Sans",
    "axes.titlesize": 10,
    "figure.titlesize": 11,
    "legend.fontsize": 8,
    "legend.frameon": True,
    "legend.framealpha": 0.9,
    "axes.formatter.useoffset": False,
}
_PNG_METADATA = {"Software": None}  # no matplotlib version in the file
_REFERENCE_WORDS = {"h_exact": "exact diagonal Hessian h", "h_hutchinson": "Hutchinson estimate of h"}
_C = {"overall": "black", "constant": "#e7298a", "eta": "#1f77b4", "growth": "#ff7f0e", "frozen": "#d62728", "fixed": "#7f7f7f",
      "kl": "#2ca02c", "drop": "#9467bd", "collapse": "#d62728", "calibrated": "#2ca02c"}


class FigureSkipped(Exception):
    """Raised by a figure function when the record lacks what the figure needs; ``reason`` says what."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# ------------------------------------------------------------------------------------ helpers
def _steps(record: RunRecord) -> pd.DataFrame:
    steps = record.steps
    if "step" not in steps.columns or len(steps) == 0:
        return steps.iloc[0:0]
    steps = steps.assign(step=pd.to_numeric(steps["step"], errors="coerce"))
    return steps[steps["step"].notna()].sort_values("step", kind="stable").reset_index(drop=True)


def _col(table: pd.DataFrame, name: str) -> np.ndarray:
    if name not in table.columns:
        return np.full(len(table), np.nan)
    return pd.to_numeric(table[name], errors="coerce").to_numpy(dtype=np.float64)


def _steps_words(n: int) -> str:
    return f"{count(n)} step" + ("" if n == 1 else "s")


def _no_reference_reason(metrics: dict[str, Any]) -> str:
    run = metrics.get("run") or {}
    if not run.get("n_snapshots"):
        return "the record has no snapshots (reference 'none' or no snapshot was due)"
    return (f"none of the {run['n_snapshots']} snapshots has both the curvature estimate a and a reference h "
            f"(reference: {run.get('reference')})")


def _layer_colors(layers: Sequence[str]) -> tuple[dict[str, Any], bool]:
    """Layer -> colour; ``many`` when there are too many layers to name each in a legend."""
    many = len(layers) > _MANY_LAYERS
    palette = sns.color_palette("viridis" if many else "tab10", max(len(layers), 1))
    return {layer: palette[i] for i, layer in enumerate(layers)}, many


def _layer_label(layer: str, i: int, layers: Sequence[str], many: bool) -> str:
    if not many:
        return layer
    if i == 0:
        return f"first layer ({layer}); {len(layers)} layers, dark to light by depth"
    if i == len(layers) - 1:
        return f"last layer ({layer})"
    return "_nolegend_"


def _legend_outside(ax: Any, handles: Sequence[Any] | None = None, **kwargs: Any) -> None:
    if handles is not None:
        kwargs["handles"] = list(handles)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, **kwargs)


def _series_layers(entries: Sequence[dict[str, Any]]) -> list[str]:
    layers: dict[str, None] = {}
    for entry in entries:
        for layer in entry.get("layers") or {}:
            layers.setdefault(layer, None)
    return list(layers)


def _values(entries: Sequence[dict[str, Any]], *path: Any) -> np.ndarray:
    out = []
    for entry in entries:
        value = get(entry, *path)
        out.append(float(value) if is_number(value) else np.nan)
    return np.asarray(out, dtype=np.float64)


def _log_if_wide(ax: Any, values: np.ndarray, axis: str = "y", ratio: float = 20.0) -> None:
    finite = values[np.isfinite(values)]
    if finite.size and np.all(finite > 0) and finite.max() / finite.min() > ratio:
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")


def _bound_drops(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    return [d for d in (get(metrics, "trust_region", "bound_drops") or []) if is_number(d.get("step"))]


def _mark_drops(axes: Sequence[Any], drops: Sequence[dict[str, Any]], label: bool = True) -> None:
    for i, drop in enumerate(drops):
        factor = f" (x{num(drop['factor'])})" if is_number(drop.get("factor")) else ""
        for j, ax in enumerate(axes):
            ax.axvline(drop["step"], color=_C["drop"], ls="-.", lw=1.0,
                       label=f"KL bound drop{factor}" if (label and i == 0 and j == 0) else "_nolegend_")


def _final_arrays(record: RunRecord, step: int, fields: Sequence[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Concatenated arrays of ``fields`` at ``step`` over the parameters holding all of them, and
    the layer index of every coordinate (layers in the record's order)."""
    snapshot = record.snapshot(step, fields=fields)
    names = [name for name, arrays in snapshot.items() if all(f in arrays for f in fields)]
    if not names:
        raise FigureSkipped(f"the snapshot at step {step} holds none of {', '.join(fields)} for any parameter")
    layer_order = list(dict.fromkeys(record.layers.get(n, n) for n in list(record.parameters) + names))
    index = {layer: i for i, layer in enumerate(layer_order)}
    arrays = {f: np.concatenate([snapshot[n][f].reshape(-1) for n in names]) for f in fields}
    layer_index = np.concatenate([np.full(snapshot[n][fields[0]].size, index[record.layers.get(n, n)])
                                  for n in names])
    return arrays, layer_index


# ------------------------------------------------------------------------------------ figures
def plot_agreement(record: RunRecord, metrics: dict[str, Any], fig: Figure) -> None:
    """Agreement of the curvature estimate a with the reference h over training, per layer.

    Top: relative error ``||a-h||/||h||`` (lower is better); bottom: Spearman rank correlation
    (higher is better); one line per layer and a thick black line for all coordinates, at every
    snapshot. Beside them the two baselines of ARTURO.md ("Diagnostic quantities"), overall: the
    constant vector 0.1 (dashed pink; a constant has no ranks, so its Spearman is drawn at 0) and
    the previous snapshot's h (dotted grey). An estimate above the dashed relative-error line does not
    beat a constant.

    Needs ``metrics["agreement"]["snapshots"]`` (per snapshot: ``overall`` and ``layers`` ->
    ``estimate``/``constant``/``previous_h`` -> ``relative_error``, ``spearman``).
    """
    entries = get(metrics, "agreement", "snapshots") or []
    if not entries:
        raise FigureSkipped(_no_reference_reason(metrics))
    steps = np.asarray([e["step"] for e in entries], dtype=np.float64)
    layers = _series_layers(entries)
    colors, many = _layer_colors(layers)
    constant_value = get(entries[-1], "overall", "constant_value")
    constant_value = constant_value if is_number(constant_value) else INITIAL_CURVATURE
    ax_err, ax_rho = fig.subplots(2, 1, sharex=True)
    marker = "." if len(steps) <= 60 else None
    for metric, ax in (("relative_error", ax_err), ("spearman", ax_rho)):
        for i, layer in enumerate(layers):
            ax.plot(steps, _values(entries, "layers", layer, "estimate", metric), color=colors[layer],
                    lw=1.1, marker=marker, ms=4, alpha=0.9, label=_layer_label(layer, i, layers, many))
        ax.plot(steps, _values(entries, "overall", "estimate", metric), color=_C["overall"], lw=2.4,
                marker=marker, ms=5, label="all coordinates")
        previous = _values(entries, "overall", "previous_h", metric)
        if np.isfinite(previous).any():
            ax.plot(steps, previous, color="0.45", ls=":", lw=1.6, marker="s", ms=3,
                    label="baseline: previous snapshot's h")
    constant = _values(entries, "overall", "constant", "relative_error")
    # drawn on top: early on a is still 0.1 and the estimate's line lies exactly under it
    ax_err.plot(steps, constant, color=_C["constant"], ls="--", lw=1.6, zorder=5,
                label=f"baseline: constant {num(constant_value)}")
    ax_rho.axhline(0.0, color=_C["constant"], ls="--", lw=1.6, zorder=5,
                   label=f"baseline: constant {num(constant_value)} (no ranks: 0)")
    every_err = np.concatenate([_values(entries, "overall", "estimate", "relative_error"), constant] +
                               [_values(entries, "layers", layer, "estimate", "relative_error") for layer in layers])
    _log_if_wide(ax_err, every_err, ratio=10.0)
    ax_err.set_ylabel("relative error ||a-h||/||h||\n(lower is better)")
    ax_rho.set_ylabel("Spearman rank correlation\n(higher is better)")
    ax_rho.set_ylim(-1.05, 1.05)
    ax_rho.set_xlabel("optimizer step (snapshots)")
    ax_err.set_title("relative error of a against h")
    ax_rho.set_title("Spearman rank correlation of a with h")
    _legend_outside(ax_err)
    _legend_outside(ax_rho)
    reference = _REFERENCE_WORDS.get(get(entries[-1], "reference"), "reference h")
    fig.suptitle(f"Agreement of arTuRO's curvature estimate a with the {reference}, per snapshot and layer")


def plot_scatter(record: RunRecord, metrics: dict[str, Any], fig: Figure) -> None:
    """|a| against |h| for every coordinate at the final snapshot (log-log), coloured by layer.

    Circles are coordinates where a and h have the same sign, crosses where the signs differ. On
    the diagonal ``y = x`` the estimate is exact; the dashed horizontal line is 0.1, arTuRO's
    initial a (the prior): points spread along it are coordinates that never left it. Coordinates
    with ``a = 0`` or ``h = 0`` cannot be drawn on log axes and are counted in the title. At most
    20,000 points are drawn, a random subsample with a fixed seed.

    Needs ``metrics["agreement"]["final"]`` (``step``, ``reference``) and the arrays ``curvature``
    and that reference (``h_exact`` or ``h_hutchinson``) of the snapshot at that step.
    """
    final = get(metrics, "agreement", "final")
    if not final:
        raise FigureSkipped(_no_reference_reason(metrics))
    step, field = int(final["step"]), str(final.get("reference") or "h_exact")
    arrays, layer_index = _final_arrays(record, step, ("curvature", field))
    a, h = arrays["curvature"], arrays[field]
    layers = list(dict.fromkeys(record.layers.get(n, n) for n in record.parameters))
    n_total = a.size
    usable = np.isfinite(a) & np.isfinite(h) & (a != 0) & (h != 0)
    chosen = np.flatnonzero(usable)
    if chosen.size == 0:
        raise FigureSkipped(f"at step {step} no coordinate has a finite, non-zero a and h")
    subsampled = chosen.size > MAX_SCATTER_POINTS
    if subsampled:
        rng = np.random.default_rng(_SCATTER_SEED)
        chosen = np.sort(rng.choice(chosen, MAX_SCATTER_POINTS, replace=False))
    a, h, layer_index = a[chosen], h[chosen], layer_index[chosen]
    same = np.sign(a) == np.sign(h)
    abs_a, abs_h = np.abs(a), np.abs(h)
    colors, many = _layer_colors(layers)
    dot, cross = (24, 36) if len(chosen) <= 2000 else (9, 16)
    ax = fig.subplots()
    handles: list[Any] = []
    if many:
        cmap = sns.color_palette("viridis", as_cmap=True)
        for mask, marker in ((same, "o"), (~same, "x")):
            points = ax.scatter(abs_h[mask], abs_a[mask], c=layer_index[mask], cmap=cmap, vmin=0,
                                vmax=max(len(layers) - 1, 1), marker=marker, s=dot if marker == "o" else cross,
                                alpha=0.55, linewidths=0 if marker == "o" else 0.8, rasterized=False)
        colorbar = fig.colorbar(points, ax=ax, pad=0.01)
        colorbar.set_label(f"layer index (0 = {layers[0]}, {len(layers) - 1} = {layers[-1]})")
    else:
        for i, layer in enumerate(layers):
            in_layer = layer_index == i
            if not in_layer.any():
                continue
            for mask, marker in ((in_layer & same, "o"), (in_layer & ~same, "x")):
                if mask.any():
                    ax.scatter(abs_h[mask], abs_a[mask], color=colors[layer], marker=marker,
                               s=dot if marker == "o" else cross, alpha=0.55, linewidths=0 if marker == "o" else 0.8)
            handles.append(Line2D([], [], ls="", marker="o", color=colors[layer], label=layer))
    # y covers |a| and the prior; x covers |h| and the y range, so that the diagonal is visible
    y_low = float(min(abs_a.min(), INITIAL_CURVATURE)) / 1.5
    y_high = float(max(abs_a.max(), INITIAL_CURVATURE)) * 1.5
    x_low = min(float(abs_h.min()) / 1.5, y_low)
    x_high = max(float(abs_h.max()) * 1.5, y_high)
    ax.plot([x_low, x_high], [x_low, x_high], color="black", lw=1.0)
    ax.axhline(INITIAL_CURVATURE, color="black", ls="--", lw=1.0)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(x_low, x_high)
    ax.set_ylim(y_low, y_high)
    reference = "exact" if field == "h_exact" else "Hutchinson"
    ax.set_xlabel(f"|h|  (reference diagonal Hessian, {reference})")
    ax.set_ylabel("|a|  (arTuRO's curvature estimate)")
    handles += [Line2D([], [], ls="", marker="o", color="0.35", label="same sign"),
                Line2D([], [], ls="", marker="x", color="0.35", label="opposite sign"),
                Line2D([], [], color="black", lw=1.0, label="y = x (a = h)"),
                Line2D([], [], color="black", ls="--", lw=1.0, label=f"{num(INITIAL_CURVATURE)} = prior (initial a)")]
    _legend_outside(ax, handles)
    excluded = int(n_total - np.count_nonzero(usable))
    shown = (f"{count(len(chosen))} of {count(int(usable.sum()))} drawable coordinates (random subsample, seed "
             f"{_SCATTER_SEED})" if subsampled else f"{count(len(chosen))} coordinates")
    zeros = f"{count(excluded)} of {count(n_total)} with a = 0 or h = 0 (or non-finite) not drawn; " if excluded else ""
    ax.set_title(f"|a| vs |h| at the final snapshot (step {step}): {shown}\n"
                 f"{zeros}{pct(float(np.mean(~same)))} of those drawn have opposite signs")


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
        raise FigureSkipped("no snapshot holds the filter variance P_aa (filter_cov_aa) of every parameter")
    steps = np.asarray([e["step"] for e in entries], dtype=np.float64)
    layers = _series_layers(entries)
    colors, many = _layer_colors(layers)
    axes = fig.subplot_mosaic([["coverage", "sharpness"], ["hist", "hist"]], height_ratios=[1, 1.1])
    marker = "." if len(steps) <= 60 else None
    for metric, ax in (("coverage", axes["coverage"]), ("sharpness", axes["sharpness"])):
        for i, layer in enumerate(layers):
            ax.plot(steps, _values(entries, "layers", layer, metric), color=colors[layer], lw=1.1, marker=marker,
                    ms=4, alpha=0.9, label=_layer_label(layer, i, layers, many))
        ax.plot(steps, _values(entries, "overall", metric), color=_C["overall"], lw=2.4, marker=marker, ms=5,
                label="all coordinates")
        ax.set_xlabel("optimizer step (snapshots)")
    cov = axes["coverage"]
    cov.axhspan(0.85, 0.99, color=_C["calibrated"], alpha=0.12, lw=0)
    cov.axhline(GAUSSIAN_COVERAGE, color=_C["calibrated"], ls="--", lw=1.4)
    cov.set_ylim(-0.03, 1.03)
    cov.yaxis.set_major_formatter(PercentFormatter(1.0))
    cov.set_ylabel("coverage: share with\n|a-h| <= 2 sqrt(P_aa)")
    cov.set_title(f"coverage (calibrated: {pct(GAUSSIAN_COVERAGE)}, dashed)")
    sharp = axes["sharpness"]
    values = np.concatenate([_values(entries, "overall", "sharpness")] +
                            [_values(entries, "layers", layer, "sharpness") for layer in layers])
    finite = values[np.isfinite(values) & (values > 0)]
    low = min(float(finite.min()) if finite.size else 0.1, 0.1) / 2
    high = max(float(finite.max()) if finite.size else 3.0, 3.0) * 2
    sharp.set_yscale("log")
    sharp.set_ylim(low, high)
    sharp.axhspan(0.4, 1.0, color=_C["calibrated"], alpha=0.12, lw=0)
    sharp.axhspan(low, 0.2, color="#d62728", alpha=0.06, lw=0)
    sharp.axhspan(2.0, high, color="#ff7f0e", alpha=0.06, lw=0)
    sharp.axhline(GAUSSIAN_SHARPNESS, color=_C["calibrated"], ls="--", lw=1.4)
    sharp.set_ylabel("sharpness: median\n|a-h| / sqrt(P_aa)")
    sharp.set_title(f"sharpness (calibrated: {num(GAUSSIAN_SHARPNESS, 2)}, dashed)")
    legend = [Line2D([], [], color=colors[layer], lw=1.1, label=_layer_label(layer, i, layers, many))
              for i, layer in enumerate(layers)]
    legend = [h for h in legend if not h.get_label().startswith("_")]
    legend += [Line2D([], [], color=_C["overall"], lw=2.4, label="all coordinates"),
               Line2D([], [], color=_C["calibrated"], ls="--", lw=1.4, label="calibrated value"),
               Patch(color=_C["calibrated"], alpha=0.25, label="calibrated range"),
               Patch(color="#d62728", alpha=0.15, label="vacuous (< 0.2)"),
               Patch(color="#ff7f0e", alpha=0.15, label="overconfident (> 2)")]
    _legend_outside(sharp, legend)

    hist = axes["hist"]
    final = entries[-1]
    step = int(final["step"])
    field = str(final.get("reference") or "h_exact")
    try:
        arrays, _ = _final_arrays(record, step, ("curvature", "filter_cov_aa", field))
    except FigureSkipped as skipped:
        hist.text(0.5, 0.5, f"histogram skipped: {skipped.reason}", ha="center", va="center",
                  transform=hist.transAxes)
        hist.set_axis_off()
    else:
        a, p_aa, h = arrays["curvature"], arrays["filter_cov_aa"], arrays[field]
        ok = np.isfinite(a) & np.isfinite(h) & np.isfinite(p_aa) & (p_aa > 0)
        z = np.abs(a[ok] - h[ok]) / np.sqrt(p_aa[ok])
        positive = z[z > 0]
        if positive.size == 0:
            hist.text(0.5, 0.5, "histogram skipped: a = h exactly wherever P_aa > 0", ha="center",
                      va="center", transform=hist.transAxes)
            hist.set_axis_off()
        else:
            lo = min(float(positive.min()), 0.01)
            hi = max(float(positive.max()), 10.0)
            bins = np.logspace(math.log10(lo), math.log10(hi) + 1e-9, 60)
            counts, _ = np.histogram(positive, bins=bins)
            hist.stairs(counts, bins, fill=True, alpha=0.55, color="#1f77b4",
                        label=f"coordinates at step {step} ({count(positive.size)})")
            expected = positive.size * np.diff(erf(bins / math.sqrt(2.0)))
            hist.stairs(expected, bins, color="black", ls="--", lw=1.2, label="if calibrated: |N(0,1)|")
            hist.axvline(GAUSSIAN_SHARPNESS, color=_C["calibrated"], lw=1.4,
                         label=f"median if calibrated ({num(GAUSSIAN_SHARPNESS, 2)})")
            hist.axvline(2.0, color="0.3", ls=":", lw=1.4, label="2: coverage bound")
            observed = float(np.median(z))
            hist.axvline(observed, color="#d62728", lw=1.6, label=f"observed median ({num(observed)})")
            hist.set_xscale("log")
            hist.set_xlabel("|a - h| / sqrt(P_aa)  (error in units of the claimed standard deviation)")
            hist.set_ylabel("coordinates")
            zeros = int(z.size - positive.size)
            note = f"; {count(zeros)} with a = h exactly not drawn" if zeros else ""
            hist.set_title(f"distribution of |a-h| / sqrt(P_aa) at the final snapshot (step {step}){note}")
            _legend_outside(hist)
    label = get(final, "overall", "interpretation") or "undefined"
    fig.suptitle(f"Calibration of the filter's claimed Var(a) = P_aa against h: {label} at the final snapshot "
                 f"(coverage {pct(get(final, 'overall', 'coverage'))}, "
                 f"sharpness {num(get(final, 'overall', 'sharpness'))})")


def plot_lag(record: RunRecord, metrics: dict[str, Any], fig: Figure) -> None:
    """Does a trail h? Agreement of ``a_t`` with ``h_(t-k)``, averaged over snapshots t, against k.

    Left: Spearman (higher is better), right: relative error (lower is better); the metric that
    decides the lag is named in its panel title. The shaded band reaches one snapshot-to-snapshot
    noise (the mean change of the k = 0 agreement between consecutive snapshots) from the best
    value: a curve that stays inside it is flat, and the title then says "no identifiable lag"
    instead of a number (ARTURO.md, "Diagnostic quantities").

    Needs ``metrics["lag"]`` (``curves`` -> ``spearman``/``relative_error`` -> ``k``, ``mean``,
    ``noise``, ``argbest``, ``identifiable``; ``metric``, ``identifiable``, ``best_k``,
    ``best_lag_steps``, ``snapshot_interval``, ``reason``).
    """
    lag = metrics.get("lag") or {}
    curves = lag.get("curves") or {}
    if not curves:
        if not get(metrics, "agreement", "snapshots"):
            raise FigureSkipped(_no_reference_reason(metrics))
        raise FigureSkipped(f"lag {lag.get('reason') or 'not assessed'}")
    decides = lag.get("metric", "spearman")
    axes = fig.subplots(1, 2)
    interval = lag.get("snapshot_interval")
    for ax, (metric, words, larger_is_better, color) in zip(axes, (
            ("spearman", "Spearman of a_t with h_(t-k)", True, "#1f77b4"),
            ("relative_error", "relative error of a_t against h_(t-k)", False, "#ff7f0e"))):
        curve = curves.get(metric)
        if not curve:
            ax.set_axis_off()
            continue
        k = np.asarray(curve["k"], dtype=np.float64)
        mean = np.asarray([m if is_number(m) else np.nan for m in curve["mean"]], dtype=np.float64)
        ax.plot(k, mean, color=color, marker="o", lw=1.8, label="mean over snapshots t")
        noise = curve.get("noise")
        if np.isfinite(mean).any():
            best_value = float(np.nanmax(mean) if larger_is_better else np.nanmin(mean))
            if is_number(noise):
                band = (best_value - noise, best_value) if larger_is_better else (best_value, best_value + noise)
                ax.axhspan(*band, color="0.5", alpha=0.18, lw=0,
                           label=f"within snapshot noise ({num(noise)}) of the best")
            best = curve.get("argbest")
            if best is not None:
                identifiable = bool(curve.get("identifiable"))
                ax.plot([k[best]], [mean[best]], ls="", marker="*", ms=15, color="black" if identifiable else "0.6",
                        label=f"best k = {best}" + ("" if identifiable else " (not distinguishable from noise)"))
        ax.set_xticks(k)
        steps_words = f" (1 snapshot = {num(interval)} steps)" if is_number(interval) and lag.get("interval_regular") else ""
        ax.set_xlabel(f"k, snapshots back{steps_words}")
        ax.set_ylabel(words + ("\n(higher is better)" if larger_is_better else "\n(lower is better)"))
        role = "decides the lag" if metric == decides else "shown for reference"
        verdict = "no identifiable lag" if not curve.get("identifiable") else f"best k = {curve.get('best_k')}"
        ax.set_title(f"{metric.replace('_', ' ')}: {role}; {verdict}\n"
                     f"range {num(curve.get('range'))} vs snapshot noise {num(noise)}")
        ax.legend(loc="best")
    if lag.get("identifiable"):
        best_k = lag.get("best_k")
        headline = ("no lag: a_t agrees best with the same snapshot's h" if best_k == 0 else
                    f"a lags h by about {best_k} snapshot{'s' if best_k != 1 else ''} "
                    f"({num(lag.get('best_lag_steps'))} steps)")
    else:
        headline = "no identifiable lag (the curve is flat within snapshot noise)"
    fig.suptitle(f"Lag of the curvature estimate behind h: {headline}")


_KL_CEILING = 1e200


def plot_trust_region(record: RunRecord, metrics: dict[str, Any], fig: Figure) -> None:
    """eta per step with its bisection bracket, the inactive steps, and the achieved K/eps.

    Top (log y): the eta the rule used, its final bracket ``[eta_lo, eta_hi]`` shaded, and the
    steps where the KL bound did not decide eta (ARTURO.md, "the eta floor"): orange triangles
    where eta grew by 5/3 without evaluating K (``eta_prev <= 3/8 eta_tol``), red squares where it
    stayed frozen at the floor (one evaluation in ``(3/8, 3/4] eta_tol``, shaded red); crosses are
    the exact root eta* at snapshots. Bottom (log y): the achieved ``K(eta)/eps``; 1 is on the
    bound, above 1.1 (dashed) is overshoot (red dots). Dash-dotted verticals mark drops of the KL
    bound (the scheduler), with the peak overshoot and the steps it took to recover.

    Needs steps.csv ``step``, ``eta`` (else skipped: not an arTuRO run), ``eta_lo``, ``eta_hi``,
    ``eta_prev``, ``iterations``, ``kl_ratio``; ``metrics["trust_region"]`` (``eta_tol``,
    ``regime_share``, ``overshoot_share``, ``bound_drops``); snapshots.csv ``eta_star``.
    """
    steps = _steps(record)
    eta = _col(steps, "eta")
    if not np.isfinite(eta).any():
        if np.isinf(eta).any():
            raise FigureSkipped("eta is inf at every step: the KL bound is 0, so no step of the mean was allowed")
        raise FigureSkipped("steps.csv records no eta (not an arTuRO run, or an empty run)")
    eta = np.where(np.isfinite(eta), eta, np.nan)  # inf (a zero KL bound: no step) cannot be drawn
    tr = metrics.get("trust_region") or {}
    eta_tol = float(tr.get("eta_tol") or get(metrics, "run", "eta_tol") or 0.5)
    step = _col(steps, "step")
    lo, hi, kl = (np.where(np.isfinite(x), x, np.nan) for x in
                  (_col(steps, "eta_lo"), _col(steps, "eta_hi"), _col(steps, "kl_ratio")))
    fixed_eta = tr.get("fixed_eta")
    regimes = classify_regimes(steps, eta_tol=eta_tol, fixed_eta=fixed_eta)["regime"].to_numpy()
    ax_eta, ax_kl = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    with np.errstate(invalid="ignore"):
        positive_lo = np.where(lo > 0, lo, np.nan)
        bracket = np.isfinite(positive_lo) & np.isfinite(hi)
    if bracket.any():
        ax_eta.fill_between(step, positive_lo, hi, where=bracket, color=_C["eta"], alpha=0.18, lw=0,
                            label="final bisection bracket [eta_lo, eta_hi]")
    floor_low, floor_high = 0.375 * eta_tol, 0.75 * eta_tol
    ax_eta.axhspan(floor_low, floor_high, color=_C["frozen"], alpha=0.07, lw=0,
                   label=f"floor window ({num(floor_low)}, {num(floor_high)}]: one K evaluation")
    ax_eta.axhline(floor_low, color=_C["growth"], ls=":", lw=1.0,
                   label=f"eta_prev <= {num(floor_low)}: no K evaluation, x5/3")
    ax_eta.plot(step, eta, color=_C["eta"], lw=1.3, label="eta used by the rule")
    for regime, color, marker, words in (("growth_5_3", _C["growth"], "^", "5/3 growth, K not evaluated"),
                                         ("frozen", _C["frozen"], "s", "frozen at the floor"),
                                         ("fixed", _C["fixed"], "D", "eta fixed (trust region off)")):
        mask = regimes == regime
        if mask.any():
            ax_eta.scatter(step[mask], eta[mask], color=color, marker=marker, s=10, zorder=3, lw=0,
                           label=f"{words} ({_steps_words(int(mask.sum()))})")
    snapshots = record.snapshots
    eta_star = _col(snapshots, "eta_star")
    star_steps = _col(snapshots, "step")
    has_star = np.isfinite(eta_star) & (eta_star > 0)
    if has_star.any():
        ax_eta.scatter(star_steps[has_star], eta_star[has_star], color="black", marker="x", s=28, lw=1.2, zorder=4,
                       label="eta* (exact root of K = eps) at snapshots")
    shown = np.concatenate([eta[np.isfinite(eta) & (eta > 0)], eta_star[has_star]])
    if shown.size:
        ax_eta.set_yscale("log")
        ax_eta.set_ylim(min(float(shown.min()), floor_low) / 3, max(float(shown.max()), floor_high) * 3)
    ax_eta.set_ylabel("eta (log)")
    ax_eta.set_title("eta per step, its bisection bracket, and the steps where the bound did not decide it")

    with np.errstate(invalid="ignore"):
        # matplotlib's log ticks overflow on axes reaching past ~1e270: larger ratios (a bound near 0)
        # are drawn at _KL_CEILING
        kl_positive = np.where(kl > 0, np.minimum(kl, _KL_CEILING), np.nan)
    if np.isfinite(kl_positive).any():
        ax_kl.plot(step, kl_positive, color=_C["kl"], lw=1.0, label="K(eta)/eps achieved")
        over = kl_positive > OVERSHOOT
        if over.any():
            ax_kl.scatter(step[over], kl_positive[over], color=_C["frozen"], s=9, zorder=3, lw=0,
                          label=f"overshoot, K/eps > {num(OVERSHOOT)} ({_steps_words(int(over.sum()))})")
        ax_kl.set_yscale("log")
        # explicit limits: autoscaling's margin on a range of hundreds of decades (eps = 1e-300) overflows
        ax_kl.set_ylim(min(float(np.nanmin(kl_positive)), 1.0) / 3, max(float(np.nanmax(kl_positive)), OVERSHOOT) * 3)
    else:
        ax_kl.text(0.5, 0.5, "no K/eps recorded", ha="center", va="center", transform=ax_kl.transAxes)
    ax_kl.axhline(1.0, color="black", lw=1.0, label="1: on the bound")
    ax_kl.axhline(OVERSHOOT, color=_C["frozen"], ls="--", lw=1.0, label=f"{num(OVERSHOOT)}: overshoot threshold")
    drops = _bound_drops(metrics)
    _mark_drops((ax_kl, ax_eta), drops)
    for drop in drops:
        peak, peak_step = drop.get("peak_kl_ratio"), drop.get("peak_step")
        if is_number(peak) and peak_step is not None and peak > 0:
            recovered = (f"back <= {num(OVERSHOOT)} after {drop['steps_to_recover']} steps" if drop.get("recovered")
                         else "not recovered by the end")
            ax_kl.annotate(f"peak {num(peak)}\n{recovered}", xy=(peak_step, peak), xytext=(8, -4),
                           textcoords="offset points", fontsize=8, va="top")
    ax_kl.set_ylabel("K(eta) / eps (log)")
    ax_kl.set_xlabel("optimizer step")
    ax_kl.set_title("achieved KL of the step relative to the bound")
    _legend_outside(ax_eta)
    _legend_outside(ax_kl)
    share = tr.get("regime_share") or {}
    if fixed_eta is not None:
        fig.suptitle(f"Trust region off: eta fixed at {num(fixed_eta)} at every one of {count(len(steps))} steps")
        return
    fig.suptitle(f"Trust region: bisection active {pct(share.get('bisection'))}, 5/3 growth "
                 f"{pct(share.get('growth_5_3'))}, frozen at the floor {pct(share.get('frozen'))}, overshoot "
                 f"{pct(tr.get('overshoot_share'))} of {count(len(steps))} steps")


def plot_precision(record: RunRecord, metrics: dict[str, Any], fig: Figure) -> None:
    """Quantiles (1%, 50%, 99%) of the precision pi over coordinates, per step (log y).

    The dashed red line is the variance-collapse threshold: above it a coordinate's variance
    ``1/pi`` is below ``collapse_fraction * var_init``; the dotted line is the initial precision
    ``1/var_init``. A band rising towards the red line means the weight posterior is collapsing.

    Needs steps.csv ``precision_q01``, ``precision_q50``, ``precision_q99`` (or, when the monitor
    did not record them per step, the snapshot quantiles ``metrics["health"]["snapshots"]``),
    ``metrics["run"]["var_init"]`` and ``metrics["health"]["collapse_fraction"]``.
    """
    steps = _steps(record)
    step = _col(steps, "step")
    q01, q50, q99 = (_col(steps, f"precision_q{q}") for q in ("01", "50", "99"))
    rows = np.isfinite(q01) | np.isfinite(q50) | np.isfinite(q99)
    source = "per step (steps.csv)"
    if not rows.any():
        entries = [e for e in (get(metrics, "health", "snapshots") or []) if is_number(e.get("precision_q50"))]
        if not entries:
            raise FigureSkipped("no precision quantiles recorded: steps.csv precision_q01/q50/q99 are empty "
                                "and no snapshot holds the precision")
        step = np.asarray([e["step"] for e in entries], dtype=np.float64)
        q01, q50, q99 = (_values(entries, f"precision_q{q}") for q in ("01", "50", "99"))
        rows = np.ones(len(entries), dtype=bool)
        source = "at snapshots"
    step, q01, q50, q99 = step[rows], q01[rows], q50[rows], q99[rows]
    ax = fig.subplots()
    ax.fill_between(step, q01, q99, color="#1f77b4", alpha=0.18, lw=0, label="1%-99% range over coordinates")
    ax.plot(step, q99, color="#1f77b4", lw=0.8, ls="-", alpha=0.8, label="99% quantile")
    ax.plot(step, q50, color="#1f77b4", lw=2.0, label="median")
    ax.plot(step, q01, color="#1f77b4", lw=0.8, ls="-.", alpha=0.8, label="1% quantile")
    var_init = get(metrics, "run", "var_init")
    fraction = get(metrics, "health", "collapse_fraction")
    levels = [q01, q50, q99]
    if is_number(var_init) and var_init > 0:
        ax.axhline(1.0 / var_init, color="0.4", ls=":", lw=1.2, label=f"initial precision 1/var_init = {num(1 / var_init)}")
        levels.append(np.asarray([1.0 / var_init]))
        if is_number(fraction) and fraction > 0:
            threshold = 1.0 / (fraction * var_init)
            ax.axhline(threshold, color=_C["collapse"], ls="--", lw=1.4,
                       label=f"variance collapse above {num(threshold)}\n(1/pi < {pct(fraction)} of var_init)")
            levels.append(np.asarray([threshold]))
    every = np.concatenate(levels)
    every = every[np.isfinite(every)]
    if every.size and np.all(every > 0):
        ax.set_yscale("log")
        ax.set_ylabel("precision pi (log)")
    else:
        positive = np.abs(every[every != 0])
        ax.set_yscale("symlog", linthresh=float(positive.min()) if positive.size else 1.0)
        ax.set_ylabel("precision pi (symlog: some pi <= 0)")
    _mark_drops((ax,), _bound_drops(metrics))
    ax.set_xlabel("optimizer step")
    ax.set_title(f"Precision pi of the weight posterior, quantiles over coordinates {source}")
    _legend_outside(ax)


def plot_training(record: RunRecord, metrics: dict[str, Any], fig: Figure) -> None:
    """Training curves: minibatch loss per step (faint) and its moving average, train/test loss and
    accuracy at each evaluation (end of epoch); KL-bound drops as dash-dotted verticals.

    Needs steps.csv ``step``, ``loss`` and/or epochs.csv ``step``, ``train_loss``, ``test_loss``,
    ``train_accuracy``, ``test_accuracy``.
    """
    steps = _steps(record)
    step, loss = _col(steps, "step"), _col(steps, "loss")
    has_loss = np.isfinite(loss)
    epochs = record.epochs
    if "step" in epochs.columns and len(epochs):
        epochs = epochs.assign(step=pd.to_numeric(epochs["step"], errors="coerce")).sort_values("step", kind="stable")
    e_step = _col(epochs, "step")
    curves = {name: _col(epochs, name) for name in ("train_loss", "test_loss", "train_accuracy", "test_accuracy")}
    has_eval = np.isfinite(e_step) & np.column_stack([np.isfinite(v) for v in curves.values()]).any(axis=1) \
        if len(epochs) else np.zeros(0, dtype=bool)
    if not has_loss.any() and not has_eval.any():
        raise FigureSkipped("no loss in steps.csv and no evaluation in epochs.csv")
    ax_loss, ax_acc = fig.subplots(1, 2)
    levels = []
    if has_loss.any():
        s, l = step[has_loss], loss[has_loss]
        window = max(1, int(round(len(l) / 30)))
        ax_loss.plot(s, l, color="#1f77b4", lw=0.7, alpha=0.3, label="minibatch loss")
        smooth = pd.Series(l).rolling(window, min_periods=1).mean().to_numpy()
        ax_loss.plot(s, smooth, color="#1f77b4", lw=1.8, label=f"moving average ({window} steps)")
        levels.append(l)
    for name, color, marker in (("train_loss", "#ff7f0e", "o"), ("test_loss", "#2ca02c", "s")):
        ok = np.isfinite(e_step) & np.isfinite(curves[name])
        if ok.any():
            ax_loss.plot(e_step[ok], curves[name][ok], color=color, marker=marker, ms=4, lw=1.4,
                         label=name.replace("_", " ") + " (evaluation)")
            levels.append(curves[name][ok])
    if levels:
        _log_if_wide(ax_loss, np.concatenate(levels), ratio=10.0)
    ax_loss.set_xlabel("optimizer step")
    ax_loss.set_ylabel("cross-entropy loss")
    ax_loss.set_title("loss")
    drawn_accuracy = False
    for name, color, marker in (("train_accuracy", "#ff7f0e", "o"), ("test_accuracy", "#2ca02c", "s")):
        ok = np.isfinite(e_step) & np.isfinite(curves[name])
        if ok.any():
            ax_acc.plot(e_step[ok], curves[name][ok], color=color, marker=marker, ms=4, lw=1.4,
                        label=name.replace("_", " "))
            drawn_accuracy = True
    drops = _bound_drops(metrics)
    _mark_drops((ax_loss,), drops)
    if drawn_accuracy:
        _mark_drops((ax_acc,), drops)
        ax_acc.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax_acc.set_xlabel("optimizer step")
        ax_acc.set_ylabel("accuracy")
        ax_acc.set_title("accuracy at each evaluation (end of epoch)")
        ax_acc.legend(loc="lower right")
    else:
        ax_acc.text(0.5, 0.5, "no accuracy recorded (epochs.csv)", ha="center", va="center",
                    transform=ax_acc.transAxes)
        ax_acc.set_axis_off()
    ax_loss.legend(loc="best")
    final = get(metrics, "training", "final") or {}
    accuracy = final.get("test_accuracy")
    tail = f": final test accuracy {pct(accuracy)}" if is_number(accuracy) else ""
    fig.suptitle(f"Training{tail}")


# ----------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class FigureSpec:
    """One figure of the report: file name ``figures/{name}.png``, what draws it, its caption."""

    name: str
    function: Callable[[RunRecord, dict[str, Any], Figure], None]
    size: tuple[float, float]
    caption: str


FIGURES: tuple[FigureSpec, ...] = (
    FigureSpec("agreement", plot_agreement, (11.0, 7.0),
               "Agreement of a with h per snapshot: relative error and Spearman per layer and overall, beside the "
               "constant-0.1 (dashed pink) and previous-snapshot-h (dotted grey) baselines."),
    FigureSpec("scatter", plot_scatter, (10.0, 6.5),
               "|a| against |h| at the final snapshot, log-log, coloured by layer; circles same sign, crosses "
               "opposite sign; the diagonal is a = h, the dashed line the prior 0.1."),
    FigureSpec("calibration", plot_calibration, (11.0, 7.5),
               "Calibration of P_aa: coverage (95% if calibrated) and sharpness (0.67 if calibrated) per snapshot, "
               "and the histogram of |a-h|/sqrt(P_aa) at the final snapshot against |N(0,1)|."),
    FigureSpec("lag", plot_lag, (11.0, 4.8),
               "Lag curve: agreement of a_t with h_(t-k) against k, with the snapshot-noise band; a curve inside "
               "the band has no identifiable lag."),
    FigureSpec("trust_region", plot_trust_region, (11.0, 7.5),
               "eta per step with its bisection bracket (log), 5/3-growth and frozen-at-the-floor steps marked, "
               "eta* at snapshots; K/eps with 1 and 1.1 marked and the KL-bound drops."),
    FigureSpec("precision", plot_precision, (11.0, 4.8),
               "Precision quantiles (1%, 50%, 99%) over training (log) with the variance-collapse threshold."),
    FigureSpec("training", plot_training, (11.0, 4.5),
               "Minibatch loss (raw and moving average), train/test loss and accuracy at each evaluation."),
)


def draw_figure(spec: FigureSpec, record: RunRecord, metrics: dict[str, Any]) -> bytes:
    """PNG bytes of one figure, rendered deterministically (raises :class:`FigureSkipped`)."""
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=spec.size, dpi=DPI, layout="constrained")
        FigureCanvasAgg(fig)
        spec.function(record, metrics, fig)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=DPI, metadata=_PNG_METADATA)
    return buffer.getvalue()
