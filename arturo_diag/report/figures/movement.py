"""Figure of how far the curvature estimate a moved: |a| against |h| at the final snapshot, beside
the prior 0.1 (coordinates that never left it lie along its line)."""

from __future__ import annotations

from typing import Any

import numpy as np
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from arturo_diag.curvature.references import estimator_for_field
from arturo_diag.diagnostics.agreement import INITIAL_CURVATURE
from arturo_diag.diagnostics.record import RunRecord
from arturo_diag.report.figures.common import (
    FigureSkipped,
    FigureSpec,
    _final_arrays,
    _layer_colors,
    _legend_outside,
    _no_reference_reason,
)
from arturo_diag.report.format import count, get, num, pct

__all__ = ["FIGURE", "MAX_SCATTER_POINTS", "plot_scatter"]

MAX_SCATTER_POINTS = 20_000
_SCATTER_SEED = 0


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
            points = ax.scatter(
                abs_h[mask],
                abs_a[mask],
                c=layer_index[mask],
                cmap=cmap,
                vmin=0,
                vmax=max(len(layers) - 1, 1),
                marker=marker,
                s=dot if marker == "o" else cross,
                alpha=0.55,
                linewidths=0 if marker == "o" else 0.8,
                rasterized=False,
            )
        colorbar = fig.colorbar(points, ax=ax, pad=0.01)
        colorbar.set_label(f"layer index (0 = {layers[0]}, {len(layers) - 1} = {layers[-1]})")
    else:
        for i, layer in enumerate(layers):
            in_layer = layer_index == i
            if not in_layer.any():
                continue
            for mask, marker in ((in_layer & same, "o"), (in_layer & ~same, "x")):
                if mask.any():
                    ax.scatter(
                        abs_h[mask],
                        abs_a[mask],
                        color=colors[layer],
                        marker=marker,
                        s=dot if marker == "o" else cross,
                        alpha=0.55,
                        linewidths=0 if marker == "o" else 0.8,
                    )
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
    estimator = estimator_for_field(field)
    reference = estimator.label if estimator is not None else field
    ax.set_xlabel(f"|h|  (reference diagonal Hessian, {reference})")
    ax.set_ylabel("|a|  (arTuRO's curvature estimate)")
    handles += [
        Line2D([], [], ls="", marker="o", color="0.35", label="same sign"),
        Line2D([], [], ls="", marker="x", color="0.35", label="opposite sign"),
        Line2D([], [], color="black", lw=1.0, label="y = x (a = h)"),
        Line2D([], [], color="black", ls="--", lw=1.0, label=f"{num(INITIAL_CURVATURE)} = prior (initial a)"),
    ]
    _legend_outside(ax, handles)
    excluded = int(n_total - np.count_nonzero(usable))
    shown = (
        f"{count(len(chosen))} of {count(int(usable.sum()))} drawable coordinates (random subsample, seed "
        f"{_SCATTER_SEED})"
        if subsampled
        else f"{count(len(chosen))} coordinates"
    )
    zeros = f"{count(excluded)} of {count(n_total)} with a = 0 or h = 0 (or non-finite) not drawn; " if excluded else ""
    ax.set_title(
        f"|a| vs |h| at the final snapshot (step {step}): {shown}\n"
        f"{zeros}{pct(float(np.mean(~same)))} of those drawn have opposite signs"
    )


#: This figure, listed in its quantity's ``figures`` (:mod:`arturo_diag.quantities`).
FIGURE = FigureSpec(
    "scatter",
    plot_scatter,
    (10.0, 6.5),
    "|a| against |h| at the final snapshot, log-log, coloured by layer; circles same sign, crosses "
    "opposite sign; the diagonal is a = h, the dashed line the prior 0.1.",
)
