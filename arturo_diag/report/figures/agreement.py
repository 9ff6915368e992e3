"""Figure of the agreement of the curvature estimate a with the reference h, per snapshot and layer."""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from arturo_diag.curvature.references import estimator_for_field
from arturo_diag.diagnostics.agreement import INITIAL_CURVATURE
from arturo_diag.diagnostics.record import RunRecord
from arturo_diag.report.figures.common import (
    _C,
    FigureSkipped,
    FigureSpec,
    _legend_outside,
    _log_if_wide,
    _no_reference_reason,
    _plot_per_layer,
    _series_layers,
    _values,
)
from arturo_diag.report.format import get, is_number, num

__all__ = ["FIGURE", "plot_agreement"]


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
    constant_value = get(entries[-1], "overall", "constant_value")
    constant_value = constant_value if is_number(constant_value) else INITIAL_CURVATURE
    ax_err, ax_rho = fig.subplots(2, 1, sharex=True)
    _panel_relative_error(ax_err, steps, entries, constant_value)
    _panel_spearman(ax_rho, steps, entries, constant_value)
    _legend_outside(ax_err)
    _legend_outside(ax_rho)
    estimator = estimator_for_field(get(entries[-1], "reference"))
    reference = estimator.words if estimator is not None else "reference h"
    fig.suptitle(f"Agreement of arTuRO's curvature estimate a with the {reference}, per snapshot and layer")


def _panel_relative_error(ax: Any, steps: np.ndarray, entries: list[dict[str, Any]], constant_value: float) -> None:
    """Top: ||a-h||/||h|| per layer and overall, beside the constant and previous-h baselines (log
    when the values span more than a factor 10)."""
    _plot_per_layer(ax, steps, entries, "estimate", "relative_error")
    _plot_previous_h(ax, steps, entries, "relative_error")
    constant = _values(entries, "overall", "constant", "relative_error")
    # drawn on top: early on a is still 0.1 and the estimate's line lies exactly under it
    ax.plot(
        steps,
        constant,
        color=_C["constant"],
        ls="--",
        lw=1.6,
        zorder=5,
        label=f"baseline: constant {num(constant_value)}",
    )
    every_err = np.concatenate(
        [_values(entries, "overall", "estimate", "relative_error"), constant]
        + [_values(entries, "layers", layer, "estimate", "relative_error") for layer in _series_layers(entries)]
    )
    _log_if_wide(ax, every_err, ratio=10.0)
    ax.set_ylabel("relative error ||a-h||/||h||\n(lower is better)")
    ax.set_title("relative error of a against h")


def _panel_spearman(ax: Any, steps: np.ndarray, entries: list[dict[str, Any]], constant_value: float) -> None:
    """Bottom: Spearman of a with h per layer and overall, beside the baselines (a constant at 0)."""
    _plot_per_layer(ax, steps, entries, "estimate", "spearman")
    _plot_previous_h(ax, steps, entries, "spearman")
    ax.axhline(
        0.0,
        color=_C["constant"],
        ls="--",
        lw=1.6,
        zorder=5,
        label=f"baseline: constant {num(constant_value)} (no ranks: 0)",
    )
    ax.set_ylabel("Spearman rank correlation\n(higher is better)")
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel("optimizer step (snapshots)")
    ax.set_title("Spearman rank correlation of a with h")


def _plot_previous_h(ax: Any, steps: np.ndarray, entries: list[dict[str, Any]], metric: str) -> None:
    """The baseline "previous snapshot's h", overall, when any snapshot has it."""
    previous = _values(entries, "overall", "previous_h", metric)
    if np.isfinite(previous).any():
        ax.plot(
            steps, previous, color="0.45", ls=":", lw=1.6, marker="s", ms=3, label="baseline: previous snapshot's h"
        )


#: This figure, listed in its quantity's ``figures`` (:mod:`arturo_diag.quantities`).
FIGURE = FigureSpec(
    "agreement",
    plot_agreement,
    (11.0, 7.0),
    "Agreement of a with h per snapshot: relative error and Spearman per layer and overall, beside the "
    "constant-0.1 (dashed pink) and previous-snapshot-h (dotted grey) baselines.",
)
