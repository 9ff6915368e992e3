"""The hyperparameters of :class:`~.arturo.Arturo`: their choices, their checks, where the fused
kernels apply, and the upgrade of groups saved before a key existed."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from . import _fused_cpu

#: The choices of ``kl`` and ``dual``, declared here once (the config and the CLI import them from
#: :mod:`.arturo`): name -> one line for ``--help``; the first is the default.
KL_CHOICES: Mapping[str, str] = MappingProxyType(
    {"decoupled": "the published constraint", "coupled": "one constraint on the full KL (ablation)"}
)
DUAL_CHOICES: Mapping[str, str] = MappingProxyType(
    {"bisection": "the published coarse bisection", "exact": "solve K(eta) = eps to dual_rtol (1e-6)"}
)
FUSED_DTYPES = (torch.float32, torch.float64)


def scalar(value: Any) -> float:
    """A hyperparameter as a float (``lr`` may be a tensor, for torch's schedulers)."""
    return float(value.item()) if isinstance(value, Tensor) else float(value)


def fused_unsupported(group: Mapping[str, Any], like: Tensor) -> str | None:
    """Why the fused kernels cannot run this group's parameters like ``like`` at any step (None: they can)."""
    if not _fused_cpu.AVAILABLE:
        return "the fused kernels need numba (pip install numba)"
    if like.device.type != "cpu":
        return f"the fused kernels run on the CPU; the parameters are on {like.device}"
    if like.dtype not in FUSED_DTYPES:
        return f"the fused kernels take float32 or float64; the parameters are {str(like.dtype).replace('torch.', '')}"
    if group["kl"] != "decoupled":
        return f"the fused kernels run the decoupled KL; kl={group['kl']!r}"
    return None


def validate(
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
            return scalar(value)
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


def check_group(group: Mapping[str, Any]) -> None:
    """A new param group's checks: its values (:func:`validate`), and those that depend on its parameters."""
    validate(**group)  # a group's own values are checked like the defaults
    for p in group["params"]:
        if p.is_floating_point() and 1.0 / float(group["var_init"]) > torch.finfo(p.dtype).max:
            raise ValueError(
                f"var_init: got {group['var_init']!r}; allowed: a number >= "
                f"{1.0 / torch.finfo(p.dtype).max:.3g} for {str(p.dtype).replace('torch.', '')} "
                "parameters (the initial precision 1/var_init must be finite)"
            )
    if group["fused"] is True:
        for p in group["params"]:
            reason = fused_unsupported(group, p)
            if reason is not None:
                raise ValueError(f"fused: got True; {reason}")


def keyword_defaults(function: Callable[..., Any]) -> dict[str, Any]:
    """The keyword defaults of ``function`` (the constructor's: what a group from before a key existed gets)."""
    return {
        name: parameter.default
        for name, parameter in inspect.signature(function).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }


def upgrade_groups(defaults: dict[str, Any], param_groups: list[dict[str, Any]], keys: Mapping[str, Any]) -> None:
    """Give ``defaults`` and every group the keys they lack, with the constructor's default (the old behaviour).

    A state dict or pickle from before a key existed lacks it (torch's test_can_load_older_state_dict
    deletes ``fused``).
    """
    for key, value in keys.items():
        defaults.setdefault(key, value)
        for group in param_groups:
            group.setdefault(key, value)
