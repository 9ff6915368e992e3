"""Figures of the curvature spectrum: eigenvalues, trace and the diagonal's share over the spectrum
snapshots; the SLQ spectral density at the last one."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from arturo_diag.diagnostics.record import RunRecord
from arturo_diag.report.figures.common import (
    _C,
    FigureSkipped,
    FigureSpec,
    _layer_colors,
    _layer_label,
    _legend_outside,
)
from arturo_diag.report.format import get, is_number

__all__ = ["DENSITY_FIGURE", "FIGURE", "plot_spectrum_density", "plot_spectrum", "slq_density"]


def _entries(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    entries = (get(metrics, "spectrum") or {}).get("snapshots") or []
    if not entries:
        raise FigureSkipped("no snapshots hold the spectrum instrument's measurements (--instruments spectrum)")
    return entries


def _column(entries: list[dict[str, Any]], key: str) -> np.ndarray:
    return np.array([e.get(key) if is_number(e.get(key)) else np.nan for e in entries], dtype=np.float64)


def plot_spectrum(record: RunRecord, metrics: dict[str, Any], fig: Figure) -> None:
    """Three panels over the spectrum snapshots: the top eigenvalues and the most negative one
    (Lanczos; symmetric-log axis), the trace (Hutchinson and Hutch++, +- 2 SE), and the diagonal's
    share ||diag H|| / ||H||_F, whole and per layer (+- 2 SE), with 1/sqrt(2) (above it the diagonal
    holds most of ||H||_F^2).

    Needs ``metrics["spectrum"]["snapshots"]``."""
    entries = _entries(metrics)
    steps = np.array([e["step"] for e in entries], dtype=np.float64)
    ax_eig, ax_trace, ax_share = fig.subplots(1, 3)
    k = max(len(e.get("top") or []) for e in entries)
    for i in range(k):
        values = np.array([(e.get("top") or [None] * k)[i] if i < len(e.get("top") or []) else np.nan
                           for e in entries], dtype=np.float64)  # fmt: skip
        ax_eig.plot(steps, values, marker="o", lw=1.4, alpha=1 - 0.2 * i, color=_C["eta"], label=f"lambda_{i + 1}")
    ax_eig.plot(steps, _column(entries, "min"), marker="v", lw=1.4, color=_C["collapse"], label="lambda_min")
    ax_eig.axhline(0, color="0.6", lw=0.8)
    ax_eig.set_yscale("symlog", linthresh=0.1)
    ax_eig.set_title("Extreme eigenvalues (Lanczos)")
    ax_eig.set_xlabel("optimizer step")
    ax_eig.legend(fontsize=7)
    for key, color, label in (("trace", _C["fixed"], "Hutchinson"), ("trace_hutchpp", "black", "Hutch++")):
        ax_trace.errorbar(steps, _column(entries, key), yerr=2 * _column(entries, key + "_se"), marker="o",
                          capsize=3, color=color, label=label)  # fmt: skip
    ax_trace.set_title("Trace of H (+- 2 SE)")
    ax_trace.set_xlabel("optimizer step")
    ax_trace.legend(fontsize=7)
    share = _column(entries, "diag_share")
    if np.isfinite(share).any():
        layers = list((entries[-1].get("layers") or {}).keys())
        colors, many = _layer_colors(layers)
        for i, layer in enumerate(layers):
            values = np.array(
                [((e.get("layers") or {}).get(layer) or {}).get("diag_share") for e in entries], dtype=float
            )
            ax_share.plot(
                steps, values, lw=1, alpha=0.8, color=colors[layer], label=_layer_label(layer, i, layers, many)
            )
        ax_share.errorbar(steps, share, yerr=2 * _column(entries, "diag_share_se"), color=_C["overall"], lw=2,
                          marker="o", capsize=3, label="all layers")  # fmt: skip
        ax_share.axhline(1 / math.sqrt(2), color=_C["calibrated"], ls="--", lw=1.2, label="1/sqrt(2)")
        ax_share.set_ylim(0, max(1.05, float(np.nanmax(share)) * 1.1))
        _legend_outside(ax_share)
    else:
        ax_share.text(0.5, 0.5, "no exact diagonal:\nshare not computed", ha="center", va="center",
                      transform=ax_share.transAxes)  # fmt: skip
    ax_share.set_title("||diag H|| / ||H||_F")
    ax_share.set_xlabel("optimizer step")


def slq_density(nodes: np.ndarray, weights: np.ndarray, grid: np.ndarray, sigma: float) -> np.ndarray:
    """The Gaussian-smoothed SLQ density on ``grid``: the probes' average of sum_j tau_j N(x; theta_j, sigma^2)
    (rows of ``nodes``/``weights``, NaN-padded)."""
    total = np.zeros_like(grid)
    rows = 0
    for theta, tau in zip(nodes, weights):
        kept = np.isfinite(theta) & np.isfinite(tau)
        if not kept.any():
            continue
        z = (grid[:, None] - theta[kept][None, :]) / sigma
        total += (np.exp(-0.5 * z**2) * tau[kept][None, :]).sum(1) / (sigma * math.sqrt(2 * math.pi))
        rows += 1
    return total / max(rows, 1)


def plot_spectrum_density(record: RunRecord, metrics: dict[str, Any], fig: Figure) -> None:
    """The spectral density of H at the last spectrum snapshot (stochastic Lanczos quadrature,
    Gaussian kernel of 1/100 of the Ritz values' range; log axis), the Ritz values as ticks and the
    Lanczos eigenvalues as lines.

    Needs ``metrics["spectrum"]["final"]`` and that snapshot's ``spectrum/ritz_nodes``/``ritz_weights``."""
    final = _entries(metrics)[-1]
    arrays = record.instrument_arrays(int(final["step"]))
    nodes, weights = arrays.get("spectrum/ritz_nodes"), arrays.get("spectrum/ritz_weights")
    if nodes is None or weights is None or not np.isfinite(nodes).any():
        raise FigureSkipped(f"the snapshot at step {final['step']} holds no SLQ Ritz values (spectrum/ritz_nodes)")
    low, high = float(np.nanmin(nodes)), float(np.nanmax(nodes))
    sigma = max((high - low) / 100, 1e-12)
    grid = np.linspace(low - 8 * sigma, high + 8 * sigma, 1200)
    density = slq_density(nodes, weights, grid, sigma)
    ax = fig.subplots(1, 1)
    ax.plot(grid, density, color="black", lw=1.4, label=f"SLQ density ({nodes.shape[0]} probes)")
    ax.plot(nodes[np.isfinite(nodes)], np.full(int(np.isfinite(nodes).sum()), density.max() * 1e-6), "|",
            color="0.4", ms=8, label="Ritz values")  # fmt: skip
    for i, value in enumerate(final.get("top") or []):
        if is_number(value):
            ax.axvline(value, color=_C["eta"], ls=":", lw=1, label="top eigenvalues (Lanczos)" if i == 0 else None)
    if is_number(final.get("min")):
        ax.axvline(final["min"], color=_C["collapse"], ls=":", lw=1, label="most negative (Lanczos)")
    ax.axvline(0, color="0.6", lw=0.8)
    ax.set_yscale("log")
    ax.set_ylim(density.max() * 1e-7, density.max() * 3)
    ax.set_title(f"Spectral density of H at step {final['step']}")
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density (log)")
    _legend_outside(ax)


#: The figures, listed in the spectrum quantity's ``figures`` (:mod:`arturo_diag.quantities`).
FIGURE = FigureSpec(
    "spectrum",
    plot_spectrum,
    (14.0, 4.4),
    "Extreme eigenvalues, trace and the diagonal's share of the probe loss's Hessian over the spectrum snapshots.",
)
DENSITY_FIGURE = FigureSpec(
    "spectrum_density",
    plot_spectrum_density,
    (9.0, 4.4),
    "Spectral density of the probe loss's Hessian at the last spectrum snapshot (stochastic Lanczos quadrature).",
)
