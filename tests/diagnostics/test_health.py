"""Health numbers by hand: eta and its bracket, iterations, K/eps, precision, collapse, signs."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from arturo_diag.diagnostics.health import (
    curvature_signs,
    eta_health,
    iteration_histogram,
    kl_ratio_quantiles,
    nonpositive_events,
    precision_over_time,
    snapshot_health,
    variance_collapse,
)

NAN = math.nan


def _steps():
    return pd.DataFrame(
        {
            "step": [3, 1, 2, 4],
            "eta": [0.3, 0.1, 0.2, 0.4],
            "eta_lo": [0.2, 0.0, 0.1, 0.4],
            "eta_hi": [0.6, 0.4, 0.3, 0.4],
            "iterations": [2, 14, 0, 2],
            "kl_ratio": [1.0, 2.0, NAN, 0.5],
            "precision_nonpos": [0, 0, 3, 1],
            "denominator_nonpos": [0, 0, 0, 0],
            "precision_q01": [NAN, 10.0, NAN, 5.0],
            "precision_q50": [NAN, 100.0, NAN, 200.0],
            "precision_q99": [NAN, 1000.0, NAN, 2000.0],
        }
    )


def test_eta_by_hand():
    result = eta_health(_steps())
    assert (result["median"], result["min"], result["max"]) == (pytest.approx(0.25), 0.1, 0.4)
    assert (result["first"], result["last"]) == (0.1, 0.4)
    # positions in step order: 0.1/0.4, 0.1/0.2, 0.1/0.4; step 4 has a zero-width bracket
    assert result["bracket_position"]["q50"] == pytest.approx(0.25)


def test_iterations_and_kl_ratio_by_hand():
    histogram = iteration_histogram(_steps())
    assert histogram["histogram"] == {"0": 1, "2": 2, "14": 1}
    assert histogram["mean"] == 4.5 and histogram["max"] == 14 and histogram["zero_share"] == 0.25
    quantiles = kl_ratio_quantiles(_steps())
    assert quantiles["n"] == 3 and quantiles["q50"] == 1.0 and quantiles["max"] == 2.0
    assert quantiles["q25"] == pytest.approx(0.75)


def test_precision_and_nonpositive_events_by_hand():
    result = precision_over_time(_steps())
    assert result["n"] == 2 and result["min_q01"] == 5.0
    assert result["first"] == {"step": 1, "q01": 10.0, "q50": 100.0, "q99": 1000.0}
    assert result["last"]["step"] == 4 and [row["step"] for row in result["series"]] == [1, 4]
    events = nonpositive_events(_steps())
    assert events["precision_nonpos"] == {"recorded": True, "steps": 2, "first_step": 2, "max_count": 3.0, "total": 4.0}
    assert events["denominator_nonpos"]["steps"] == 0 and events["denominator_nonpos"]["first_step"] is None
    assert events["guard_acted"]["recorded"] is False


def test_thinned_precision_series_keeps_first_and_last():
    steps = pd.DataFrame({"step": range(1, 201), "precision_q50": np.arange(200.0)})
    series = precision_over_time(steps, max_points=5)["series"]
    assert [row["step"] for row in series] == [1, 51, 101, 150, 200]  # rows 0, 49.75, 99.5, 149.25, 199 rounded


def test_variance_collapse_by_hand():
    # var_init 0.01, fraction 0.01 -> threshold 1e-4, i.e. pi > 1e4 is collapsed
    result = variance_collapse([100.0, 2e4, 1e5, -1.0, 0.0], var_init=0.01, fraction=0.01)
    assert result["threshold"] == pytest.approx(1e-4)
    assert result["n"] == 3 and result["n_nonpositive"] == 2
    assert result["share_collapsed"] == pytest.approx(2 / 3)
    assert result["variance_q50"] == pytest.approx(5e-5)
    with pytest.raises(ValueError, match="var_init"):
        variance_collapse([1.0], var_init=0.0)


def test_signs_and_snapshot_health_by_hand():
    assert curvature_signs([-1, 0, 2, 3], [1, -1, -2, np.nan]) == {
        "negative_a_share": 0.25,
        "negative_h_share": pytest.approx(2 / 3),
    }
    result = snapshot_health(precision=[100.0, -1.0], curvature=[0.1, -0.2], reference=None, var_init=0.01)
    assert result["precision_nonpositive_share"] == 0.5
    assert result["variance_collapse"]["n_nonpositive"] == 1
    assert result["negative_a_share"] == 0.5 and math.isnan(result["negative_h_share"])
