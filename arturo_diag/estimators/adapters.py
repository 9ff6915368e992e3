"""Built-in curvature adapters: arTuRO, Adam/AdamW, IVON, AdaHessian, Sophia-H/G.

Each reads what the optimizer itself keeps; none recomputes anything. See
:mod:`.protocol` for the estimate's fields and how a user adds an adapter.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

import torch
from torch import Tensor
from torch.optim import Optimizer

from arturo_diag.optim import Arturo

from .adahessian import AdaHessian
from .protocol import CurvatureEstimate, EstimatorError, named_state, register_adapter
from .sophia import SophiaG, SophiaH

__all__ = ["ArturoAdapter", "AdamAdapter", "IvonAdapter", "AdaHessianAdapter", "SophiaAdapter"]


def _copy(t: Tensor) -> Tensor:
    return t.detach().clone()


def _step(states: dict, key: str = "step") -> int | None:
    for state in states.values():
        value = state.get(key)
        if value is not None:
            return int(value.item()) if isinstance(value, Tensor) else int(value)
    return None


class ArturoAdapter:
    """arTuRO: ``a`` = ``state["curvature"]`` (the filter's slope, a Hessian-diagonal estimate)
    and ``P_aa`` = ``state["filter_cov_aa"]``, the filter's own variance of it."""

    name = "arturo"

    def matches(self, optimizer: Optimizer) -> bool:
        return isinstance(optimizer, Arturo)

    def estimate(self, optimizer: Optimizer, named_parameters: Iterable[tuple[str, Tensor]]) -> CurvatureEstimate:
        states, missing = named_state(optimizer, named_parameters, ("curvature", "filter_cov_aa"))
        return CurvatureEstimate(
            estimate={n: _copy(s["curvature"]) for n, s in states.items()},
            variance={n: _copy(s["filter_cov_aa"]) for n, s in states.items()},
            target="hessian_diagonal",
            scale=(
                "a: slope of the recursive-least-squares fit g(theta) = a theta + b of the minibatch "
                "gradient, per coordinate (diag H on the loss's own scale); variance P_aa is the filter's "
                "claimed posterior variance of a (honest only if the filter's noise model is). With an "
                "oracle set, the update used the oracle; a is still the filter's own estimate"
            ),
            optimizer=self.name,
            step=_step(states),
            missing=missing,
        )


class AdamAdapter:
    """Adam/AdamW: ``v_hat = exp_avg_sq / (1 - beta2^t)``, the bias-corrected second moment."""

    name = "adam"

    def matches(self, optimizer: Optimizer) -> bool:
        return isinstance(optimizer, torch.optim.Adam)  # AdamW subclasses Adam in torch >= 2.x

    def estimate(self, optimizer: Optimizer, named_parameters: Iterable[tuple[str, Tensor]]) -> CurvatureEstimate:
        named = list(named_parameters)
        group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
        states, missing = named_state(optimizer, named, ("exp_avg_sq", "step"))
        params = dict(named)
        est, first, amsgrad = {}, {}, {}
        coupled = False
        for n, s in states.items():
            group = group_of[id(params[n])]
            beta1, beta2 = (float(b) for b in group["betas"])
            t = float(s["step"].item() if isinstance(s["step"], Tensor) else s["step"])
            est[n] = _copy(s["exp_avg_sq"]) / (1.0 - beta2**t)
            first[n] = _copy(s["exp_avg"]) / (1.0 - beta1**t)
            if "max_exp_avg_sq" in s:
                amsgrad[n] = _copy(s["max_exp_avg_sq"]) / (1.0 - beta2**t)
            decoupled = isinstance(optimizer, torch.optim.AdamW) or group.get("decoupled_weight_decay", False)
            coupled = coupled or (group["weight_decay"] != 0 and not decoupled)
        extras = {"first_moment": first}
        if amsgrad:
            extras["amsgrad_max"] = amsgrad
        scale = (
            "v_hat = exp_avg_sq / (1 - beta2^t): EMA of g*g of the gradient the optimizer saw, which is "
            "the gradient of the batch-mean loss, so v_hat estimates E[g_batch^2] = (E g)^2 + Var(g_1)/B "
            "(uncentered, an empirical-Fisher proxy), not the per-sample Fisher E[g_1^2] and not diag H; "
            "first_moment m_hat gives the centered part v_hat - m_hat^2"
        )
        if coupled:
            scale += "; with Adam's coupled weight_decay the squared gradient includes weight_decay * theta"
        return CurvatureEstimate(
            estimate=est,
            target="gradient_second_moment",
            scale=scale,
            optimizer="adamw" if isinstance(optimizer, torch.optim.AdamW) else "adam",
            step=_step(states),
            extras=extras,
            missing=missing,
        )


class IvonAdapter:
    """IVON (package ``ivon-opt``): ``param_groups[i]["hess"]``, one flat vector per group, sliced
    back per parameter in the group's parameter order (the package's own layout)."""

    name = "ivon"

    def matches(self, optimizer: Optimizer) -> bool:
        module = sys.modules.get("ivon")  # an IVON optimizer cannot exist unless ivon was imported
        return module is not None and isinstance(optimizer, getattr(module, "IVON", ()))

    def estimate(self, optimizer: Optimizer, named_parameters: Iterable[tuple[str, Tensor]]) -> CurvatureEstimate:
        names = {id(p): n for n, p in named_parameters}
        est, post = {}, {}
        for group in optimizer.param_groups:
            hess = group["hess"]
            offset = 0
            for p in group["params"]:
                if p is None:
                    continue
                lo, hi = offset, offset + p.numel()
                offset = hi
                name = names.pop(id(p), None)
                if name is None:
                    continue
                est[name] = _copy(hess[lo:hi]).view(p.shape)
                post[name] = 1.0 / (group["ess"] * (est[name] + group["weight_decay"]))
            if offset != hess.numel():
                raise EstimatorError(f"ivon: group hess has {hess.numel()} entries, its parameters {offset}")
        price = getattr(optimizer, "hess_approx", "price") == "price"
        beta2 = float(optimizer.param_groups[0]["beta2"]) if optimizer.param_groups else float("nan")
        if price:
            target = "hessian_diagonal"
            scale = (
                "hess: EMA (beta2) of the reparameterization (Price) estimate ess * (hess + delta) * "
                "E[eps * g] of diag H of the loss whose gradient was taken (the batch mean; delta = "
                "weight_decay is NOT in hess: the posterior precision is ess * (hess + delta)). Starts at "
                f"hess_init and moves a fraction 1 - beta2 = {1 - beta2:.3g} per step; the Riemannian "
                "term 0.5 (1-beta2)^2 (hess - f)^2 / (hess + delta) >= 0 biases it upward: at a fixed "
                "point E[hess] = H_ii + 0.5 (1-beta2) E[(hess - f)^2] / (hess + delta)"
            )
        else:
            target = "gradient_second_moment"
            scale = (
                "hess (hess_approx='gradsq'): EMA of ess * g*g of the sampled-weight batch gradients: "
                "ess times an empirical-Fisher proxy; delta not included"
            )
        return CurvatureEstimate(
            estimate=est,
            target=target,
            scale=scale,
            optimizer=self.name,
            step=int(getattr(optimizer, "current_step", 0)),
            extras={"posterior_variance": post},
            missing=tuple(names.values()),
        )


class AdaHessianAdapter:
    """AdaHessian: ``sqrt(exp_hessian_diag_sq / (1 - beta2^t))``, the denominator before the power."""

    name = "adahessian"

    def matches(self, optimizer: Optimizer) -> bool:
        return isinstance(optimizer, AdaHessian)

    def estimate(self, optimizer: Optimizer, named_parameters: Iterable[tuple[str, Tensor]]) -> CurvatureEstimate:
        named = list(named_parameters)
        group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
        states, missing = named_state(optimizer, named, ("exp_hessian_diag_sq", "step"))
        params = dict(named)
        est, second = {}, {}
        for n, s in states.items():
            beta2 = group_of[id(params[n])]["betas"][1]
            second[n] = _copy(s["exp_hessian_diag_sq"]) / (1.0 - beta2 ** s["step"])
            est[n] = second[n].sqrt()
        return CurvatureEstimate(
            estimate=est,
            target="hessian_diagonal",
            optimizer=self.name,
            step=_step(states),
            scale=(
                "sqrt(v / (1 - beta2^t)): running RMS of |z * Hz| (Rademacher z; conv kernels averaged over "
                "their spatial block): a smoothed |diag H|, whose square tends to H_ii^2 + sum_{j!=i} H_ij^2 "
                "on a fixed Hessian (>= H_ii^2; equal only if H is diagonal); sign is lost"
            ),
            extras={"second_moment": second},
            missing=missing,
        )


class SophiaAdapter:
    """Sophia-H/G: ``state["hessian"]`` = ``h_t``, the EMA the update divides by (no bias correction)."""

    name = "sophia"

    def matches(self, optimizer: Optimizer) -> bool:
        return isinstance(optimizer, (SophiaH, SophiaG))

    def estimate(self, optimizer: Optimizer, named_parameters: Iterable[tuple[str, Tensor]]) -> CurvatureEstimate:
        named = list(named_parameters)
        group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
        states, missing = named_state(optimizer, named, ("hessian",))
        params = dict(named)
        est, debiased = {}, {}
        for n, s in states.items():
            beta2 = group_of[id(params[n])]["betas"][1]
            est[n] = _copy(s["hessian"])
            updates = s.get("hessian_updates", 0)
            debiased[n] = est[n] / (1.0 - beta2**updates) if updates else torch.full_like(est[n], float("nan"))
        hutchinson = isinstance(optimizer, SophiaH)
        common = (
            " h_t: EMA (beta2, one term per estimator call, every k steps) without bias correction, as the "
            "update uses it: its mean is (1 - beta2^n) times the target after n calls; extras['debiased'] "
            "divides that out"
        )
        if hutchinson:
            target, scale = (
                "hessian_diagonal",
                "EMA of Hutchinson samples u * Hu (unbiased for diag H, signed)." + common,
            )
        else:
            target = "ggn_diagonal"
            scale = (
                "EMA of Gauss-Newton-Bartlett samples B * ghat^2 (labels sampled from the model; unbiased for "
                "diag of the GGN / model Fisher of the mean cross-entropy, >= 0)." + common
            )
        return CurvatureEstimate(
            estimate=est,
            target=target,
            scale=scale,
            optimizer="sophia-h" if hutchinson else "sophia-g",
            step=getattr(optimizer, "steps", None),
            extras={"debiased": debiased},
            missing=missing,
        )


for _adapter in (ArturoAdapter(), AdamAdapter(), IvonAdapter(), AdaHessianAdapter(), SophiaAdapter()):
    register_adapter(_adapter, builtin=True)
