"""arTuRO as a ``torch.optim.Optimizer``: orchestration only, the math is in :mod:`.functional`."""

from __future__ import annotations

import inspect
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.optim import Optimizer

from . import _fused_cpu
from . import functional as F
from .presets import load_preset

__all__ = ["DUAL_CHOICES", "KL_CHOICES", "Arturo"]

# The per-coordinate state that lives in one flat buffer per bucket (see `_Bucket`).
_FLAT_KEYS = ("precision", "curvature", "intercept", "filter_cov_bb", "filter_cov_ba", "filter_cov_aa")
_FILTER_KEYS = ("intercept", "curvature", "filter_cov_bb", "filter_cov_ba", "filter_cov_aa")  # FilterState order

#: The choices of ``kl`` and ``dual``, declared here once (the config and the CLI import them): name ->
#: one line for ``--help``; the first is the default.
KL_CHOICES: Mapping[str, str] = MappingProxyType(
    {"decoupled": "the published constraint", "coupled": "one constraint on the full KL (ablation)"}
)
DUAL_CHOICES: Mapping[str, str] = MappingProxyType(
    {"bisection": "the published coarse bisection", "exact": "solve K(eta) = eps to dual_rtol (1e-6)"}
)
_FUSED_DTYPES = (torch.float32, torch.float64)


def _ratio(kl: float, kl_bound: float) -> float:
    """``K/eps``; with a zero bound: inf for a step that moved, NaN (0/0) for one that did not."""
    if kl_bound > 0:
        return kl / kl_bound
    return math.nan if kl == 0.0 else math.inf


def _scalar(value: Any) -> float:
    return float(value.item()) if isinstance(value, Tensor) else float(value)


class _Bucket:
    """Parameters of one group that share device and dtype, with their state in flat buffers.

    ``self.state[p][key]`` are views into ``flat[key]``, so the kernels run once over the whole
    bucket instead of once per parameter (the speed of ``torch.optim``'s foreach path, without its
    per-tensor dispatch). The views are what ``state_dict()`` sees; if they are replaced
    (``load_state_dict``), the bucket is rebuilt from them at the next step.
    """

    def __init__(self, params: list[Tensor]):
        self.params = params
        self.numels = [p.numel() for p in params]
        self.offsets = np.concatenate([[0], np.cumsum(self.numels)]).tolist()
        self.numel = self.offsets[-1]
        self.flat: dict[str, Tensor] = {}
        self.views: dict[str, list[Tensor]] = {}
        self.scratch: tuple[Tensor, Tensor] | None = None  # (mean, numerator) for the fused path
        self.chunks: tuple[np.ndarray, ...] = ()  # the fused prepare's work table (see fused_buffers)

    def slices(self, flat: Tensor) -> list[Tensor]:
        return [flat[lo:hi].view_as(p) for lo, hi, p in zip(self.offsets[:-1], self.offsets[1:], self.params)]

    def install(self, key: str, flat: Tensor, state: Mapping[Tensor, dict]) -> None:
        self.flat[key] = flat
        self.views[key] = self.slices(flat)
        for p, view in zip(self.params, self.views[key]):
            state[p][key] = view

    def valid(self, state: Mapping[Tensor, dict]) -> bool:
        for key in _FLAT_KEYS:
            views = self.views.get(key)
            if views is None:
                return False
            for p, view in zip(self.params, views):
                if state[p].get(key) is not view:
                    return False
        return True

    #: elements per chunk of the fused prepare's work table (its prange runs over chunks)
    CHUNK = 16384

    def fused_buffers(self) -> tuple[Tensor, Tensor, tuple[np.ndarray, ...]]:
        """Two reusable flat buffers (mean, numerator) and the chunk table of the fused prepare."""
        if self.scratch is None:
            like = self.params[0]
            self.scratch = (
                torch.empty(self.numel, dtype=like.dtype, device=like.device),
                torch.empty(self.numel, dtype=like.dtype, device=like.device),
            )
            rows = [
                (j, lo, min(lo + self.CHUNK, n), self.offsets[j] + lo)
                for j, n in enumerate(self.numels)
                for lo in range(0, n, self.CHUNK)
            ]
            self.chunks = tuple(np.ascontiguousarray(np.array(column, dtype=np.int64)) for column in zip(*rows))
        return self.scratch[0], self.scratch[1], self.chunks

    def gather(self, tensors: list[Tensor]) -> Tensor:
        return torch.cat([t.reshape(-1) for t in tensors]) if len(tensors) > 1 else tensors[0].reshape(-1)


