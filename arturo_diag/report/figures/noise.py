"""Figure of the gradient noise: the median minibatch-gradient variance per layer beside r and the
filter's own innovations."""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from arturo_diag.diagnostics.record import RunRecord
from arturo_diag.report.figures.common import _C, FigureSkipped, FigureSpec, _legend_outside, _plot_per_layer
from arturo_diag.report.format import get, is_number, num

__all__ = ["FIGURE", "plot_noise"]


def plot_noise(record: RunRecord, metrics: dict[str, Any], fig: Figure) -> None:
    """The median over coordinates of the minibatch-gradient variance (per-sample variance / B) per
    layer over the snapshots, on a log axis, with the filter's measurement noise r (dashed red), the
    noise it assumes for one minibatch gradient. With the innovation instrument, over all
    coordinates: the median squared innovation d^2 (dotted black, the residuals the filter saw) and
    the median of its predicted variance s (dash-dot grey, r included).

    Needs ``metrics["noise"]["snapshots"]`` (each snapshot's ``variance_median`` per layer, from the
    noise instrument's ``grad_var``; ``innovation_sq_median`` and ``innovation_var_median`` from the
    innovation instrument) and ``metrics["noise"]["measurement_noise"]`` for r.
    """
    noise = get(metrics, "noise") or {}
    entries = noise.get("snapshots") or []
    if not entries:
        raise FigureSkipped("no snapshots hold the gradient-noise instrument's arrays (--instruments noise)")
    steps = np.asarray([e["step"] for e in entries], dtype=np.float64)
    ax = fig.subplots(1, 1)
    _plot_per_layer(ax, steps, entries, "variance_median")
    for key, style, words in (("innovation_sq_median", ":", "median d^2 (innovation), all coordinates"),
                              ("innovation_var_median", "-.", "median s (its predicted variance)")):  # fmt: skip
        values = np.asarray([get(e, "overall", key) for e in entries], dtype=np.float64)
        if np.isfinite(values).any():
            ax.plot(steps, values, color="black" if key == "innovation_sq_median" else "0.45", ls=style, lw=1.6,
                    label=words)  # fmt: skip
    r = noise.get("measurement_noise")
    if is_number(r):
        ax.axhline(r, color=_C["collapse"], ls="--", lw=1.4, label=f"r = {num(r)} (the filter's)")
    ax.set_yscale("log")
    ax.set_title("Minibatch-gradient variance, median per layer, against r")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("variance (log)")
    _legend_outside(ax)


#: This figure, listed in its quantity's ``figures`` (:mod:`arturo_diag.quantities`).
FIGURE = FigureSpec(
    "noise",
    plot_noise,
    (9.0, 4.6),
    "Median minibatch-gradient variance per layer over the snapshots, against the filter's measurement noise r "
    "and its innovations (median d^2 and predicted variance s, when the innovation instrument ran).",
)
