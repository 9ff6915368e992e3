"""Study statistics against scipy and hand computation on fixed numbers."""

import math

import numpy as np
import pytest
from scipy import stats

from arturo_diag.study.stats import holm, mean_ci, paired_comparison, wilcoxon_min_p


def test_mean_ci_by_hand():
    # 1, 2, 3, 4: mean 2.5, sd sqrt(5/3), t_{0.975, 3} = 3.182446305284263
    s = mean_ci([1.0, 2.0, 3.0, 4.0])
    sd = math.sqrt(5.0 / 3.0)
    half = 3.182446305284263 * sd / 2.0
    assert s["n"] == 4 and s["mean"] == 2.5
    assert s["sd"] == pytest.approx(sd, rel=1e-12)
    assert s["half_width"] == pytest.approx(half, rel=1e-9)
    assert (s["ci_low"], s["ci_high"]) == pytest.approx((2.5 - half, 2.5 + half), rel=1e-9)


def test_mean_ci_matches_scipy_t_interval():
    x = np.array([0.912, 0.905, 0.921, 0.899, 0.917])
    s = mean_ci(x, confidence=0.9)
    low, high = stats.t.interval(0.9, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    assert (s["ci_low"], s["ci_high"]) == pytest.approx((low, high), rel=1e-12)


def test_mean_ci_degenerate():
    one = mean_ci([0.7])
    assert one["mean"] == 0.7 and math.isnan(one["half_width"]) and math.isnan(one["ci_low"])
    assert math.isnan(mean_ci([])["mean"]) and mean_ci([])["n"] == 0
    assert math.isnan(mean_ci([0.5, float("nan")])["mean"])  # a diverged seed is not dropped silently
    flat = mean_ci([0.3, 0.3, 0.3])
    assert flat["half_width"] == 0.0 and flat["ci_low"] == flat["ci_high"] == pytest.approx(0.3)


def test_paired_comparison_matches_scipy_and_hand():
    faithful = {0: 0.930, 1: 0.925, 2: 0.931, 3: 0.928, 4: 0.933, 5: 0.927}
    variant = {0: 0.921, 1: 0.919, 2: 0.925, 3: 0.916, 4: 0.926, 5: 0.922}
    c = paired_comparison(variant, faithful)
    v = np.array([variant[s] for s in range(6)])
    r = np.array([faithful[s] for s in range(6)])
    d = v - r  # -0.009 -0.006 -0.006 -0.012 -0.007 -0.005
    t = stats.ttest_rel(v, r)
    w = stats.wilcoxon(v, r)
    assert c["n"] == 6 and c["seeds"] == [0, 1, 2, 3, 4, 5]
    assert c["mean_diff"] == pytest.approx(-0.0075, abs=1e-12)  # by hand: -0.045 / 6
    assert c["sd_diff"] == pytest.approx(np.std(d, ddof=1), rel=1e-12)
    assert c["t"] == pytest.approx(t.statistic, rel=1e-12) and c["p_t"] == pytest.approx(t.pvalue, rel=1e-12)
    assert c["wilcoxon_stat"] == w.statistic and c["p_wilcoxon"] == pytest.approx(w.pvalue, rel=1e-12)
    assert c["p_wilcoxon"] == pytest.approx(2 / 2**6)  # every difference negative: the exact floor
    assert c["d_z"] == pytest.approx(-0.0075 / np.std(d, ddof=1), rel=1e-12)
    # t = d_z * sqrt(n) for a paired test
    assert c["t"] == pytest.approx(c["d_z"] * math.sqrt(6), rel=1e-12)
    half = stats.t.ppf(0.975, 5) * np.std(d, ddof=1) / math.sqrt(6)
    assert c["half_width"] == pytest.approx(half, rel=1e-9)
    assert c["note"] == ""


def test_paired_uses_only_common_finite_seeds():
    c = paired_comparison({0: 1.0, 1: 2.0, 2: 4.0, 7: 9.0}, {0: 0.5, 1: 1.0, 2: 2.5, 3: 0.0})
    assert c["n"] == 3 and c["seeds"] == [0, 1, 2]
    assert c["mean_diff"] == pytest.approx((0.5 + 1.0 + 1.5) / 3)
    c = paired_comparison({0: 1.0, 1: float("nan"), 2: 3.0}, {0: 0.0, 1: 0.0, 2: 1.0})
    assert c["n"] == 2 and "non-finite" in c["note"]


def test_all_zero_differences_do_not_crash():
    c = paired_comparison({0: 0.9, 1: 0.8, 2: 0.7}, {0: 0.9, 1: 0.8, 2: 0.7})
    assert c["mean_diff"] == 0.0 and c["sd_diff"] == 0.0
    assert math.isnan(c["p_t"]) and math.isnan(c["p_wilcoxon"]) and math.isnan(c["d_z"])
    assert "identical in every seed" in c["note"]


def test_constant_nonzero_difference_has_no_t_but_a_wilcoxon():
    c = paired_comparison({0: 1.1, 1: 2.1, 2: 3.1, 3: 4.1}, {0: 1.0, 1: 2.0, 2: 3.0, 3: 4.0})
    assert c["mean_diff"] == pytest.approx(0.1)
    assert math.isnan(c["t"]) and math.isnan(c["p_t"]) and math.isnan(c["d_z"])
    assert "zero spread" in c["note"]
    assert c["p_wilcoxon"] == pytest.approx(stats.wilcoxon([0.1] * 4).pvalue)


def test_too_few_pairs():
    c = paired_comparison({0: 1.0}, {0: 0.0})
    assert c["n"] == 1 and c["mean_diff"] == 1.0 and math.isnan(c["p_t"]) and "fewer than 2" in c["note"]
    none = paired_comparison({0: 1.0}, {1: 0.0})
    assert none["n"] == 0 and math.isnan(none["mean_diff"]) and "no paired seeds" in none["note"]


@pytest.mark.parametrize("n", [3, 4, 5, 6, 7])
def test_wilcoxon_floor_is_scipys_exact_p_when_every_difference_has_one_sign(n):
    d = np.arange(1, n + 1) * 0.01
    assert wilcoxon_min_p(n) == pytest.approx(stats.wilcoxon(d).pvalue, rel=1e-12)
    c = paired_comparison({i: float(x) for i, x in enumerate(d)}, {i: 0.0 for i in range(n)})
    assert c["wilcoxon_min_p"] == pytest.approx(wilcoxon_min_p(n))
    # below 6 pairs the Wilcoxon test can never reach 0.05
    assert (c["p_wilcoxon"] < 0.05) == (n >= 6)


def test_holm_by_hand():
    # p sorted 0.01, 0.02, 0.04 -> 3*0.01, max(0.03, 2*0.02), max(0.04, 1*0.04)
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    adjusted = holm([float("nan"), 0.01, 0.03])
    assert math.isnan(adjusted[0]) and adjusted[1:] == pytest.approx([0.02, 0.03])