class _Work:
    """One bucket's part of a step: after preparing, ``kl(eta)`` and ``commit(eta)`` close over it."""

    def __init__(self, group: dict[str, Any], bucket: _Bucket):
        self.group = group
        self.bucket = bucket
        self.kl: Callable[[float], float]
        self.commit: Callable[[float], tuple[float, int, int]]


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
        _validate(**defaults)  # the same checks as each param group's own values (add_param_group)
        super().__init__(params, defaults)
        self.eta: float | None = None  # the previous step's eta (None before the first step)
        self.last_step: dict[str, Any] | None = None
        #: when True, each step also reports ``kl0_ratio`` = K(0)/eps (> 1: the bound binds) and
        #: ``eta_star``, the exact root of K(eta) = eps (NaN when it does not bind), in
        #: ``last_step``. Costs a few extra passes; the rule itself is unchanged.
        self.dual_diagnostics = False
        self._buckets: dict[int, list[_Bucket]] = {}
        self._oracle: dict[Tensor, Tensor] = {}
        self._oracle_hold = False

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        _validate(**group)  # a group's own values are checked like the defaults
        for p in group["params"]:
            if p.is_floating_point() and 1.0 / float(group["var_init"]) > torch.finfo(p.dtype).max:
                raise ValueError(
                    f"var_init: got {group['var_init']!r}; allowed: a number >= "
                    f"{1.0 / torch.finfo(p.dtype).max:.3g} for {str(p.dtype).replace('torch.', '')} "
                    "parameters (the initial precision 1/var_init must be finite)"
                )
        if group["fused"] is True:
            for p in group["params"]:
                reason = _fused_unsupported(group, p)
                if reason is not None:
                    raise ValueError(f"fused: got True; {reason}")

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
        # a state dict or pickle from before a key existed lacks it (torch's
        # test_can_load_older_state_dict deletes fused): the constructor's default is the old behaviour
        for key, value in _CONSTRUCTOR_DEFAULTS.items():
            self.defaults.setdefault(key, value)
            for group in self.param_groups:
                group.setdefault(key, value)

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

    # ------------------------------------------------------------------ buckets
    def _group_buckets(self, index: int, group: dict[str, Any]) -> list[tuple[_Bucket, list[bool]]]:
        params = []
        for p in group["params"]:
            if p.grad is None:
                continue  # skipped entirely, as torch optimizers do (ARTURO.md "Missing gradients")
            if p.grad.is_sparse:
                raise RuntimeError("Arturo does not support sparse gradients")
            params.append(p)
        by_kind: dict[tuple[torch.device, torch.dtype], list[Tensor]] = defaultdict(list)
        for p in params:
            by_kind[(p.device, p.dtype)].append(p)
        cached = self._buckets.get(index, [])
        cached_ids = [tuple(map(id, b.params)) for b in cached]
        wanted_ids = [tuple(map(id, ps)) for ps in by_kind.values()]
        if cached_ids != wanted_ids or not all(b.valid(self.state) for b in cached):
            cached = [self._build_bucket(group, ps) for ps in by_kind.values()]
            self._buckets[index] = cached
        result = []
        for bucket in cached:
            fresh = ["step" not in self.state[p] for p in bucket.params]
            if any(fresh):
                self._init_fresh(group, bucket, fresh)
            result.append((bucket, fresh))
        return result

    def _build_bucket(self, group: dict[str, Any], params: list[Tensor]) -> _Bucket:
        bucket = _Bucket(params)
        like = params[0]
        for key in _FLAT_KEYS:
            flat = torch.empty(bucket.numel, dtype=like.dtype, device=like.device)
            for p, view in zip(params, bucket.slices(flat)):
                old = self.state[p].get(key)
                if old is not None:
                    view.copy_(old)
            bucket.install(key, flat, self.state)
        return bucket

    def _init_fresh(self, group: dict[str, Any], bucket: _Bucket, fresh: list[bool]) -> None:
        """Lazily create the state of parameters seen for the first time (ARTURO.md table)."""
        for i, p in enumerate(bucket.params):
            if not fresh[i]:
                continue
            state = self.state[p]
            init = F.filter_init(p.grad, group["start_filter_cov"])
            for key, value in zip(_FILTER_KEYS, init):
                state[key].copy_(value)
            state["precision"].fill_(1.0 / group["var_init"])
            state["step"] = torch.tensor(0.0)
            # the torch convention: the mean is copied from the weights at the first step (before decay)
            state["mean"] = p.detach().clone()

    # ------------------------------------------------------------------ step
    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One arTuRO step (ARTURO.md "One step"). ``closure`` re-evaluates the loss, as in torch."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        first = self.param_groups[0]
        kl_bound = _scalar(first["lr"])
        eta_tol = float(first["eta_tol"])
        dual = first["dual"]
        fixed_eta = first["fixed_eta"]

        work: list[_Work] = []
        paths: set[str] = set()
        guard_acted = 0
        for index, group in enumerate(self.param_groups):
            buckets = self._group_buckets(index, group)
            if not buckets:
                continue
            for bucket, fresh in buckets:
                item = _Work(group, bucket)
                if self._use_fused(group, bucket, fresh):
                    guard_acted += self._prepare_fused(item)
                    paths.add("fused")
                else:
                    guard_acted += self._prepare_eager(item, fresh)
                    paths.add("eager")
                work.append(item)
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

        # diagnostics (not part of the rule): does the bound bind, and where is the exact root?
        extra: dict[str, float] = {}
        if self.dual_diagnostics:
            kl0 = kl_of_eta(0.0)
            extra["kl0_ratio"] = _ratio(kl0, kl_bound)
            extra["eta_star"] = (
                F.solve_eta_exact(kl_of_eta, kl_bound, self.eta).eta
                if (kl0 > kl_bound or not math.isfinite(kl0))
                else math.nan
            )

        # 3.-4. the trust region: choose eta
        if fixed_eta is not None:
            solution = F.DualSolution(float(fixed_eta), float(fixed_eta), float(fixed_eta), 0)
        elif dual == "exact":
            solution = F.solve_eta_exact(kl_of_eta, kl_bound, self.eta, rtol=float(first["dual_rtol"]))
        else:
            solution = F.solve_eta_bisection(kl_of_eta, kl_bound, self.eta, eta_tol, dtype=dtype)
        eta = solution.eta

        # 5. commit
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
        self.eta = eta
        self.last_step = {
            "step": int(self.state[work[0].bucket.params[0]]["step"]),
            "eta": eta,
            "eta_lo": solution.eta_lo,
            "eta_hi": solution.eta_hi,
            "iterations": solution.iterations,
            "converged": solution.converged,
            "kl_bound": kl_bound,
            "kl_ratio": _ratio(float(achieved), kl_bound),
            "precision_nonpos": precision_nonpos,
            "denominator_nonpos": denominator_nonpos,
            "guard_acted": guard_acted,
            "numel": numel,
            "path": paths.pop() if len(paths) == 1 else "mixed",
            **extra,
        }
        return loss

    def _use_fused(self, group: dict[str, Any], bucket: _Bucket, fresh: list[bool]) -> bool:
        wanted = group["fused"]
        if wanted is False:
            return False
        reason = _fused_unsupported(group, bucket.params[0])
        if reason is not None:
            if wanted is True:
                raise RuntimeError(f"fused=True: {reason}")
            return False
        # per-step conditions, eager whatever `fused` says: a first step, an oracle curvature
        return not any(fresh) and not any(p in self._oracle for p in bucket.params)

    def _prepare_fused(self, item: _Work) -> int:
        """Steps 0-2 with the fused CPU kernels; the eta-dependent parts are `_Work.kl/commit`."""
        group, bucket = item.group, item.bucket
        theta, numerator, chunks = bucket.fused_buffers()
        t = np.dtype(str(theta.dtype).replace("torch.", "")).type
        flat = {k: bucket.flat[k].numpy() for k in _FLAT_KEYS}
        c = t(float(group["reg_weight"]) * float(group["prior_prec"]))
        # the guard's clamp as a lower bound (-inf: no guard), so the loops stay branch-free
        lower = t(torch.finfo(theta.dtype).tiny) if group["guard"] else t(-np.inf)
        theta_np, numerator_np = theta.numpy(), numerator.numpy()
        # the weights and the fresh gradients are read where they are (reshape copies only a
        # non-contiguous one)
        weights = tuple(p.detach().reshape(-1).numpy() for p in bucket.params)
        grads = tuple(p.grad.reshape(-1).numpy() for p in bucket.params)
        acted = _fused_cpu.prepare(
            weights,
            grads,
            *chunks,
            theta_np,
            numerator_np,
            flat["intercept"],
            flat["curvature"],
            flat["filter_cov_bb"],
            flat["filter_cov_ba"],
            flat["filter_cov_aa"],
            t(_scalar(group["lr"]) * float(group["weight_decay"])),
            t(group["dynamic_model_noise"]),
            t(group["measurement_noise"]),
            c,
            lower,
        )
        rho, nu = t(group["reg_weight"]), t(group["nu"])

        def kl(eta: float) -> float:
            return 0.5 * float(
                _fused_cpu.kl_of_eta(flat["curvature"], flat["precision"], numerator_np, c, lower, t(eta))
            )

        def commit(eta: float) -> tuple[float, int, int]:
            twice_kl, bad_precision, bad_denominator = _fused_cpu.commit(
                theta_np, flat["precision"], flat["curvature"], numerator_np, c, lower, t(eta), rho, nu
            )
            torch._foreach_copy_(bucket.params, bucket.slices(theta))
            return 0.5 * float(twice_kl), int(bad_precision), int(bad_denominator)

        item.kl, item.commit = kl, commit
        return int(acted)

    def _prepare_eager(self, item: _Work, fresh: list[bool]) -> int:
        """Steps 0-2 with the eager kernels of `functional` (any device, dtype, KL and ablation)."""
        group, bucket = item.group, item.bucket
        lr_g = _scalar(group["lr"])
        wd = float(group["weight_decay"])
        rho = float(group["reg_weight"])
        c = rho * float(group["prior_prec"])
        theta = bucket.gather(bucket.params)
        grad = bucket.gather([p.grad for p in bucket.params])
        # 0. decoupled weight decay, scaled by this group's lr; the first-step mean is the
        #    undecayed copy, later the mean is the weight itself (ARTURO.md step 0)
        mean = theta
        if wd != 0.0:
            decayed = torch.add(theta, theta, alpha=-lr_g * wd)
            mean = decayed
            if any(fresh):
                mean = decayed.clone()
                for i, is_fresh in enumerate(fresh):
                    if is_fresh:
                        lo, hi = bucket.offsets[i], bucket.offsets[i + 1]
                        mean[lo:hi] = theta[lo:hi]
            theta = decayed
        # 1.-2. filter predict and update (and the oracle ablation)
        fs = F.FilterState(*(bucket.flat[k] for k in _FILTER_KEYS))
        fs = F.filter_predict(fs, float(group["dynamic_model_noise"]))
        fs = F.filter_update(fs, theta, grad, float(group["measurement_noise"]))
        fs = self._apply_oracle(bucket, fs, theta, grad)
        for key, value in zip(_FILTER_KEYS, fs):
            bucket.flat[key].copy_(value)
        curvature, acted = fs.curvature, 0
        if group["guard"]:
            curvature, acted = F.guard_curvature(curvature)
        precision = bucket.flat["precision"]
        terms = F.dual_terms(mean, precision, curvature, fs.intercept, c, rho)
        coupled = group["kl"] == "coupled"

        def kl(eta: float) -> float:
            fn = F.kl_coupled_of_eta if coupled else F.kl_decoupled_of_eta
            return float(fn(terms, eta))

        def commit(eta: float) -> tuple[float, int, int]:
            new_mean, denominator = F.new_mean_from_terms(mean, terms, eta)
            if coupled:
                new_precision = F.coupled_precision(precision, terms.curvature_total, 0.0, rho, eta)
                kl_value = float(F.kl_full(precision, new_precision, new_mean, mean))
            else:
                new_precision = F.decoupled_precision(precision, terms.curvature_total, 0.0, rho, float(group["nu"]))
                kl_value = float(F.kl_mean_part(precision, new_mean, mean))
            bad_precision = int(torch.count_nonzero(new_precision <= 0)) if float(new_precision.min()) <= 0 else 0
            bad_denominator = int(torch.count_nonzero(denominator <= 0)) if float(denominator.min()) <= 0 else 0
            bucket.flat["precision"].copy_(new_precision)
            torch._foreach_copy_(bucket.params, bucket.slices(new_mean))
            return kl_value, bad_precision, bad_denominator

        item.kl, item.commit = kl, commit
        return acted

    def _apply_oracle(self, bucket: _Bucket, fs: F.FilterState, theta: Tensor, grad: Tensor) -> F.FilterState:
        """Oracle ablation on the parameters that have an oracle; the others keep the filter's (a, b)."""
        if not self._oracle or not any(p in self._oracle for p in bucket.params):
            return fs
        curvature, intercept = fs.curvature.clone(), fs.intercept.clone()
        for i, p in enumerate(bucket.params):
            if p in self._oracle:
                lo, hi = bucket.offsets[i], bucket.offsets[i + 1]
                part = F.FilterState(*(t[lo:hi] for t in fs))
                replaced = F.oracle_filter_state(part, theta[lo:hi], grad[lo:hi], self._oracle[p].reshape(-1))
                curvature[lo:hi] = replaced.curvature
                intercept[lo:hi] = replaced.intercept
        return fs._replace(curvature=curvature, intercept=intercept)


