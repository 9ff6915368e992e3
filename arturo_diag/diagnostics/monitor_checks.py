"""The Monitor's per-step NaN/inf check (``docs/record.md``, "Divergence"): one fused reduction over
every checked tensor, and only when it fails the search for the first bad quantity and parameter.

What is checked, in the order a step computes it (the first one found is named): the gradient, the
filter (P, then a and b), eta, the precision, the new weight.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["checked_tensors", "first_non_finite"]

_FILTER_STATE = ("filter_cov_bb", "filter_cov_ba", "filter_cov_aa", "curvature", "intercept")


def checked_tensors(optimizer: Any, named: Sequence[tuple[str, Tensor]], quantity: str) -> list[tuple[str, Tensor]]:
    """(parameter name, tensor) of one checked quantity, for the parameters that have it."""
    out = []
    state = optimizer.state
    for name, p in named:
        if quantity == "weight":
            tensor = p.detach()
        elif quantity == "gradient":
            tensor = p.grad
        else:
            tensor = state[p].get(quantity) if p in state else None
        if isinstance(tensor, Tensor) and not tensor.is_sparse and tensor.is_floating_point():
            out.append((name, tensor))
    return out


def first_non_finite(
    optimizer: Any,
    named: Sequence[tuple[str, Tensor]],
    is_arturo: bool,
    loss: float | None,
    last: Mapping[str, Any] | None,
    divergence: Callable[[str, str | None, Tensor], dict[str, Any]],
) -> dict[str, Any] | None:
    """The first NaN/inf of this step (None if all is finite); see :class:`arturo_diag.errors.Diverged`.

    One fused reduction over every checked tensor (max |x| per tensor: NaN-propagating, and it
    cannot overflow) and one synchronisation per step; only when it fails is the first bad
    quantity and parameter looked for, in the order of the module docstring. ``divergence(quantity,
    parameter, tensor)`` builds the description of the one found.
    """
    if loss is not None and not math.isfinite(loss):
        return divergence("loss", None, torch.tensor([loss], dtype=torch.float64))
    eta = (last or {}).get("eta")
    zero_bound = not (last or {}).get("kl_bound", 1.0) > 0
    eta_bad = (
        isinstance(eta, (int, float)) and not math.isfinite(eta) and not (eta == math.inf and zero_bound)
    )  # eps = 0: eta = inf is the exact root (no step)
    state = [*_FILTER_STATE, "eta", "precision"] if is_arturo else []
    quantities = ["gradient", *state, "weight"]
    if not eta_bad:
        tensors = [t for quantity in quantities for _, t in checked_tensors(optimizer, named, quantity)]
        if not tensors or bool(torch.stack(torch._foreach_norm(tensors, math.inf)).isfinite().all()):
            return None
    for quantity in quantities:
        if quantity == "eta":
            if eta_bad:
                return divergence("eta", None, torch.tensor([eta], dtype=torch.float64))
            continue
        for name, tensor in checked_tensors(optimizer, named, quantity):
            if not bool(tensor.isfinite().all()):
                return divergence(quantity, name, tensor)
    return None  # pragma: no cover - the fused check and the search agree
