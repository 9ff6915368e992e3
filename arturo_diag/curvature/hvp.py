"""Batched Hessian-vector products of the probe loss.

Math: for L(theta) (see :mod:`arturo_diag.curvature.functional`) and a batch of tangents
V = (v_1, ..., v_B), each v_b a tuple shaped like theta, return (H v_1, ..., H v_B).

Forward-over-reverse (``jvp`` of ``grad``), ``vmap``-ed over the batch: the primal forward and
backward pass is shared by the whole batch, each extra vector costs one tangent pass. The
P x P Hessian is never formed. Some torch operators have no working forward-over-reverse rule
(``F.mse_loss`` with reduction "mean" raises "ZeroTensors are immutable", pytorch issue
#123996); for those the products are taken reverse-over-reverse (``vjp`` of ``grad``, the
pullback built once and ``vmap``-ed), which gives the same numbers.
"""
from __future__ import annotations

from collections.abc import Callable

from torch import Tensor
from torch.func import grad, jvp, vjp, vmap

from arturo_diag.curvature.functional import ParameterLoss, activation_elements

__all__ = ["batched_hvp", "hvp_chunk_size"]

Tangents = tuple[Tensor, ...]

# Bytes one call of batched HVPs should stay within, roughly. Besides staying clear of memory
# limits, this keeps the per-call tensors small: on CPU every tensor above glibc's mmap threshold
# is page-faulted in afresh each time, which measured as a large part of the cost of 32 probes.
HVP_CHUNK_BYTES = 2**30


def batched_hvp(
    loss: ParameterLoss, params: tuple[Tensor, ...]
) -> Callable[[Tangents], Tangents]:
    """Return ``V -> H V``: tangents with a leading batch dimension in, products likewise out.

    Math: (H v_b) for b = 1..B, H = d^2 ``loss`` / d ``params``^2; every tensor of V and of the
    result has shape (B, *param.shape).
    """
    grad_loss = grad(loss)

    def forward_over_reverse(tangents: Tangents) -> Tangents:
        return jvp(grad_loss, (params,), (tangents,))[1]

    batched_forward = vmap(forward_over_reverse)
    use_reverse = False

    def products(tangents: Tangents) -> Tangents:
        nonlocal use_reverse
        if not use_reverse:
            try:
                return batched_forward(tangents)
            except RuntimeError as failure:
                if "ZeroTensors are immutable" not in str(failure):
                    raise
                use_reverse = True
        _, pullback = vjp(grad_loss, params)
        return vmap(pullback)(tangents)[0]

    return products


def hvp_chunk_size(loss: ParameterLoss, params: tuple[Tensor, ...], limit: int) -> int:
    """How many vectors one call of :func:`batched_hvp` should take (at most ``limit``).

    Each vector costs about three times the model's activations on the probe batch (its tangents
    through the forward and the backward pass) plus two parameter-sized tensors; the chunk is
    sized so that their sum stays within ``HVP_CHUNK_BYTES``.
    """
    per_sample = sum(activation_elements(loss, params).values())
    total = sum(p.numel() for p in params)
    per_vector = (3 * per_sample * loss.inputs.shape[0] + 2 * total) * params[0].element_size()
    return max(1, min(limit, HVP_CHUNK_BYTES // max(1, per_vector)))
