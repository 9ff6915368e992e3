"""Movement of a away from its prior 0.1, by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from arturo_diag.diagnostics.movement import movement


def test_movement_by_hand():
    result = movement([0.1, 0.2, 0.1005, 0.1], [1.0, 0.05, 1.0, 0.0])
    # |a - 0.1| / |h| over h != 0: [0, 2, 0.0005]
    assert result["median_relative_move"] == pytest.approx(0.0005, rel=1e-9)
    assert result["n_h_zero"] == 1
    # thresholds 1e-3 * max(|h|, 1e-5) = [1e-3, 5e-5, 1e-3, 1e-8]; moves [0, 0.1, 5e-4, 0]
    assert result["never_left_share"] == 0.75
    # a sorted [0.1, 0.1, 0.1005, 0.2]
    assert result["a_q01"] == pytest.approx(0.1, rel=1e-12)
    assert result["a_median"] == pytest.approx(0.10025, rel=1e-12)
    assert result["a_q99"] == pytest.approx(0.1005 + 0.97 * 0.0995, rel=1e-12)


def test_float32_prior_counts_as_never_left():
    a = np.full(3, np.float32(0.1)).astype(np.float64)  # 0.10000000149...
    result = movement(a, [0.0, 1e-6, 2.0])
    assert result["never_left_share"] == 1.0
    assert math.isnan(movement([], [])["median_relative_move"])


def test_scale_relative_move_by_hand():
    # |a - 0.1| = [0.001, 0.002, 0.003] -> median 0.002; |h| = [1, 2, 4] -> median 2
    result = movement([0.101, 0.098, 0.103], [1.0, -2.0, 4.0])
    assert result["scale_relative_move"] == pytest.approx(0.001)
    assert result["h_q01"] == pytest.approx(-2.0 + 0.01 * 2 * 3.0)  # linear interpolation of [-2, 1, 4]
    assert result["h_q99"] == pytest.approx(4.0 - 0.01 * 2 * 3.0)


def test_findings_warn_when_a_did_not_move_on_the_scale_of_h():
    from arturo_diag.quantities.analysis import findings

    overall = movement([0.15, 0.05, 0.16, 0.14], [1.0, -2.0, 4.0, 3.0])  # moves ~0.05, |h| ~2.5
    texts = [
        f["text"]
        for f in findings({"movement": {"final": {"step": 7, "overall": overall}}})
        if f["topic"] == "movement"
    ]
    assert texts and texts[0].startswith("a barely moved on the scale of h")


def test_log_spread_by_hand_and_its_finding():
    from arturo_diag.quantities.analysis import findings

    # log10|h| = [-4, -2, 0, 1]: linear quantiles at positions 0.03 and 2.97 -> -3.94 and 0.97
    a = [0.12, 0.13, 0.125, 0.14]  # every coordinate moved by more than 1e-3 |h|
    h = [1e-4, -1e-2, 1.0, 10.0]
    result = movement(a, h)
    assert result["never_left_share"] == 0.0
    assert result["spread_decades_h"] == pytest.approx(4.91, rel=1e-12)
    assert result["spread_decades_a"] == pytest.approx(
        (math.log10(0.13) + 0.97 * (math.log10(0.14) - math.log10(0.13)))
        - (math.log10(0.12) + 0.03 * (math.log10(0.125) - math.log10(0.12))),
        rel=1e-12,
    )
    assert result["log_spread_ratio"] < 0.02
    texts = [
        f["text"] for f in findings({"movement": {"final": {"step": 3, "overall": result}}}) if f["topic"] == "movement"
    ]
    assert texts[0].startswith("a stayed near its prior 0.1")
