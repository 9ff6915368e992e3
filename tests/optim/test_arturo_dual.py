"""The dual solve (ARTURO.md step 4 and the coupled-KL ablation), checked from the outside.

For every step the test keeps the state before it (mu, pi) and reads the state after it (the
filter's a, b and the committed mu', pi'); from those it computes K itself: the achieved KL
K(eta) directly from the two Gaussians, and K at any trial eta (K(0) says whether the constraint
binds; K at the reported bracket ends checks the bisection's stopping rule).
"""

from __future__ import annotations

import pytest
import torch
from arturo_cases import Case, compare_step, gradients, reference_for
from arturo_reference import DEFAULTS, gaussian_kl

from arturo_diag.optim import Arturo

STEPS = 50


def _kl_at(eta, rows, hyper, kl):
    """K(eta) from the state before the step and the filter's a, b after it."""
    c = hyper["reg_weight"] * hyper["prior_prec"]
    rho = hyper["reg_weight"]
    total = 0.0
    for mu, pi, a, b in rows:
        mu_new = (eta * pi * mu - b) / (a + c + eta * pi)
        part = pi * (mu_new - mu) ** 2
        if kl == "coupled":
            pi_new = (a + c + eta * pi) / (rho + eta)
            part = part + pi / pi_new - 1 - torch.log(pi / pi_new)
        total += 0.5 * float(part.sum())
    return total


def _steps(kind, kl, dual, hyper, seed):
    """Yield, per step: the opt, the rows (mu, pi, a, b), the achieved KL, the bracket start."""
    case = Case(kind, seed=seed)
    opt = Arturo(case.model.parameters(), kl=kl, dual=dual, **hyper)
    params = list(case.model.parameters())
    for k in range(1, STEPS + 1):
        before = []
        for p in params:
            st = opt.state.get(p, {})
            if st:
                before.append((st["mean"].clone(), st["precision"].clone()))
            else:
                before.append((p.detach().clone(), torch.full_like(p, 1 / hyper["var_init"])))
        eta_prev = opt.eta
        x, y = case.minibatch()
        opt.zero_grad(set_to_none=True)
        case.loss(x, y).backward()
        opt.step()
        rows = []
        achieved = 0.0
        for p, (mu, pi) in zip(params, before):
            st = opt.state[p]
            rows.append((mu, pi, st["curvature"], st["intercept"]))
            if kl == "coupled":
                achieved += gaussian_kl(st["mean"], st["precision"], mu, pi)
            else:
                achieved += 0.5 * float((pi * (st["mean"] - mu) ** 2).sum())
        start = (0.0, 10000.0) if eta_prev is None else (eta_prev / 3, min(3 * eta_prev, 1e4))
        yield k, opt, rows, achieved, start


HYPER = dict(DEFAULTS, weight_decay=0.0)
CASES = [("mlp", "decoupled"), ("cnn", "decoupled"), ("mlp", "coupled"), ("cnn", "coupled")]


@pytest.mark.parametrize("lr", [0.08567456, 5.0])
@pytest.mark.parametrize("kind, kl", CASES)
def test_exact_dual_meets_the_bound_whenever_it_binds(kind, kl, lr):
    """At the published bound the constraint binds on every step; at lr = 5 it mostly does not
    (the exact solve then may not exceed it)."""
    hyper = dict(HYPER, lr=lr)
    binding = slack = 0
    for k, opt, rows, achieved, _ in _steps(kind, kl, "exact", hyper, seed=41):
        ratio = achieved / lr
        assert opt.last_step["kl_ratio"] == pytest.approx(ratio, rel=1e-9), f"step {k}"
        if _kl_at(0.0, rows, hyper, kl) > lr:
            binding += 1
            assert abs(ratio - 1) <= 1e-6 + 1e-12, f"step {k}: K(eta)/eps = {ratio!r}"
        else:
            slack += 1
            assert ratio <= 1 + 1e-6, f"step {k}: not binding, yet K(eta)/eps = {ratio!r}"
    assert binding >= 1
    assert slack >= (1 if lr == 5.0 else 0)


