"""Figure of the health of the weight posterior: quantiles of the precision pi over training."""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from arturo_diag.diagnostics.record import RunRecord
from arturo_diag.report.figures.common import (
    _C,
    FigureSkipped,
    FigureSpec,
    _bound_drops,
    _col,
    _legend_outside,
    _mark_drops,
    _steps,
    _values,
)
from arturo_diag.report.format import get, is_number, num, pct

__all__ = ["FIGURE", "plot_precision"]


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
            raise FigureSkipped(
                "no precision quantiles recorded: steps.csv precision_q01/q50/q99 are empty "
                "and no snapshot holds the precision"
            )
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
        ax.axhline(
            1.0 / var_init, color="0.4", ls=":", lw=1.2, label=f"initial precision 1/var_init = {num(1 / var_init)}"
        )
        levels.append(np.asarray([1.0 / var_init]))
        if is_number(fraction) and fraction > 0:
            threshold = 1.0 / (fraction * var_init)
            ax.axhline(
                threshold,
                color=_C["collapse"],
                ls="--",
                lw=1.4,
                label=f"variance collapse above {num(threshold)}\n(1/pi < {pct(fraction)} of var_init)",
            )
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


#: This figure, listed in its quantity's ``figures`` (:mod:`arturo_diag.quantities`).
FIGURE = FigureSpec(
    "precision",
    plot_precision,
    (11.0, 4.8),
    "Precision quantiles (1%, 50%, 99%) over training (log) with the variance-collapse threshold.",
)
