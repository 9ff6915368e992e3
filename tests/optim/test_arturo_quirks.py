"""The published rule's quirks, reproduced on hand-set states (ARTURO.md step 0, step 4 and
"Where the published code and the rule above need care").

Most tests here put one parameter into a hand-set state (mean 0, chosen precision, curvature and
intercept) and feed the gradient the surrogate itself predicts, g = a*theta + b, so the filter's
innovation is zero, a and b stay as set, and K(eta) = 0.5*sum(pi*b^2/(a + c + eta*pi)^2) is known
in closed form. The same state goes into the reference and both are compared too.
"""

from __future__ import annotations

import math

import pytest
import torch
from arturo_cases import Case, compare_step, reference_for, run_against_reference
from arturo_reference import DEFAULTS, ArturoReference
from torch import nn

from arturo_diag.optim import Arturo

F64 = torch.float64


def pair(weights, **hyper):
    """An optimizer over one float64 parameter and a reference with the same settings."""
    w = nn.Parameter(torch.as_tensor(weights, dtype=F64).clone())
    opt = Arturo([w], **hyper)
    ref = ArturoReference([dict(DEFAULTS, **hyper, params=[w.detach().clone()])])
    return w, opt, ref


def hand_set(w, opt, ref, *, mu, pi, a, b, eta_prev):
    """Put the same hand-set state into the optimizer (in place) and the reference."""
    values = {"mean": mu, "precision": pi, "curvature": a, "intercept": b}
    n = w.numel()
    for name, value in values.items():
        value = torch.as_tensor(value, dtype=F64).expand(n).clone()
        opt.state[w][name].copy_(value)
        ref.state[(0, 0)][name] = value.clone()
    with torch.no_grad():
        w.copy_(opt.state[w]["mean"])
    ref.groups[0]["params"][0].copy_(opt.state[w]["mean"])
    opt.eta = eta_prev
    ref.eta_prev = eta_prev
    assert opt.eta == eta_prev


def consistent_step(w, opt, ref):
    """One step with the gradient the surrogate predicts (zero innovation)."""
    st = opt.state[w]
    g = (st["curvature"] * w.detach() + st["intercept"]).clone()
    w.grad = g.clone()
    opt.step()
    ref.step([[g.clone()]])
    return opt.last_step


def started(n=4, **hyper):
    """A pair that has taken one (arbitrary) step, so state exists to be overwritten."""
    hyper = dict(dict(prior_prec=0.0, weight_decay=0.0), **hyper)
    w, opt, ref = pair(torch.linspace(-1, 1, n), **hyper)
    g = torch.linspace(0.5, -0.3, n, dtype=F64)
    w.grad = g.clone()
    opt.step()
    ref.step([[g.clone()]])
    return w, opt, ref


def k_closed_form(eta, *, n, pi, a, b, c=0.0):
    return 0.5 * n * pi * b**2 / (a + c + eta * pi) ** 2


# ---------------------------------------------------------------- eta: 5/3 growth, floor, jump
@pytest.mark.parametrize("eta_prev", [0.01, 0.1, 0.15, 0.1875])
def test_eta_grows_by_five_thirds_without_evaluating_k(eta_prev):
    """eta_prev <= 0.1875: the bracket [eta_prev/3, 3*eta_prev] is no wider than eta_tol = 0.5,
    no K is evaluated and eta = 5/3*eta_prev even though K(eta) is far above the bound."""
    w, opt, ref = started(lr=0.01)
    hand_set(w, opt, ref, mu=0.0, pi=1.0, a=1.0, b=10.0, eta_prev=eta_prev)
    last = consistent_step(w, opt, ref)
    assert last["iterations"] == 0
    assert last["eta"] == pytest.approx(5 * eta_prev / 3, rel=1e-14)
    assert last["eta_lo"] == pytest.approx(eta_prev / 3, rel=1e-14)
    assert last["eta_hi"] == pytest.approx(3 * eta_prev, rel=1e-14)
    expected_ratio = k_closed_form(5 * eta_prev / 3, n=4, pi=1.0, a=1.0, b=10.0) / 0.01
    assert expected_ratio > 1000  # the bound is violated by far, and nothing reacts
    assert last["kl_ratio"] == pytest.approx(expected_ratio, rel=1e-10)
    compare_step(opt, ref, f"growth from {eta_prev}")


