"""Figure of the trust region: eta per step with its bisection bracket, and the achieved K/eps."""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from arturo_diag.diagnostics.record import RunRecord
from arturo_diag.diagnostics.trust_region import OVERSHOOT, classify_regimes
from arturo_diag.report.figures.common import (
    _C,
    FigureSkipped,
    FigureSpec,
    _bound_drops,
    _col,
    _legend_outside,
    _mark_drops,
    _steps,
    _steps_words,
)
from arturo_diag.report.format import count, get, is_number, num, pct

__all__ = ["FIGURE", "plot_trust_region"]

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
    lo, hi, kl = (
        np.where(np.isfinite(x), x, np.nan)
        for x in (_col(steps, "eta_lo"), _col(steps, "eta_hi"), _col(steps, "kl_ratio"))
    )
    fixed_eta = tr.get("fixed_eta")
    regimes = classify_regimes(steps, eta_tol=eta_tol, fixed_eta=fixed_eta)["regime"].to_numpy()
    ax_eta, ax_kl = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    # the panels are drawn in this order, the drops last: axvline reads the shared x limits
    _panel_eta(ax_eta, record, step, eta, lo, hi, regimes, eta_tol)
    _panel_kl(ax_kl, step, kl)
    _panel_drops(ax_eta, ax_kl, _bound_drops(metrics))
    _legend_outside(ax_eta)
    _legend_outside(ax_kl)
    share = tr.get("regime_share") or {}
    if fixed_eta is not None:
        fig.suptitle(f"Trust region off: eta fixed at {num(fixed_eta)} at every one of {count(len(steps))} steps")
        return
    fig.suptitle(
        f"Trust region: bisection active {pct(share.get('bisection'))}, 5/3 growth "
        f"{pct(share.get('growth_5_3'))}, frozen at the floor {pct(share.get('frozen'))}, overshoot "
        f"{pct(tr.get('overshoot_share'))} of {count(len(steps))} steps"
    )


def _panel_eta(
    ax: Any,
    record: RunRecord,
    step: np.ndarray,
    eta: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    regimes: np.ndarray,
    eta_tol: float,
) -> None:
    """Top (log y): eta per step, its bracket [eta_lo, eta_hi], the floor window, the steps the
    bound did not decide (5/3 growth, frozen, fixed) and eta* at the snapshots."""
    with np.errstate(invalid="ignore"):
        positive_lo = np.where(lo > 0, lo, np.nan)
        bracket = np.isfinite(positive_lo) & np.isfinite(hi)
    if bracket.any():
        ax.fill_between(
            step,
            positive_lo,
            hi,
            where=bracket,
            color=_C["eta"],
            alpha=0.18,
            lw=0,
            label="final bisection bracket [eta_lo, eta_hi]",
        )
    floor_low, floor_high = 0.375 * eta_tol, 0.75 * eta_tol
    ax.axhspan(
        floor_low,
        floor_high,
        color=_C["frozen"],
        alpha=0.07,
        lw=0,
        label=f"floor window ({num(floor_low)}, {num(floor_high)}]: one K evaluation",
    )
    ax.axhline(
        floor_low, color=_C["growth"], ls=":", lw=1.0, label=f"eta_prev <= {num(floor_low)}: no K evaluation, x5/3"
    )
    ax.plot(step, eta, color=_C["eta"], lw=1.3, label="eta used by the rule")
    for regime, color, marker, words in (
        ("growth_5_3", _C["growth"], "^", "5/3 growth, K not evaluated"),
        ("frozen", _C["frozen"], "s", "frozen at the floor"),
        ("fixed", _C["fixed"], "D", "eta fixed (trust region off)"),
    ):
        mask = regimes == regime
        if mask.any():
            ax.scatter(
                step[mask],
                eta[mask],
                color=color,
                marker=marker,
                s=10,
                zorder=3,
                lw=0,
                label=f"{words} ({_steps_words(int(mask.sum()))})",
            )
    eta_star = _eta_star(ax, record)
    shown = np.concatenate([eta[np.isfinite(eta) & (eta > 0)], eta_star])
    if shown.size:
        ax.set_yscale("log")
        ax.set_ylim(min(float(shown.min()), floor_low) / 3, max(float(shown.max()), floor_high) * 3)
    ax.set_ylabel("eta (log)")
    ax.set_title("eta per step, its bisection bracket, and the steps where the bound did not decide it")


