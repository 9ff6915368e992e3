"""Every curvature function checks ``chunk_size`` and ``generator`` alike (curvature/_checks.py):
``chunk_size=True`` was accepted by exact_diagonal (as 1) and refused by hutchinson_diagonal."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from arturo_diag.curvature import (
    CurvatureError,
    diagonal_share,
    exact_diagonal,
    ggn_diagonal,
    gradient_noise,
    hessian_diagonal_cv,
    hessian_trace,
    hutchinson_diagonal,
    hutchpp_trace,
)


def _problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    return model, F.cross_entropy, torch.randn(5, 3, dtype=torch.float64), torch.tensor([0, 1, 0, 1, 1])


def _gen():
    return torch.Generator().manual_seed(0)


CALLS = {
    "exact_diagonal": lambda m, f, x, y, **kw: exact_diagonal(m, f, x, y, "hvp", **kw),
    "hutchinson_diagonal": lambda m, f, x, y, **kw: hutchinson_diagonal(m, f, x, y, 4, _gen(), **kw),
    "hessian_diagonal_cv": lambda m, f, x, y, **kw: hessian_diagonal_cv(m, f, x, y, 4, _gen(), **kw),
    "ggn_diagonal": lambda m, f, x, y, **kw: ggn_diagonal(m, f, x, y, **kw),
    "gradient_noise": lambda m, f, x, y, **kw: gradient_noise(m, f, x, y, **kw),
    "hessian_trace": lambda m, f, x, y, **kw: hessian_trace(m, f, x, y, 4, _gen(), **kw),
    "hutchpp_trace": lambda m, f, x, y, **kw: hutchpp_trace(m, f, x, y, 6, _gen(), **kw),
    "diagonal_share": lambda m, f, x, y, **kw: diagonal_share(
        m, f, x, y, torch.ones(sum(p.numel() for p in m.parameters()), dtype=torch.float64), 4, _gen(), **kw
    ),
}


@pytest.mark.parametrize("name", sorted(CALLS))
@pytest.mark.parametrize("bad", [True, False, 0, -1, 2.0, "2"])
def test_chunk_size_is_refused_alike_everywhere(name, bad):
    with pytest.raises(CurvatureError, match=r"^chunk_size: got .*; allowed: a positive integer or None$"):
        CALLS[name](*_problem(), chunk_size=bad)


@pytest.mark.parametrize("name", sorted(CALLS))
def test_chunk_size_one_and_none_are_accepted(name):
    CALLS[name](*_problem(), chunk_size=1)
    CALLS[name](*_problem(), chunk_size=None)
