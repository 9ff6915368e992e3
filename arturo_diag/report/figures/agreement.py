"""Figure of the agreement of the curvature estimate a with the reference h, per snapshot and layer:
relative error beside the zero-vector, best-constant and constant-0.1 baselines, a's margin over the
constant 0.1 in a panel of its own, and Spearman."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from arturo_diag.curvature.references import estimator_for_field
from arturo_diag.diagnostics.agreement import INITIAL_CURVATURE
from arturo_diag.diagnostics.record import RunRecord
from arturo_diag.errors import RecordError
from arturo_diag.report.figures.common import (
    _C,
    FigureSkipped,
    FigureSpec,
    _final_arrays,
    _legend_outside,
    _log_if_wide,
    _no_reference_reason,
    _plot_per_layer,
    _series_layers,
    _values,
)
from arturo_diag.report.format import distinguishing_digits, get, is_number, num

__all__ = ["FIGURE", "best_constant_relative_error", "plot_agreement"]

_BEST = "#1b9e77"  # the best constant (mean h)
# where the agreement quantity may store the best constant's relative error, under "overall"
_BEST_PATHS = (("scale", "best_constant", "relative_error"), ("best_constant", "relative_error"))


def plot_agreement(record: RunRecord, metrics: dict[str, Any], fig: Figure) -> None:
    """Agreement of the curvature estimate a with the reference h over training, per layer.

    Top: relative error ``||a-h||/||h||`` (lower is better), one line per layer and a thick black
    line for all coordinates, at every snapshot, beside the baselines, overall: the zero vector
    (relative error 1: above it a is worse than predicting nothing), the best constant ``c0 = mean
    h`` (relative error ``sqrt(1 - (sum h)^2 / (n sum h^2))``, the floor of any constant; from
    ``best_constant`` in the metrics when the snapshot has it, else from the snapshot's h), the
    constant 0.1 of ARTURO.md ("Diagnostic quantities"; dashed pink) and the previous snapshot's h
    (dotted grey). Middle: a's relative error minus the constant 0.1's, overall, with 0 marked
    (below 0 a beats the constant), so that two lines lying on top of each other above (15.385 vs
    15.355) are told apart. Bottom: Spearman rank correlation (higher is better); a constant has
    no ranks, so the constants are drawn at 0.

    Needs ``metrics["agreement"]["snapshots"]`` (per snapshot: ``step``, ``reference``,
    ``overall`` and ``layers`` -> ``estimate``/``constant``/``previous_h`` -> ``relative_error``,
    ``spearman``) and, for the best constant unless ``overall.scale.best_constant.relative_error``
    (or ``overall.best_constant.relative_error``) is there, the arrays ``curvature`` and that reference (``h_exact`` or ``h_hutchinson``) of each
    snapshot (the line has gaps where they cannot be read).
    """
    entries = get(metrics, "agreement", "snapshots") or []
    if not entries:
        raise FigureSkipped(_no_reference_reason(metrics))
    steps = np.asarray([e["step"] for e in entries], dtype=np.float64)
    constant_value = get(entries[-1], "overall", "constant_value")
    constant_value = constant_value if is_number(constant_value) else INITIAL_CURVATURE
    ax_err, ax_diff, ax_rho = fig.subplots(3, 1, sharex=True, height_ratios=(3, 2, 3))
    _panel_relative_error(ax_err, steps, entries, constant_value, _best_constant_series(record, entries))
    _panel_difference(ax_diff, steps, entries, constant_value)
    _panel_spearman(ax_rho, steps, entries, constant_value)
    for ax in (ax_err, ax_diff, ax_rho):
        _legend_outside(ax)
    estimator = estimator_for_field(get(entries[-1], "reference"))
    reference = estimator.words if estimator is not None else "reference h"
    info = get(metrics, "run", "estimator")  # record.json's estimator (quantities/_estimator.py)
    who = (
        "arTuRO's curvature estimate a"
        if not isinstance(info, dict) or info.get("name") in (None, "arturo")
        else f"the optimizer's curvature estimate ({info['name']})"
    )
    fig.suptitle(f"Agreement of {who} with the {reference}, per snapshot and layer")


def best_constant_relative_error(h: np.ndarray) -> float:
    """``||c0 - h|| / ||h||`` of the best constant ``c0 = mean h``: ``sqrt(1 - (sum h)^2 / (n sum
    h^2))`` over the finite coordinates (NaN when there is none or ``h = 0``)."""
    h = np.asarray(h, dtype=np.float64).reshape(-1)
    h = h[np.isfinite(h)]
    square = float(np.dot(h, h))
    if h.size == 0 or square == 0:
        return math.nan
    return math.sqrt(max(0.0, 1.0 - float(np.sum(h)) ** 2 / (h.size * square)))


def _best_constant_series(record: RunRecord, entries: list[dict[str, Any]]) -> np.ndarray:
    """Per snapshot the best constant's relative error: from the metrics when there, else from the
    snapshot's h at the coordinates where a and h are finite (those the metrics compare)."""
    out = []
    for entry in entries:
        value = next((v for v in (get(entry, "overall", *path) for path in _BEST_PATHS) if is_number(v)), None)
        if value is not None:
            out.append(float(value))
            continue
        field = str(entry.get("reference") or "h_exact")
        try:
            arrays, _ = _final_arrays(record, int(entry["step"]), ("curvature", field))
        except (FigureSkipped, RecordError):
            out.append(math.nan)
            continue
        a, h = arrays["curvature"], arrays[field]
        out.append(best_constant_relative_error(h[np.isfinite(a) & np.isfinite(h)]))
    return np.asarray(out, dtype=np.float64)


def _panel_relative_error(
    ax: Any, steps: np.ndarray, entries: list[dict[str, Any]], constant_value: float, best: np.ndarray
) -> None:
    """Top: ||a-h||/||h|| per layer and overall, beside the zero, best-constant, constant and
    previous-h baselines (log when the values span more than a factor 10)."""
    _plot_per_layer(ax, steps, entries, "estimate", "relative_error")
    _plot_previous_h(ax, steps, entries, "relative_error")
    ax.axhline(1.0, color="0.2", ls=(0, (1, 1)), lw=1.2, zorder=4, label="baseline: zero vector (relative error 1)")
    if np.isfinite(best).any():
        ax.plot(steps, best, color=_BEST, ls="-.", lw=1.6, zorder=5, label="baseline: best constant (mean of h)")
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
        [_values(entries, "overall", "estimate", "relative_error"), constant, best, [1.0]]
        + [_values(entries, "layers", layer, "estimate", "relative_error") for layer in _series_layers(entries)]
    )
    _log_if_wide(ax, every_err, ratio=10.0)
    ax.set_ylabel("relative error ||a-h||/||h||\n(lower is better)")
    ax.set_title("relative error of a against h")


