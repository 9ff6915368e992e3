"""The diagonal's share of the Frobenius norm of the probe loss's Hessian H, from Hessian-vector
products (H never formed; see :mod:`arturo_diag.curvature.spectrum`):

- :func:`diagonal_share`: ||diag H||_2 / ||H||_F with the diagonal given exactly (e.g. from
  :func:`arturo_diag.curvature.exact_diagonal`) and ||H||_F^2 = tr(H^2) = E||H z||^2 for
  Rademacher z, estimated by F2 = (1/S) sum_s ||H z_s||^2 with standard error
  se(F2) = std_s(||H z_s||^2) / sqrt(S). The share's standard error is the delta method's: with
  share = D F2^(-1/2), d share / d F2 = -share / (2 F2), so se(share) = share * se(F2) / (2 F2)
  (first order: it ignores the O(se^2) bias of 1/sqrt(F2) and is meaningful when
  se(F2) << F2). The estimate can exceed 1 by noise; it is not clipped.

A diagonal model of the curvature (arTuRO's ``a``, ARTURO.md; arXiv 2310.20574) can capture at most
the share ``diagonal_share`` of H's Frobenius norm.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from arturo_diag.curvature._checks import check_count
from arturo_diag.curvature.errors import CurvatureError
from arturo_diag.curvature.functional import LossOfParameters, loss_of_parameters
from arturo_diag.curvature.spectrum_operator import LossFn
from arturo_diag.curvature.spectrum_probes import _check_common, _mean_and_se, _probe_terms

__all__ = ["DiagonalShare", "diagonal_share"]


@dataclass(frozen=True)
class DiagonalShare:
    """||diag H|| / ||H||_F with its standard error (delta method), and what it is made of.

    share, stderr: the ratio and its standard error.
    diagonal_norm: ||diag H||_2, exact (from the diagonal given).
    frobenius_sq, frobenius_sq_stderr: the estimate of ||H||_F^2 = E||H z||^2 and its SE.
    frobenius, frobenius_stderr: sqrt of it and its delta-method SE, se(F2) / (2 sqrt(F2)).
    trace, trace_stderr: Hutchinson's tr(H) from the same probes, free.
    samples: S probes; hvps: products used (= S).
    """

    share: float
    stderr: float
    diagonal_norm: float
    frobenius_sq: float
    frobenius_sq_stderr: float
    frobenius: float
    frobenius_stderr: float
    trace: float
    trace_stderr: float
    samples: int
    hvps: int


def diagonal_share(
    model: nn.Module,
    loss_fn: LossFn,
    inputs: Tensor,
    targets: Tensor,
    diagonal: Mapping[str, Tensor] | Tensor,
    samples: int,
    generator: torch.Generator | None,
    *,
    train: bool = False,
    chunk_size: int | None = None,
) -> DiagonalShare:
    """||diag H|| / ||H||_F, ||diag H|| exact from ``diagonal``, ||H||_F^2 = E||H z||^2 from
    S = ``samples`` >= 2 Rademacher probes; the standard error by the delta method (module
    docstring).

    ``diagonal``: name -> tensor per trainable parameter (a ``DiagonalHessian``, e.g. from
    ``exact_diagonal``), or one flat vector of P entries in parameter order.
    """
    check_count("samples", samples, 2)
    _check_common(generator, chunk_size)
    problem = loss_of_parameters(model, loss_fn, inputs, targets, train=train)
    flat = _flat_diagonal(diagonal, problem)
    diagonal_norm = float(flat.norm())
    quad, squares, hvps = _probe_terms(problem, samples, generator, chunk_size)
    trace, trace_se = _mean_and_se(quad)
    f2, f2_se = _mean_and_se(squares)
    frobenius = math.sqrt(f2) if f2 > 0 else 0.0
    share = diagonal_norm / frobenius if frobenius > 0 else math.nan
    share_se = share * f2_se / (2 * f2) if f2 > 0 else math.nan
    frob_se = f2_se / (2 * frobenius) if frobenius > 0 else math.nan
    return DiagonalShare(share, share_se, diagonal_norm, f2, f2_se, frobenius, frob_se, trace,
                         trace_se, samples, hvps)  # fmt: skip


def _flat_diagonal(diagonal, problem: LossOfParameters) -> Tensor:
    names, params, _ = problem
    total = sum(p.numel() for p in params)
    if isinstance(diagonal, Tensor):
        if diagonal.numel() != total:
            raise CurvatureError(f"diagonal: got {diagonal.numel()} entries; the model has {total} trainable ones")
        return diagonal.detach().reshape(-1).to(torch.float64).cpu()
    if not isinstance(diagonal, Mapping):
        raise CurvatureError(f"diagonal: got {type(diagonal).__name__}; allowed: a mapping name -> tensor or a tensor")
    if list(diagonal) != list(names):
        raise CurvatureError(
            f"diagonal: its parameters {list(diagonal)} are not the model's trainable ones {list(names)} (in order)"
        )
    parts = []
    for name, p in zip(names, params):
        value = diagonal[name]
        if tuple(value.shape) != tuple(p.shape):
            raise CurvatureError(f"diagonal[{name!r}]: shape {tuple(value.shape)}; the parameter's is {tuple(p.shape)}")
        parts.append(value.detach().reshape(-1).to(torch.float64).cpu())
    return torch.cat(parts)
