"""Lag: recovers a known shift; says "no identifiable lag" (with the lag test's interval) for flat curves."""

from __future__ import annotations

import numpy as np
import pytest

from arturo_diag.diagnostics.lag import lag_analysis, lag_table, summarize_lag

N, T, INTERVAL = 400, 30, 10


def _smooth_reference(rng):
    offset = rng.normal(size=N)
    amplitude = rng.uniform(0.5, 1.5, size=N)
    omega = rng.uniform(0.2, 0.6, size=N)
    phase = rng.uniform(0, 2 * np.pi, size=N)
    return lambda t: offset + amplitude * np.sin(omega * t + phase)


def test_recovers_a_known_shift_of_two_snapshots():
    rng = np.random.default_rng(0)
    h_of = _smooth_reference(rng)
    steps = [INTERVAL * (t + 1) for t in range(T)]
    h_seq = [h_of(t) for t in range(T)]
    a_seq = [h_of(t - 2) + 0.01 * rng.normal(size=N) for t in range(T)]
    for metric in ("spearman", "relative_error"):
        result = lag_analysis(steps, a_seq, h_seq, max_lag=5, metric=metric)
        assert result["identifiable"] is True
        assert result["best_k"] == 2
        assert result["best_lag_steps"] == 2 * INTERVAL
        assert result["snapshot_interval"] == INTERVAL and result["interval_regular"] is True
        curve = result["curves"][metric]
        assert curve["k"] == [0, 1, 2, 3, 4, 5]
        assert curve["n"] == [T - 5] * 6  # common window: t >= 5 for every k
        assert curve["range"] > curve["noise"]
    assert "h_(t-2)" in result["reason"]


def test_constant_reference_gives_no_identifiable_lag():
    rng = np.random.default_rng(1)
    h = rng.normal(size=N)
    steps = list(range(10, 10 * (T + 1), 10))
    result = lag_analysis(steps, [h + 0.3 * rng.normal(size=N) for _ in range(T)], [h] * T, max_lag=4)
    assert result["identifiable"] is False and result["best_k"] is None and result["best_lag_steps"] is None
    assert result["curves"]["spearman"]["range"] == pytest.approx(0.0, abs=1e-12)
    # issue 11: the lag test (gain of the best k over k = 0, with its interval) replaces "flat within noise"
    assert result["test"]["outcome"] == "no" and result["test"]["ci_high"] == pytest.approx(0.0, abs=1e-12)
    assert result["reason"].startswith("no identifiable lag: no k = 1..4 fits a_t better than k = 0 by the margin")
    assert "95 % CI [0, 0] over 26 snapshots" in result["reason"]


def test_unrelated_noise_gives_no_identifiable_lag():
    rng = np.random.default_rng(2)
    steps = list(range(1, T + 1))
    result = lag_analysis(
        steps, [rng.normal(size=N) for _ in range(T)], [rng.normal(size=N) for _ in range(T)], max_lag=5
    )
    assert result["identifiable"] is False and result["best_k"] is None


def test_constant_estimate_is_undefined_not_a_lag():
    rng = np.random.default_rng(3)
    h_seq = [rng.normal(size=N) for _ in range(6)]
    result = lag_analysis(range(6), [np.full(N, 0.1)] * 6, h_seq, max_lag=3)
    assert result["best_k"] is None and "undefined" in result["reason"]


def test_table_by_hand_and_too_few_snapshots():
    h0, h1 = np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0])
    table = lag_table([(5, h0, h0), (10, h0, h1)], max_lag=3)
    assert table[["t", "step", "k", "h_step"]].values.tolist() == [[0, 5, 0, 5], [1, 10, 0, 10], [1, 10, 1, 5]]
    assert table["spearman"].tolist() == pytest.approx([1.0, -1.0, 1.0])
    # relative error of a_1 = h0 against h1: ||[-2, 0, 2]|| / ||h1|| = sqrt(8 / 14)
    assert table["relative_error"].iloc[1] == pytest.approx(np.sqrt(8 / 14))
    result = summarize_lag(table)
    assert result["best_k"] is None and result["reason"].startswith("not assessed: 2 snapshot(s)")
