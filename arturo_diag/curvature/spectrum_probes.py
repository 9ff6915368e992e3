"""Shared pieces of the batched spectrum estimators (trace, Hutch++, diagonal share): Rademacher
probes drawn as :func:`arturo_diag.curvature.hutchinson_diagonal` draws them, products H V in
chunks through :func:`arturo_diag.curvature.hvp.batched_hvp`, mean and standard error."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from arturo_diag.curvature._checks import check_chunk_size, check_generator
from arturo_diag.curvature.functional import LossOfParameters
from arturo_diag.curvature.hutchinson import rademacher_draws
from arturo_diag.curvature.hvp import batched_hvp, hvp_plan


def _check_common(generator, chunk_size) -> None:
    check_chunk_size(chunk_size)
    check_generator(generator)


def _rademacher(generator: torch.Generator | None, count: int, total: int) -> Tensor:
    """(count, total) float64 signs on the CPU: Hutchinson's probe stream (:func:`rademacher_draws`)."""
    return rademacher_draws(count, total, generator).to(torch.float64).mul_(2).sub_(1).cpu()


class _Batched:
    """Products H V for a (count, P) float64 block, in chunks through :func:`batched_hvp`."""

    def __init__(self, problem: LossOfParameters, limit: int, chunk_size: int | None):
        _, params, loss = problem
        plan = hvp_plan(loss, params, max(1, limit))
        self.chunk = min(chunk_size or plan.chunk, max(1, limit))
        self.products = batched_hvp(loss, params, plan.batched)
        self.params = params
        self.sizes = [p.numel() for p in params]
        self.hvps = 0

    def __call__(self, block: Tensor) -> Tensor:
        like = self.params[0]
        out = []
        for start in range(0, block.shape[0], self.chunk):
            part = block[start : start + self.chunk].to(device=like.device, dtype=like.dtype)
            count = part.shape[0]
            tangents = tuple(
                piece.reshape(count, *p.shape).contiguous()
                for piece, p in zip(part.split(self.sizes, dim=1), self.params)
            )
            products = self.products(tangents)
            out.append(torch.cat([h.reshape(count, -1) for h in products], dim=1).to(torch.float64).cpu())
            self.hvps += count
        return torch.cat(out) if out else block.new_zeros(0, block.shape[1])


def _mean_and_se(terms: Tensor) -> tuple[float, float]:
    mean = float(terms.mean())
    se = float(terms.std(unbiased=True) / math.sqrt(terms.numel())) if terms.numel() > 1 else math.nan
    return mean, se


def _probe_terms(problem, samples, generator, chunk_size):
    """Per probe z^T H z and ||H z||^2 (float64), in chunks; and the products used."""
    total = sum(p.numel() for p in problem.params)
    batched = _Batched(problem, samples, chunk_size)
    quad, squares = [], []
    for start in range(0, samples, batched.chunk):
        z = _rademacher(generator, min(batched.chunk, samples - start), total)
        hz = batched(z)
        quad.append((z * hz).sum(1))
        squares.append((hz * hz).sum(1))
    return torch.cat(quad), torch.cat(squares), batched.hvps
