"""The trace of the probe loss's Hessian H from Hessian-vector products (H never formed; see
:mod:`arturo_diag.curvature.spectrum`):

- :func:`hessian_trace`: Hutchinson's tr(H) ~ (1/S) sum_s z_s^T H z_s with Rademacher z_s
  (Hutchinson 1990), and its standard error std_s(z_s^T H z_s) / sqrt(S) (ddof 1). Unbiased:
  E[z^T H z] = sum_ij H_ij E[z_i z_j] = tr(H); Var[z^T H z] = 2 sum_{i != j} H_ij^2.
- :func:`hutchpp_trace`: Hutch++ (Meyer, Musco, Musco and Woodruff, "Hutch++: Optimal Stochastic
  Trace Estimation", SOSA 2021, Algorithm 1). With a budget of S products, k = S // 3 sketch
  vectors (capped at P) and g = S - 2k Hutchinson probes: Q = orth(H Z_sketch) (P x k), then
  tr(H) ~ tr(Q^T H Q) + (1/g) sum_s w_s^T H w_s, w_s = (I - Q Q^T) z_s. The first term is exact
  given Q; the second is Hutchinson's estimate of tr((I - QQ^T) H (I - QQ^T)), unbiased given Q,
  so the estimate is unbiased, and its error is that of the second term alone: the standard error
  reported is std_s(w_s^T H w_s) / sqrt(g) (ddof 1, conditional on Q; its square estimates the
  estimator's variance because E[Var(.|Q)] is the whole variance). When the sketch spans the
  range of H (always when k = P, i.e. S >= 3P) the deflated matrix is 0 and the estimate is
  exact: then Q = I is used directly (P products, nothing drawn) and the standard error is 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from arturo_diag.curvature._checks import check_count
from arturo_diag.curvature.functional import loss_of_parameters
from arturo_diag.curvature.spectrum_operator import LossFn
from arturo_diag.curvature.spectrum_probes import _Batched, _check_common, _mean_and_se, _probe_terms, _rademacher

__all__ = ["TraceEstimate", "hessian_trace", "hutchpp_trace"]


@dataclass(frozen=True)
class TraceEstimate:
    """An estimate of tr(H): ``value`` +- ``stderr``, from ``hvps`` Hessian-vector products.

    method: "hutchinson" or "hutch++"; samples: the budget S asked for; for Hutch++ also
    ``sketch`` (k) and ``probes`` (g), and ``exact`` (the sketch spans R^P: no error).
    """

    value: float
    stderr: float
    method: str
    samples: int
    hvps: int
    sketch: int = 0
    probes: int = 0
    exact: bool = False


def hessian_trace(
    model: nn.Module,
    loss_fn: LossFn,
    inputs: Tensor,
    targets: Tensor,
    samples: int,
    generator: torch.Generator | None,
    *,
    train: bool = False,
    chunk_size: int | None = None,
) -> TraceEstimate:
    """Hutchinson's estimate of tr(H) with its standard error (module docstring), S = ``samples``
    >= 2 Rademacher probes from ``generator``; ``chunk_size`` probes per batched HVP call.

    With the same generator state the probes are those of ``hutchinson_diagonal``, so the value
    equals the sum of that diagonal estimate.
    """
    check_count("samples", samples, 2)
    _check_common(generator, chunk_size)
    problem = loss_of_parameters(model, loss_fn, inputs, targets, train=train)
    quad, _, hvps = _probe_terms(problem, samples, generator, chunk_size)
    value, se = _mean_and_se(quad)
    return TraceEstimate(value, se, "hutchinson", samples, hvps)


def hutchpp_trace(
    model: nn.Module,
    loss_fn: LossFn,
    inputs: Tensor,
    targets: Tensor,
    samples: int,
    generator: torch.Generator | None,
    *,
    train: bool = False,
    chunk_size: int | None = None,
) -> TraceEstimate:
    """Hutch++'s estimate of tr(H) with its (conditional) standard error (module docstring).

    Budget S = ``samples`` >= 4 products: k = min(S // 3, P) sketch vectors, g = S - 2k probes
    (none when k = P: then Q = I, the estimate is exact and ``hvps`` = P). All random vectors are
    Rademacher from ``generator``, the sketch first.
    """
    check_count("samples", samples, 4)
    _check_common(generator, chunk_size)
    problem = loss_of_parameters(model, loss_fn, inputs, targets, train=train)
    total = sum(p.numel() for p in problem.params)
    sketch = min(samples // 3, total)
    exact = sketch == total
    probes = 0 if exact else samples - 2 * sketch
    batched = _Batched(problem, max(sketch, probes), chunk_size)
    if exact:
        basis = torch.eye(total, dtype=torch.float64)  # Q = I: tr(Q^T H Q) = tr(H)
    else:
        y = batched(_rademacher(generator, sketch, total))  # rows: (H s_j)^T
        basis = torch.linalg.qr(y.T, mode="reduced").Q.T.contiguous()  # rows: orthonormal q_j
    top = float((basis * batched(basis)).sum())
    if exact:
        return TraceEstimate(top, 0.0, "hutch++", samples, batched.hvps, sketch, 0, True)
    g = _rademacher(generator, probes, total)
    deflated = g - (g @ basis.T) @ basis
    deflated = deflated - (deflated @ basis.T) @ basis  # twice: orthogonal to rounding
    terms = (deflated * batched(deflated)).sum(1)
    rest, se = _mean_and_se(terms)
    return TraceEstimate(top + rest, se, "hutch++", samples, batched.hvps, sketch, probes, False)
