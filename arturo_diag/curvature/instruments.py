"""The instruments a snapshot runs beside the reference h: declared once, here.

An *instrument* measures something of the probe loss at a snapshot that is not h itself (the
gradient's noise, ...). Like a reference estimator (:mod:`arturo_diag.curvature.references`) it is
given a :class:`~arturo_diag.curvature.references.ReferenceRequest` (the model at its current
weights, the loss, the reference's batch and mode) and returns the arrays it stores per parameter
(``fields``) and snapshot scalars (none so far). The Monitor runs the run's instruments after the
reference, stores their arrays in the snapshot and the seconds each took in ``record.json``
(``instruments: {name: seconds}``); ``--instruments``'s choices and help come from
:data:`INSTRUMENTS`.

To add one: write its function in this package, then one :class:`Instrument` in ``_INSTRUMENTS``
(or call :func:`register_instrument`). Its field names must differ from every reference field.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from torch import Tensor

from arturo_diag.curvature.noise import gradient_noise
from arturo_diag.curvature.references import REFERENCE_ESTIMATORS, ReferenceRequest

__all__ = ["INSTRUMENTS", "Instrument", "register_instrument", "run_instruments"]


@dataclass(frozen=True)
class Instrument:
    """One instrument of a snapshot.

    Attributes:
        name: its ``--instruments`` name (``"noise"``).
        help: its ``--help`` line.
        fields: the arrays it stores per parameter.
        compute: ``ReferenceRequest -> ({parameter: {field: tensor}}, {snapshot scalar: value})``.
    """

    name: str
    help: str
    fields: tuple[str, ...]
    compute: Callable[[ReferenceRequest], tuple[dict[str, dict[str, Tensor]], dict[str, Any]]]


def _noise(request: ReferenceRequest):
    """Mean and minibatch variance (per-sample variance / N, ddof 1) of the gradient on the batch."""
    noise = gradient_noise(request.model, request.loss_fn, request.inputs, request.targets, train=request.train)
    arrays = {
        name: {"grad_mean": noise.mean[name], "grad_var": noise.minibatch_variance[name]} for name in request.names
    }
    return arrays, {}


_INSTRUMENTS: dict[str, Instrument] = {
    i.name: i
    for i in (
        Instrument(
            "noise",
            "gradient noise from per-sample gradients (mean and minibatch variance per coordinate)",
            ("grad_mean", "grad_var"),
            _noise,
        ),
    )
}

#: Every instrument by name, in the order they run.
INSTRUMENTS: Mapping[str, Instrument] = MappingProxyType(_INSTRUMENTS)


def register_instrument(instrument: Instrument) -> None:
    """Add an instrument (before the CLI is imported, for it to appear in ``--help``). Refuses a
    name or field already taken (by an instrument or a reference estimator)."""
    taken = {f for i in _INSTRUMENTS.values() for f in i.fields}
    taken |= {f for e in REFERENCE_ESTIMATORS.values() for f in e.fields}
    if instrument.name in _INSTRUMENTS or taken & set(instrument.fields):
        raise ValueError(f"instrument {instrument.name!r}: its name or a field is already declared")
    _INSTRUMENTS[instrument.name] = instrument


def run_instruments(
    names: Iterable[str], request: ReferenceRequest, seconds: dict[str, float]
) -> tuple[dict[str, dict[str, Tensor]], dict[str, Any]]:
    """Run the named instruments (in :data:`INSTRUMENTS` order) on ``request``: their arrays per
    parameter and scalars; each one's wall time is added to ``seconds[name]``."""
    wanted = set(names)
    unknown = wanted - set(INSTRUMENTS)
    if unknown:
        raise ValueError(f"instruments: got {sorted(unknown)}; allowed: {', '.join(INSTRUMENTS)}")
    arrays: dict[str, dict[str, Tensor]] = {name: {} for name in request.names}
    info: dict[str, Any] = {}
    for instrument in (i for i in INSTRUMENTS.values() if i.name in wanted):
        start = time.perf_counter()
        fields, scalars = instrument.compute(request)
        for name in request.names:
            arrays[name].update(fields[name])
        info.update(scalars)
        seconds[instrument.name] = seconds.get(instrument.name, 0.0) + time.perf_counter() - start
    return arrays, info