#: Keyword defaults of the constructor: what a group from before a key existed gets for it.
_CONSTRUCTOR_DEFAULTS: dict[str, Any] = {
    name: parameter.default
    for name, parameter in inspect.signature(Arturo.__init__).parameters.items()
    if parameter.default is not inspect.Parameter.empty
}


def _fused_unsupported(group: Mapping[str, Any], like: Tensor) -> str | None:
    """Why the fused kernels cannot run this group's parameters like ``like`` at any step (None: they can)."""
    if not _fused_cpu.AVAILABLE:
        return "the fused kernels need numba (pip install numba)"
    if like.device.type != "cpu":
        return f"the fused kernels run on the CPU; the parameters are on {like.device}"
    if like.dtype not in _FUSED_DTYPES:
        return f"the fused kernels take float32 or float64; the parameters are {str(like.dtype).replace('torch.', '')}"
    if group["kl"] != "decoupled":
        return f"the fused kernels run the decoupled KL; kl={group['kl']!r}"
    return None


def _validate(
    *,
    lr: Any,
    reg_weight: float,
    prior_prec: float,
    var_init: float,
    nu: float,
    dynamic_model_noise: float,
    measurement_noise: float,
    start_filter_cov: float,
    eta_tol: float,
    weight_decay: float,
    kl: str,
    dual: str,
    fixed_eta: float | None,
    dual_rtol: float,
    fused: bool | None = None,
    **_: Any,
) -> None:
    """Each bad constructor argument raises a ValueError naming it, the value and what is allowed."""

    def need(ok: bool, name: str, value: Any, allowed: str) -> None:
        if not ok:
            raise ValueError(f"{name}: got {value!r}; allowed: {allowed}")

    def number(value: Any) -> float:
        try:
            return _scalar(value)
        except (TypeError, ValueError, RuntimeError):
            return math.nan

    lr_value = number(lr)
    need(math.isfinite(lr_value) and lr_value >= 0.0, "lr", lr, "a finite number >= 0 (the KL bound)")
    for name, value in (
        ("reg_weight", reg_weight),
        ("prior_prec", prior_prec),
        ("nu", nu),
        ("dynamic_model_noise", dynamic_model_noise),
        ("weight_decay", weight_decay),
    ):
        v = number(value)
        need(math.isfinite(v) and v >= 0.0, name, value, "a finite number >= 0")
    for name, value in (
        ("var_init", var_init),
        ("measurement_noise", measurement_noise),
        ("start_filter_cov", start_filter_cov),
        ("eta_tol", eta_tol),
        ("dual_rtol", dual_rtol),
    ):
        v = number(value)
        need(math.isfinite(v) and v > 0.0, name, value, "a finite number > 0")
    need(number(reg_weight) + number(nu) > 0.0, "nu", nu, "reg_weight + nu > 0 (it divides the new precision)")
    need(kl in KL_CHOICES, "kl", kl, " or ".join(map(repr, KL_CHOICES)))
    need(dual in DUAL_CHOICES, "dual", dual, " or ".join(map(repr, DUAL_CHOICES)))
    if fixed_eta is not None:
        v = number(fixed_eta)
        need(math.isfinite(v) and v >= 0.0, "fixed_eta", fixed_eta, "None or a finite number >= 0")
    need(fused is None or isinstance(fused, bool), "fused", fused, "None, True or False")
