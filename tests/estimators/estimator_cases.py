"""Seeded problems shared by the estimator tests: a small MLP, a tiny CNN, quadratics with known H."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import functional_call


def mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)).double()


def cnn(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 3), torch.nn.Tanh(), torch.nn.Flatten(), torch.nn.Linear(2 * 3 * 3, 3)
    ).double()


def batches(model_input_shape: tuple[int, ...], steps: int, seed: int = 1, n: int = 8):
    """``steps`` fixed (x, y) batches in float64, 3 classes."""
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn((n, *model_input_shape), generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g))
        for _ in range(steps)
    ]


def functional_loss(model: torch.nn.Module, data):
    """``loss_of(theta, t)`` and ``logits_of(theta, t)`` for step t (1-based) of ``data``."""

    def logits_of(theta, t):
        return functional_call(model, theta, (data[t - 1][0],))

    def loss_of(theta, t):
        return F.cross_entropy(logits_of(theta, t), data[t - 1][1])

    return loss_of, logits_of


def quadratic_hessian(dim: int = 6, seed: int = 0, diagonal: bool = False, offdiag: float = 0.5) -> torch.Tensor:
    """A symmetric positive-definite H with off-diagonal mass (or a diagonal one), float64."""
    g = torch.Generator().manual_seed(seed)
    if diagonal:
        return torch.diag(torch.linspace(0.5, 4.0, dim, dtype=torch.float64))
    a = torch.randn(dim, dim, generator=g, dtype=torch.float64) * offdiag
    return a @ a.T + torch.diag(torch.linspace(0.5, 2.0, dim, dtype=torch.float64))
