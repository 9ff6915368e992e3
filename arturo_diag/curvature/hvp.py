"""Batched Hessian-vector products of the probe loss.

Math: for L(theta) (see :mod:`arturo_diag.curvature.functional`) and a batch of tangents
V = (v_1, ..., v_B), each v_b a tuple shaped like theta, return (H v_1, ..., H v_B).

Reverse-over-reverse: the gradient's graph is built once per batch (``vjp`` of ``grad``), and its
pullback gives H v for each v (H is symmetric), so the primal forward and backward pass is shared
by the whole batch and each vector costs one pass back through the gradient's graph. The P x P
Hessian is never formed. The pullback is ``vmap``-ed over the batch when one vector's work is
small (many small operations, which vmap fuses into few), and called once per vector when it is
large: measured on CPU, on the paper's Fashion-MNIST CNN a loop costs 1.6 gradients per product
against 2.8 (vmap, reverse-over-reverse) and 3.0 (vmap, forward-over-reverse, ``jvp`` of
``grad``), while on the 3,658-parameter SmallCNN vmap is several times faster than the loop.
If the double backward is not available for some operator, forward-over-reverse is used instead
(``vmap`` of ``jvp`` of ``grad``); that path in turn cannot differentiate ``F.mse_loss`` with
reduction "mean" (pytorch issue #123996), which reverse-over-reverse can.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.func import grad, jvp, vjp, vmap

from arturo_diag.curvature.functional import ParameterLoss, activation_elements

__all__ = ["HVP_CHUNK_BYTES", "LOOP_ABOVE_BYTES", "HVPPlan", "batched_hvp", "hvp_plan"]

Tangents = tuple[Tensor, ...]

# Bytes one call of batched HVPs should stay within, roughly.
HVP_CHUNK_BYTES = 2**30
# Above this many bytes of work per vector, vectors go one at a time through the shared graph.
# It is glibc's largest mmap threshold: bigger tensors are page-faulted in afresh on every
# allocation, which made vmap's batched tensors costly on CPU.
LOOP_ABOVE_BYTES = 2**25


class HVPPlan(tuple):
    """``(chunk, batched)``: vectors per call and whether to vmap them (see :func:`hvp_plan`)."""

    __slots__ = ()

    def __new__(cls, chunk: int, batched: bool):
        return super().__new__(cls, (chunk, batched))

    @property
    def chunk(self) -> int:
        return self[0]

    @property
    def batched(self) -> bool:
        return self[1]


def hvp_plan(loss: ParameterLoss, params: tuple[Tensor, ...], limit: int) -> HVPPlan:
    """How many vectors one call of :func:`batched_hvp` should take (at most ``limit``), and
    whether to ``vmap`` them.

    One vector's work is about three times the model's activations on the probe batch (its
    cotangents through the gradient's graph); vmap-ed vectors hold it all at once, looped ones
    one at a time. Either way each vector also holds two parameter-sized tensors. The chunk keeps
    the total within ``HVP_CHUNK_BYTES``; vectors are vmap-ed when their work is at most
    ``LOOP_ABOVE_BYTES``.
    """
    itemsize = params[0].element_size()
    work = 3 * sum(activation_elements(loss, params).values()) * loss.inputs.shape[0] * itemsize
    vectors = 2 * sum(p.numel() for p in params) * itemsize
    batched = work <= LOOP_ABOVE_BYTES
    per_vector = vectors + (work if batched else 0)
    budget = HVP_CHUNK_BYTES - (0 if batched else work)
    chunk = max(1, min(limit, max(1, budget) // max(1, per_vector)))
    return HVPPlan(chunk, batched)


def batched_hvp(
    loss: ParameterLoss, params: tuple[Tensor, ...], batched: bool = True
) -> Callable[[Tangents], Tangents]:
    """Return ``V -> H V``: tangents with a leading batch dimension in, products likewise out.

    Math: (H v_b) for b = 1..B, H = d^2 ``loss`` / d ``params``^2; every tensor of V and of the
    result has shape (B, *param.shape). ``batched``: vmap over the B vectors, else a loop.
    """
    grad_loss = grad(loss)
    use_forward = False

    def forward_over_reverse(tangents: Tangents) -> Tangents:
        return vmap(lambda t: jvp(grad_loss, (params,), (t,))[1])(tangents)

    def reverse_over_reverse(tangents: Tangents) -> Tangents:
        _, pullback = vjp(grad_loss, params)
        if batched:
            return vmap(pullback)(tangents)[0]
        count = tangents[0].shape[0]
        rows = [pullback(tuple(t[b] for t in tangents))[0] for b in range(count)]
        return tuple(torch.stack(parts) for parts in zip(*rows))

    def products(tangents: Tangents) -> Tangents:
        nonlocal use_forward
        if not use_forward:
            try:
                return reverse_over_reverse(tangents)
            except RuntimeError as failure:
                if "derivative for" not in str(failure) and "double backward" not in str(failure):
                    raise
                use_forward = True
        return forward_over_reverse(tangents)

    return products
