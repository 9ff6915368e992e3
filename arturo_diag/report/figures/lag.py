"""Figure of the lag of the curvature estimate behind h: agreement of a_t with h_(t-k) against k."""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from arturo_diag.diagnostics.record import RunRecord
from arturo_diag.report.figures.common import (
    FigureSkipped,
    FigureSpec,
    _no_reference_reason,
)
from arturo_diag.report.format import get, is_number, num

__all__ = ["FIGURE", "plot_lag"]


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
    for ax, (metric, words, larger_is_better, color) in zip(
        axes,
        (
            ("spearman", "Spearman of a_t with h_(t-k)", True, "#1f77b4"),
            ("relative_error", "relative error of a_t against h_(t-k)", False, "#ff7f0e"),
        ),
    ):
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
                ax.axhspan(
                    *band, color="0.5", alpha=0.18, lw=0, label=f"within snapshot noise ({num(noise)}) of the best"
                )
            best = curve.get("argbest")
            if best is not None:
                identifiable = bool(curve.get("identifiable"))
                ax.plot(
                    [k[best]],
                    [mean[best]],
                    ls="",
                    marker="*",
                    ms=15,
                    color="black" if identifiable else "0.6",
                    label=f"best k = {best}" + ("" if identifiable else " (not distinguishable from noise)"),
                )
        ax.set_xticks(k)
        steps_words = (
            f" (1 snapshot = {num(interval)} steps)" if is_number(interval) and lag.get("interval_regular") else ""
        )
        ax.set_xlabel(f"k, snapshots back{steps_words}")
        ax.set_ylabel(words + ("\n(higher is better)" if larger_is_better else "\n(lower is better)"))
        role = "decides the lag" if metric == decides else "shown for reference"
        verdict = "no identifiable lag" if not curve.get("identifiable") else f"best k = {curve.get('best_k')}"
        ax.set_title(
            f"{metric.replace('_', ' ')}: {role}; {verdict}\n"
            f"range {num(curve.get('range'))} vs snapshot noise {num(noise)}"
        )
        ax.legend(loc="best")
    if lag.get("identifiable"):
        best_k = lag.get("best_k")
        headline = (
            "no lag: a_t agrees best with the same snapshot's h"
            if best_k == 0
            else f"a lags h by about {best_k} snapshot{'s' if best_k != 1 else ''} "
            f"({num(lag.get('best_lag_steps'))} steps)"
        )
    else:
        headline = "no identifiable lag (the curve is flat within snapshot noise)"
    fig.suptitle(f"Lag of the curvature estimate behind h: {headline}")


#: This figure, listed in its quantity's ``figures`` (:mod:`arturo_diag.quantities`).
FIGURE = FigureSpec(
    "lag",
    plot_lag,
    (11.0, 4.8),
    "Lag curve: agreement of a_t with h_(t-k) against k, with the snapshot-noise band; a curve inside "
    "the band has no identifiable lag.",
)