def _panel_difference(ax: Any, steps: np.ndarray, entries: list[dict[str, Any]], constant_value: float) -> None:
    """Middle: a's relative error minus the constant's, overall, with 0 marked; the title gives the
    final values with the digits that tell them apart."""
    estimate = _values(entries, "overall", "estimate", "relative_error")
    constant = _values(entries, "overall", "constant", "relative_error")
    difference = estimate - constant
    ax.axhline(0.0, color=_C["constant"], ls="--", lw=1.4, label=f"0: a scores as the constant {num(constant_value)}")
    ax.plot(
        steps,
        difference,
        color=_C["overall"],
        lw=2.0,
        marker="." if len(steps) <= 60 else None,
        ms=5,
        label=f"a minus constant {num(constant_value)}, all coordinates",
    )
    title = f"difference of relative errors, a minus the constant {num(constant_value)}"
    last = np.flatnonzero(np.isfinite(difference))
    if last.size:
        i = int(last[-1])
        digits = distinguishing_digits([estimate[i], constant[i]])
        title += (
            f" (step {int(steps[i])}: {num(estimate[i], digits)} - {num(constant[i], digits)} = {num(difference[i])})"
        )
    ax.set_ylabel(f"a's minus constant {num(constant_value)}'s\nrelative error (< 0: a better)")
    ax.set_title(title)


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
    (11.0, 9.5),
    "Agreement of a with h per snapshot. Top: relative error per layer and overall, beside the zero vector "
    "(relative error 1), the best constant (mean of h), the constant 0.1 (dashed pink) and the previous "
    "snapshot's h (dotted grey). Middle: a's relative error minus the constant 0.1's (below 0: a beats it). "
    "Bottom: Spearman.",
)
