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
    value, a description of the curve. The lag itself is the verdict of the lag test (best k
    against k = 0, block bootstrap over snapshots, ``metrics["lag"]["test"]``): the title and the
    deciding panel say "no identifiable lag", with the interval, unless the test says yes.

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
                identifiable = bool(lag.get("identifiable")) and metric == decides and best == lag.get("best_k")
                ax.plot(
                    [k[best]],
                    [mean[best]],
                    ls="",
                    marker="*",
                    ms=15,
                    color="black" if identifiable else "0.6",
                    label=f"best k = {best}" + ("" if identifiable else " (not the verdict's lag)"),
                )
        ax.set_xticks(k)
        steps_words = (
            f" (1 snapshot = {num(interval)} steps)" if is_number(interval) and lag.get("interval_regular") else ""
        )
        ax.set_xlabel(f"k, snapshots back{steps_words}")
        ax.set_ylabel(words + ("\n(higher is better)" if larger_is_better else "\n(lower is better)"))
        if metric != decides:
            role, verdict = "shown for reference", f"the lag is decided by {decides.replace('_', ' ')}"
        else:
            role = "decides the lag"
            verdict = f"lag k = {lag.get('best_k')}" if lag.get("identifiable") else "no identifiable lag"
        ax.set_title(
            f"{metric.replace('_', ' ')}: {role}; {verdict}\n"
            f"range {num(curve.get('range'))} vs snapshot noise {num(noise)}"
        )
        ax.legend(loc="best")
    fig.suptitle(f"Lag of the curvature estimate behind h: {_headline(lag)}")


def _headline(lag: dict[str, Any]) -> str:
    """The verdict of the lag test (``metrics["lag"]["test"]``) in a few words, with its interval."""
    test = lag.get("test") or {}
    gain = ""
    if is_number(test.get("ci_low")) and is_number(test.get("ci_high")):
        gain = (
            f"; gain of k = {test.get('best_k')} over k = 0: {num(test.get('estimate'))}, 95 % CI "
            f"[{num(test.get('ci_low'))}, {num(test.get('ci_high'))}], margin {num(test.get('margin'))}"
        )
    if lag.get("identifiable"):
        best_k = lag.get("best_k")
        return (
            f"a lags h by {best_k} snapshot{'s' if best_k != 1 else ''} ({num(lag.get('best_lag_steps'))} steps){gain}"
        )
    if test.get("outcome") == "not_applicable" and test.get("why"):
        return f"no identifiable lag ({str(test['why']).split(' (')[0]})"
    if test.get("outcome") == "inconclusive":
        return f"no identifiable lag (inconclusive{gain})"
    return f"no identifiable lag{' (' + gain[2:] + ')' if gain else ''}"


#: This figure, listed in its quantity's ``figures`` (:mod:`arturo_diag.quantities`).
FIGURE = FigureSpec(
    "lag",
    plot_lag,
    (11.0, 4.8),
    "Lag curve: agreement of a_t with h_(t-k) against k, with the snapshot-noise band; the lag is the "
    "verdict of the test of the best k against k = 0 (title), with its interval.",
)
