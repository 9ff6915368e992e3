"""The instruments a snapshot runs beside the reference h: declared once, here.

An *instrument* measures something of the probe loss at a snapshot that is not h itself (the
gradient's noise, ...). Like a reference estimator (:mod:`arturo_diag.curvature.references`) it is
given a :class:`~arturo_diag.curvature.references.ReferenceRequest` (the model at its current
weights, the loss, the reference's batch and mode) and returns the arrays it stores per parameter
(``fields``), its ``snapshots.csv`` scalars and, optionally, arrays of any shape
(``instruments/step_*.npz``, keys ``<instrument>/<field>``). A *step instrument* (``needs_step``)
looks at the optimizer step the snapshot follows: the Monitor then copies the weights and the
optimizer's filter state before that step and fills the request's ``step_state``
(:class:`~arturo_diag.curvature.references.StepState`). The Monitor runs the run's instruments
after the reference, at the snapshots each one is due (every ``every``-th snapshot from the first,
and the last one when the Monitor knows the run's length), and stores the seconds each took in
``record.json`` (``instruments: {name: seconds}``) and their measured snapshot steps
(``instrument_steps``); ``--instruments``'s choices and help come from
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

from arturo_diag.curvature.alpha import step_alpha
from arturo_diag.curvature.innovation import innovation
from arturo_diag.curvature.noise import coupled_batch_norm, gradient_noise
from arturo_diag.curvature.references import REFERENCE_ESTIMATORS, ReferenceRequest
from arturo_diag.curvature.spectrum_instrument import spectrum_snapshot

__all__ = ["INSTRUMENTS", "Instrument", "applicable", "register_instrument", "run_instruments"]


@dataclass(frozen=True)
class Instrument:
    """One instrument of a snapshot.

    Attributes:
        name: its ``--instruments`` name (``"noise"``).
        help: its ``--help`` line.
        fields: the arrays it stores per parameter.
        compute: ``ReferenceRequest -> ({parameter: {field: tensor}}, {snapshot scalar: value})``,
            or a third item ``{field: array}`` of snapshot arrays of any shape.
        every: run at every ``every``-th snapshot (the first one included), and at the last.
        needs_step: it reads ``request.step_state`` (the step the snapshot follows; None when the
            Monitor could not take it, e.g. a snapshot called by hand, and then it stores nothing).
    """

    name: str
    help: str
    fields: tuple[str, ...]
    compute: Callable[[ReferenceRequest], tuple[Any, ...]]
    every: int = 1
    needs_step: bool = False
    refuses: Callable[[Any, bool], str | None] | None = None

    def refusal(self, model: Any, train: bool) -> str | None:
        """Why it cannot measure this model in this mode (``train``: the reference's), or None."""
        return self.refuses(model, train) if self.refuses is not None else None

    def due(self, index: int, last: bool) -> bool:
        """Whether it runs at the snapshot numbered ``index`` (0: the first); ``last``: the run's last one."""
        return last or index % self.every == 0


def _noise_refuses(model: Any, train: bool) -> str | None:
    coupled = coupled_batch_norm(model, train)
    if not coupled:
        return None
    return (
        f"per-sample gradients do not exist: batch norm at {', '.join(coupled)} normalises with the batch's "
        "statistics (reference_mode train), coupling the samples; reference_mode eval measures it"
    )


def _noise(request: ReferenceRequest):
    """Mean and minibatch variance (per-sample variance / N, ddof 1) of the gradient on the batch."""
    noise = gradient_noise(request.model, request.loss_fn, request.inputs, request.targets, train=request.train)
    arrays = {
        name: {"grad_mean": noise.mean[name], "grad_var": noise.minibatch_variance[name]} for name in request.names
    }
    return arrays, {}


_SPECTRUM_SEED = 2**40  # its probes differ from a Hutchinson reference's (seeded seed + step)


def _spectrum(request: ReferenceRequest):
    """Trace, extreme eigenvalues, SLQ and the Frobenius norm's per-probe terms (spectrum_instrument)."""
    scalars, extras = spectrum_snapshot(request.model, request.loss_fn, request.inputs, request.targets,
                                        request.names, seed=request.seed + _SPECTRUM_SEED, train=request.train)  # fmt: skip
    return {name: {} for name in request.names}, scalars, extras


def _innovation(request: ReferenceRequest):
    """arTuRO's innovation d and its predicted variance s at the snapshot's step (curvature/innovation.py),
    for every parameter whose filter had state before the step and that had a gradient."""
    step = request.step_state
    arrays: dict[str, dict[str, Tensor]] = {name: {} for name in request.names}
    if step is None:
        return arrays, {}
    for name in request.names:
        if name in step.filter_before and name in step.grads and name in step.settings:
            s = step.settings[name]
            d, var = innovation(step.weights_before[name], step.grads[name], step.filter_before[name], lr=s["lr"],
                                weight_decay=s["weight_decay"], q=s["dynamic_model_noise"], r=s["measurement_noise"])  # fmt: skip
            arrays[name] = {"innovation": d, "innovation_var": var}
    return arrays, {}


def _alpha(request: ReferenceRequest):
    """Cockpit's alpha of the snapshot's step on the reference's batch, in its mode (curvature/alpha.py)."""
    step = request.step_state
    if step is None:
        return {}, {}
    scalars = step_alpha(request.model, request.loss_fn, request.inputs, request.targets, step.weights_before,
                         train=request.train)  # fmt: skip
    return {}, scalars


_INSTRUMENTS: dict[str, Instrument] = {
    i.name: i
    for i in (
        Instrument(
            "noise",
            "gradient noise from per-sample gradients (mean and minibatch variance per coordinate)",
            ("grad_mean", "grad_var"),
            _noise,
            refuses=_noise_refuses,
        ),
        Instrument(
            "spectrum",
            "Hessian trace (Hutchinson, Hutch++), top and most negative eigenvalues (Lanczos), spectral "
            "density (SLQ) and ||H||_F for the diagonal's share; every 9th snapshot and the last",
            (),
            _spectrum,
            every=9,
        ),
        Instrument(
            "innovation",
            "arTuRO's innovation residual d = g - (a theta + b) and its predicted variance s per coordinate "
            "at the snapshot's step (the filter's own, to set beside r)",
            ("innovation", "innovation_var"),
            _innovation,
            needs_step=True,
        ),
        Instrument(
            "alpha",
            "Cockpit's alpha: where the snapshot's step lands on the 1-D quadratic along its direction "
            "(-1 no move, 0 the minimum, 1 the mirror point)",
            (),
            _alpha,
            needs_step=True,
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


def applicable(names: Iterable[str], model: Any, train: bool) -> tuple[tuple[str, ...], dict[str, str]]:
    """The named instruments that can measure ``model`` in this mode, and why each other one cannot."""
    kept: list[str] = []
    skipped: dict[str, str] = {}
    for name in names:
        reason = INSTRUMENTS[name].refusal(model, train) if name in INSTRUMENTS else None
        if reason:
            skipped[name] = reason
        else:
            kept.append(name)
    return tuple(kept), skipped


def run_instruments(
    names: Iterable[str],
    request: ReferenceRequest,
    seconds: dict[str, float],
    *,
    index: int = 0,
    last: bool = False,
) -> tuple[dict[str, dict[str, Tensor]], dict[str, Any], dict[str, Any]]:
    """Run the named instruments (in :data:`INSTRUMENTS` order) that are due at the snapshot
    numbered ``index`` (``last``: the run's last one) on ``request``: their arrays per parameter,
    scalars, and arrays of any shape keyed ``<instrument>/<field>``. Each one's wall time is added
    to ``seconds[name]``."""
    wanted = set(names)
    unknown = wanted - set(INSTRUMENTS)
    if unknown:
        raise ValueError(f"instruments: got {sorted(unknown)}; allowed: {', '.join(INSTRUMENTS)}")
    arrays: dict[str, dict[str, Tensor]] = {name: {} for name in request.names}
    info: dict[str, Any] = {}
    extras: dict[str, Any] = {}
    for instrument in (i for i in INSTRUMENTS.values() if i.name in wanted and i.due(index, last)):
        start = time.perf_counter()
        fields, scalars, *more = instrument.compute(request)
        for name in request.names:
            arrays[name].update(fields.get(name, {}))
        info.update(scalars)
        for field, value in (more[0] if more else {}).items():
            extras[f"{instrument.name}/{field}"] = value
        seconds[instrument.name] = seconds.get(instrument.name, 0.0) + time.perf_counter() - start
    return arrays, info, extras
