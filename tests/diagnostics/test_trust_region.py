"""Trust-region regimes on hand-built step tables and on a simulation of the published bisection."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from arturo_diag.diagnostics.trust_region import (
    bound_drop_episodes,
    classify_regimes,
    snapshot_binding,
    trust_region_summary,
)

NAN = math.nan


def _table(rows):
    return pd.DataFrame(rows, columns=["step", "kl_bound", "eta", "eta_prev", "iterations", "kl_ratio"])


def test_regimes_by_hand():
    steps = _table(
        [
            (1, 0.1, 0.05, NAN, 14, 1.0),  # first step: bracket [0, 10000]
            (2, 0.1, 0.1 * 5 / 3, 0.1, 0, 0.5),  # 5/3 growth: bracket [0.0333, 0.3] already < 0.5
            (3, 0.1, 0.254, 0.254, 1, 0.03),  # frozen at the floor: one K, eta unchanged
            (4, 0.1, 0.254 * 7 / 3, 0.254, 1, 1.05),  # same window, K(5/3 eta_prev) > eps: jump 7/3
            (5, 0.1, 0.9, 0.6, 3, 1.5),  # a normal bisection
            (6, 0.1, 0.5, 0.5, 1, 1.0),  # eta unchanged outside the floor window: active
            (7, 0.1, 0.9, 0.9, 0, 0.8),  # eta fixed, no solve: trust region off
            (8, 0.1, 2.0, 0.9, 0, 1.2),  # none of the above
            (9, 0.1, 0.16667, 0.1, 0, 0.5),  # 5 digits are not 5/3 within rtol 1e-6
        ]
    )
    result = classify_regimes(steps.iloc[::-1])  # input order does not matter
    assert result["step"].tolist() == list(range(1, 10))
    assert result["regime"].tolist() == [
        "first",
        "growth_5_3",
        "frozen",
        "bisection",
        "bisection",
        "bisection",
        "fixed",
        "other",
        "other",
    ]
    assert result["overshoot"].tolist() == [False, False, False, False, True, False, False, True, False]
    assert result["undershoot"].tolist() == [False, True, True, False, False, False, True, False, True]


def test_floor_window_follows_eta_tol():
    steps = _table([(1, 0.1, 1.0, NAN, 5, 1.0), (2, 0.1, 0.254, 0.254, 1, 0.5), (3, 0.1, 0.6, 0.6, 1, 0.5)])
    # eta_tol = 1: growth below 0.375, floor window (0.375, 0.75]
    assert classify_regimes(steps, eta_tol=1.0)["regime"].tolist() == ["first", "bisection", "frozen"]


def _published_bisection(kl, eps, eta_prev, eta_tol=0.5):
    """ARTURO.md step 4, including the early stop and the midpoint of the final bracket."""
    lo, hi = (0.0, 10000.0) if eta_prev is None else (eta_prev / 3, min(3 * eta_prev, 10000.0))
    evaluations, last_went_low = 0, False
    while hi - lo > eta_tol:
        m = (lo + hi) / 2
        k = kl(m)
        evaluations += 1
        if k > eps:
            lo, last_went_low = m, False
        else:
            hi, last_went_low = m, True
        if abs(k - eps) < 0.1 * eps:
            break
    eta = (lo + hi) / 2
    return eta, lo, hi, evaluations, kl(eta) / eps, last_went_low


def test_classifier_agrees_with_a_simulated_published_bisection():
    rows, truth, eta = [], [], None
    for step in range(1, 121):
        scale = 1e-5 if step <= 30 else 0.02 * 0.97**step
        eps = 0.05 if step <= 90 else 0.05 * 0.006
        eta_prev = eta
        eta, lo, hi, evaluations, ratio, went_low = _published_bisection(
            lambda e: scale / (e + 0.01) ** 2, eps, eta_prev
        )
        rows.append((step, eps, eta, NAN if eta_prev is None else eta_prev, evaluations, ratio))
        if eta_prev is None:
            truth.append("first")
        elif evaluations == 0:
            truth.append("growth_5_3")
        elif evaluations == 1 and went_low and 0.1875 < eta_prev <= 0.375:
            truth.append("frozen")
        else:
            truth.append("bisection")
    regimes = classify_regimes(_table(rows))["regime"].tolist()
    assert regimes == truth
    assert {"growth_5_3", "frozen", "bisection"} <= set(truth)


def test_summary_runs_and_overshoot_after_a_bound_drop():
    rows = [(1, 0.1, 0.01, NAN, 14, 1.0)]
    eta = 0.01
    for step in range(2, 6):  # steps 2-5: 5/3 growth 0.01 -> 0.0772
        rows.append((step, 0.1, eta * 5 / 3, eta, 0, 0.2))
        eta *= 5 / 3
    rows.append((6, 0.1, 0.25, eta, 2, 1.0))
    for step, ratio in zip(range(7, 11), (0.5, 0.2, 0.08, 0.03)):  # steps 7-10 frozen at 0.25
        rows.append((step, 0.1, 0.25, 0.25, 1, ratio))
    for step, ratio in zip(range(11, 18), (78.0, 40.0, 20.0, 9.0, 3.0, 1.05, 1.0)):  # bound drop at 11
        rows.append((step, 0.1 * 0.006, 0.5, 0.25 if step == 11 else 0.5, 3, ratio))
    for step in range(18, 21):
        rows.append((step, 0.1 * 0.006, 0.5, 0.5, 2, 1.0))
    steps = _table(rows)

    summary = trust_region_summary(steps, eta_tol=0.5, burn_in=5)
    assert summary["available"] is True and summary["n_steps"] == 20
    assert summary["regime_counts"] == {
        "first": 1,
        "bisection": 11,
        "growth_5_3": 4,
        "frozen": 4,
        "fixed": 0,
        "other": 0,
    }
    assert summary["regime_share"]["growth_5_3"] == pytest.approx(4 / 20)
    # after step 5: 15 steps, 4 of them frozen
    assert summary["n_steps_after_burn_in"] == 15
    assert summary["regime_share_after_burn_in"]["frozen"] == pytest.approx(4 / 15)
    assert summary["inactive_share"] == pytest.approx(8 / 20)
    assert summary["inactive_share_after_burn_in"] == pytest.approx(4 / 15)
    assert summary["overshoot_share"] == pytest.approx(5 / 20)  # 78, 40, 20, 9, 3
    assert summary["undershoot_share"] == pytest.approx(8 / 20)  # 4 x 0.2 and 4 frozen

    frozen = summary["frozen_runs"]
    assert (frozen["count"], frozen["total_steps"]) == (1, 4)
    assert frozen["longest"]["start_step"] == 7 and frozen["longest"]["end_step"] == 10
    assert frozen["longest"]["eta_median"] == 0.25 and frozen["longest"]["kl_ratio_min"] == 0.03
    growth = summary["growth_runs"]["longest"]
    assert (growth["start_step"], growth["end_step"], growth["length"]) == (2, 5, 4)
    assert growth["eta_start"] == pytest.approx(0.01 * 5 / 3) and growth["eta_end"] == pytest.approx(
        0.01 * (5 / 3) ** 4
    )
    assert summary["inactive_runs"]["count"] == 2

    (drop,) = summary["bound_drops"]
    assert drop["step"] == 11 and drop["factor"] == pytest.approx(0.006)
    assert drop["peak_kl_ratio"] == 78.0 and drop["peak_step"] == 11
    assert drop["recovered"] is True and drop["steps_to_recover"] == 5 and drop["recovery_step"] == 16


def test_bound_drop_without_recovery():
    steps = _table(
        [(1, 0.1, 1, NAN, 5, 1.0), (2, 0.01, 1, 1, 3, 5.0), (3, 0.01, 1, 1, 3, NAN), (4, 0.01, 1, 1, 3, 8.0)]
    )
    (drop,) = bound_drop_episodes(steps)
    assert drop["recovered"] is False and drop["steps_to_recover"] is None
    assert drop["peak_kl_ratio"] == 8.0 and drop["peak_step"] == 4
    no_overshoot = _table([(1, 0.1, 1, NAN, 5, 1.0), (2, 0.01, 1, 1, 3, 0.95)])
    (drop,) = bound_drop_episodes(no_overshoot)
    assert drop["steps_to_recover"] == 0 and drop["peak_kl_ratio"] == 0.95


def test_snapshot_binding_by_hand():
    snapshots = pd.DataFrame(
        {
            "step": [10, 20, 30, 40],
            "kl0_ratio": [3.0, 0.5, 2.0, NAN],
            "eta": [1.0, 0.3, 0.5, 0.2],
            "eta_star": [2.0, NAN, 0.25, NAN],
        }
    )
    result = snapshot_binding(snapshots)
    assert result["binding_share"] == pytest.approx(2 / 3)
    assert result["eta_over_eta_star_median"] == pytest.approx(1.25)  # median of 0.5 and 2
    assert [row["binds"] for row in result["snapshots"]] == [True, False, True, None]


def test_summary_without_eta_is_unavailable():
    steps = pd.DataFrame({"step": [1, 2], "loss": [1.0, 0.5]})
    assert trust_region_summary(steps)["available"] is False
