"""arTuRO as a ``torch.optim.Optimizer``: orchestration only, the math is in :mod:`.functional`.

The parts: :mod:`._validation` (the hyperparameters' choices and checks), :mod:`._buckets` (the flat
state buffers), :mod:`._paths` (the fused and eager paths of a step); this module holds the public
class and chooses eta over all buckets.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.optim import Optimizer

from . import functional as F
from ._buckets import Bucket, Work, group_buckets
from ._paths import prepare_eager, prepare_fused, use_fused
from ._validation import DUAL_CHOICES, KL_CHOICES, check_group, keyword_defaults, scalar, upgrade_groups, validate
from .presets import load_preset

__all__ = ["DUAL_CHOICES", "KL_CHOICES", "Arturo"]


def _ratio(kl: float, kl_bound: float) -> float:
    """``K/eps``; with a zero bound: inf for a step that moved, NaN (0/0) for one that did not."""
    if kl_bound > 0:
        return kl / kl_bound
    return math.nan if kl == 0.0 else math.inf


class Arturo(Optimizer):
    r"""arTuRO: information-theoretic trust-region optimization (Dahlinger et al., arXiv 2310.20574).

        Every weight is a Gaussian ``N(mu, 1/pi)``. A recursive-least-squares filter with drift fits
        the gradient model ``g(theta) = a theta + b`` per coordinate, so ``a`` estimates the diagonal
        Hessian online; the step is the closed-form minimiser of the surrogate plus a KL to the prior,
        with ``eta`` chosen so that the mean part of ``KL(q'||q)`` equals the bound ``eps = lr``.

        .. code-block:: text

            input: eps (lr), rho (reg_weight), lam (prior_prec), nu, q, r, P0, eta_tol, wd
            for each step, per coordinate, with gradient g at theta:
                theta <- theta - lr_group * wd * theta                     (0, decoupled weight decay)
                P_bb += q; P_aa += q                                       (1, filter predict)
                s = h^T P h + r,  k = P h / s,  d = g - (a theta + b)      (2, filter update, h = [1, theta])
                (b, a) += k d;  P -= k k^T s
                mu'(eta) = (eta pi mu - b) / (a + c + eta pi),  c = rho lam   (3, closed form)
                pi' = (a + c + nu pi) / (rho + nu)
                eta: 0.5 sum pi (mu'(eta) - mu)^2 = eps  by coarse bisection  (4, trust region)
                mu <- mu'(eta);  pi <- pi';  theta <- mu                    (5, commit)

        The default reproduces ``ARTURO.md`` exactly, the published code's quirks included (the coarse
        bisection whose ``eta`` can freeze or grow by 5/3 per step regardless of the bound; the
        first-step mean that weight decay does not touch; ``eps`` from the first group). Ablations and
        improvements are named options; the defaults are the Fashion-MNIST CNN preset.

        Args:
            params: parameters or param groups (named parameters work as in torch).
            lr: the KL bound ``eps`` (per group, so torch LR schedulers schedule it; ``eps`` of the
                trust region is read from the first group, each group's own ``lr`` scales its weight decay).
            reg_weight: ``rho``, weight of the KL to the prior ``N(0, 1/prior_prec)``.
            prior_prec: ``lam``, precision of that prior.
            var_init: initial variance of every coordinate (``pi = 1/var_init``).
            nu: weight of the covariance part of the KL (a penalty, not a constraint).
            dynamic_model_noise: ``q``, drift added to ``P_bb`` and ``P_aa`` each step (0: no drift).
            measurement_noise: ``r``, noise of one stochastic gradient.
            start_filter_cov: ``P0``, initial filter variance.
            eta_tol: the bisection stops when its bracket is narrower than this.
            weight_decay: decoupled weight decay, scaled by the group's ``lr``.
            kl: ``"decoupled"`` (published) or ``"coupled"`` (one constraint on the full KL; ablation).
            dual: ``"bisection"`` (published) or ``"exact"`` (solve ``K(eta) = eps`` to ``dual_rtol``).
            fixed_eta: if given, ``eta`` is this constant every step: the trust region is off (ablation).
            guard: clamp the curvature used in the update at 0 so precision and denominators stay positive.
            dual_rtol: relative tolerance of ``dual="exact"``.
            fused: run the decoupled step as fused CPU kernels (numba): same formulas, three passes over
                memory instead of about fifty. ``None`` (default) uses them wherever they apply; ``True``
                raises (``ValueError`` here, ``RuntimeError`` at a step if the parameters moved) when
                they cannot apply for the whole run: numba missing, parameters off the CPU or not
                float32/64, ``kl="coupled"``; ``False`` always runs the eager kernels. Two per-step
                conditions run eager whatever ``fused`` says: a parameter's first step (its mean is the
                undecayed copy of the weight and its filter is initialised from this gradient, which
                the fused kernels, built for mean == decayed weight, do not express) and a step with
                an oracle curvature (:meth:`set_oracle_curvature`). ``last_step["path"]`` says which ran.

        After each :meth:`step`, :attr:`last_step` holds the step's health: ``eta``, the final bracket
        ``eta_lo``/``eta_hi``, ``iterations`` of the dual solve, ``kl_ratio = K(eta)/eps``, and the counts
        ``precision_nonpos``/``denominator_nonpos`` (and ``guard_acted``), and ``path``: ``"fused"`` or
    ``"eager"`` (``"mixed"`` when some buckets ran each). The per-parameter state is
        ``mean`` (the weight itself from the first step on), ``precision``, ``curvature`` (``a``),
        ``intercept`` (``b``), ``filter_cov_bb``/``_ba``/``_aa`` and ``step``; the previous ``eta`` is in
        ``state_dict()["arturo"]``. Setting :attr:`dual_diagnostics` adds ``kl0_ratio`` and ``eta_star``.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 0.08567456,
        *,
        reg_weight: float = 0.05865662,
        prior_prec: float = 0.0015,
        var_init: float = 0.01,
        nu: float = 1.3,
        dynamic_model_noise: float = 0.01739296,
        measurement_noise: float = 2.81679116,
        start_filter_cov: float = 5e-5,
        eta_tol: float = 0.5,
        weight_decay: float = 1.5404e-6,
        kl: str = "decoupled",
        dual: str = "bisection",
        fixed_eta: float | None = None,
        guard: bool = False,
        dual_rtol: float = 1e-6,
        fused: bool | None = None,
    ):
        defaults = dict(
            lr=lr,
            reg_weight=reg_weight,
            prior_prec=prior_prec,
            var_init=var_init,
            nu=nu,
            dynamic_model_noise=dynamic_model_noise,
            measurement_noise=measurement_noise,
            start_filter_cov=start_filter_cov,
            eta_tol=eta_tol,
            weight_decay=weight_decay,
            kl=kl,
            dual=dual,
            fixed_eta=fixed_eta,
            guard=bool(guard),
            dual_rtol=dual_rtol,
            fused=fused,
        )
        validate(**defaults)  # the same checks as each param group's own values (add_param_group)
        super().__init__(params, defaults)
        self.eta: float | None = None  # the previous step's eta (None before the first step)
        self.last_step: dict[str, Any] | None = None
        #: when True, each step also reports ``kl0_ratio`` = K(0)/eps (> 1: the bound binds) and
        #: ``eta_star``, the exact root of K(eta) = eps (NaN when it does not bind), in
        #: ``last_step``. Costs a few extra passes; the rule itself is unchanged.
        self.dual_diagnostics = False
        self._buckets: dict[int, list[Bucket]] = {}
        self._oracle: dict[Tensor, Tensor] = {}
        self._oracle_hold = False

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        check_group(self.param_groups[-1])

    @classmethod
    def from_preset(cls, name: str, params: Iterable[Any], **overrides: Any) -> Arturo:
        """Build with a published hyperparameter set (:data:`.presets.PRESETS`).

        Names: ``fmnist_cnn``, ``fmnist_resnet18``, ``cifar10_cnn``, ``cifar100_cnn``,
        ``cifar10_resnet34``, ``cifar100_resnet34``. Keywords in ``overrides`` win.
        """
        kwargs = load_preset(name)
        kwargs.update(overrides)
        return cls(params, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        # torch's Optimizer pickles only defaults, state and param_groups; eta is state too
        state = super().__getstate__()
        state.update(eta=self.eta, last_step=self.last_step, dual_diagnostics=self.dual_diagnostics)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("eta", None)
        self.__dict__.setdefault("last_step", None)
        self.__dict__.setdefault("dual_diagnostics", False)
        self.__dict__.setdefault("_buckets", {})
        self.__dict__.setdefault("_oracle", {})
        self.__dict__.setdefault("_oracle_hold", False)
        # a state dict or pickle from before a key existed lacks it: the constructor's default is the old behaviour
        upgrade_groups(self.defaults, self.param_groups, _CONSTRUCTOR_DEFAULTS)

    # ------------------------------------------------------------------ state_dict with eta
    def state_dict(self) -> dict[str, Any]:
        """torch's state dict plus ``"arturo": {"eta": previous eta}`` (needed to resume exactly)."""
        state = super().state_dict()
        state["arturo"] = {"eta": self.eta}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        extra = state_dict.pop("arturo", None) or {}
        super().load_state_dict(state_dict)
        eta = extra.get("eta")
        self.eta = None if eta is None else float(eta)
        self._buckets = {}

    # ------------------------------------------------------------------ oracle ablation
    def set_oracle_curvature(self, curvature: Mapping[Tensor, Tensor], hold: bool = False) -> None:
        """Oracle-curvature ablation: use these diagonal Hessians as ``a`` at the next step.

        ``curvature`` maps parameters to tensors shaped like them (e.g. the exact diagonal Hessian
        at the current weights). At the next step, after the filter update, ``a`` is replaced by it
        and ``b = g - a theta``, so the surrogate still reproduces the observed gradient. With
        ``hold=True`` the same tensors are used at every step until replaced or cleared.
        Parameters missing from the mapping keep the filter's estimate.
        """
        for p, h in curvature.items():
            if not isinstance(h, Tensor) or h.shape != p.shape:
                raise ValueError(
                    f"curvature: expected a tensor shaped {tuple(p.shape)}, got "
                    f"{tuple(h.shape) if isinstance(h, Tensor) else type(h).__name__}"
                )
        self._oracle = {p: h.detach() for p, h in curvature.items()}
        self._oracle_hold = bool(hold)

    def clear_oracle_curvature(self) -> None:
        """Go back to the filter's own curvature estimate."""
        self._oracle = {}
        self._oracle_hold = False

    # ------------------------------------------------------------------ step
    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One arTuRO step (ARTURO.md "One step"). ``closure`` re-evaluates the loss, as in torch."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        first = self.param_groups[0]
        kl_bound = scalar(first["lr"])
        eta_tol = float(first["eta_tol"])
        dual = first["dual"]
        fixed_eta = first["fixed_eta"]

        work, paths, guard_acted = self._prepare()
        if not self._oracle_hold:
            self._oracle = {}
        if not work:
            return loss
        # eta, its bracket and the K accumulator live in the parameters' dtype (ARTURO.md "dtype")
        dtype = np.float64 if any(w.bucket.params[0].dtype == torch.float64 for w in work) else np.float32

        def kl_of_eta(eta: float) -> float:
            total = dtype(0.0)
            for item in work:
                total = total + dtype(item.kl(eta))
            return float(total)

        extra = self._diagnose_dual(kl_of_eta, kl_bound) if self.dual_diagnostics else {}

        # 3.-4. the trust region: choose eta
        if fixed_eta is not None:
            solution = F.DualSolution(float(fixed_eta), float(fixed_eta), float(fixed_eta), 0)
        elif dual == "exact":
            solution = F.solve_eta_exact(kl_of_eta, kl_bound, self.eta, rtol=float(first["dual_rtol"]))
        else:
            solution = F.solve_eta_bisection(kl_of_eta, kl_bound, self.eta, eta_tol, dtype=dtype)
        eta = solution.eta

        # 5. commit
        achieved, precision_nonpos, denominator_nonpos, numel = self._commit(work, eta, dtype)
        self.eta = eta
        self.last_step = {
            "step": int(self.state[work[0].bucket.params[0]]["step"]),
            "eta": eta,
            "eta_lo": solution.eta_lo,
            "eta_hi": solution.eta_hi,
            "iterations": solution.iterations,
            "converged": solution.converged,
            "kl_bound": kl_bound,
            "kl_ratio": _ratio(achieved, kl_bound),
            "precision_nonpos": precision_nonpos,
            "denominator_nonpos": denominator_nonpos,
            "guard_acted": guard_acted,
            "numel": numel,
            "path": paths.pop() if len(paths) == 1 else "mixed",
            **extra,
        }
        return loss

    def _prepare(self) -> tuple[list[Work], set[str], int]:
        """Steps 0-2 of every bucket with gradients, each on its path: (work, paths taken, guard counts)."""
        work: list[Work] = []
        paths: set[str] = set()
        guard_acted = 0
        for index, group in enumerate(self.param_groups):
            for bucket, fresh in group_buckets(self.state, self._buckets, index, group):
                item = Work(group, bucket)
                if use_fused(group, bucket, fresh, self._oracle):
                    guard_acted += prepare_fused(item)
                    paths.add("fused")
                else:
                    guard_acted += prepare_eager(item, fresh, self._oracle)
                    paths.add("eager")
                work.append(item)
        return work, paths, guard_acted

    def _diagnose_dual(self, kl_of_eta: Callable[[float], float], kl_bound: float) -> dict[str, float]:
        """Diagnostics (not part of the rule): does the bound bind, and where is the exact root?"""
        kl0 = kl_of_eta(0.0)
        return {
            "kl0_ratio": _ratio(kl0, kl_bound),
            "eta_star": (
                F.solve_eta_exact(kl_of_eta, kl_bound, self.eta).eta
                if (kl0 > kl_bound or not math.isfinite(kl0))
                else math.nan
            ),
        }

    def _commit(self, work: list[Work], eta: float, dtype: type) -> tuple[float, int, int, int]:
        """Step 5 with the chosen eta: (achieved K(eta), non-positive precisions and denominators, numel)."""
        achieved = dtype(0.0)
        precision_nonpos = denominator_nonpos = numel = 0
        for item in work:
            kl_value, bad_precision, bad_denominator = item.commit(eta)
            achieved = achieved + dtype(kl_value)
            precision_nonpos += bad_precision
            denominator_nonpos += bad_denominator
            numel += item.bucket.numel
            for p in item.bucket.params:
                state = self.state[p]
                state["mean"] = p.detach()  # the weight is the mean from now on
                state["step"] += 1
        return float(achieved), precision_nonpos, denominator_nonpos, numel


#: Keyword defaults of the constructor: what a group from before a key existed gets for it.
_CONSTRUCTOR_DEFAULTS: dict[str, Any] = keyword_defaults(Arturo.__init__)
