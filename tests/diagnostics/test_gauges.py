"""Step gauges on analytic quadratics and by hand."""

import math

import numpy as np
import pytest
import torch

from arturo_diag.curvature.alpha import alpha_from_observations, fit_quadratic_in_tau
from arturo_diag.diagnostics.gauges import distance_from_init, precision_drift, trust_region_radius

# --------------------------------------------------------------------------------------------
# alpha on a 1-D quadratic f(x) = 0.5 h (x - m)^2 + c, from x0, a step s: t = |s|


def quad_1d(h=2.5, m=1.0, c=0.3):
    f = lambda x: 0.5 * h * (x - m) ** 2 + c
    df = lambda x: h * (x - m)
    return f, df


def alpha_1d(x0, step, h=2.5, m=1.0):
    """alpha of the step x0 -> x0 + step on the 1-D quadratic: directional derivatives f' * step."""
    f, df = quad_1d(h, m)
    return alpha_from_observations(f(x0), f(x0 + step), df(x0) * step, df(x0 + step) * step, moved=step != 0)


@pytest.mark.parametrize("x0", [-2.0, 0.5, 4.0])
@pytest.mark.parametrize(
    "fraction,expected",
    [(1.0, 0.0), (0.5, -0.5), (2.0, 1.0), (1.5, 0.5), (3.0, 2.0), (0.25, -0.75)],
)
def test_alpha_is_the_fraction_of_the_newton_step_minus_one(x0, fraction, expected):
    # the Newton step is -f'(x0)/h = m - x0: alpha = fraction - 1
    newton = 1.0 - x0
    assert alpha_1d(x0, fraction * newton) == pytest.approx(expected, abs=1e-12)


def test_degenerate_cases_follow_cockpit():
    assert alpha_1d(3.0, 0.0) == -1.0  # no step: the start of the valley
    # concave along the step: still going down, reported as -1
    assert alpha_from_observations(0.0, -1.0, -0.5, -1.5) == -1.0
    # linear (mu2 = 0): -1 too
    assert alpha_from_observations(1.0, 0.0, -1.0, -1.0) == -1.0
    # the step starts at the minimum: any step overshoots
    assert alpha_1d(1.0, 0.7) == math.inf
    # a step uphill on a convex valley: beyond the start, below -1
    assert alpha_1d(3.0, 0.5) < -1.0
    assert alpha_1d(3.0, 0.5) == pytest.approx(0.5 / -2.0 - 1.0, abs=1e-12)


def test_fit_is_least_squares_by_hand():
    losses, slopes = (1.0, 0.7), (-1.1, 0.2)  # inconsistent: no exact quadratic
    phi = np.array([[1, 0, 0], [1, 1, 1], [0, 1, 0], [0, 1, 2]], dtype=float)
    y = np.array([*losses, *slopes])
    mu = fit_quadratic_in_tau(*losses, *slopes)
    np.testing.assert_allclose(mu, np.linalg.lstsq(phi, y, rcond=None)[0], atol=1e-12)
    assert alpha_from_observations(*losses, *slopes) == pytest.approx(-2 * mu[2] / mu[1] - 1, abs=1e-12)
    # an exact quadratic along a step of 1.3 is recovered: f(tau) = f(0) + f'(0) 1.3 tau + 1.25 (1.3 tau)^2
    f, df = quad_1d()
    exact = fit_quadratic_in_tau(f(0.0), f(1.3), df(0.0) * 1.3, df(1.3) * 1.3)
    np.testing.assert_allclose(exact, [f(0.0), df(0.0) * 1.3, 1.25 * 1.3**2], atol=1e-12)


def test_alpha_of_a_step_on_a_quadratic_in_many_dimensions():
    g = np.random.default_rng(0)
    b = g.normal(size=(6, 6))
    a = b @ b.T + np.eye(6)
    m = g.normal(size=6)
    f = lambda x: 0.5 * (x - m) @ a @ (x - m)
    grad = lambda x: a @ (x - m)
    x0 = g.normal(size=6)

    def alpha(step):
        g0, g1 = grad(x0), grad(x0 + step)
        return alpha_from_observations(f(x0), f(x0 + step), g0 @ step, g1 @ step, moved=bool(np.any(step)))

    newton = m - x0  # lands on the minimiser, the minimum along its own direction
    assert alpha(newton) == pytest.approx(0.0, abs=1e-10)
    # gradient descent with the exact line search step, and twice that
    g0 = grad(x0)
    exact = g0 @ g0 / (g0 @ a @ g0)
    assert alpha(-exact * g0) == pytest.approx(0.0, abs=1e-10)
    assert alpha(-2 * exact * g0) == pytest.approx(1.0, abs=1e-10)
    assert alpha(np.zeros(6)) == -1.0


# --------------------------------------------------------------------------------------------
# trust-region radius


def test_trust_region_radius_by_hand():
    pi = {
        "net.0.weight": np.array([[1.0, 4.0], [16.0, 100.0]]),
        "net.0.bias": np.array([0.0, 25.0]),
        "net.2.weight": torch.tensor([2.0, 8.0], dtype=torch.float64),
    }
    eps = 0.08
    result = trust_region_radius(pi, eps)
    assert list(result) == ["overall", "net.0", "net.2"]
    r = np.sqrt(2 * eps / np.array([1.0, 4.0, 16.0, 100.0, 25.0]))
    layer = result["net.0"]
    assert layer["n"] == 6 and layer["n_nonpositive"] == 1
    assert layer["radius_median"] == pytest.approx(float(np.median(r)), rel=1e-12)
    assert layer["radius_max"] == pytest.approx(0.4, rel=1e-12)
    assert layer["radius_q95"] == pytest.approx(float(np.quantile(r, 0.95)), rel=1e-12)
    assert result["overall"]["n"] == 8 and result["overall"]["n_nonpositive"] == 1


