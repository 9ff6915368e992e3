"""The reference curvature a snapshot compares arTuRO's estimate a with: declared once, here.

A *reference estimator* computes one reference diagonal Hessian h at a snapshot and says what
arrays it stores per parameter (``fields``; the first is h itself), which ``snapshots.csv``
scalars it fills (``info``, with their value when it does not run), and how the report names it.
A *reference method* (the ``--reference`` choice) is a tuple of estimators run together. When a
snapshot carries several, a is compared with the first of :data:`REFERENCE_ESTIMATORS` it has
(the exact one before an estimate of it). An estimator whose fields include ``<h>_se`` stores its
standard error beside h (:attr:`ReferenceEstimator.se_field`: Hutchinson's, the control
variate's), which the analysis reads as the reference's own noise.

A method may instead *choose* one of its parts at each snapshot (:attr:`ReferenceMethod.chooser`):
``auto`` runs the exact GGN diagonal where :func:`~arturo_diag.curvature.exact.check_ggn_exact`
proves it is the Hessian diagonal (stored as ``h_exact``, ``exact_method`` "ggn": the numbers of
``--reference exact`` there) and the control variate (``h_cv`` with ``h_cv_se``) where it is not.
Its snapshots.csv rows say which was taken (``reference``: ``exact`` or ``cv``) and why
(``reference_note``), so the record checks and the analysis treat them as that method's.

The references of issue 16: ``ggn`` (:func:`~arturo_diag.curvature.ggn_general.ggn_diagonal`, the
exact GGN diagonal of any traceable model; ``reference_note`` says whether it is proved to be the
Hessian diagonal) and ``cv`` (:func:`~arturo_diag.curvature.control_variate.hessian_diagonal_cv`:
the GGN diagonal plus Hutchinson on diag(H - G), with its standard error; ``--samples`` probes,
counted in ``hutchinson_samples``). ``cv`` (and ``auto`` where it takes it) also stores, from the
same probes, plain Hutchinson's error at equal Hessian-vector products (:data:`CV_COMPARISON_COLUMNS`:
both RMS standard errors and the variance reduction with its 95 % interval).

The Monitor runs the estimators of its method, the record checks require their fields, the
analysis picks the compared field, and ``--reference``'s choices and help come from
:data:`REFERENCE_METHODS`. To add a reference: write its function in this package, then one
:class:`ReferenceEstimator` in ``_ESTIMATORS`` and its method(s) in ``_METHODS`` (or call :func:`register_reference`; plus, if it records new per-snapshot
scalars, their columns in the record format, ``diagnostics/record_format.py``).

What h is the Hessian OF is declared here too, once: the model's mode (:data:`REFERENCE_MODES`,
``--reference-mode``), the batch (:data:`REFERENCE_BATCHES`, ``--reference-batch``) and the loss by
name (:func:`loss_name`); :func:`reference_meaning` words the three for the report.
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor, nn

from arturo_diag.curvature.control_variate import hessian_diagonal_cv_compared
from arturo_diag.curvature.errors import GGNNotExactError
from arturo_diag.curvature.exact import check_ggn_exact, exact_diagonal
from arturo_diag.curvature.ggn_general import ggn_diagonal
from arturo_diag.curvature.hutchinson import hutchinson_diagonal

__all__ = [
    "CV_COMPARISON_COLUMNS",
    "REFERENCE_BATCHES",
    "REFERENCE_ESTIMATORS",
    "REFERENCE_METHODS",
    "REFERENCE_MODES",
    "ReferenceChoice",
    "ReferenceEstimator",
    "ReferenceMethod",
    "ReferenceRequest",
    "StepState",
    "dropout_off",
    "estimator_for_field",
    "estimators_of",
    "loss_name",
    "method_of",
    "reference_meaning",
    "reference_setting",
    "reference_settings",
    "register_reference",
]


@dataclass(frozen=True)
class ReferenceChoice:
    """One value of ``--reference-mode`` or ``--reference-batch``: its ``--help`` line and how the
    report says it (``words``)."""

    help: str
    words: str


#: The model's mode while h (and the snapshot's ``probe_loss``) is computed; the first is the default.
REFERENCE_MODES: Mapping[str, ReferenceChoice] = MappingProxyType(
    {
        "eval": ReferenceChoice(
            "BatchNorm on its running statistics, dropout off",
            "model in eval mode (BatchNorm running statistics, dropout off)",
        ),
        "train": ReferenceChoice(
            "BatchNorm on the batch's statistics (running statistics not updated), dropout off",
            "model in train mode (BatchNorm batch statistics, dropout off)",
        ),
    }
)
#: The batch h is taken on; the first is the default.
REFERENCE_BATCHES: Mapping[str, ReferenceChoice] = MappingProxyType(
    {
        "probe": ReferenceChoice("the fixed probe batch (--probe-size examples)", "on the fixed probe batch"),
        "minibatch": ReferenceChoice(
            "the minibatch of the snapshot's step (at the weights after that step)", "on the step's minibatch"
        ),
    }
)


@dataclass(frozen=True)
class StepState:
    """The optimizer step a snapshot follows (step ``step``), for the instruments that look at the
    step itself (``Instrument.needs_step``); copies the Monitor took, keyed by parameter name.

    Attributes:
        step: the step (1-based) these belong to: the snapshot's.
        weights_before: theta_t, every optimized parameter before the step (before its weight decay).
        filter_before: arTuRO's filter state before the step, ``{name: {intercept, curvature,
            filter_cov_bb, filter_cov_ba, filter_cov_aa}}``; a parameter without state yet (its first
            step) is absent, and the mapping is empty for any other optimizer.
        grads: the step's minibatch gradient (``p.grad`` after ``optimizer.step()``, which arTuRO
            leaves as it was), for the parameters that had one.
        settings: per parameter its group's ``lr``, ``weight_decay``, ``dynamic_model_noise`` (q) and
            ``measurement_noise`` (r) as read after the step (arTuRO only; else empty).
    """

    step: int
    weights_before: Mapping[str, Tensor]
    filter_before: Mapping[str, Mapping[str, Tensor]]
    grads: Mapping[str, Tensor]
    settings: Mapping[str, Mapping[str, float]]


@dataclass(frozen=True)
class ReferenceRequest:
    """What a reference estimator is given at a snapshot: the model at its current weights, the
    loss, the probe batch, and the run's settings (``exact_method``, Hutchinson ``samples``, the
    probes' ``seed`` for this snapshot); ``step_state``: the step the snapshot follows, given only
    when an instrument due at this snapshot needs it (else None)."""

    model: nn.Module
    loss_fn: Callable[[Tensor, Tensor], Tensor]
    inputs: Tensor
    targets: Tensor
    names: tuple[str, ...]
    exact_method: str = "auto"
    samples: int = 1
    seed: int = 0
    device: torch.device | None = None
    train: bool = False  # the model in train mode (batch statistics); dropout is off either way
    step_state: StepState | None = None


@contextlib.contextmanager
def dropout_off(model: nn.Module) -> Iterator[None]:
    """Every dropout module of ``model`` at p = 0 for the block (then restored): in train mode h is
    the Hessian of a deterministic loss (batch statistics, no dropout); eval mode has none anyway."""
    saved = [(m, m.p) for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    try:
        for m, _ in saved:
            m.p = 0.0
        yield
    finally:
        for m, p in saved:
            m.p = p


def loss_name(loss_fn: Callable[..., Any]) -> str:
    """The loss by name: torch's losses as ``cross_entropy``, ``mse``, ``huber``, ``nll``, ``smooth_l1``
    (a ``*Loss`` module's class or a function's name, snake case, without ``_loss``); any other
    function or module by its own name (a partial by its function's); ``"unknown"`` for a lambda."""
    target = loss_fn.func if isinstance(loss_fn, functools.partial) else loss_fn
    is_object = isinstance(target, nn.Module) or not hasattr(target, "__name__")
    name = type(target).__name__ if is_object else str(target.__name__)
    if name == "<lambda>":
        return "unknown"
    if not str(getattr(target, "__module__", None) or type(target).__module__).startswith("torch"):
        return name  # the user's own loss, by its own name
    if is_object:  # CrossEntropyLoss -> cross_entropy_loss
        name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()
    return re.sub(r"_loss$", "", name) or name


def reference_setting(value: Any, choices: Mapping[str, ReferenceChoice]) -> str:
    """A record's mode or batch: the value when it is one of ``choices``, else the default (the first:
    older records, without the key, were taken in eval mode on the probe batch)."""
    return value if isinstance(value, str) and value in choices else next(iter(choices))


def reference_meaning(mode: Any, batch: Any, loss: Any) -> str:
    """What h is the Hessian of, in words: ``"of the cross_entropy loss on the fixed probe batch,
    model in eval mode (BatchNorm running statistics, dropout off)"``; a loss not recorded (older
    records, a lambda) is "the training loss (its function not recorded)"."""
    loss_words = (
        f"the {loss} loss"
        if isinstance(loss, str) and loss and loss != "unknown"
        else "the training loss (its function not recorded)"
    )
    mode_words = REFERENCE_MODES[reference_setting(mode, REFERENCE_MODES)].words
    batch_words = REFERENCE_BATCHES[reference_setting(batch, REFERENCE_BATCHES)].words
    return f"of {loss_words} {batch_words}, {mode_words}"


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
        settings: the run settings it reads (``"exact_method"``, ``"samples"``): the config checks
            call any other reference-only setting given with it unused.
    """

    name: str
    fields: tuple[str, ...]
    words: str
    label: str
    info: Mapping[str, Any]
    compute: Callable[[ReferenceRequest], tuple[dict[str, dict[str, Tensor]], dict[str, Any]]]
    settings: tuple[str, ...] = ()

    @property
    def field(self) -> str:
        return self.fields[0]

    @property
    def se_field(self) -> str | None:
        """The field of h's standard error (``<h>_se``) where it stores one, else None."""
        se = f"{self.fields[0]}_se"
        return se if se in self.fields else None


@dataclass(frozen=True)
class ReferenceMethod:
    """A ``--reference`` choice: its help line and the estimators it runs (none: no reference).

    ``chooser``: for a method that runs ONE of its ``parts`` per snapshot (``auto``), the estimator
    that decides and runs it; it is not one of :data:`REFERENCE_ESTIMATORS` (it stores the fields
    of the part it took, and its ``reference`` scalar names that part's method)."""

    help: str
    parts: tuple[str, ...]
    chooser: ReferenceEstimator | None = None


def _exact(request: ReferenceRequest):
    exact = exact_diagonal(
        request.model,
        request.loss_fn,
        request.inputs,
        request.targets,
        method=request.exact_method,
        train=request.train,
    )
    return {name: {"h_exact": exact[name]} for name in request.names}, {"exact_method": exact.method}


def _hutchinson(request: ReferenceRequest):
    estimate, stderr = hutchinson_diagonal(
        request.model,
        request.loss_fn,
        request.inputs,
        request.targets,
        request.samples,
        _generator(request),
        train=request.train,
    )
    arrays = {name: {"h_hutchinson": estimate[name], "h_hutchinson_se": stderr[name]} for name in request.names}
    return arrays, {"hutchinson_samples": request.samples}


def _generator(request: ReferenceRequest) -> torch.Generator:
    """The snapshot's probe stream: seeded with ``request.seed`` (Hutchinson's and the control variate's)."""
    device = request.device if request.device is not None else next(request.model.parameters()).device
    return torch.Generator(device=device).manual_seed(request.seed)


def _reason(text: str) -> str:
    """A refusal of :func:`check_ggn_exact` without its list of allowed modules (the record's note)."""
    head, sep, tail = text.partition("; allowed: ")
    closing, after = tail.partition(")")[1:]
    return head + closing + after


def _ggn(request: ReferenceRequest):
    ggn = ggn_diagonal(request.model, request.loss_fn, request.inputs, request.targets, train=request.train)
    return {name: {"h_ggn": ggn[name]} for name in request.names}, {"reference_note": _reason(ggn.note or "")}


#: snapshots.csv's columns of the control variate against plain Hutchinson on its own probes (NaN
#: where no probe was drawn; the bounds NaN too with fewer than 6 probes): see docs/record.md.
CV_COMPARISON_COLUMNS = (
    "cv_se_rms",
    "plain_se_rms",
    "cv_variance_reduction",
    "cv_variance_reduction_lo",
    "cv_variance_reduction_hi",
)


def _cv(request: ReferenceRequest):
    result = hessian_diagonal_cv_compared(
        request.model,
        request.loss_fn,
        request.inputs,
        request.targets,
        request.samples,
        _generator(request),
        train=request.train,
    )
    estimate, stderr = result.estimate, result.stderr
    arrays = {name: {"h_cv": estimate[name], "h_cv_se": stderr[name]} for name in request.names}
    comparison = dict(
        zip(
            CV_COMPARISON_COLUMNS,
            (result.cv_se_rms, result.plain_se_rms, result.variance_reduction, *result.interval),
        )
    )
    return arrays, {
        "hutchinson_samples": estimate.samples,
        "reference_note": f"the control variate: {estimate.note}",
        **comparison,
    }


def _auto(request: ReferenceRequest):
    """The exact GGN diagonal where it is proved to be the Hessian diagonal (as ``h_exact``, the
    numbers of ``--reference exact``), else the control variate with its standard error."""
    try:
        kind = check_ggn_exact(request.model, request.loss_fn, train=request.train)
    except GGNNotExactError as refusal:
        arrays, scalars = _cv(request)
        note = (
            f"auto: the control variate (exact GGN diagonal + Hutchinson on diag(H - G), {request.samples} probes), "
            f"because the GGN is not the Hessian diagonal here ({_reason(str(refusal))})"
        )
        return arrays, {**scalars, "reference": "cv", "reference_note": note}
    why = f"every output is linear in each weight and the loss is {kind}"
    try:  # the closed form --reference exact takes: bit for bit its numbers
        exact = exact_diagonal(
            request.model, request.loss_fn, request.inputs, request.targets, method="ggn", train=request.train
        )
        values = {name: exact[name] for name in request.names}
    except GGNNotExactError:  # a structure the closed form does not take (branches, concatenations)
        general = ggn_diagonal(request.model, request.loss_fn, request.inputs, request.targets, train=request.train)
        values = {name: general[name] for name in request.names}
    note = f"auto: the exact GGN diagonal, which is the Hessian diagonal here ({why})"
    arrays = {name: {"h_exact": values[name]} for name in request.names}
    return arrays, {"reference": "exact", "exact_method": "ggn", "reference_note": note}


_ESTIMATORS: dict[str, ReferenceEstimator] = {
    e.name: e
    for e in (
        ReferenceEstimator(
            "exact", ("h_exact",), "exact diagonal Hessian h", "exact", {"exact_method": ""}, _exact, ("exact_method",)
        ),
        ReferenceEstimator("ggn", ("h_ggn",), "exact GGN diagonal h (J^T H_out J)", "GGN", {}, _ggn),
        ReferenceEstimator(
            "cv",
            ("h_cv", "h_cv_se"),
            "control-variate estimate of h (exact GGN diagonal + Hutchinson on diag(H - G))",
            "control-variate (GGN + Hutchinson)",
            {},
            _cv,
            ("samples",),
        ),
        ReferenceEstimator(
            "hutchinson",
            ("h_hutchinson", "h_hutchinson_se"),
            "Hutchinson estimate of h",
            "Hutchinson",
            {"hutchinson_samples": math.nan},
            _hutchinson,
            ("samples",),
        ),
    )
}
_AUTO = ReferenceEstimator(
    "auto",
    ("h_cv", "h_cv_se"),  # at most these (the exact choice stores h_exact alone)
    "exact GGN diagonal where it is the Hessian diagonal, else the control-variate estimate of h",
    "auto",
    {},
    _auto,
    ("samples",),
)
_METHODS: dict[str, ReferenceMethod] = {
    "exact": ReferenceMethod("the exact diagonal Hessian (of the --reference-batch's loss)", ("exact",)),
    "hutchinson": ReferenceMethod("a Hutchinson estimate with --samples probes", ("hutchinson",)),
    "both": ReferenceMethod("exact and Hutchinson", ("exact", "hutchinson")),
    "none": ReferenceMethod("no reference (training curves only)", ()),
    "ggn": ReferenceMethod(
        "the exact generalised Gauss-Newton diagonal, any model (the Hessian's where proved; the record says)",
        ("ggn",),
    ),
    "cv": ReferenceMethod(
        "the exact GGN diagonal + a Hutchinson estimate (--samples probes) of diag(H - G), with its SE", ("cv",)
    ),
    "auto": ReferenceMethod(
        "exact (the GGN diagonal) where that is the Hessian diagonal, else cv; the record says which and why",
        ("exact", "cv"),
        chooser=_AUTO,
    ),
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
    """The estimators ``method`` runs, in :data:`REFERENCE_ESTIMATORS` order (KeyError if unknown);
    a choosing method (``auto``) runs its chooser alone."""
    declared = REFERENCE_METHODS[method]
    if declared.chooser is not None:
        return (declared.chooser,)
    return tuple(e for e in REFERENCE_ESTIMATORS.values() if e.name in declared.parts)


def reference_settings(method: str) -> frozenset[str]:
    """The run settings (``exact_method``, ``samples``) the estimators of ``method`` read."""
    return frozenset(s for e in estimators_of(method) for s in e.settings)


def estimator_for_field(field: str | None) -> ReferenceEstimator | None:
    """The estimator whose h is stored as ``field`` (None if none is)."""
    return next((e for e in REFERENCE_ESTIMATORS.values() if e.field == field), None)


def method_of(present: tuple[str, ...]) -> str:
    """The method whose estimators are exactly ``present`` (names), else the names joined by '+'."""
    for name, method in REFERENCE_METHODS.items():
        if method.chooser is None and set(method.parts) == set(present):
            return name
    return "+".join(present)
