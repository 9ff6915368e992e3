"""Trust-region regimes of the eta bisection, step by step.

ARTURO.md, step 4 and "Where the published code and the rule above need care": the bisection
for ``K(eta) = eps`` starts from the bracket ``[eta_prev/3, 3*eta_prev]`` and stops once the
bracket is narrower than ``eta_tol`` (0.5), returning the bracket's midpoint. Hence, with
``eta_tol = 0.5``:

- ``eta_prev <= 0.1875`` (bracket width ``8/3 eta_prev <= eta_tol``): no ``K`` is evaluated and
  ``eta = 5/3 eta_prev``: eta grows by 5/3 per step regardless of the bound (``"growth_5_3"``);
- ``eta_prev`` in ``(0.1875, 0.375]``: exactly one evaluation at ``5/3 eta_prev``; if ``K <= eps``
  there, ``eta = eta_prev`` again, however small ``K`` becomes: eta is frozen at the floor
  (``"frozen"``); otherwise it jumps to ``7/3 eta_prev`` (an active ``"bisection"`` step);
- and since the bracket moves at most 3x per step, ``K/eps`` overshoots for several steps after
  the scheduler drops the KL bound.

In general the windows are ``eta_prev <= 3/8 eta_tol`` and ``(3/8, 3/4] * eta_tol``. ARTURO.md,
"Diagnostic quantities" asks for the share of steps in each regime and for overshoot
(``K/eps > 1.1``); this module computes them from ``steps.csv`` and ``snapshots.csv``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "INACTIVE_REGIMES",
    "REGIMES",
    "binding_steps",
    "bound_drop_episodes",
    "classify_regimes",
    "snapshot_binding",
    "trust_region_summary",
]

REGIMES = ("first", "bisection", "growth_5_3", "frozen", "fixed", "other")
# Regimes in which the KL bound did not determine eta.
INACTIVE_REGIMES = ("growth_5_3", "frozen")
GROWTH = 5.0 / 3.0
OVERSHOOT = 1.1
UNDERSHOOT = 0.9
_LONGEST_RUNS = 10


def _column(steps: pd.DataFrame, name: str) -> np.ndarray:
    if name not in steps.columns:
        return np.full(len(steps), math.nan)
    return pd.to_numeric(steps[name], errors="coerce").to_numpy(dtype=np.float64)


def classify_regimes(
    steps: pd.DataFrame,
    *,
    eta_tol: float = 0.5,
    rtol: float = 1e-6,
    overshoot: float = OVERSHOOT,
    undershoot: float = UNDERSHOOT,
    fixed_eta: float | None = None,
) -> pd.DataFrame:
    """The regime of every step, and the overshoot/undershoot flags.

    Args:
        steps: ``steps.csv`` (columns ``step``, ``eta``, ``eta_prev``, ``iterations``, ``kl_ratio``).
        eta_tol: the bisection's tolerance (0.5 in every published config).
        rtol: relative tolerance of the equalities ``eta = 5/3 eta_prev`` and ``eta = eta_prev``.

    Returns:
        A DataFrame sorted by step with columns ``step``, ``regime``, ``overshoot``, ``undershoot``.
        ``regime`` is, in this order of precedence:
        ``"first"`` (first row, or no ``eta_prev``);
        ``"growth_5_3"`` (0 iterations and ``eta = 5/3 eta_prev``);
        ``"frozen"`` (``eta_prev`` in ``(3/8, 3/4] * eta_tol``, 1 iteration, ``eta = eta_prev``);
        ``"bisection"`` (1 or more iterations otherwise);
        ``"fixed"`` (0 iterations and ``eta = eta_prev``: the trust-region-off ablation);
        ``"other"``. ``overshoot`` is ``K/eps > 1.1``, ``undershoot`` is ``K/eps < 0.9`` (both
        False where ``kl_ratio`` is NaN).
        With ``fixed_eta`` (the run's ``fixed_eta`` setting: the trust region was off) every step
        is ``"fixed"``: no bisection ran, so none of its regimes applies (an eta fixed at 0 is not
        "growing by 5/3", nor one fixed at 0.25 "frozen at the floor").
    """
    ordered = steps.sort_values("step", kind="stable").reset_index(drop=True)
    eta = _column(ordered, "eta")
    eta_prev = _column(ordered, "eta_prev")
    iterations = _column(ordered, "iterations")
    kl_ratio = _column(ordered, "kl_ratio")
    with np.errstate(invalid="ignore"):
        first = np.isnan(eta_prev)
        if len(first):
            first[0] = True
        grew = (iterations == 0) & np.isclose(eta, GROWTH * eta_prev, rtol=rtol, atol=0.0)
        in_floor_window = (eta_prev > 0.375 * eta_tol) & (eta_prev <= 0.75 * eta_tol)
        stayed = np.isclose(eta, eta_prev, rtol=rtol, atol=0.0)
        frozen = in_floor_window & (iterations == 1) & stayed
        bisection = iterations >= 1
        fixed = (iterations == 0) & stayed
        over = kl_ratio > overshoot
        under = kl_ratio < undershoot
    regime = np.select(
        [first, grew, frozen, bisection, fixed],
        ["first", "growth_5_3", "frozen", "bisection", "fixed"],
        default="other",
    )
    if fixed_eta is not None:
        regime = np.full(len(ordered), "fixed")
    return pd.DataFrame(
        {
            "step": ordered["step"].astype(int).to_numpy() if len(ordered) else np.array([], dtype=int),
            "regime": regime.astype(object),
            "overshoot": over,
            "undershoot": under,
        }
    )


def _shares(regimes: pd.Series) -> dict[str, float]:
    total = len(regimes)
    return {name: (float(np.count_nonzero(regimes == name)) / total if total else math.nan) for name in REGIMES}


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) row positions of every maximal run of True."""
    runs, start = [], None
    for i, flag in enumerate(mask):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            runs.append((start, i - 1))
            start = None
    if start is not None:
        runs.append((start, len(mask) - 1))
    return runs


def _finite_or_nan(values: np.ndarray, fn) -> float:
    values = values[np.isfinite(values)]
    return float(fn(values)) if values.size else math.nan


def _run_summary(mask: np.ndarray, step: np.ndarray, eta: np.ndarray, kl_ratio: np.ndarray) -> dict[str, Any]:
    runs = _runs(mask)
    described = []
    for first, last in runs:
        span = slice(first, last + 1)
        described.append(
            {
                "start_step": int(step[first]),
                "end_step": int(step[last]),
                "length": int(last - first + 1),
                "eta_start": float(eta[first]),
                "eta_end": float(eta[last]),
                "eta_median": _finite_or_nan(eta[span], np.median),
                "kl_ratio_start": float(kl_ratio[first]),
                "kl_ratio_end": float(kl_ratio[last]),
                "kl_ratio_min": _finite_or_nan(kl_ratio[span], np.min),
                "kl_ratio_max": _finite_or_nan(kl_ratio[span], np.max),
            }
        )
    # the longest runs (ties: the earlier first), listed in time order
    longest = sorted(described, key=lambda run: (-run["length"], run["start_step"]))[:_LONGEST_RUNS]
    return {
        "count": len(described),
        "total_steps": int(sum(run["length"] for run in described)),
        "longest": longest[0] if longest else None,
        "runs": sorted(longest, key=lambda run: run["start_step"]),
    }


def bound_drop_episodes(steps: pd.DataFrame, *, overshoot: float = OVERSHOOT) -> list[dict[str, Any]]:
    """Overshoot of ``K/eps`` after each drop of the KL bound (e.g. by the LR scheduler).

    A drop is a step whose ``kl_bound`` is below the previous step's. From that step on, the
    episode lasts until the first step with ``kl_ratio <= overshoot`` (NaN ratios are skipped).

    Returns one dict per drop: ``step`` (first step with the new bound), ``kl_bound_before``,
    ``kl_bound_after``, ``factor`` (after/before), ``peak_kl_ratio`` and ``peak_step`` (the
    largest ``K/eps`` before recovery), ``recovered``, ``steps_to_recover`` (steps from the drop
    to the first step back at or below 1.1; 0 if the drop step itself is; None if never),
    ``recovery_step``.
    """
    ordered = steps.sort_values("step", kind="stable").reset_index(drop=True)
    step = _column(ordered, "step")
    bound = _column(ordered, "kl_bound")
    ratio = _column(ordered, "kl_ratio")
    episodes = []
    for i in range(1, len(ordered)):
        if not (np.isfinite(bound[i]) and np.isfinite(bound[i - 1]) and bound[i] < bound[i - 1] * (1 - 1e-12)):
            continue
        recovery = None
        for j in range(i, len(ordered)):
            if np.isfinite(ratio[j]) and ratio[j] <= overshoot:
                recovery = j
                break
        # the peak is taken over the overshooting steps; if there are none, it is the drop step's ratio
        if recovery is None:
            end = len(ordered)
        else:
            end = max(recovery, i + 1)
        window = ratio[i:end]
        if np.isfinite(window).any():
            peak_at = i + int(np.nanargmax(window))
            peak, peak_step = float(ratio[peak_at]), int(step[peak_at])
        else:
            peak, peak_step = math.nan, None
        episodes.append(
            {
                "step": int(step[i]),
                "kl_bound_before": float(bound[i - 1]),
                "kl_bound_after": float(bound[i]),
                "factor": float(bound[i] / bound[i - 1]) if bound[i - 1] != 0 else math.nan,
                "peak_kl_ratio": peak,
                "peak_step": peak_step,
                "recovered": recovery is not None,
                "steps_to_recover": int(recovery - i) if recovery is not None else None,
                "recovery_step": int(step[recovery]) if recovery is not None else None,
            }
        )
    return episodes


def snapshot_binding(snapshots: pd.DataFrame) -> dict[str, Any]:
    """Whether the trust region binds at each snapshot and how the rule's eta compares with eta*.

    The trust region binds when the unconstrained step would exceed the bound: ``K(0)/eps > 1``
    (``kl0_ratio``). ``eta*`` is the exact root of ``K(eta) = eps`` (NaN when not binding).

    Returns ``binding_share`` (over snapshots with a finite ``kl0_ratio``),
    ``eta_over_eta_star_median`` and per-snapshot rows ``{step, kl0_ratio, binds, eta, eta_star,
    eta_over_eta_star}``.
    """
    step = _column(snapshots, "step")
    kl0 = _column(snapshots, "kl0_ratio")
    eta = _column(snapshots, "eta")
    eta_star = _column(snapshots, "eta_star")
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(np.isfinite(eta_star) & (eta_star > 0), eta / eta_star, math.nan)
    rows = []
    for i in range(len(snapshots)):
        rows.append(
            {
                "step": int(step[i]),
                "kl0_ratio": float(kl0[i]),
                "binds": bool(kl0[i] > 1) if np.isfinite(kl0[i]) else None,
                "eta": float(eta[i]),
                "eta_star": float(eta_star[i]),
                "eta_over_eta_star": float(ratio[i]),
            }
        )
    known = np.isfinite(kl0)
    return {
        "n": int(len(snapshots)),
        "binding_share": float(np.mean(kl0[known] > 1)) if known.any() else math.nan,
        "eta_over_eta_star_median": _finite_or_nan(ratio, np.median),
        "snapshots": rows,
    }


def trust_region_summary(
    steps: pd.DataFrame,
    snapshots: pd.DataFrame | None = None,
    *,
    eta_tol: float = 0.5,
    burn_in: int | None = None,
    rtol: float = 1e-6,
    fixed_eta: float | None = None,
) -> dict[str, Any]:
    """Regime shares, runs of inactive steps, overshoot after bound drops, binding at snapshots.

    Args:
        steps: ``steps.csv``; snapshots: ``snapshots.csv`` (optional).
        eta_tol: the bisection tolerance from the optimizer's config.
        burn_in: shares are also given over the steps after this step number (default: a tenth
            of the last step, rounded), to see the regime once the first transient is over.
        fixed_eta: the run's ``fixed_eta`` (None: eta from the dual solve); every step is then
            ``"fixed"`` (:func:`classify_regimes`) and the result's ``fixed_eta`` says so.

    Returns:
        ``{"available", "n_steps", "eta_tol", "fixed_eta", "burn_in", "regime_counts", "regime_share",
        "regime_share_after_burn_in", "inactive_share", "inactive_share_after_burn_in",
        "overshoot_share", "undershoot_share", "overshoot_share_after_burn_in",
        "inactive_runs", "frozen_runs", "growth_runs", "bound_drops", "snapshots"}``; a run
        summary is ``{"count", "total_steps", "longest", "runs"}`` with each run
        ``{start_step, end_step, length, eta_start, eta_end, eta_median, kl_ratio_start,
        kl_ratio_end, kl_ratio_min, kl_ratio_max}``.
    """
    binding = snapshot_binding(snapshots) if snapshots is not None else None
    has_eta = "eta" in steps.columns and bool(pd.to_numeric(steps["eta"], errors="coerce").notna().any())
    if len(steps) == 0 or not has_eta:
        return {
            "available": False,
            "reason": "no eta recorded in steps.csv",
            "n_steps": int(len(steps)),
            "snapshots": binding,
        }
    regimes = classify_regimes(steps, eta_tol=eta_tol, rtol=rtol, fixed_eta=fixed_eta)
    ordered = steps.sort_values("step", kind="stable").reset_index(drop=True)
    step = regimes["step"].to_numpy()
    eta = _column(ordered, "eta")
    kl_ratio = _column(ordered, "kl_ratio")
    last_step = int(step[-1])
    if burn_in is None:
        burn_in = int(round(0.1 * last_step))
    late = step > burn_in
    regime = regimes["regime"]
    inactive = regime.isin(INACTIVE_REGIMES).to_numpy()

    def share(mask: np.ndarray, where: np.ndarray | None = None) -> float:
        if where is not None:
            mask = mask[where]
        return float(np.mean(mask)) if len(mask) else math.nan

    return {
        "available": True,
        "n_steps": int(len(regimes)),
        "eta_tol": float(eta_tol),
        "fixed_eta": None if fixed_eta is None else float(fixed_eta),
        "burn_in": int(burn_in),
        "n_steps_after_burn_in": int(np.count_nonzero(late)),
        "regime_counts": {name: int(np.count_nonzero(regime == name)) for name in REGIMES},
        "regime_share": _shares(regime),
        "regime_share_after_burn_in": _shares(regime[late]),
        "inactive_share": share(inactive),
        "inactive_share_after_burn_in": share(inactive, late),
        "overshoot_share": share(regimes["overshoot"].to_numpy()),
        "undershoot_share": share(regimes["undershoot"].to_numpy()),
        "overshoot_share_after_burn_in": share(regimes["overshoot"].to_numpy(), late),
        "inactive_runs": _run_summary(inactive, step, eta, kl_ratio),
        "frozen_runs": _run_summary((regime == "frozen").to_numpy(), step, eta, kl_ratio),
        "growth_runs": _run_summary((regime == "growth_5_3").to_numpy(), step, eta, kl_ratio),
        "bound_drops": bound_drop_episodes(ordered),
        "snapshots": binding,
        "binding_steps_after_burn_in": binding_steps(kl_ratio[late]),
    }


def binding_steps(kl_ratio: np.ndarray, *, threshold: float = UNDERSHOOT) -> dict[str, Any]:
    """How many steps reached the KL bound: ``K/eps >= threshold`` (0.9; at, near or beyond the bound).

    Over the steps with a finite ``kl_ratio``; ``{"n", "n_binding", "share", "threshold"}``.
    A step whose ``K/eps`` stays below 0.9 took a step smaller than the bound allows: the bound did
    not determine it (a frozen or 5/3-growth eta, or a bisection that ended inside its tolerance).
    """
    known = kl_ratio[np.isfinite(kl_ratio)]
    n_binding = int(np.count_nonzero(known >= threshold))
    return {
        "n": int(known.size),
        "n_binding": n_binding,
        "share": n_binding / known.size if known.size else math.nan,
        "threshold": float(threshold),
    }