def test_usage_squares_sum_to_the_achieved_kl_over_the_bound():
    g = np.random.default_rng(1)
    pi = {"a.weight": g.uniform(10, 200, 30), "b.weight": g.uniform(10, 200, 20)}
    step = {"a.weight": g.normal(scale=0.01, size=30), "b.weight": g.normal(scale=0.01, size=20)}
    eps = 0.003
    kl = 0.5 * sum(float(np.sum(pi[n] * step[n] ** 2)) for n in pi)
    result = trust_region_radius(pi, eps, step=step)
    assert result["overall"]["kl_share"] == pytest.approx(kl / eps, rel=1e-12)
    assert result["a"]["kl_share"] + result["b"]["kl_share"] == pytest.approx(kl / eps, rel=1e-12)
    # a step that spends the whole budget on one coordinate moves it by exactly its radius
    one = {"a.weight": np.zeros(30), "b.weight": np.zeros(20)}
    one["a.weight"][3] = math.sqrt(2 * eps / pi["a.weight"][3])
    spent = trust_region_radius(pi, eps, step=one)
    assert spent["overall"]["usage_max"] == pytest.approx(1.0, rel=1e-12)
    assert spent["overall"]["kl_share"] == pytest.approx(1.0, rel=1e-12)
    with pytest.raises(ValueError, match="kl_bound"):
        trust_region_radius(pi, 0.0)
    with pytest.raises(ValueError, match="step"):
        trust_region_radius(pi, eps, step={"a.weight": np.zeros(30)})


# --------------------------------------------------------------------------------------------
# distance from initialisation


def test_distance_from_init_by_hand():
    init = {"l1.weight": np.array([3.0, 4.0]), "l1.bias": np.array([0.0]), "l2.weight": np.zeros(4)}
    now = {"l1.weight": np.array([3.0, 7.0]), "l1.bias": np.array([4.0]), "l2.weight": np.ones(4)}
    result = distance_from_init(now, init)
    assert result["l1"]["distance"] == pytest.approx(5.0)
    assert result["l1"]["relative"] == pytest.approx(1.0)
    assert result["l1"]["rms"] == pytest.approx(5.0 / math.sqrt(3))
    assert result["l1"]["max_abs"] == 4.0
    assert result["l2"]["distance"] == pytest.approx(2.0) and math.isnan(result["l2"]["relative"])
    assert result["overall"]["distance"] == pytest.approx(math.sqrt(29.0))
    assert result["overall"]["relative"] == pytest.approx(math.sqrt(29.0) / 5.0)
    same = distance_from_init(init, init)
    assert same["overall"]["distance"] == 0.0
    custom = distance_from_init(now, init, layers={"l1.weight": "all", "l1.bias": "all", "l2.weight": "all"})
    assert list(custom) == ["overall", "all"]
    with pytest.raises(ValueError, match="init"):
        distance_from_init(now, {"l1.weight": init["l1.weight"]})


# --------------------------------------------------------------------------------------------
# precision drift


def test_precision_drift_flags_growth_far_above_var_init():
    var_init = 0.01
    # the case: the variance grew 58x above var_init in part of a layer
    pi = {"fc.weight": np.full(200, 1 / var_init), "head.weight": np.full(100, 1 / (58 * var_init))}
    pi["fc.weight"][:5] = 1 / (0.001 * var_init)  # 2.5 % collapsed
    result = precision_drift(pi, var_init)
    head = result["head"]
    assert head["ratio_median"] == pytest.approx(58.0) and head["drifted"] and head["share_drifted"] == 1.0
    fc = result["fc"]
    assert fc["ratio_median"] == pytest.approx(1.0) and not fc["drifted"]
    assert fc["share_collapsed"] == pytest.approx(0.025) and fc["collapsed"]
    overall = result["overall"]
    assert overall["ratio_q99"] == pytest.approx(58.0) and overall["drifted"]
    assert overall["share_drifted"] == pytest.approx(100 / 300)
    assert overall["ratio_max"] == pytest.approx(58.0)


def test_precision_drift_by_hand_and_refusals():
    var_init = 0.5
    pi = {"w": np.array([2.0, 1.0, 0.5, 0.25, -1.0, 0.0])}
    result = precision_drift(pi, var_init, flag_ratio=3.0)
    ratio = 1 / (np.array([2.0, 1.0, 0.5, 0.25]) * var_init)  # 1, 2, 4, 8
    w = result["w"]
    assert w["n"] == 6 and w["n_nonpositive"] == 2
    assert w["ratio_median"] == pytest.approx(float(np.median(ratio)))
    assert w["ratio_q99"] == pytest.approx(float(np.quantile(ratio, 0.99)))
    assert w["share_drifted"] == pytest.approx(0.5) and w["drifted"]
    assert not precision_drift({"w": np.full(10, 1 / var_init)}, var_init)["w"]["drifted"]
    with pytest.raises(ValueError, match="var_init"):
        precision_drift(pi, 0.0)
    with pytest.raises(ValueError, match="flag_ratio"):
        precision_drift(pi, var_init, flag_ratio=1.0)