def _eta_star(ax: Any, record: RunRecord) -> np.ndarray:
    """Crosses at the exact root eta* of the snapshots that have one; returns those (positive) values."""
    snapshots = record.snapshots
    eta_star = _col(snapshots, "eta_star")
    star_steps = _col(snapshots, "step")
    has_star = np.isfinite(eta_star) & (eta_star > 0)
    if has_star.any():
        ax.scatter(
            star_steps[has_star],
            eta_star[has_star],
            color="black",
            marker="x",
            s=28,
            lw=1.2,
            zorder=4,
            label="eta* (exact root of K = eps) at snapshots",
        )
    return eta_star[has_star]


def _panel_kl(ax: Any, step: np.ndarray, kl: np.ndarray) -> None:
    """Bottom (log y): the achieved K(eta)/eps, overshoot (> 1.1) dotted red, 1 and 1.1 marked."""
    with np.errstate(invalid="ignore"):
        # matplotlib's log ticks overflow on axes reaching past ~1e270: larger ratios (a bound near 0)
        # are drawn at _KL_CEILING
        kl_positive = np.where(kl > 0, np.minimum(kl, _KL_CEILING), np.nan)
    if np.isfinite(kl_positive).any():
        ax.plot(step, kl_positive, color=_C["kl"], lw=1.0, label="K(eta)/eps achieved")
        over = kl_positive > OVERSHOOT
        if over.any():
            ax.scatter(
                step[over],
                kl_positive[over],
                color=_C["frozen"],
                s=9,
                zorder=3,
                lw=0,
                label=f"overshoot, K/eps > {num(OVERSHOOT)} ({_steps_words(int(over.sum()))})",
            )
        ax.set_yscale("log")
        # explicit limits: autoscaling's margin on a range of hundreds of decades (eps = 1e-300) overflows
        ax.set_ylim(min(float(np.nanmin(kl_positive)), 1.0) / 3, max(float(np.nanmax(kl_positive)), OVERSHOOT) * 3)
    else:
        ax.text(0.5, 0.5, "no K/eps recorded", ha="center", va="center", transform=ax.transAxes)
    ax.axhline(1.0, color="black", lw=1.0, label="1: on the bound")
    ax.axhline(OVERSHOOT, color=_C["frozen"], ls="--", lw=1.0, label=f"{num(OVERSHOOT)}: overshoot threshold")
    ax.set_ylabel("K(eta) / eps (log)")
    ax.set_xlabel("optimizer step")
    ax.set_title("achieved KL of the step relative to the bound")


def _panel_drops(ax_eta: Any, ax_kl: Any, drops: list[dict[str, Any]]) -> None:
    """The KL-bound drops on both panels, each annotated on the K/eps panel with its peak overshoot
    and the steps it took to recover."""
    _mark_drops((ax_kl, ax_eta), drops)
    for drop in drops:
        peak, peak_step = drop.get("peak_kl_ratio"), drop.get("peak_step")
        if is_number(peak) and peak_step is not None and peak > 0:
            recovered = (
                f"back <= {num(OVERSHOOT)} after {drop['steps_to_recover']} steps"
                if drop.get("recovered")
                else "not recovered by the end"
            )
            ax_kl.annotate(
                f"peak {num(peak)}\n{recovered}",
                xy=(peak_step, peak),
                xytext=(8, -4),
                textcoords="offset points",
                fontsize=8,
                va="top",
            )


#: This figure, listed in its quantity's ``figures`` (:mod:`arturo_diag.quantities`).
FIGURE = FigureSpec(
    "trust_region",
    plot_trust_region,
    (11.0, 7.5),
    "eta per step with its bisection bracket (log), 5/3-growth and frozen-at-the-floor steps marked, "
    "eta* at snapshots; K/eps with 1 and 1.1 marked and the KL-bound drops.",
)
