"""Hutchinson's stochastic estimate of the Hessian diagonal, with its standard error.

Math: for the probe loss L(theta) (see :mod:`arturo_diag.curvature.functional`) with Hessian H,
draw S = ``samples`` Rademacher probes z_s in {-1, +1}^P (independent entries, P(+1) = 1/2) from
``generator`` and estimate h = diag(H) by

    h_hat = (1/S) sum_s z_s * (H z_s)        (* elementwise),

Bekas, Kokiopoulou and Saad, "An estimator for the diagonal of a matrix", Applied Numerical
Mathematics 57 (2007) 1214-1229.

Unbiasedness: the i-th entry of one term is z_i (H z)_i = sum_j H_ij z_i z_j. Since
E[z_i z_j] = 1 if i = j (z_i^2 = 1) and 0 otherwise (independent, zero mean),
E[z_i (H z)_i] = H_ii. The mean of S independent terms is unbiased too.

Variance: Var[z_i (H z)_i] = Var[sum_{j != i} H_ij z_i z_j] = sum_{j != i} H_ij^2 (the products
z_i z_j, j != i, are themselves independent Rademacher variables). It vanishes for a diagonal H;
the estimator is exact there. The standard error reported is computed from the probes
themselves: stderr_i = std_s(z_s,i (H z_s)_i) / sqrt(S), with the unbiased (S - 1) sample
variance; it estimates the standard deviation of h_hat_i across independent runs.

The curvature arTuRO filters (ARTURO.md, ``a``; arXiv 2310.20574) is compared with this
estimate when the exact diagonal is too expensive.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from arturo_diag.curvature._checks import check_chunk_size, check_generator
from arturo_diag.curvature.errors import CurvatureError
from arturo_diag.curvature.functional import loss_of_parameters
from arturo_diag.curvature.hvp import batched_hvp, hvp_plan
from arturo_diag.curvature.result import DiagonalHessian, split_like

__all__ = ["hutchinson_diagonal"]


def rademacher_draws(count: int, total: int, generator: torch.Generator | None) -> Tensor:
    """The probe stream of every Rademacher estimator here: ``(count, total)`` int8 in {0, 1}.

    One int8 draw of every coordinate per probe, on the generator's device (``None``: torch's
    global generator, on the CPU): the stream, hence any result built on it, does not depend on
    how the probes are chunked. The probe is ``z = 2 * draw - 1``.
    """
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.stack(
        [torch.randint(0, 2, (total,), generator=generator, device=device, dtype=torch.int8) for _ in range(count)]
    )


def rademacher_probes(count: int, params: Sequence[Tensor], generator: torch.Generator | None) -> tuple[Tensor, ...]:
    """``count`` Rademacher probes (:func:`rademacher_draws`) as contiguous ``(count, *p.shape)``
    tangents, one per parameter, typed and placed like the parameters."""
    like = params[0]
    sizes = [p.numel() for p in params]
    draws = rademacher_draws(count, sum(sizes), generator).to(like.device)
    tangents, offset = [], 0
    for p, size in zip(params, sizes):
        z = torch.empty(count, size, dtype=like.dtype, device=like.device)
        z.copy_(draws[:, offset : offset + size]).mul_(2).sub_(1)
        tangents.append(z.view(count, *p.shape))
        offset += size
    return tuple(tangents)


def hutchinson_diagonal(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    inputs: Tensor,
    targets: Tensor,
    samples: int,
    generator: torch.Generator | None,
    *,
    train: bool = False,
    chunk_size: int | None = None,
) -> tuple[DiagonalHessian, DiagonalHessian]:
    """Hutchinson's estimate of diag(H) and its standard error, per parameter.

    Math: h_hat = (1/S) sum_s z_s * (H z_s), stderr = std_s(z_s * H z_s) / sqrt(S), with
    S = ``samples`` Rademacher probes drawn from ``generator``, H the Hessian of
    L(theta) = ``loss_fn(model(inputs; theta), targets)``.

    Args:
        model, loss_fn, inputs, targets, train: as in
            :func:`arturo_diag.curvature.exact_diagonal`.
        samples: number of probes S, at least 2 (the standard error needs two).
        generator: the source of the probes; the same generator state gives the same estimate,
            whatever ``chunk_size``. Probes are drawn on the generator's device, in probe order,
            then moved to the parameters' device and dtype. ``None`` uses torch's global
            generator on the CPU.
        chunk_size: probes per call (default: all ``samples``, or fewer if they would need more
            than about 1 GiB, see :func:`arturo_diag.curvature.hvp.hvp_plan`). The probes of a
            call share one gradient graph (its primal forward and backward pass); their
            Hessian-vector products are ``vmap``-ed for small models and looped for large ones.

    Returns:
        ``(estimate, stderr)``: two :class:`DiagonalHessian` with ``method`` "hutchinson" and
        "hutchinson-stderr", ``samples`` = S, tensors shaped, typed and placed like the
        parameters.

    Raises:
        CurvatureError: bad input (see :func:`loss_of_parameters`), samples < 2, bad chunk size.
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 2:
        raise CurvatureError(f"samples: got {samples!r}; allowed: an integer >= 2 (the standard error needs two)")
    check_chunk_size(chunk_size)
    check_generator(generator)
    names, params, loss = loss_of_parameters(model, loss_fn, inputs, targets, train=train)
    plan = hvp_plan(loss, params, samples)
    chunk_size = min(chunk_size or plan.chunk, samples)
    like = params[0]
    total = sum(p.numel() for p in params)
    hessian_times = batched_hvp(loss, params, plan.batched)
    # Sums of the terms and of their squares, shifted by the first chunk's mean so that the
    # variance stays accurate when |h| is much larger than its spread.
    shift = None
    total_sum = torch.zeros(total, dtype=like.dtype, device=like.device)
    total_sq = torch.zeros(total, dtype=like.dtype, device=like.device)
    for start in range(0, samples, chunk_size):
        count = min(chunk_size, samples - start)
        tangents = rademacher_probes(count, params, generator)
        products = hessian_times(tangents)
        terms = torch.cat([(z * h).reshape(count, -1) for z, h in zip(tangents, products)], dim=1)
        del tangents, products
        if shift is None:
            shift = terms.mean(0)
        terms -= shift
        total_sum += terms.sum(0)
        total_sq += (terms * terms).sum(0)
    centred_mean = total_sum / samples
    estimate = shift + centred_mean
    variance = (total_sq - samples * centred_mean**2).clamp_min_(0) / (samples - 1)
    stderr = (variance / samples).sqrt_()
    return (
        DiagonalHessian(split_like(estimate, names, params), "hutchinson", samples=samples),
        DiagonalHessian(split_like(stderr, names, params), "hutchinson-stderr", samples=samples),
    )