def test_eta_grows_geometrically_until_it_passes_the_threshold():
    w, opt, ref = started(lr=0.01)
    hand_set(w, opt, ref, mu=0.0, pi=1.0, a=1.0, b=10.0, eta_prev=0.01)
    eta = 0.01
    for k in range(6):  # 0.01 * (5/3)^6 = 0.214 > 0.1875
        last = consistent_step(w, opt, ref)
        compare_step(opt, ref, f"growth step {k}")
        assert last["iterations"] == 0
        assert last["eta"] == pytest.approx(eta * 5 / 3, rel=1e-13)
        eta = last["eta"]
    assert eta > 0.1875
    last = consistent_step(w, opt, ref)
    compare_step(opt, ref, "first step past the threshold")
    assert last["iterations"] >= 1


@pytest.mark.parametrize("eta_prev", [0.19, 0.25, 0.3, 0.375])
def test_eta_frozen_at_the_floor_when_k_is_small(eta_prev):
    """eta_prev in (0.1875, 0.375]: one evaluation at m = 5/3*eta_prev; K(m) <= eps gives
    (eta_prev/3 + m)/2 = eta_prev again, however small K is."""
    w, opt, ref = started(lr=0.01)
    hand_set(w, opt, ref, mu=0.0, pi=1.0, a=1.0, b=0.01, eta_prev=eta_prev)
    assert k_closed_form(5 * eta_prev / 3, n=4, pi=1.0, a=1.0, b=0.01) < 0.01 * 0.02
    last = consistent_step(w, opt, ref)
    assert last["iterations"] == 1
    assert last["eta"] == pytest.approx(eta_prev, rel=1e-14)
    assert last["eta_lo"] == pytest.approx(eta_prev / 3, rel=1e-14)
    assert last["eta_hi"] == pytest.approx(5 * eta_prev / 3, rel=1e-14)
    assert last["kl_ratio"] < 0.02
    compare_step(opt, ref, f"frozen at {eta_prev}")


@pytest.mark.parametrize("eta_prev", [0.19, 0.3, 0.375])
def test_eta_jumps_to_seven_thirds_when_k_exceeds_the_bound(eta_prev):
    w, opt, ref = started(lr=0.01)
    hand_set(w, opt, ref, mu=0.0, pi=1.0, a=1.0, b=10.0, eta_prev=eta_prev)
    assert k_closed_form(5 * eta_prev / 3, n=4, pi=1.0, a=1.0, b=10.0) > 0.01
    last = consistent_step(w, opt, ref)
    assert last["iterations"] == 1
    assert last["eta"] == pytest.approx(7 * eta_prev / 3, rel=1e-14)
    assert last["eta_lo"] == pytest.approx(5 * eta_prev / 3, rel=1e-14)
    assert last["eta_hi"] == pytest.approx(3 * eta_prev, rel=1e-14)
    compare_step(opt, ref, f"jump from {eta_prev}")


def test_upper_end_of_the_bracket_is_capped_at_10000():
    w, opt, ref = started(lr=0.01)
    hand_set(w, opt, ref, mu=0.0, pi=1.0, a=1.0, b=1e6, eta_prev=5000.0)
    last = consistent_step(w, opt, ref)
    assert last["eta_hi"] <= 10000.0
    compare_step(opt, ref, "capped bracket")


# ---------------------------------------------------------------- midpoint of the final bracket
@pytest.mark.parametrize(
    "ratio_at_5000, expected_eta, lo, hi", [(1.05, 7500.0, 5000.0, 10000.0), (0.95, 2500.0, 0.0, 5000.0)]
)
def test_first_step_returns_the_midpoint_not_the_last_trial(ratio_at_5000, expected_eta, lo, hi):
    """First step, weights 0: the filter sees theta = 0 and innovation g - (0.1*0 + g) = 0, so
    a = 0.1, b = g and K(eta) = 0.5*sum(pi*g^2/(0.1 + eta*pi)^2) (prior_prec 0, var_init 1).
    K(5000) within 10 % of eps stops the bisection after its first trial m = 5000; the result is
    the midpoint of the bracket it left, not m."""
    n, g = 4, 1.0
    k_5000 = k_closed_form(5000.0, n=n, pi=1.0, a=0.1, b=g)
    eps = k_5000 / ratio_at_5000
    w, opt, ref = pair(torch.zeros(n), lr=eps, prior_prec=0.0, var_init=1.0, weight_decay=0.0)
    grad = torch.full((n,), g, dtype=F64)
    w.grad = grad.clone()
    opt.step()
    ref.step([[grad.clone()]])
    last = opt.last_step
    assert last["iterations"] == 1
    assert (last["eta_lo"], last["eta_hi"]) == (lo, hi)
    assert last["eta"] == expected_eta != 5000.0
    assert ref.trial_etas == [5000.0]
    compare_step(opt, ref, "first step")


