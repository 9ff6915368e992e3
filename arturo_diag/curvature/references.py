"""The reference curvature a snapshot compares arTuRO's estimate a with: declared once, here.

A *reference estimator* computes one reference diagonal Hessian h at a snapshot and says what
arrays it stores per parameter (``fields``; the first is h itself), which ``snapshots.csv``
scalars it fills (``info``, with their value when it does not run), and how the report names it.
A *reference method* (the ``--reference`` choice) is a tuple of estimators run together. When a
snapshot carries several, a is compared with the first of :data:`REFERENCE_ESTIMATORS` it has
(the exact one before an estimate of it).

The Monitor runs the estimators of its method, the record checks require their fields, the
analysis picks the compared field, and ``--reference``'s choices and help come from
:data:`REFERENCE_METHODS`. To add a reference: write its function in this package, then one
:class:`ReferenceEstimator` in ``_ESTIMATORS`` and its method(s) in ``_METHODS`` (or call :func:`register_reference`; plus, if it records new per-snapshot
scalars, their columns in the record format, ``diagnostics/record_format.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor, nn

from arturo_diag.curvature.exact import exact_diagonal
from arturo_diag.curvature.hutchinson import hutchinson_diagonal

__all__ = [
    "REFERENCE_ESTIMATORS",
    "REFERENCE_METHODS",
    "ReferenceEstimator",
    "ReferenceMethod",
    "ReferenceRequest",
    "estimator_for_field",
    "estimators_of",
    "method_of",
    "register_reference",
]


@dataclass(frozen=True)
class ReferenceRequest:
    """What a reference estimator is given at a snapshot: the model at its current weights, the
    loss, the probe batch, and the run's settings (``exact_method``, Hutchinson ``samples``, the
    probes' ``seed`` for this snapshot)."""

    model: nn.Module
    loss_fn: Callable[[Tensor, Tensor], Tensor]
    inputs: Tensor
    targets: Tensor
    names: tuple[str, ...]
    exact_method: str = "auto"
    samples: int = 1
    seed: int = 0
    device: torch.device | None = None


@dataclass(frozen=True)
class ReferenceEstimator:
    """One reference h (see the module docstring).

    Attributes:
        name: its name, as a part of a method (``"exact"``).
        fields: the arrays it stores per parameter; ``fields[0]`` is h.
        words: how the report names h (``"exact diagonal Hessian h"``).
        label: a one-word label for plots (``"exact"``).
        info: ``snapshots.csv`` scalars it fills -> their value in a snapshot where it does not run.
        compute: ``ReferenceRequest -> ({parameter: {field: tensor}}, {info column: value})``.
    """

    name: str
    fields: tuple[str, ...]
    words: str
    label: str
    info: Mapping[str, Any]
    compute: Callable[[ReferenceRequest], tuple[dict[str, dict[str, Tensor]], dict[str, Any]]]

    @property
    def field(self) -> str:
        return self.fields[0]


@dataclass(frozen=True)
class ReferenceMethod:
    """A ``--reference`` choice: its help line and the estimators it runs (none: no reference)."""

    help: str
    parts: tuple[str, ...]


def _exact(request: ReferenceRequest):
    exact = exact_diagonal(request.model, request.loss_fn, request.inputs, request.targets, method=request.exact_method)
    return {name: {"h_exact": exact[name]} for name in request.names}, {"exact_method": exact.method}


def _hutchinson(request: ReferenceRequest):
    device = request.device if request.device is not None else next(request.model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(request.seed)
    estimate, stderr = hutchinson_diagonal(
        request.model, request.loss_fn, request.inputs, request.targets, request.samples, generator
    )
    arrays = {name: {"h_hutchinson": estimate[name], "h_hutchinson_se": stderr[name]} for name in request.names}
    return arrays, {"hutchinson_samples": request.samples}


_ESTIMATORS: dict[str, ReferenceEstimator] = {
    e.name: e
    for e in (
        ReferenceEstimator("exact", ("h_exact",), "exact diagonal Hessian h", "exact", {"exact_method": ""}, _exact),
        ReferenceEstimator(
            "hutchinson",
            ("h_hutchinson", "h_hutchinson_se"),
            "Hutchinson estimate of h",
            "Hutchinson",
            {"hutchinson_samples": math.nan},
            _hutchinson,
        ),
    )
}
_METHODS: dict[str, ReferenceMethod] = {
    "exact": ReferenceMethod("the exact diagonal Hessian of the probe batch", ("exact",)),
    "hutchinson": ReferenceMethod("a Hutchinson estimate with --samples probes", ("hutchinson",)),
    "both": ReferenceMethod("exact and Hutchinson", ("exact", "hutchinson")),
    "none": ReferenceMethod("no reference (training curves only)", ()),
}

#: Every reference estimator by name, in order of preference for the comparison with a.
REFERENCE_ESTIMATORS: Mapping[str, ReferenceEstimator] = MappingProxyType(_ESTIMATORS)
#: The ``--reference`` choices (the first is the default): name -> its help line and estimators.
REFERENCE_METHODS: Mapping[str, ReferenceMethod] = MappingProxyType(_METHODS)


def register_reference(estimator: ReferenceEstimator, methods: Mapping[str, ReferenceMethod]) -> None:
    """Add a reference estimator and the ``--reference`` method(s) that run it (before the CLI is
    imported, for its choices to appear in ``--help``). Refuses a name or field already taken."""
    taken = {f for e in _ESTIMATORS.values() for f in e.fields}
    if estimator.name in _ESTIMATORS or taken & set(estimator.fields) or set(methods) & set(_METHODS):
        raise ValueError(f"reference {estimator.name!r}: its name, a field or a method name is already declared")
    _ESTIMATORS[estimator.name] = estimator
    _METHODS.update(methods)


def estimators_of(method: str) -> tuple[ReferenceEstimator, ...]:
    """The estimators ``method`` runs, in :data:`REFERENCE_ESTIMATORS` order (KeyError if unknown)."""
    parts = REFERENCE_METHODS[method].parts
    return tuple(e for e in REFERENCE_ESTIMATORS.values() if e.name in parts)


def estimator_for_field(field: str | None) -> ReferenceEstimator | None:
    """The estimator whose h is stored as ``field`` (None if none is)."""
    return next((e for e in REFERENCE_ESTIMATORS.values() if e.field == field), None)


def method_of(present: tuple[str, ...]) -> str:
    """The method whose estimators are exactly ``present`` (names), else the names joined by '+'."""
    for name, method in REFERENCE_METHODS.items():
        if set(method.parts) == set(present):
            return name
    return "+".join(present)
