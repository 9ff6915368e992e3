"""Seeded float64 cases for the curvature tests, and the brute-force reference they are held to.

The reference never goes through arturo_diag: it flattens the parameters itself, evaluates the
loss with torch.func.functional_call and takes the full Hessian with
torch.autograd.functional.hessian.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

DTYPE = torch.float64


def brute_force_diagonal(model: nn.Module, loss_fn, inputs, targets) -> dict[str, torch.Tensor]:
    """diag of the full Hessian of loss_fn(model(inputs), targets) in the trainable parameters.

    The model is evaluated in the mode it is in (the tests put it in eval mode first).
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    flat = torch.cat([p.detach().reshape(-1) for _, p in named])
    sizes = [p.numel() for _, p in named]

    def loss_of_flat(vector):
        parts = vector.split(sizes)
        state = {n: part.view_as(p) for (n, p), part in zip(named, parts)}
        return loss_fn(functional_call(model, state, (inputs,)), targets)

    hessian = torch.autograd.functional.hessian(loss_of_flat, flat)
    diagonal = hessian.diagonal().split(sizes)
    return {n: d.view_as(p) for (n, p), d in zip(named, diagonal)}


def assert_same_diagonal(got, expected, atol=1e-10, rtol=0.0):
    assert list(got) == list(expected)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=atol, rtol=rtol, msg=name)


def spd_matrix(n: int, seed: int, dense: bool = True) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    b = torch.randn(n, n, generator=g, dtype=DTYPE)
    a = b @ b.T / n + torch.eye(n, dtype=DTYPE)
    return a if dense else torch.diag(a.diagonal())


class Quadratic(nn.Module):
    """Outputs 0.5 x^T A x for every row of the batch: the loss is that value, its Hessian A."""

    def __init__(self, a: torch.Tensor, seed: int = 0):
        super().__init__()
        self.register_buffer("a", a)
        g = torch.Generator().manual_seed(seed)
        self.x = nn.Parameter(torch.randn(a.shape[0], generator=g, dtype=a.dtype))

    def forward(self, inputs):
        value = 0.5 * self.x @ self.a @ self.x
        return value.expand(inputs.shape[0])


def mean_output(outputs, targets):
    return outputs.mean()


def mlp(seed: int = 0, activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), activation(), nn.Linear(5, 4), activation(), nn.Linear(4, 3)).to(DTYPE)


def cnn(seed: int = 0) -> nn.Sequential:
    """Conv (output 6x6 = 36 positions, more than the 3 classes: the direct squares) and conv
    (output 2x2 = 4 positions: with 5 classes the Gram squares), pooling, dropout, linear."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Dropout(0.3),
        nn.Conv2d(3, 2, 2, padding=1, stride=2),
        nn.LeakyReLU(0.1),
        nn.Flatten(),
        nn.Linear(8, 5),
    ).to(DTYPE)


def bn_cnn(seed: int = 0) -> nn.Sequential:
    """Conv, batch norm (with non-trivial running statistics), ReLU, average pooling, linear."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(12, 6),
        nn.BatchNorm1d(6),
        nn.ReLU(),
        nn.Linear(6, 4),
    ).to(DTYPE)
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model


def conv1d_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv1d(2, 3, 3, padding=1, dilation=1),
        nn.ReLU(),
        nn.Conv1d(3, 2, 2, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6, 3),
    ).to(DTYPE)


class TokenLinear(nn.Module):
    """One Linear layer applied at each of T positions, (N, T, I) -> (N, T, O), then ReLU and a
    linear head. With fewer classes than positions its squares are direct, otherwise Gram."""

    arturo_diag_piecewise_linear = True

    def __init__(self, positions=5, features=3, width=2, classes=2, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.proj = nn.Linear(features, width)
        self.head = nn.Linear(positions * width, classes)
        self.to(DTYPE)

    def forward(self, x):
        return self.head(torch.relu(self.proj(x)).flatten(1))


class Residual(nn.Module):
    """x + W2 relu(W1 x) + own scale parameter: opts in; its own parameter forces the generic
    (vmap) ggn path."""

    arturo_diag_piecewise_linear = True

    def __init__(self, width: int = 4, classes: int = 3, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.inner = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))
        self.gain = nn.Parameter(torch.tensor([1.3, -0.7, 0.4, 0.9]))
        self.head = nn.Linear(width, classes)
        self.to(DTYPE)

    def forward(self, x):
        return self.head(torch.relu(x + self.inner(x)) * self.gain)


def batch(shape, classes=None, targets_shape=None, n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g, dtype=DTYPE)
    if classes is not None:
        y = torch.randint(0, classes, (n,), generator=g)
    else:
        y = torch.randn(n, *targets_shape, generator=g, dtype=DTYPE)
    return x, y
