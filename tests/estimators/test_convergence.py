"""Each method's estimate converges where its method says it should, on problems with known curvature.

Tolerances are derived from the estimator's own variance: the mean of a long run of an EMA of
i.i.d. samples has the samples' mean, with a standard error taken from batch means (blocks much
longer than the EMA's memory). Each check allows 5 standard errors and states that this is well
below the effect it must see.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from estimator_cases import quadratic_hessian

from arturo_diag.estimators import AdaHessian, SophiaG, SophiaH, adapter_for, gnb_closure


def _batch_se(series: torch.Tensor, blocks: int = 20) -> torch.Tensor:
    """Standard error of the mean of ``series`` (steps x coords) from ``blocks`` batch means."""
    n = series.shape[0] // blocks * blocks
    means = series[:n].reshape(blocks, -1, series.shape[1]).mean(dim=1)
    return means.std(dim=0, unbiased=True) / math.sqrt(blocks)


def _noisy_quadratic_loss(x, A, gen, noise):
    """0.5 x^T A x + xi^T x with fresh xi ~ N(0, noise^2): gradient A x + xi, Hessian A."""
    xi = torch.randn(x.shape, generator=gen, dtype=x.dtype) * noise
    return 0.5 * x @ A @ x + xi @ x


def _run_hutchinson(opt_cls, A, steps, **kw):
    x = torch.nn.Parameter(torch.linspace(-1, 1, A.shape[0], dtype=torch.float64))
    gen = torch.Generator().manual_seed(11)
    opt = opt_cls([x], generator=torch.Generator().manual_seed(12), **kw)
    ema, samples = [], []
    key = "hessian" if isinstance(opt, SophiaH) else "exp_hessian_diag_sq"
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        _noisy_quadratic_loss(x, A, gen, 0.1).backward(create_graph=True)
        opt.step()
        ema.append(opt.state[x][key].clone())
        samples.append(opt.state[x]["hessian_sample"].clone())
    return adapter_for(opt).estimate(opt, [("x", x)]), torch.stack(ema), torch.stack(samples)


def test_sophia_h_ema_converges_to_diag_h_on_a_non_diagonal_quadratic():
    A = quadratic_hessian(6)
    diag, off = A.diagonal(), (A**2).sum(1) - A.diagonal() ** 2
    last, ema, samples = _run_hutchinson(
        SophiaH, A, 4000, lr=1e-3, betas=(0.9, 0.99), gamma=1.0, weight_decay=0.0, hessian_interval=1, probe="gaussian"
    )
    # the samples' variance is the Gaussian-probe formula the tolerance rests on
    probe_var = 2 * diag**2 + off
    assert torch.allclose(samples.var(dim=0), probe_var, rtol=0.15)
    late = ema[1000:]  # beta2^1000 ~ 4e-5: no init bias left
    mean, se = late.mean(dim=0), _batch_se(late)
    assert (se < 0.02 * diag).all(), "the test would not see a 10 % error"
    assert ((mean - diag).abs() <= 5 * se).all(), f"mean {mean} vs diag H {diag} (se {se})"
    assert last.target == "hessian_diagonal" and torch.equal(last.estimate["x"], ema[-1])


def test_sophia_h_debiased_estimate_removes_the_ema_start():
    A = quadratic_hessian(6, diagonal=True)  # Hutchinson is exact on a diagonal Hessian
    last, _, _ = _run_hutchinson(SophiaH, A, 5, lr=1e-3, hessian_interval=1, probe="rademacher")
    assert torch.allclose(last.estimate["x"], (1 - 0.99**5) * A.diagonal(), rtol=1e-12)
    assert torch.allclose(last.extras["debiased"]["x"], A.diagonal(), rtol=1e-12)


def test_adahessian_rms_converges_to_the_row_norm_not_diag_h():
    """E[(z*Hz)_i^2] = sum_j H_ij^2 (Rademacher): AdaHessian's estimate is |H_ii| only if H is diagonal."""
    A = quadratic_hessian(6, offdiag=1.0)
    row2 = (A**2).sum(1)
    steps = 4000
    last, ema, _ = _run_hutchinson(AdaHessian, A, steps, lr=1e-3, betas=(0.9, 0.99), spatial_average=False)
    late = ema[1000:] / (1 - 0.99 ** torch.arange(1001, steps + 1, dtype=torch.float64))[:, None]
    mean, se = late.mean(dim=0), _batch_se(late)
    assert ((mean - row2).abs() <= 5 * se).all(), f"mean {mean} vs sum_j H_ij^2 {row2} (se {se})"
    gap = row2 - A.diagonal() ** 2
    assert (gap > 5 * se).all(), "this H must make row norm and |diag H| distinguishable"
    assert torch.allclose(last.extras["second_moment"]["x"], late[-1], rtol=1e-14)
    assert (last.estimate["x"] > A.diagonal().abs()).all()


