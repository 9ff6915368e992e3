"""The Hessian of the probe loss as an operator on flat vectors, the gradient graph built once
for all products: what the sequential spectrum methods (Lanczos, SLQ) run on.

See :mod:`arturo_diag.curvature.spectrum` for why a shared graph and double backward.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from arturo_diag.curvature.functional import LossOfParameters, loss_of_parameters

__all__ = ["HessianOperator", "LossFn", "hessian_operator"]

LossFn = Callable[[Tensor, Tensor], Tensor]


class HessianOperator:
    """``v -> H v`` on flat vectors, the gradient graph built once for all products.

    Attributes: ``dimension`` P, ``dtype``/``device`` of the parameters, ``hvps`` products so far.
    :meth:`matvec` takes and returns flat tensors (any float dtype in; the parameters' dtype out);
    :meth:`linear_operator` wraps it as a float64 ``scipy.sparse.linalg.LinearOperator``.
    """

    def __init__(self, problem: LossOfParameters):
        self.problem = problem
        _, params, loss = problem
        self.sizes = [p.numel() for p in params]
        self.dimension = sum(self.sizes)
        self.dtype = params[0].dtype
        self.device = params[0].device
        self.hvps = 0
        self._leaves = tuple(p.detach().clone().requires_grad_(True) for p in params)
        self._gradient: tuple[Tensor, ...] | None = None
        self._forward: Callable[[tuple[Tensor, ...]], tuple[Tensor, ...]] | None = None
        with torch.enable_grad():
            value = loss(self._leaves)
            self.loss_value = float(value.detach())
            gradient = torch.autograd.grad(value, self._leaves, create_graph=True, allow_unused=True)
        if any(g is None or not g.requires_grad for g in gradient):
            # a parameter the loss does not depend on twice-differentiably: let jvp handle it
            self._use_forward()
        else:
            self._gradient = gradient

    def _use_forward(self) -> None:
        from torch.func import grad, jvp

        _, params, loss = self.problem
        grad_loss = grad(loss)
        self._gradient = None
        self._forward = lambda tangents: jvp(grad_loss, (params,), (tangents,))[1]

    def _split(self, flat: Tensor) -> tuple[Tensor, ...]:
        parts = flat.to(device=self.device, dtype=self.dtype).split(self.sizes)
        return tuple(part.view_as(p) for part, p in zip(parts, self._leaves))

    def matvec(self, vector: Tensor) -> Tensor:
        """H v for a flat vector of P entries."""
        tangents = self._split(vector.reshape(-1))
        if self._gradient is not None:
            try:
                with torch.enable_grad():
                    products = torch.autograd.grad(
                        self._gradient, self._leaves, tangents, retain_graph=True, allow_unused=True
                    )
            except RuntimeError as failure:
                if "derivative for" not in str(failure) and "double backward" not in str(failure):
                    raise
                self._use_forward()
                return self.matvec(vector)
            products = tuple(torch.zeros_like(leaf) if p is None else p for p, leaf in zip(products, self._leaves))
        else:
            products = self._forward(tangents)
        self.hvps += 1
        return torch.cat([p.detach().reshape(-1) for p in products])

    def linear_operator(self):
        """The operator as a float64 scipy ``LinearOperator`` (P x P, symmetric)."""
        from scipy.sparse.linalg import LinearOperator

        def matvec(v: np.ndarray) -> np.ndarray:
            flat = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64).reshape(-1))
            return self.matvec(flat).to(torch.float64).cpu().numpy()

        return LinearOperator((self.dimension, self.dimension), matvec=matvec, rmatvec=matvec, dtype=np.float64)


def hessian_operator(
    model: nn.Module, loss_fn: LossFn, inputs: Tensor, targets: Tensor, *, train: bool = False
) -> HessianOperator:
    """The Hessian of the probe loss as an operator on flat vectors (see :class:`HessianOperator`).

    Build it once to run several sequential quantities (Lanczos, SLQ) on one gradient graph.
    """
    return HessianOperator(loss_of_parameters(model, loss_fn, inputs, targets, train=train))
