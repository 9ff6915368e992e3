"""Figure of the step gauges: the trust region's radius and the variance drift per layer over the snapshots,
and Cockpit's alpha of each snapshot step."""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from arturo_diag.diagnostics.record import RunRecord
from arturo_diag.report.figures.common import (
    _C,
    FigureSkipped,
    FigureSpec,
    _legend_outside,
    _log_if_wide,
    _plot_per_layer,
)
from arturo_diag.report.format import get, is_number, num, pct

__all__ = ["FIGURE", "plot_gauges"]


def _part(entries: list[dict[str, Any]], part: str) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The snapshots that hold ``part``, as per-layer entries ``{overall, layers}``."""
    chosen = [e for e in entries if e.get(part)]
    return np.asarray([e["step"] for e in chosen], dtype=np.float64), [e[part] for e in chosen]


def plot_gauges(record: RunRecord, metrics: dict[str, Any], fig: Figure) -> None:
    """Left: the median trust-region radius sqrt(2 eps / pi) per layer over the snapshots (the most
    one coordinate may move in a step). Right: the median variance ratio (1/pi) / var_init per
    layer, with the drift threshold (dashed red, growth far above var_init) and the collapse
    threshold (dotted red) on a log axis; 1 is where every coordinate starts. Below, when the
    snapshots have it: Cockpit's alpha of each snapshot step (where it lands on the 1-D quadratic
    along its own direction: -1 no progress, 0 the minimum, +1 the mirror point, > 0 overshoot), on
    a symmetric log axis when it leaves [-3, 3].

    Needs ``metrics["gauges"]["snapshots"]`` (its ``radius`` and ``drift`` per layer, computed from
    each snapshot's precision, ``snapshots.csv`` kl_bound and the run's var_init, and its ``alpha``
    from the alpha instrument), and ``metrics["gauges"]["drift_ratio"]`` / ``["collapse_fraction"]``
    for the thresholds.
    """
    gauges = get(metrics, "gauges") or {}
    entries = gauges.get("snapshots") or []
    if not entries:
        raise FigureSkipped("the record has no snapshots, so there are no gauges")
    radius_steps, radius = _part(entries, "radius")
    drift_steps, drift = _part(entries, "drift")
    if not radius and not drift:
        reasons = sorted({why for e in entries for why in (e.get("skipped") or {}).values()})
        raise FigureSkipped("no snapshot gives the radius or the drift: " + "; ".join(reasons))
    alpha = [(e["step"], e["alpha"]["alpha"]) for e in entries if e.get("alpha") and is_number(e["alpha"]["alpha"])]
    if alpha:
        axes = fig.subplot_mosaic([["radius", "drift"], ["alpha", "alpha"]], height_ratios=(1.4, 1.0))
        left, right = axes["radius"], axes["drift"]
        _plot_alpha(axes["alpha"], alpha)
    else:
        left, right = fig.subplots(1, 2)
    if radius:
        _plot_per_layer(left, radius_steps, radius, "radius_median")
        _log_if_wide(left, np.asarray([get(r, "overall", "radius_median") or np.nan for r in radius], dtype=float))
    left.set_title("Trust-region radius sqrt(2 eps/pi), median per layer")
    left.set_xlabel("optimizer step")
    left.set_ylabel("radius (parameter units)")
    if drift:
        _plot_per_layer(right, drift_steps, drift, "ratio_median")
        ratio = gauges.get("drift_ratio")
        fraction = gauges.get("collapse_fraction")
        if is_number(ratio):
            right.axhline(ratio, color=_C["collapse"], ls="--", lw=1.4, label=f"drift: {num(ratio)}x var_init")
        if is_number(fraction):
            right.axhline(
                fraction, color=_C["collapse"], ls=":", lw=1.4, label=f"collapse: {pct(fraction)} of var_init"
            )
        right.axhline(1.0, color="0.4", ls=":", lw=1.0, label="var_init (start)")
        right.set_yscale("log")
    right.set_title("Variance (1/pi) / var_init, median per layer")
    right.set_xlabel("optimizer step")
    right.set_ylabel("(1/pi) / var_init (log)")
    _legend_outside(right)


def _plot_alpha(ax: Any, alpha: list[tuple[int, float]]) -> None:
    steps = np.asarray([s for s, _ in alpha], dtype=np.float64)
    values = np.asarray([a for _, a in alpha], dtype=np.float64)
    ax.plot(steps, values, color=_C["overall"], lw=1.6, marker="." if len(steps) <= 60 else None, ms=5,
            label="alpha of the snapshot step")  # fmt: skip
    for level, style, words in (
        (1.0, ":", "+1: mirror point"),
        (0.0, "--", "0: 1-D minimum"),
        (-1.0, ":", "-1: no progress"),
    ):
        ax.axhline(level, color=_C["calibrated"] if level == 0 else "0.4", ls=style, lw=1.2, label=words)
    if np.abs(values).max() > 3:
        ax.set_yscale("symlog", linthresh=1.0)
    ax.set_title("Cockpit's alpha: where each snapshot step lands on the 1-D quadratic along it")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("alpha")
    _legend_outside(ax)


#: This figure, listed in its quantity's ``figures`` (:mod:`arturo_diag.quantities`).
FIGURE = FigureSpec(
    "gauges",
    plot_gauges,
    (12.0, 7.6),
    "Step gauges per layer over the snapshots: trust-region radius sqrt(2 eps/pi) and variance 1/pi against "
    "var_init; below, Cockpit's alpha of each snapshot step (when the alpha instrument ran).",
)
