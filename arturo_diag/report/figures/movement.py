"""Figure of how far the curvature estimate a moved: log10(a/h) against log10|h| at the final
snapshot, beside a = h (the line y = 0) and the prior 0.1 (coordinates that never left it lie along
the line log10(0.1/|h|))."""

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
from arturo_diag.report.format import count, get, num, plural

__all__ = ["FIGURE", "MAX_SCATTER_POINTS", "plot_scatter"]

MAX_SCATTER_POINTS = 20_000
_SCATTER_SEED = 0


def plot_scatter(record: RunRecord, metrics: dict[str, Any], fig: Figure) -> None:
    """log10(a/h) against log10|h| for every coordinate at the final snapshot, coloured by layer.

    The y axis is the error in orders of magnitude (1: a is ten times h, -1: a tenth of it), the x
    axis where the coordinate lies in the curvature's range, so that the 14 decades of |h| no
    longer squash the estimate's spread into a near-vertical y = x. On the solid line ``y = 0`` the
    estimate is exact; the dashed line ``y = log10(0.1/|h|)`` is where ``a = 0.1``, arTuRO's initial
    a (the prior): points along it are coordinates that never left it. Coordinates where ``a/h <=
    0`` (a is zero or of the other sign), ``h = 0`` or either is not finite cannot be placed; they
    are counted in the title and the legend. At most 20,000 points are drawn, a random subsample
    (fixed seed) of those that can be placed.

    Needs ``metrics["agreement"]["final"]`` (``step``, ``reference``) and the arrays ``curvature``
    and that reference (``h_exact`` or ``h_hutchinson``) of the snapshot at that step.
    """
    if get(metrics, "movement", "not_applicable"):  # another optimizer's estimate: 0.1 is not its prior
        raise FigureSkipped(f"not applicable: {get(metrics, 'movement', 'not_applicable')}")
    final = get(metrics, "agreement", "final")
    if not final:
        raise FigureSkipped(_no_reference_reason(metrics))
    step, field = int(final["step"]), str(final.get("reference") or "h_exact")
    arrays, layer_index = _final_arrays(record, step, ("curvature", field))
    a, h = arrays["curvature"], arrays[field]
    layers = list(dict.fromkeys(record.layers.get(n, n) for n in record.parameters))
    finite = np.isfinite(a) & np.isfinite(h)
    placeable = finite & (h != 0)
    placeable[placeable] = a[placeable] / h[placeable] > 0
    chosen = np.flatnonzero(placeable)
    if chosen.size == 0:
        raise FigureSkipped(f"at step {step} no coordinate has finite a and h with h != 0 and a/h > 0")
    x_all = np.log10(np.abs(h[chosen]))
    y_all = np.log10(a[chosen] / h[chosen])
    subsampled = chosen.size > MAX_SCATTER_POINTS
    picked = np.arange(chosen.size)
    if subsampled:
        rng = np.random.default_rng(_SCATTER_SEED)
        picked = np.sort(rng.choice(chosen.size, MAX_SCATTER_POINTS, replace=False))
    x, y, layer_index = x_all[picked], y_all[picked], layer_index[chosen[picked]]
    ax = fig.subplots()
    handles = _draw_points(fig, ax, x, y, layer_index, layers)
    _reference_lines(ax, x, y)
    estimator = estimator_for_field(field)
    reference = estimator.label if estimator is not None else field
    ax.set_xlabel(f"log10 |h|  (reference diagonal Hessian, {reference})")
    ax.set_ylabel("log10(a/h)  (0: a = h, 1: a is 10x h)")
    not_placed = int(a.size - chosen.size)
    nonfinite = int(a.size - np.count_nonzero(finite))
    hidden = f"{plural(not_placed, 'coordinate')} with a/h <= 0 or h = 0 not shown" + (
        f" ({count(nonfinite)} of them not finite)" if nonfinite else ""
    )
    handles += [
        Line2D([], [], color="black", lw=1.0, label="y = 0 (a = h)"),
        Line2D(
            [],
            [],
            color="black",
            ls="--",
            lw=1.0,
            label=f"a = {num(INITIAL_CURVATURE)} = prior: log10({num(INITIAL_CURVATURE)}/|h|)",
        ),
        Line2D([], [], ls="", label=hidden),
    ]
    _legend_outside(ax, handles)
    shown = (
        f"{count(len(picked))} of {count(chosen.size)} placeable coordinates (random subsample, seed {_SCATTER_SEED})"
        if subsampled
        else f"{count(len(picked))} of {count(a.size)} coordinates"
    )
    ax.set_title(
        f"log10(a/h) vs log10|h| at the final snapshot (step {step}): {shown}\n"
        f"{hidden}; median log10(a/h) of those placed {num(float(np.median(y_all)))}"
    )


def _draw_points(
    fig: Figure, ax: Any, x: np.ndarray, y: np.ndarray, layer_index: np.ndarray, layers: list[str]
) -> list[Any]:
    """The points, one colour per layer (named in the legend), or by depth with a colour bar above
    ten layers; returns the legend handles of the layers."""
    colors, many = _layer_colors(layers)
    size = 24 if len(x) <= 2000 else 9
    handles: list[Any] = []
    if many:
        points = ax.scatter(
            x,
            y,
            c=layer_index,
            cmap=sns.color_palette("viridis", as_cmap=True),
            vmin=0,
            vmax=max(len(layers) - 1, 1),
            s=size,
            alpha=0.55,
            linewidths=0,
        )
        colorbar = fig.colorbar(points, ax=ax, pad=0.01)
        colorbar.set_label(f"layer index (0 = {layers[0]}, {len(layers) - 1} = {layers[-1]})")
        return handles
    for i, layer in enumerate(layers):
        in_layer = layer_index == i
        if in_layer.any():
            ax.scatter(x[in_layer], y[in_layer], color=colors[layer], s=size, alpha=0.55, linewidths=0)
            handles.append(Line2D([], [], ls="", marker="o", color=colors[layer], label=layer))
    return handles


def _reference_lines(ax: Any, x: np.ndarray, y: np.ndarray) -> None:
    """y = 0 (a = h) and the prior's line y = log10(0.1) - x across the points' x range; the y range
    covers the points and 0."""
    pad_x = max(0.05 * float(x.max() - x.min()), 0.25)
    x_low, x_high = float(x.min()) - pad_x, float(x.max()) + pad_x
    y_low, y_high = min(float(y.min()), 0.0), max(float(y.max()), 0.0)
    pad_y = max(0.05 * (y_high - y_low), 0.25)
    ax.axhline(0.0, color="black", lw=1.0)
    prior = np.log10(INITIAL_CURVATURE)
    ax.plot([x_low, x_high], [prior - x_low, prior - x_high], color="black", ls="--", lw=1.0)
    ax.set_xlim(x_low, x_high)
    ax.set_ylim(y_low - pad_y, y_high + pad_y)


#: This figure, listed in its quantity's ``figures`` (:mod:`arturo_diag.quantities`).
FIGURE = FigureSpec(
    "scatter",
    plot_scatter,
    (10.0, 6.5),
    "log10(a/h) against log10|h| at the final snapshot, coloured by layer: on the solid line y = 0 a equals h, "
    "the dashed line is a = 0.1 (the prior, log10(0.1/|h|)); coordinates with a/h <= 0 or h = 0 cannot be "
    "placed and are counted in the title.",
)