@pytest.mark.parametrize("kind, kl", CASES)
def test_bisection_result_obeys_its_stopping_rule(kind, kl):
    """The returned eta is the midpoint of the final bracket [lo, hi]; an end the bisection moved
    has K(lo) > eps or K(hi) <= eps; K is monotone, so K(hi) <= K(eta) <= K(lo); and the loop
    ended because hi - lo <= eta_tol or its last trial (one of the ends) was within 10 % of eps."""
    hyper = dict(HYPER, lr=0.002)  # small enough that the bisection is active, not floored
    eps, tol = hyper["lr"], hyper["eta_tol"]
    lo_moved = 0
    for k, opt, rows, achieved, (lo0, hi0) in _steps(kind, kl, "bisection", hyper, seed=42):
        last = opt.last_step
        lo, hi, eta = last["eta_lo"], last["eta_hi"], last["eta"]
        assert eta == pytest.approx((lo + hi) / 2, rel=1e-15)
        assert last["kl_ratio"] == pytest.approx(achieved / eps, rel=1e-9), f"step {k}"
        assert _kl_at(eta, rows, hyper, kl) == pytest.approx(achieved, rel=1e-9)
        k_lo, k_hi = _kl_at(lo, rows, hyper, kl), _kl_at(hi, rows, hyper, kl)
        lo_moved += lo > lo0
        if lo > lo0:
            assert k_lo > eps, f"step {k}: lo moved but K(lo)/eps = {k_lo / eps}"
        if hi < hi0:
            assert k_hi <= eps, f"step {k}: hi moved but K(hi)/eps = {k_hi / eps}"
        assert k_hi <= achieved * (1 + 1e-12) and achieved <= k_lo * (1 + 1e-12)
        stopped_early = any(abs(v - eps) < 0.1 * eps for v, moved in ((k_lo, lo > lo0), (k_hi, hi < hi0)) if moved)
        assert hi - lo <= tol or stopped_early, f"step {k}: bracket [{lo}, {hi}]"
        assert last["iterations"] >= (1 if (lo > lo0 or hi < hi0) else 0)
    assert lo_moved >= 10


def test_exact_dual_with_weight_decay_and_two_groups_meets_the_bound():
    """The exact solve with decay and per-group lr: eps is the first group's lr; mu before a
    step is the decayed weight (from the second step on) or the undecayed copy (first step)."""
    wd, lrs = 0.1, (0.01, 0.1)
    case = Case("mlp", seed=43)
    groups = [list(case.model.fc1.parameters()), list(case.model.fc2.parameters())]
    opt = Arturo(
        [{"params": groups[0], "lr": lrs[0]}, {"params": groups[1], "lr": lrs[1]}], dual="exact", weight_decay=wd
    )
    hyper = dict(HYPER, weight_decay=wd)
    binding = 0
    for k in range(1, 31):
        before = []
        for lr, params in zip(lrs, groups):
            for p in params:
                st = opt.state.get(p, {})
                mu = p.detach().clone()
                pi = torch.full_like(p, 1 / hyper["var_init"])
                if st:
                    mu, pi = mu - lr * wd * mu, st["precision"].clone()
                before.append((p, mu, pi))
        x, y = case.minibatch()
        opt.zero_grad(set_to_none=True)
        case.loss(x, y).backward()
        opt.step()
        rows = [(mu, pi, opt.state[p]["curvature"], opt.state[p]["intercept"]) for p, mu, pi in before]
        achieved = sum(0.5 * float((pi * (opt.state[p]["mean"] - mu) ** 2).sum()) for p, mu, pi in before)
        assert opt.last_step["kl_bound"] == lrs[0]
        assert opt.last_step["kl_ratio"] == pytest.approx(achieved / lrs[0], rel=1e-9)
        if _kl_at(0.0, rows, hyper, "decoupled") > lrs[0]:
            binding += 1
            assert abs(achieved / lrs[0] - 1) <= 1e-6 + 1e-12, f"step {k}"
    assert binding >= 15


def test_bisection_dual_matches_reference_under_coupled_kl_with_scheduler():
    """Coupled KL, bisection, MultiStepLR drop by 0.006: the overshoot after the drop is the
    rule's, step by step as in the reference."""
    case = Case("mlp", seed=44)
    opt = Arturo(case.model.parameters(), kl="coupled", lr=0.05, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[25], gamma=0.006)
    ref = reference_for(opt, hyper=[dict(HYPER, lr=0.05)], kl="coupled")
    overshoot = 0
    for k in range(1, STEPS + 1):
        ref.groups[0]["lr"] = 0.05 * (0.006 if k - 1 >= 25 else 1.0)
        x, y = case.minibatch()
        opt.zero_grad(set_to_none=True)
        case.loss(x, y).backward()
        grads = gradients(opt)
        opt.step()
        ref.step(grads)
        compare_step(opt, ref, f"step {k}")
        overshoot += opt.last_step["kl_ratio"] > 1.1
        scheduler.step()
    assert overshoot > 0
