"""What the Monitor stores of an optimizer's own curvature estimate (issue 13).

The Monitor reads every optimizer through :func:`arturo_diag.estimators.adapter_for`. For arTuRO
the snapshot keeps the filter's state as before (``curvature`` = a, ``filter_cov_aa`` = P_aa, read
from ``optimizer.state``); for any other optimizer with an adapter, :func:`estimate_fields` gives
per parameter ``curvature`` = the adapter's ``estimate`` (the optimizer's curvature estimate:
Adam's v-hat, IVON's hess, AdaHessian's and Sophia's EMAs, a user adapter's) and, where the method
claims one, ``curvature_var`` = its ``variance``. A parameter the adapter lists as ``missing`` (no
state yet) gets neither field at that snapshot.

``record.json``'s ``estimator`` (:func:`estimator_info`) says once what the stored ``curvature``
estimates: ``{name, target, scale}`` (``target`` one of :data:`arturo_diag.estimators.TARGETS`),
or null for an optimizer no adapter reads (the snapshots then hold no estimate, as before).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from arturo_diag.estimators import CurvatureAdapter, CurvatureEstimate, EstimatorError, adapter_for

__all__ = ["ESTIMATE_FIELDS", "adapter_or_none", "add_estimate", "estimate_fields", "estimator_info"]

#: The snapshot fields of a non-arTuRO optimizer's estimate: the estimate and its claimed variance.
ESTIMATE_FIELDS = ("curvature", "curvature_var")


def adapter_or_none(optimizer: torch.optim.Optimizer) -> CurvatureAdapter | None:
    """The adapter that reads ``optimizer``'s curvature estimate, or None if no registered one does."""
    try:
        return adapter_for(optimizer)
    except EstimatorError:
        return None


def estimator_info(estimate: CurvatureEstimate | None) -> dict[str, Any] | None:
    """``record.json``'s ``estimator``: ``{name, target, scale}`` of ``estimate`` (None: no adapter)."""
    if estimate is None:
        return None
    return {"name": str(estimate.optimizer), "target": str(estimate.target), "scale": str(estimate.scale)}


def estimate_fields(
    adapter: CurvatureAdapter, optimizer: torch.optim.Optimizer, named: Sequence[tuple[str, Tensor]]
) -> tuple[dict[str, dict[str, Tensor]], CurvatureEstimate]:
    """Per parameter name, ``{"curvature": estimate, "curvature_var": variance}`` (the variance only
    where the method claims one; names listed as ``missing`` absent), and the estimate itself."""
    estimate = adapter.estimate(optimizer, list(named))
    shapes = {name: tuple(p.shape) for name, p in named}
    fields: dict[str, dict[str, Tensor]] = {}
    for name, value in estimate.estimate.items():
        if name not in shapes or name in estimate.missing:
            continue
        if tuple(value.shape) != shapes[name]:
            raise EstimatorError(
                f"{adapter.name}: the estimate of {name!r} is shaped {tuple(value.shape)}, the parameter {shapes[name]}"
            )
        fields[name] = {"curvature": value.detach()}
        variance = (estimate.variance or {}).get(name)
        if variance is not None:
            fields[name]["curvature_var"] = variance.detach()
    return fields, estimate


def add_estimate(
    arrays: dict[str, dict[str, Tensor]],
    adapter: CurvatureAdapter,
    optimizer: torch.optim.Optimizer,
    named: Sequence[tuple[str, Tensor]],
) -> dict[str, Any] | None:
    """Add :func:`estimate_fields` to a snapshot's ``arrays`` (name -> field -> tensor); the estimate's
    :func:`estimator_info` (its scale may say more once the optimizer has state)."""
    fields, estimate = estimate_fields(adapter, optimizer, named)
    for name, values in fields.items():
        arrays[name].update(values)
    return estimator_info(estimate)
