"""AdaHessian (Yao et al., AAAI 2021, arXiv 2006.00719) as a ``torch.optim.Optimizer``."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from .defaults import DEFAULTS

__all__ = ["AdaHessian", "rademacher_like", "hutchinson_samples"]

_D = {k: v["value"] for k, v in DEFAULTS["adahessian"].items()}


def rademacher_like(p: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """A probe of +-1 entries shaped like ``p`` (Rademacher)."""
    return torch.randint(0, 2, p.shape, generator=generator, device=p.device).to(p.dtype).mul_(2).sub_(1)


def hutchinson_samples(params: list[Tensor], grads: list[Tensor], probes: list[Tensor]) -> list[Tensor]:
    """``z * (H z)`` per parameter, with ``H z = d<g, z>/d theta`` (``g`` built with create_graph=True)."""
    for i, g in enumerate(grads):
        if g.grad_fn is None:
            raise RuntimeError(f"gradient {i} has no graph: call loss.backward(create_graph=True) before step()")
    hz = torch.autograd.grad(grads, params, grad_outputs=probes, retain_graph=True)
    return [z * h for z, h in zip(probes, hz)]


def spatial_average(d: Tensor) -> Tensor:
    """Mean of ``|d|`` over the spatial dims (2, 3, ...) of a conv kernel, broadcast back (paper Eq. 8)."""
    if d.dim() < 3:
        return d.abs()
    return d.abs().mean(dim=tuple(range(2, d.dim())), keepdim=True).expand_as(d)


class AdaHessian(Optimizer):
    r"""AdaHessian: Adam with the second moment of a Hutchinson Hessian diagonal.

    .. code-block:: text

        input: lr, (beta1, beta2) = betas, eps, weight_decay (lambda), hessian_power (k)
        per step t, per parameter, with g the gradient (built with create_graph=True):
            z ~ Rademacher;  D = z * (H z)                     (Hutchinson, paper Eq. 7)
            D <- mean over the kernel's spatial block of |D|   (conv kernels, spatial_average; Eq. 8)
            m = beta1 m + (1 - beta1) g
            v = beta2 v + (1 - beta2) D * D
            denom = (sqrt(v / (1 - beta2^t)))^k + eps          (Eq. 10)
            theta <- theta - lr (m / (1 - beta1^t) / denom + lambda theta)

    The training loop calls ``loss.backward(create_graph=True)`` and then ``step()``, as the
    original code does; ``step()`` raises if a gradient carries no graph. For a 1D/2D parameter
    ``|D|`` enters only squared, so its sign never matters; for a kernel with three or more dims
    the mean of ``|D|`` over dims 2.. is used (the original code averages ``|Hz|`` over the 3x3
    block of 4D kernels; its instruction version also averages 2D weights over rows by default,
    which this class does not). Weight decay is applied as in the original code: decoupled, to the
    weights before the step, scaled by ``lr``.

    The curvature estimate is ``sqrt(v / (1 - beta2^t))``: a running RMS of ``|D|``. On a fixed
    Hessian its square tends to ``E[D_i^2] = H_ii^2 + sum_{j != i} H_ij^2`` (Rademacher): it is
    ``|H_ii|`` only when the Hessian is diagonal, and larger otherwise.

    Defaults: :data:`arturo_diag.estimators.defaults.DEFAULTS` ``["adahessian"]`` (with sources).
    State per parameter: ``step``, ``exp_avg`` (m), ``exp_hessian_diag_sq`` (v), ``hessian_sample`` (last D).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = _D["lr"],
        betas: tuple[float, float] = _D["betas"],
        eps: float = _D["eps"],
        weight_decay: float = _D["weight_decay"],
        hessian_power: float = _D["hessian_power"],
        *,
        spatial_average: bool = _D["spatial_average"],
        generator: torch.Generator | None = None,
    ):
        if not lr >= 0.0:
            raise ValueError(f"lr: got {lr!r}; allowed: >= 0")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"betas: got {betas!r}; allowed: each in [0, 1)")
        if not eps >= 0.0:
            raise ValueError(f"eps: got {eps!r}; allowed: >= 0")
        if not weight_decay >= 0.0:
            raise ValueError(f"weight_decay: got {weight_decay!r}; allowed: >= 0")
        if not 0.0 < hessian_power <= 1.0:
            raise ValueError(f"hessian_power: got {hessian_power!r}; allowed: in (0, 1]")
        super().__init__(
            params,
            dict(
                lr=lr,
                betas=tuple(betas),
                eps=eps,
                weight_decay=weight_decay,
                hessian_power=hessian_power,
                spatial_average=bool(spatial_average),
            ),
        )
        #: draws the Rademacher probes (None: torch's global generator)
        self.generator = generator

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            return loss
        grads = [p.grad for p in params]
        probes = [rademacher_like(p, self.generator) for p in params]
        with torch.enable_grad():
            samples = dict(zip(params, hutchinson_samples(params, grads, probes)))
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            k = group["hessian_power"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)  # m, EMA of gradients
                    state["exp_hessian_diag_sq"] = torch.zeros_like(p)  # v, EMA of D * D
                d = samples[p].detach()
                if group["spatial_average"]:
                    d = spatial_average(d)
                state["hessian_sample"] = d.clone()  # D of this step (after averaging)
                state["step"] += 1
                t = state["step"]
                m, v = state["exp_avg"], state["exp_hessian_diag_sq"]
                m.mul_(beta1).add_(p.grad.detach(), alpha=1 - beta1)
                v.mul_(beta2).addcmul_(d, d, value=1 - beta2)
                denom = (v / (1 - beta2**t)).sqrt().pow(k).add(group["eps"])
                update = m / (1 - beta1**t) / denom + group["weight_decay"] * p
                p.sub_(group["lr"] * update)
        return loss
