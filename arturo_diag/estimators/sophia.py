"""Sophia-H and Sophia-G (Liu et al., ICLR 2024, arXiv 2305.14342, Algorithm 3) as torch optimizers."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.optim import Optimizer

from .adahessian import hutchinson_samples, rademacher_like
from .defaults import DEFAULTS

__all__ = ["SophiaH", "SophiaG", "gnb_closure"]

_H = {k: v["value"] for k, v in DEFAULTS["sophia-h"].items()}
_G = {k: v["value"] for k, v in DEFAULTS["sophia-g"].items()}

_DOC = r"""
    .. code-block:: text

        input: lr (eta), betas = (beta1, beta2), gamma, eps, weight_decay (lambda), k = hessian_interval
        h_{1-k} = 0, m_0 = 0; at step t = 1, 2, ... with gradient g_t:
            m_t = beta1 m_{t-1} + (1 - beta1) g_t
            if t mod k = 1 (every step when k = 1):  h_t = beta2 h_{t-k} + (1 - beta2) hhat_t
            else:                                    h_t = h_{t-1}
            theta <- theta - eta lambda theta                              (line 12)
            theta <- theta - eta clip(m_t / max(gamma h_t, eps), 1)        (line 13; clip to [-1, 1])

    No bias correction (as in Algorithm 3). The estimate the update uses is ``h_t`` (state
    ``hessian``); after ``n`` estimator calls its mean is ``(1 - beta2^n)`` times what ``hhat``
    estimates. ``optimizer.hessian_due`` says whether the coming ``step()`` calls the estimator.
    Defaults and their sources: :data:`arturo_diag.estimators.defaults.DEFAULTS`.
"""


class _Sophia(Optimizer):
    _key = ""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        betas: tuple[float, float],
        gamma: float,
        eps: float,
        weight_decay: float,
        hessian_interval: int,
        **extra: Any,
    ):
        if not lr >= 0.0:
            raise ValueError(f"lr: got {lr!r}; allowed: >= 0")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"betas: got {betas!r}; allowed: each in [0, 1)")
        if not gamma > 0.0:
            raise ValueError(f"gamma: got {gamma!r}; allowed: > 0")
        if not eps > 0.0:
            raise ValueError(f"eps: got {eps!r}; allowed: > 0")
        if not weight_decay >= 0.0:
            raise ValueError(f"weight_decay: got {weight_decay!r}; allowed: >= 0")
        if not (isinstance(hessian_interval, int) and hessian_interval >= 1):
            raise ValueError(f"hessian_interval: got {hessian_interval!r}; allowed: an integer >= 1")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), gamma=gamma, eps=eps, weight_decay=weight_decay))
        self.hessian_interval = hessian_interval
        self.steps = 0  # t of the last step
        self.hessian_updates = 0  # n, estimator calls so far

    @property
    def hessian_due(self) -> bool:
        """True if the next ``step()`` estimates the Hessian diagonal (t mod k = 1)."""
        return self.steps % self.hessian_interval == 0

    def _params(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"] if p.grad is not None]

    def _estimate(self, params: list[Tensor], hessian_closure: Any) -> list[Tensor]:  # pragma: no cover
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        out = super().state_dict()
        out["sophia"] = {"steps": self.steps, "hessian_updates": self.hessian_updates}
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        counters = state_dict.pop("sophia", {"steps": 0, "hessian_updates": 0})
        super().load_state_dict(state_dict)
        self.steps, self.hessian_updates = int(counters["steps"]), int(counters["hessian_updates"])

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None, *, hessian_closure: Any = None) -> Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params = self._params()
        due = self.hessian_due
        hhat: dict[Tensor, Tensor] = {}
        if due and params:
            with torch.enable_grad():
                hhat = dict(zip(params, (h.detach() for h in self._estimate(params, hessian_closure))))
            self.hessian_updates += 1
        self.steps += 1
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, gamma, eps, wd = group["lr"], group["gamma"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)  # m, EMA of gradients
                    state["hessian"] = torch.zeros_like(p)  # h, EMA of the estimator's outputs
                    state["hessian_updates"] = 0  # n, estimator outputs in h
                state["step"] = self.steps
                m, h = state["exp_avg"], state["hessian"]
                m.mul_(beta1).add_(p.grad.detach(), alpha=1 - beta1)
                if p in hhat:
                    h.mul_(beta2).add_(hhat[p], alpha=1 - beta2)
                    state["hessian_sample"] = hhat[p].clone()  # hhat of the last estimator call
                    state["hessian_updates"] += 1
                p.mul_(1 - lr * wd)
                ratio = (m / torch.clamp(gamma * h, min=eps)).clamp_(-1.0, 1.0)
                p.sub_(lr * ratio)
        return loss


class SophiaH(_Sophia):
    __doc__ = (
        r"""Sophia-H: the Hutchinson estimator ``hhat = u * (H u)`` every ``k`` steps (Algorithm 1).

    On steps where :attr:`hessian_due` is true the gradients must carry a graph: the loop calls
    ``loss.backward(create_graph=optimizer.hessian_due)`` and then ``step()``. ``probe`` is
    ``"gaussian"`` (u ~ N(0, I), Algorithm 1) or ``"rademacher"``; ``hhat`` is unbiased for
    ``diag H`` either way, with variance ``2 H_ii^2 + sum_{j != i} H_ij^2`` (Gaussian) or
    ``sum_{j != i} H_ij^2`` (Rademacher) per coordinate.