def test_eta_is_always_the_midpoint_of_the_reported_bracket():
    case = Case("mlp", seed=21)
    opt = Arturo(case.model.parameters())
    ref = reference_for(opt, hyper=[DEFAULTS])
    differs_from_last_trial = 0
    for k in range(1, 31):
        run_against_reference(case, opt, ref, 1)
        last = opt.last_step
        assert last["eta"] == pytest.approx((last["eta_lo"] + last["eta_hi"]) / 2, rel=1e-15)
        if ref.trial_etas and ref.trial_etas[-1] != ref.eta:
            differs_from_last_trial += 1
    assert differs_from_last_trial > 0


# ---------------------------------------------------------------- weight decay
def _filter_once(*, a, b, p_bb, p_ba, p_aa, theta, g, q, r):
    """ARTURO.md steps 1-2 for one observation; returns the new (a, b)."""
    p_bb, p_aa = p_bb + q, p_aa + q
    s = p_bb + 2 * theta * p_ba + theta**2 * p_aa + r
    k_b, k_a = (p_bb + theta * p_ba) / s, (p_ba + theta * p_aa) / s
    d = g - (a * theta + b)
    return a + k_a * d, b + k_b * d


def test_first_step_mean_is_not_decayed_but_the_filter_sees_decayed_weights():
    """Step 0 on the first step: the weights are decayed in place before the filter, but mu is
    the undecayed copy; from the second step on mu is the decayed weight."""
    torch.manual_seed(0)
    lr, wd, q, r, p0 = 0.2, 0.5, 0.01, 0.5, 0.1
    w0 = torch.randn(5, dtype=F64)
    hyper = dict(lr=lr, weight_decay=wd, dynamic_model_noise=q, measurement_noise=r, start_filter_cov=p0)
    w, opt, ref = pair(w0, **hyper)
    c = DEFAULTS["reg_weight"] * DEFAULTS["prior_prec"]
    pi0 = 1 / DEFAULTS["var_init"]

    g1 = torch.randn(5, dtype=F64)
    w.grad = g1.clone()
    opt.step()
    ref.step([[g1.clone()]])
    compare_step(opt, ref, "step 1")
    st, eta = opt.state[w], opt.last_step["eta"]
    theta1 = w0 - lr * wd * w0
    a1, b1 = _filter_once(a=0.1, b=g1, p_bb=p0, p_ba=0.0, p_aa=p0, theta=theta1, g=g1, q=q, r=r)
    torch.testing.assert_close(st["curvature"], a1, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(st["intercept"], b1, rtol=1e-12, atol=1e-14)
    a_undecayed, _ = _filter_once(a=0.1, b=g1, p_bb=p0, p_ba=0.0, p_aa=p0, theta=w0, g=g1, q=q, r=r)
    assert not torch.allclose(st["curvature"], a_undecayed, rtol=1e-6)

    mean_from_undecayed = (eta * pi0 * w0 - b1) / (a1 + c + eta * pi0)
    mean_from_decayed = (eta * pi0 * theta1 - b1) / (a1 + c + eta * pi0)
    torch.testing.assert_close(st["mean"], mean_from_undecayed, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(w.detach(), mean_from_undecayed, rtol=1e-12, atol=1e-14)
    assert not torch.allclose(st["mean"], mean_from_decayed, rtol=1e-6)

    # Second step: mu is the decayed weight.
    w1, pi1 = w.detach().clone(), st["precision"].clone()
    g2 = torch.randn(5, dtype=F64)
    w.grad = g2.clone()
    opt.step()
    ref.step([[g2.clone()]])
    compare_step(opt, ref, "step 2")
    eta2 = opt.last_step["eta"]
    theta2 = w1 - lr * wd * w1
    a2, b2 = st["curvature"], st["intercept"]
    expected = (eta2 * pi1 * theta2 - b2) / (a2 + c + eta2 * pi1)
    torch.testing.assert_close(st["mean"], expected, rtol=1e-12, atol=1e-14)
    undecayed = (eta2 * pi1 * w1 - b2) / (a2 + c + eta2 * pi1)
    assert not torch.allclose(st["mean"], undecayed, rtol=1e-6)


def test_weight_decay_uses_the_own_group_lr_and_eps_the_first_group_lr():
    torch.manual_seed(1)
    wd, q, r, p0 = 0.5, 0.01, 0.5, 0.1
    u0, v0 = torch.randn(4, dtype=F64), torch.randn(3, dtype=F64)
    gu, gv = torch.randn(4, dtype=F64), torch.randn(3, dtype=F64)
    u, v = nn.Parameter(u0.clone()), nn.Parameter(v0.clone())
    common = dict(weight_decay=wd, dynamic_model_noise=q, measurement_noise=r, start_filter_cov=p0)
    opt = Arturo([{"params": [u], "lr": 0.01}, {"params": [v], "lr": 0.3}], **common)
    ref = ArturoReference(
        [dict(DEFAULTS, **common, lr=0.01, params=[u0.clone()]), dict(DEFAULTS, **common, lr=0.3, params=[v0.clone()])]
    )
    u.grad, v.grad = gu.clone(), gv.clone()
    opt.step()
    ref.step([[gu.clone()], [gv.clone()]])
    compare_step(opt, ref, "step 1")

    for p, p0_, g, lr in ((u, u0, gu, 0.01), (v, v0, gv, 0.3)):
        a1, b1 = _filter_once(a=0.1, b=g, p_bb=p0, p_ba=0.0, p_aa=p0, theta=p0_ - lr * wd * p0_, g=g, q=q, r=r)
        torch.testing.assert_close(opt.state[p]["curvature"], a1, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(opt.state[p]["intercept"], b1, rtol=1e-12, atol=1e-14)

    last = opt.last_step
    assert last["kl_bound"] == 0.01
    pi0 = 1 / DEFAULTS["var_init"]
    k = sum(0.5 * float((pi0 * (opt.state[p]["mean"] - p0_) ** 2).sum()) for p, p0_ in ((u, u0), (v, v0)))
    assert last["kl_ratio"] == pytest.approx(k / 0.01, rel=1e-10)
    # The same problem with eps read from the second group would give another eta.
    other = ArturoReference(
        [dict(DEFAULTS, **common, lr=0.3, params=[u0.clone()]), dict(DEFAULTS, **common, lr=0.3, params=[v0.clone()])]
    )
    other.step([[gu.clone()], [gv.clone()]])
    assert other.eta != last["eta"]


# ---------------------------------------------------------------- nothing keeps pi' or the denominator positive
def test_negative_curvature_is_counted_not_guarded():
    w, opt, ref = started(n=6, lr=0.01)
    a = torch.tensor([1.0, 1.0, 1.0, 1.0, -1000.0, -0.5], dtype=F64)
    hand_set(w, opt, ref, mu=0.0, pi=1.0, a=a, b=0.1, eta_prev=0.15)
    last = consistent_step(w, opt, ref)
    assert last["eta"] == pytest.approx(0.25, rel=1e-14)
    # denominators a + eta*pi at eta = 0.25: -999.75 and -0.25; pi' = (a + 1.3)/1.3587 < 0 once
    assert last["denominator_nonpos"] == 2
    assert last["precision_nonpos"] == 1
    assert float(opt.state[w]["precision"][4]) < 0
    assert last["guard_acted"] == 0
    compare_step(opt, ref, "negative curvature")
    assert math.isfinite(last["kl_ratio"])


def test_mean_starts_from_the_weights_at_the_first_step_not_at_construction():
    """ARTURO.md "When mu starts": this project copies the weights into mu at the first step, so
    a checkpoint loaded after building the optimizer is the starting mean."""
    case = Case("mlp", seed=22)
    opt = Arturo(case.model.parameters(), weight_decay=0.1)
    other = Case("mlp", seed=23)
    case.model.load_state_dict(other.model.state_dict())
    ref = reference_for(opt, hyper=[dict(DEFAULTS, weight_decay=0.1)])  # copies current weights
    run_against_reference(case, opt, ref, 3)
