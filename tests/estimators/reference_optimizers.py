"""Straight-line AdaHessian, Sophia-H and Sophia-G written from the papers' formulas.

Independent of arturo_diag.estimators: weights are a dict name -> tensor, the loss is a pure
function of it (torch.func), Hessian-vector products are forward-over-reverse (``jvp`` of
``grad``) where the code under test uses reverse-over-reverse. The only shared convention is the
order of random draws: one draw per parameter, in parameter order, from the given generator
(Rademacher: ``randint(0, 2) * 2 - 1``; Gaussian: ``randn``; GNB labels: ``multinomial`` of the
softmax, one label per row).

AdaHessian: Yao et al. 2021 (arXiv 2006.00719), Algorithm 1 with Eqs. 7-10, weight decay as in
the original code. Sophia: Liu et al. 2023 (arXiv 2305.14342), Algorithms 1-3.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import grad, jvp


def hvp(loss_of, theta, v):
    """H v of the loss at theta (dicts), forward-over-reverse."""
    return jvp(grad(loss_of), (theta,), (v,))[1]


def adahessian_reference(loss_of, theta, steps, gen, *, lr, beta1, beta2, eps, weight_decay, k, spatial):
    """Parameters after each of ``steps`` AdaHessian steps; ``loss_of(theta, t)`` is step t's loss."""
    theta = {n: w.clone() for n, w in theta.items()}
    m = {n: torch.zeros_like(w) for n, w in theta.items()}
    v = {n: torch.zeros_like(w) for n, w in theta.items()}
    out = []
    for t in range(1, steps + 1):
        f = lambda th: loss_of(th, t)  # noqa: E731
        g = grad(f)(theta)
        z = {n: torch.randint(0, 2, w.shape, generator=gen).to(w.dtype) * 2 - 1 for n, w in theta.items()}
        hz = hvp(f, theta, z)
        new = {}
        for n, w in theta.items():
            d = z[n] * hz[n]  # Eq. 7: one Hutchinson sample of diag H
            if spatial and w.dim() >= 3:  # Eq. 8: average over the kernel's spatial block
                d = d.abs().mean(dim=tuple(range(2, w.dim())), keepdim=True).expand_as(d)
            m[n] = beta1 * m[n] + (1 - beta1) * g[n]  # Eq. 9
            v[n] = beta2 * v[n] + (1 - beta2) * d * d  # Eq. 10, inside the root
            m_hat = m[n] / (1 - beta1**t)
            v_hat = (v[n] / (1 - beta2**t)) ** 0.5
            new[n] = w - lr * (m_hat / (v_hat**k + eps) + weight_decay * w)
        theta = new
        out.append({n: w.clone() for n, w in theta.items()})
    return out


def sophia_reference(
    loss_of,
    theta,
    steps,
    gen,
    *,
    lr,
    beta1,
    beta2,
    gamma,
    eps,
    weight_decay,
    k,
    estimator,
    probe="gaussian",
    logits_of=None,
):
    """Parameters and h after each of ``steps`` Sophia steps (Algorithm 3).

    ``estimator``: ``"hutchinson"`` (Algorithm 1: u * grad<grad L, u>) or ``"gnb"`` (Algorithm 2:
    B * grad(mean CE on sampled labels)^2, with ``logits_of(theta, t)`` the model's logits).
    """
    theta = {n: w.clone() for n, w in theta.items()}
    m = {n: torch.zeros_like(w) for n, w in theta.items()}
    h = {n: torch.zeros_like(w) for n, w in theta.items()}  # h_{1-k} = 0
    out = []
    for t in range(1, steps + 1):
        f = lambda th: loss_of(th, t)  # noqa: E731
        g = grad(f)(theta)
        if t % k == 1 or k == 1:
            if estimator == "hutchinson":
                if probe == "gaussian":
                    u = {n: torch.randn(w.shape, generator=gen, dtype=w.dtype) for n, w in theta.items()}
                else:
                    u = {n: torch.randint(0, 2, w.shape, generator=gen).to(w.dtype) * 2 - 1 for n, w in theta.items()}
                hu = hvp(f, theta, u)
                hhat = {n: u[n] * hu[n] for n in theta}
            else:
                logits = logits_of(theta, t).detach()
                flat = logits.reshape(-1, logits.shape[-1])
                yhat = torch.multinomial(torch.softmax(flat, dim=-1), 1, generator=gen).squeeze(-1)
                batch = flat.shape[0]

                def sampled(th):
                    lg = logits_of(th, t)
                    return F.cross_entropy(lg.reshape(-1, lg.shape[-1]), yhat)

                gh = grad(sampled)(theta)
                hhat = {n: batch * gh[n] * gh[n] for n in theta}
            h = {n: beta2 * h[n] + (1 - beta2) * hhat[n] for n in theta}
        new = {}
        for n, w in theta.items():
            m[n] = beta1 * m[n] + (1 - beta1) * g[n]
            w = w - lr * weight_decay * w
            ratio = m[n] / torch.maximum(gamma * h[n], torch.full_like(h[n], eps))
            new[n] = w - lr * torch.clamp(ratio, -1.0, 1.0)
        theta = new
        out.append(({n: w.clone() for n, w in theta.items()}, {n: x.clone() for n, x in h.items()}))
    return out
