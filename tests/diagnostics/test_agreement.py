"""Agreement metrics against numbers computed by hand, Spearman against scipy."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import stats

from arturo_diag.diagnostics.agreement import agreement, agreement_with_baselines, per_layer, spearman

L2, L3 = math.log10(2), math.log10(3)


def test_agreement_by_hand():
    result = agreement([1, 2, 3], [1, 1, 1])
    assert result["n"] == 3
    assert result["relative_error"] == pytest.approx(math.sqrt(5) / math.sqrt(3), rel=1e-14)
    assert result["cosine"] == pytest.approx(6 / math.sqrt(42), rel=1e-14)
    assert math.isnan(result["spearman"])  # h constant: ranks undefined
    assert result["sign_agreement"] == 1.0
    # log10(|a|/|h|) = [0, log10 2, log10 3], linear interpolation between order statistics
    assert result["log_ratio_q05"] == pytest.approx(0.1 * L2, rel=1e-12)
    assert result["log_ratio_q25"] == pytest.approx(0.5 * L2, rel=1e-12)
    assert result["log_ratio_q50"] == pytest.approx(L2, rel=1e-12)
    assert result["log_ratio_q75"] == pytest.approx((L2 + L3) / 2, rel=1e-12)
    assert result["log_ratio_q95"] == pytest.approx(L2 + 0.9 * (L3 - L2), rel=1e-12)
    assert result["log_ratio_abs_median"] == pytest.approx(L2, rel=1e-12)
    assert result["n_log_excluded"] == 0


def test_agreement_with_zeros_and_signs_by_hand():
    a = [0.0, -1.0, 2.0, 4.0]
    h = [0.0, 1.0, 0.0, 2.0]
    result = agreement(a, h)
    assert result["relative_error"] == pytest.approx(math.sqrt(12 / 5), rel=1e-14)
    assert result["cosine"] == pytest.approx(7 / math.sqrt(105), rel=1e-14)
    # h != 0 at coordinates 1 and 3: signs -1 vs 1 (disagree), 1 vs 1 (agree)
    assert result["sign_agreement"] == 0.5
    # a zero in a never matches a sign; zeros of h are left out
    assert agreement([0.0, 1.0, 1.0], [1.0, 1.0, 0.0])["sign_agreement"] == 0.5
    assert math.isnan(agreement([1.0, 2.0], [0.0, 0.0])["sign_agreement"])
    # ranks [2,1,3,4] vs [1.5,3,1.5,4] -> 1.5 / sqrt(5 * 4.5)
    assert result["spearman"] == pytest.approx(1 / math.sqrt(10), rel=1e-12)
    # only coordinates 1 (ratio 1) and 3 (ratio 2) have both non-zero
    assert result["n_log_excluded"] == 2
    assert result["log_ratio_q50"] == pytest.approx(L2 / 2, rel=1e-12)
    assert (result["n_zero_a"], result["n_zero_h"]) == (1, 2)


def test_agreement_drops_nonfinite_coordinates():
    result = agreement([1, 2, np.nan, 3], [1, 1, 1, np.inf])
    assert (result["n"], result["n_nonfinite"]) == (2, 2)
    assert result["relative_error"] == pytest.approx(1 / math.sqrt(2), rel=1e-14)


def test_zero_reference_gives_undefined_not_a_crash():
    result = agreement([1.0, 2.0], [0.0, 0.0])
    assert math.isnan(result["relative_error"]) and math.isnan(result["cosine"])
    assert math.isnan(result["log_ratio_q50"]) and result["n_log_excluded"] == 2


def test_spearman_matches_scipy_on_random_arrays():
    rng = np.random.default_rng(0)
    for size in (5, 50, 5000):
        a = rng.normal(size=size)
        h = a + rng.normal(size=size)
        h[: size // 5] = 0.0  # ties
        assert spearman(a, h) == pytest.approx(stats.spearmanr(a, h).statistic, abs=1e-14)
        assert agreement(a, h)["spearman"] == pytest.approx(stats.spearmanr(a, h).statistic, abs=1e-14)


def test_spearman_of_constant_input_is_nan_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(spearman([0.1, 0.1, 0.1], [1, 2, 3]))
        assert math.isnan(spearman([1.0], [2.0]))
        assert math.isnan(agreement(np.full(4, 0.1), [1, 2, 3, 4])["spearman"])


def test_baselines_by_hand():
    a, h = [1.0, 2.0, 3.0], [1.0, 2.0, 4.0]
    result = agreement_with_baselines(a, h, h_prev=[1.0, 2.0, 3.0])
    assert result["estimate"]["relative_error"] == pytest.approx(1 / math.sqrt(21), rel=1e-14)
    assert result["estimate"]["cosine"] == pytest.approx(17 / math.sqrt(294), rel=1e-14)
    assert result["estimate"]["spearman"] == pytest.approx(1.0)
    # the constant 0.1: a - h = [-0.9, -1.9, -3.9]
    assert result["constant"]["relative_error"] == pytest.approx(math.sqrt(19.63 / 21), rel=1e-12)
    assert result["constant"]["cosine"] == pytest.approx(7 / math.sqrt(63), rel=1e-12)
    assert math.isnan(result["constant"]["spearman"])
    assert result["constant"]["log_ratio_abs_median"] == pytest.approx(math.log10(20), rel=1e-12)
    assert result["constant_value"] == 0.1
    assert result["beats_constant"] == {
        "relative_error": True,
        "cosine": True,
        "spearman": True,
        "sign_agreement": False,  # both 1.0: a tie is not a win
        "log_ratio_abs_median": True,
    }
    assert result["beats_constant_summary"] == {"all": False, "any": True, "lost_on": ["sign_agreement"]}
    # h_prev equals a: the same numbers, so a beats it on nothing
    assert result["previous_h"] == result["estimate"]
    assert not any(result["beats_previous_h"].values())


def test_a_equal_to_the_constant_does_not_beat_it():
    h = np.array([0.5, -1.0, 2.0, 0.01])
    result = agreement_with_baselines(np.full(4, 0.1), h)
    assert result["estimate"] == result["constant"] or all(
        (math.isnan(x) and math.isnan(y)) or x == y
        for x, y in zip(result["estimate"].values(), result["constant"].values())
    )
    assert result["beats_constant_summary"]["any"] is False
    assert result["beats_constant"]["spearman"] is None  # undefined for both
    assert result["previous_h"] is None and result["beats_previous_h"] is None


def test_per_layer_concatenates_parameters_of_a_layer():
    arrays = {
        "net.0.weight": (np.array([[1.0, 2.0]]), np.array([[1.0, 1.0]])),
        "head.weight": (np.array([5.0]), np.array([4.0])),
        "net.0.bias": (np.array([3.0]), np.array([1.0])),
    }
    layers = {"net.0.weight": "net.0", "net.0.bias": "net.0", "head.weight": "head"}
    result = per_layer(agreement, arrays, layers)
    assert list(result) == ["overall", "net.0", "head"]
    assert result["net.0"]["relative_error"] == pytest.approx(math.sqrt(5) / math.sqrt(3))
    assert result["head"]["relative_error"] == pytest.approx(0.25)
    assert result["overall"]["relative_error"] == pytest.approx(math.sqrt(6) / math.sqrt(19))
    # keyword form, and the default layer (module path) when no mapping is given
    by_keyword = per_layer(
        lambda a, h: float(np.sum(a - h)), {name: {"a": x, "h": y} for name, (x, y) in arrays.items()}
    )
    assert by_keyword == {"overall": 4.0, "net.0": 3.0, "head": 1.0}