def test_adahessian_is_exact_on_a_diagonal_quadratic():
    A = quadratic_hessian(6, diagonal=True)
    last, _, _ = _run_hutchinson(AdaHessian, A, 10, lr=1e-3)
    assert torch.allclose(last.estimate["x"], A.diagonal(), rtol=1e-12)


def test_sophia_g_gnb_is_unbiased_for_the_ggn_diagonal():
    """Softmax regression (linear in the weights: Hessian = GGN); fixed weights (lr 0)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 4).double()
    x = torch.randn(16, 3, dtype=torch.float64)
    params = dict(model.named_parameters())
    names = list(params)

    def loss_of(*flat):
        out = torch.func.functional_call(model, dict(zip(names, flat)), (x,))
        return F.cross_entropy(out, torch.zeros(16, dtype=torch.long))  # labels do not enter the Hessian

    H = torch.autograd.functional.hessian(loss_of, tuple(params.values()))
    diag = {n: H[i][i].reshape(params[n].numel(), -1).diagonal().reshape(params[n].shape) for i, n in enumerate(names)}
    opt = SophiaG(model.parameters(), lr=0.0, weight_decay=0.0, hessian_interval=1)
    gen = torch.Generator().manual_seed(2)
    samples = {n: [] for n in names}
    for _ in range(4000):
        opt.zero_grad(set_to_none=True)
        model(x).sum().backward()
        opt.step(hessian_closure=gnb_closure(model, x, generator=gen))
        for n in names:
            samples[n].append(opt.state[params[n]]["hessian_sample"].reshape(-1).clone())
    for n in names:
        s = torch.stack(samples[n])
        mean, se = s.mean(0), s.std(0) / math.sqrt(s.shape[0])
        assert ((mean - diag[n].reshape(-1)).abs() <= 5 * se + 1e-15).all(), n
    e = adapter_for(opt).estimate(opt, model.named_parameters())
    assert e.target == "ggn_diagonal" and e.optimizer == "sophia-g"


@pytest.mark.parametrize("adamw", [False, True])
def test_adam_v_hat_is_the_bias_corrected_ema_of_g_squared(adamw):
    x = torch.nn.Parameter(torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64))
    cls = torch.optim.AdamW if adamw else torch.optim.Adam
    opt = cls([x], lr=1e-2, betas=(0.9, 0.999))
    gen = torch.Generator().manual_seed(0)
    grads = []
    for t in range(1, 40):
        opt.zero_grad()
        _noisy_quadratic_loss(x, torch.eye(3, dtype=torch.float64), gen, 0.3).backward()
        grads.append(x.grad.clone())
        opt.step()
        e = adapter_for(opt).estimate(opt, [("x", x)])
        w = torch.tensor([0.999 ** (t - i) for i in range(1, t + 1)], dtype=torch.float64)
        expected = (0.001 * w[:, None] * torch.stack(grads) ** 2).sum(0) / (1 - 0.999**t)
        assert torch.allclose(e.estimate["x"], expected, rtol=1e-12, atol=0)
    assert e.target == "gradient_second_moment" and e.optimizer == ("adamw" if adamw else "adam")


def test_adam_v_hat_converges_to_the_batch_gradient_second_moment():
    """Batch-mean gradients of B per-sample ones: v_hat -> (E g)^2 + s^2 / B, not the per-sample E[g_1^2]."""
    A = quadratic_hessian(5)
    x0 = torch.linspace(-0.5, 0.5, 5, dtype=torch.float64)
    x = torch.nn.Parameter(x0.clone())
    opt = torch.optim.Adam([x], lr=0.0, betas=(0.9, 0.99))  # lr 0: E[g] = A x0 stays fixed
    gen = torch.Generator().manual_seed(4)
    s, B = 0.8, 8
    series = []
    for t in range(1, 6001):
        opt.zero_grad()
        xi = (torch.randn(B, 5, generator=gen, dtype=torch.float64) * s).mean(0)  # batch mean of per-sample noise
        (0.5 * x @ A @ x + xi @ x).backward()
        opt.step()
        series.append(opt.state[x]["exp_avg_sq"] / (1 - 0.99**t))
    assert torch.allclose(adapter_for(opt).estimate(opt, [("x", x)]).estimate["x"], series[-1], rtol=1e-14)
    late = torch.stack(series[1000:])
    mean, se = late.mean(0), _batch_se(late)
    batch_moment = (A @ x0) ** 2 + s**2 / B
    per_sample = (A @ x0) ** 2 + s**2
    assert ((mean - batch_moment).abs() <= 5 * se).all(), f"{mean} vs {batch_moment} (se {se})"
    assert ((per_sample - batch_moment) > 20 * se).all()


def test_ivon_hess_converges_to_diag_h_plus_its_documented_bias():
    """Price's estimator is unbiased for diag H (Stein); the Riemannian term adds a known positive bias.

    Fixed point of hess' = b hess + (1-b) f + 0.5 (1-b)^2 (hess - f)^2 / (hess + d):
    E[hess] = H_ii + 0.5 (1-b) E[(hess - f)^2] / (hess + d), with, at mean weights 0,
    Var f = 2 H_ii^2 + sum_{j!=i} H_ij^2 (h_i + d)/(h_j + d) + s^2 ess (h_i + d) and f independent of hess.
    """
    ivon = pytest.importorskip("ivon")
    A = quadratic_hessian(4)
    x = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
    b, ess, s, d = 0.9, 100.0, 0.1, 1e-4
    opt = ivon.IVON([x], lr=0.0, ess=ess, beta2=b, weight_decay=d, hess_init=1.0)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(1)  # IVON draws its weight noise from torch's global generator
    series = []
    for _ in range(8000):
        with opt.sampled_params(train=True):
            opt.zero_grad()
            _noisy_quadratic_loss(x, A, gen, s).backward()
        opt.step()
        series.append(opt.param_groups[0]["hess"].clone())
    assert torch.equal(adapter_for(opt).estimate(opt, [("x", x)]).estimate["x"], series[-1])
    assert torch.equal(x.detach(), torch.zeros(4, dtype=torch.float64))  # lr 0: the mean stayed at 0
    late = torch.stack(series[1000:])
    mean, se = late.mean(0), _batch_se(late)
    h = mean
    diag = A.diagonal()
    var_f = 2 * diag**2 + (A**2 * (h[:, None] + d) / (h[None, :] + d)).sum(1) - diag**2 + s**2 * ess * (h + d)
    bias = 0.5 * (1 - b) * (var_f + late.var(0)) / (h + d)
    assert ((mean - diag - bias).abs() <= 5 * se).all(), f"{mean} vs {diag} + {bias} (se {se})"
    assert (bias > 5 * se).all(), "the bias this test explains must be visible (leaving it out fails)"
