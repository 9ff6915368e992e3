"""The curvature filter (ARTURO.md steps 1-2) against closed forms.

With no drift (q = 0) the filter is recursive least squares, i.e. exact Bayesian linear regression
of the gradient on h = [1, theta] per coordinate. ARTURO.md initialises the state with b = the
first gradient and a = 0.1, P = P0*I, and then runs the update with that same first observation;
the equivalent batch problem is therefore: prior N((g_1, 0.1), P0*I), observations
(theta_i, g_i), i = 1..n (the first included), each with noise variance r.
"""

from __future__ import annotations

import torch
from arturo_cases import Case, compare_step, gradients, reference_for
from arturo_reference import DEFAULTS, ArturoReference, batch_filter_posterior
from torch import nn

from arturo_diag.optim import Arturo

F64 = torch.float64
FILTER_KEYS = ("intercept", "curvature", "filter_cov_bb", "filter_cov_ba", "filter_cov_aa")


def _run_no_drift(kind, weight_decay, steps=30):
    lr, p0, r = 0.5, 1.0, 0.3
    hyper = dict(
        lr=lr,
        dynamic_model_noise=0.0,
        start_filter_cov=p0,
        measurement_noise=r,
        var_init=1.0,
        weight_decay=weight_decay,
    )
    case = Case(kind, seed=31)
    opt = Arturo(case.model.parameters(), **hyper)
    ref = reference_for(opt, hyper=[dict(DEFAULTS, **hyper)])
    params = list(case.model.parameters())
    thetas = [[] for _ in params]
    grads = [[] for _ in params]
    for k in range(steps):
        x, y = case.minibatch()
        opt.zero_grad(set_to_none=True)
        case.loss(x, y).backward()
        for j, p in enumerate(params):
            # the filter sees the weights after step 0's decay, with the group's lr
            thetas[j].append(p.detach() - lr * weight_decay * p.detach())
            grads[j].append(p.grad.detach().clone())
        g = gradients(opt)
        opt.step()
        ref.step(g)
        compare_step(opt, ref, f"step {k + 1}")
    return opt, ref, params, thetas, grads, p0, r


def _check_batch(opt, ref, params, thetas, grads, p0, r):
    for j, p in enumerate(params):
        spread = torch.stack(thetas[j]).std(dim=0)
        assert float(spread.min()) > 1e-4, "theta must vary for the regression to mean anything"
        post = batch_filter_posterior(grads[j][0], thetas[j], grads[j], start_filter_cov=p0, measurement_noise=r)
        for name in FILTER_KEYS:
            torch.testing.assert_close(
                opt.state[p][name], post[name], rtol=1e-9, atol=1e-12, msg=lambda m: f"param {j} {name}: {m}"
            )
            torch.testing.assert_close(
                ref.state[(0, j)][name], post[name], rtol=1e-9, atol=1e-12, msg=lambda m: f"reference {j} {name}: {m}"
            )
        # the data moved the estimate away from its prior
        assert float((post["curvature"] - 0.1).abs().max()) > 1e-3


def test_no_drift_filter_is_the_batch_posterior_mlp():
    _check_batch(*_run_no_drift("mlp", 0.0))


def test_no_drift_filter_is_the_batch_posterior_cnn_with_weight_decay():
    _check_batch(*_run_no_drift("cnn", 0.05))


def test_curvature_converges_to_the_diagonal_hessian_on_a_noisy_quadratic():
    """loss = 0.5*sum(d_i*x_i^2), gradient d*x + N(0, 0.1^2): the surrogate g = a*theta + b has
    a = d, b = 0. With little drift and the true noise variance the estimate converges."""
    n, sigma, steps = 12, 0.1, 250
    d = torch.linspace(0.5, 5.0, n, dtype=F64)
    gen = torch.Generator().manual_seed(0)
    x = nn.Parameter(3.0 * torch.randn(n, generator=gen, dtype=F64))
    hyper = dict(lr=0.05, dynamic_model_noise=1e-6, measurement_noise=sigma**2, start_filter_cov=1.0, weight_decay=0.0)
    opt = Arturo([x], **hyper)
    ref = ArturoReference([dict(DEFAULTS, **hyper, params=[x.detach().clone()])])
    initial_error = float(((0.1 - d) / d).abs().max())
    for k in range(steps):
        g = d * x.detach() + sigma * torch.randn(n, generator=gen, dtype=F64)
        x.grad = g.clone()
        opt.step()
        ref.step([[g.clone()]])
    compare_step(opt, ref, f"after {steps} steps")
    a = opt.state[x]["curvature"]
    relative = ((a - d) / d).abs()
    assert initial_error > 0.75
    assert float(relative.max()) < 0.1, relative
    assert float((a - d).norm() / d.norm()) < 0.05
    assert float(opt.state[x]["intercept"].abs().max()) < 0.1
    # the filter's claimed uncertainty shrank from its start
    assert float(opt.state[x]["filter_cov_aa"].max()) < 1e-2


def test_oracle_curvature_replaces_the_estimate_after_the_filter():
    """ARTURO.md "Oracle curvature": a <- h, b <- g - h*theta (theta after decay), then the
    closed-form step uses them. Without hold only the next step (step 3 here), with hold every
    step from then on (steps 6-10); fc1.weight only, the other parameters keep the filter's a."""
    case = Case("mlp", seed=32)
    lr, wd = 0.05, 0.1
    opt = Arturo(case.model.parameters(), lr=lr, weight_decay=wd)
    ref = reference_for(opt, hyper=[dict(DEFAULTS, lr=lr, weight_decay=wd)])
    weight = case.model.fc1.weight
    gen = torch.Generator().manual_seed(5)
    h_once = torch.rand(weight.shape, generator=gen, dtype=F64) * 3 + 0.2
    h_held = torch.rand(weight.shape, generator=gen, dtype=F64) * 3 + 0.2
    for k in range(1, 11):
        if k == 3:
            opt.set_oracle_curvature({weight: h_once.clone()})
        if k == 6:
            opt.set_oracle_curvature({weight: h_held.clone()}, hold=True)
        h = h_once if k == 3 else h_held if k >= 6 else None
        x, y = case.minibatch()
        opt.zero_grad(set_to_none=True)
        case.loss(x, y).backward()
        g = gradients(opt)
        theta = weight.detach() - lr * wd * weight.detach()
        opt.step()
        ref.step(g, oracle=None if h is None else {(0, 0): h})
        for j, p in enumerate(list(case.model.parameters())[1:], start=1):
            torch.testing.assert_close(
                opt.state[p]["intercept"],
                ref.state[(0, j)]["intercept"],
                rtol=1e-10,
                atol=1e-12,
                msg=lambda m: (
                    f"step {k}: parameter {j}, absent from the oracle mapping, should "
                    f"keep the filter's intercept b: {m}"
                ),
            )
        compare_step(opt, ref, f"step {k}")
        st = opt.state[weight]
        if h is not None:
            assert torch.equal(st["curvature"], h), f"step {k}"
            torch.testing.assert_close(st["curvature"] * theta + st["intercept"], g[0][0], rtol=1e-12, atol=1e-14)
        else:
            assert not torch.equal(st["curvature"], h_once)