"""
        + _DOC
    )

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = _H["lr"],
        betas: tuple[float, float] = _H["betas"],
        gamma: float = _H["gamma"],
        eps: float = _H["eps"],
        weight_decay: float = _H["weight_decay"],
        hessian_interval: int = _H["hessian_interval"],
        *,
        probe: str = _H["probe"],
        generator: torch.Generator | None = None,
    ):
        if probe not in ("gaussian", "rademacher"):
            raise ValueError(f"probe: got {probe!r}; allowed: gaussian, rademacher")
        super().__init__(params, lr, betas, gamma, eps, weight_decay, hessian_interval)
        self.probe = probe
        self.generator = generator

    def _estimate(self, params: list[Tensor], hessian_closure: Any) -> list[Tensor]:
        if hessian_closure is not None:
            raise ValueError("hessian_closure: Sophia-H takes the Hessian from the gradients' graph; pass none")
        if self.probe == "gaussian":
            probes = [torch.randn(p.shape, generator=self.generator, device=p.device, dtype=p.dtype) for p in params]
        else:
            probes = [rademacher_like(p, self.generator) for p in params]
        return hutchinson_samples(params, [p.grad for p in params], probes)


class SophiaG(_Sophia):
    __doc__ = (
        r"""Sophia-G: the Gauss-Newton-Bartlett estimator every ``k`` steps (Algorithm 2).

    ``hhat = B * ghat * ghat``, with ``ghat`` the gradient of the mean loss on labels sampled from
    the model's own predictive distribution over a batch of ``B`` inputs; for cross-entropy its mean
    is the diagonal of the Gauss-Newton matrix (= the model Fisher) of the mean loss.

    The training loop provides it as ``hessian_closure``: a callable returning
    ``(sampled_loss, B)``; :func:`gnb_closure` builds one for a classifier::

        loss = loss_fn(model(x), y); loss.backward()
        optimizer.step(hessian_closure=gnb_closure(model, x) if optimizer.hessian_due else None)

    It is called (with grad enabled) only on steps where :attr:`hessian_due` is true; there it is
    required. It must not change ``p.grad``: the estimator uses ``torch.autograd.grad``.
    (The official code stores ``ghat^2`` and multiplies by ``B`` in the update; the paper's
    convention, used here, puts ``B`` into ``hhat``: the estimate is on the Hessian's scale.)
"""
        + _DOC
    )

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = _G["lr"],
        betas: tuple[float, float] = _G["betas"],
        gamma: float = _G["gamma"],
        eps: float = _G["eps"],
        weight_decay: float = _G["weight_decay"],
        hessian_interval: int = _G["hessian_interval"],
    ):
        super().__init__(params, lr, betas, gamma, eps, weight_decay, hessian_interval)

    def _estimate(self, params: list[Tensor], hessian_closure: Any) -> list[Tensor]:
        if hessian_closure is None:
            raise ValueError(
                "hessian_closure: Sophia-G needs (sampled_loss, batch_size) at this step "
                "(optimizer.hessian_due is true); see gnb_closure"
            )
        out = hessian_closure()
        if not (isinstance(out, tuple) and len(out) == 2):
            raise ValueError("hessian_closure: must return (sampled_loss, batch_size)")
        loss, batch = out
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        return [torch.zeros_like(p) if g is None else float(batch) * g * g for p, g in zip(params, grads)]


def gnb_closure(
    model: torch.nn.Module, inputs: Tensor, *, generator: torch.Generator | None = None
) -> Callable[[], tuple[Tensor, int]]:
    """The Gauss-Newton-Bartlett closure for a classifier whose output is logits ``(..., C)``.

    Samples ``yhat ~ Categorical(softmax(logits))`` per row (rows: all leading dims, e.g. tokens)
    and returns ``(mean cross-entropy of logits against yhat, number of rows)`` (Algorithm 2).
    """

    def closure() -> tuple[Tensor, int]:
        logits = model(inputs)
        flat = logits.reshape(-1, logits.shape[-1])
        with torch.no_grad():
            yhat = torch.multinomial(torch.softmax(flat.detach(), dim=-1), 1, generator=generator).squeeze(-1)
        return F.cross_entropy(flat, yhat), flat.shape[0]

    return closure
