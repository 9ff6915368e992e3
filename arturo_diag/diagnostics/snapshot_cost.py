"""What a run's snapshots will cost, known before the run: their size on disk and their seconds.

Three choices bound a snapshot's size (docs/record.md, "Snapshot size"):

- its **dtype** (:func:`snapshot_dtype`): ``"auto"`` stores float64 where that keeps a snapshot
  within :data:`FLOAT32_ABOVE_BYTES` or the model itself is float64 (a verification run), and
  float32 above it (a ResNet-18's snapshot: 512 MB in float64, 256 MB in float32); ``"float64"``
  and ``"float32"`` force it;
- **subsampling** (:func:`subsample_indices`): at most ``per_tensor`` coordinates of each parameter
  tensor, the same fixed, seeded set in every snapshot and in the initial weights, so the estimate
  and h stay aligned coordinate by coordinate; the agreement statistics are then those of the kept
  coordinates;
- the **fields** stored per coordinate (:func:`snapshot_fields`): the weight, the optimizer's
  estimate (arTuRO: a, P_aa, b, pi), the reference's and the instruments'.

:func:`estimate_run` adds the seconds per snapshot from the model's size and a short probe on the
reference batch: one gradient and one Hessian-vector product timed (and, for the exact ``ggn``, the
GGN on 16 examples; for Hutchinson, two probes; for the ``ggn`` reference, the general GGN diagonal
on 16 examples, scaled by the batch linearly, or quadratically where batch norm couples the rows;
for ``cv``, that plus ``samples`` probes at an HVP and a GGN-vector product each, about two HVPs;
for ``auto``, whichever of exact ``ggn`` and ``cv`` it will take), scaled by what the chosen
method needs (a reference predicted to take under 2 s is timed whole instead). The timings are medians after a
warm-up, taken on a shared machine as it is: a busy machine gives larger estimates. The
probe draws no random number from any global stream and leaves the model as it was, so training
after it is bit-identical to training without it.
"""

from __future__ import annotations

import errno
import math
import os
import shutil
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from arturo_diag.curvature.errors import GGNNotExactError
from arturo_diag.curvature.exact import check_ggn_exact, exact_diagonal
from arturo_diag.curvature.functional import loss_of_parameters
from arturo_diag.curvature.ggn_general import ggn_diagonal
from arturo_diag.curvature.hutchinson import hutchinson_diagonal
from arturo_diag.curvature.hvp import HVP_CHUNK_BYTES, batched_hvp, hvp_plan
from arturo_diag.curvature.instruments import INSTRUMENTS, applicable
from arturo_diag.curvature.noise import gradient_noise
from arturo_diag.curvature.references import dropout_off, estimators_of
from arturo_diag.curvature.spectrum_instrument import SpectrumSettings
from arturo_diag.curvature.spectrum_operator import hessian_operator
from arturo_diag.diagnostics.io import WriteError
from arturo_diag.diagnostics.record_format import SNAPSHOT_DTYPES
from arturo_diag.errors import ConfigError

__all__ = [
    "FLOAT32_ABOVE_BYTES",
    "SNAPSHOT_DTYPE_CHOICES",
    "SLOW_SNAPSHOT_SECONDS",
    "InsufficientSpace",
    "RunCost",
    "check_free_space",
    "estimate_run",
    "snapshot_dtype",
    "snapshot_fields",
    "subsample_indices",
]

#: ``--snapshot-dtype`` choices.
SNAPSHOT_DTYPE_CHOICES = {
    "auto": "float64 up to 64 MiB a snapshot or for a float64 model, float32 above",
    **{name: f"always {name}" for name in SNAPSHOT_DTYPES},
}
#: ``"auto"`` stores float32 when a float64 snapshot would be larger than this.
FLOAT32_ABOVE_BYTES = 64 * 2**20
#: A reference slower than this per snapshot is warned about before the run.
SLOW_SNAPSHOT_SECONDS = 10.0
_ARTURO_FIELDS = ("curvature", "filter_cov_aa", "intercept", "precision")
_ESTIMATE_FIELDS = ("curvature", "curvature_var")  # another optimizer's: at most these
_ARTURO_ONLY_INSTRUMENTS = ("innovation",)  # they store nothing for other optimizers
_GGN_PROBE_EXAMPLES = 16
_NOISE_PROBE_EXAMPLES = 8
_RUN_WHOLE_BELOW = 2.0  # seconds: a reference predicted cheaper than this is timed whole instead


class InsufficientSpace(WriteError):
    """The run's estimated size exceeds the free space where it would be written (exit 2; errno
    ENOSPC, so a study stops on it as on a full disk)."""


def snapshot_fields(
    reference: str, instruments: Sequence[str], *, arturo: bool, estimate: bool = True
) -> tuple[str, ...]:
    """The arrays a snapshot stores per parameter (``docs/record.md``): the weight, the optimizer's
    estimate (arTuRO's filter state; another optimizer's estimate and claimed variance, at most),
    the reference's fields and the instruments'."""
    if reference == "none":
        return ()
    own = _ARTURO_FIELDS if arturo else (_ESTIMATE_FIELDS if estimate else ())
    names = ["weight", *own, *(f for e in estimators_of(reference) for f in e.fields)]
    for name in instruments:
        if arturo or name not in _ARTURO_ONLY_INSTRUMENTS:
            names += INSTRUMENTS[name].fields
    return tuple(dict.fromkeys(names))


def snapshot_dtype(choice: str, model_dtype: torch.dtype, coordinates: int, n_fields: int) -> tuple[str, str]:
    """``(dtype, why)`` the snapshots are stored in, for ``--snapshot-dtype choice``."""
    if choice not in SNAPSHOT_DTYPE_CHOICES:
        raise ConfigError("snapshot_dtype", choice, ", ".join(SNAPSHOT_DTYPE_CHOICES))
    if choice != "auto":
        return choice, "chosen"
    size = coordinates * n_fields * 8
    if model_dtype == torch.float64:
        return "float64", "the model is float64 (a verification run)"
    if size <= FLOAT32_ABOVE_BYTES:
        return "float64", f"a float64 snapshot is {_size(size)}, within {_size(FLOAT32_ABOVE_BYTES)}"
    return "float32", f"a float64 snapshot would be {_size(size)}, above {_size(FLOAT32_ABOVE_BYTES)}"


def subsample_indices(shapes: Mapping[str, Sequence[int]], per_tensor: int | None, seed: int) -> dict[str, np.ndarray]:
    """Parameter name -> the sorted flat coordinates kept of it: ``per_tensor`` of them, drawn
    without replacement from a generator seeded by ``(seed, tensor's position)``, for each tensor
    with more coordinates than that ({} for ``per_tensor`` None or 0: everything is kept)."""
    if not per_tensor:
        return {}
    if per_tensor < 1:
        raise ConfigError("subsample", per_tensor, "0 (keep every coordinate) or a whole number >= 1")
    kept = {}
    for position, (name, shape) in enumerate(shapes.items()):
        numel = math.prod(shape)
        if numel > per_tensor:
            rng = np.random.default_rng([int(seed), position])
            kept[name] = np.sort(rng.choice(numel, size=per_tensor, replace=False)).astype(np.int64)
    return kept


@dataclass
class RunCost:
    """What the run's snapshots will cost (``record.json``'s ``estimate``; sizes in bytes, times in s).

    ``reference_seconds`` and ``instrument_seconds`` are per snapshot (an instrument that runs at
    every k-th snapshot: its average per snapshot). ``probe`` holds what was timed.
    """

    snapshots: int
    fields: tuple[str, ...]
    coordinates: int
    stored_coordinates: int
    dtype: str
    dtype_reason: str
    bytes_per_snapshot: int
    total_bytes: int
    method: str
    reference_seconds: float
    instrument_seconds: dict[str, float]  # per snapshot: its seconds per run x its runs / snapshots
    probe: dict[str, float]
    free_bytes: int | None = None
    disk: str | None = None
    out: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def seconds_per_snapshot(self) -> float:
        return self.reference_seconds + sum(self.instrument_seconds.values())

    @property
    def total_seconds(self) -> float:
        return self.snapshots * self.seconds_per_snapshot

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["fields"] = list(self.fields)
        out["seconds_per_snapshot"] = self.seconds_per_snapshot
        out["total_seconds"] = self.total_seconds
        return out

    def lines(self) -> list[str]:
        """The estimate in words (what ``compare`` prints before training)."""
        kept = (
            f", {self.stored_coordinates:,} of {self.coordinates:,} coordinates kept"
            if self.stored_coordinates < self.coordinates
            else ""
        )
        free = f"; {_size(self.free_bytes)} free on {self.disk}" if self.free_bytes is not None else ""
        parts = ", ".join(
            [f"reference {_seconds(self.reference_seconds)}"]
            + [f"{name} {_seconds(s)}" for name, s in self.instrument_seconds.items() if s > 0]
        )
        return [
            f"snapshots: {self.snapshots} x {_size(self.bytes_per_snapshot)} = {_size(self.total_bytes)} "
            f"({self.dtype}: {self.dtype_reason}; {len(self.fields)} arrays per coordinate{kept}){free}",
            f"time: about {_seconds(self.seconds_per_snapshot)} per snapshot ({parts}; {self.method}), "
            f"{_seconds(self.total_seconds)} in all (from a probe: gradient {_seconds(self.probe['gradient'])}, "
            f"Hessian-vector product {_seconds(self.probe['hvp'])})",
        ]


def estimate_run(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    batch: Sequence[Tensor],
    *,
    snapshots: int,
    reference: str,
    exact_method: str = "auto",
    samples: int = 64,
    instruments: Sequence[str] = (),
    arturo: bool = True,
    estimate: bool = True,
    train: bool = False,
    dtype: str = "auto",
    subsample: int | None = None,
    seed: int = 0,
    out: str | os.PathLike[str] | None = None,
) -> RunCost:
    """The size and seconds of a run's snapshots, before it runs (see the module docstring).

    ``batch``: the reference batch (the probe batch, or a minibatch like the run's); ``train``: the
    reference's mode. ``out``: where the record goes (its free space is looked up; the check itself
    is :func:`check_free_space`).
    """
    instruments = applicable(instruments, model, train)[0]  # as the Monitor leaves out one that cannot measure
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters() if p.requires_grad}
    coordinates = sum(math.prod(s) for s in shapes.values())
    kept = subsample_indices(shapes, subsample, seed)
    stored = sum(kept[name].size if name in kept else math.prod(s) for name, s in shapes.items())
    fields = snapshot_fields(reference, instruments, arturo=arturo, estimate=estimate)
    chosen, why = snapshot_dtype(dtype, next(iter(model.parameters())).dtype, stored, len(fields))
    itemsize = np.dtype(chosen).itemsize
    per_snapshot = stored * len(fields) * itemsize
    total = snapshots * per_snapshot + stored * itemsize  # + the initial weights
    cost = RunCost(snapshots, fields, coordinates, stored, chosen, why, per_snapshot, total, "none", 0.0, {}, {})
    if out is not None:
        cost.disk, cost.free_bytes = _free_space(Path(out))
        cost.out = str(out)
    if reference == "none" or snapshots == 0:
        cost.probe = {"gradient": 0.0, "hvp": 0.0, "seconds": 0.0}
        return cost
    start = time.perf_counter()
    with dropout_off(model):  # as the reference is taken (the mode is the loss's own)
        _time_reference(cost, model, loss_fn, batch, reference, exact_method, samples, instruments, train, coordinates)
    cost.probe["seconds"] = time.perf_counter() - start
    if "hvp" in cost.method and cost.reference_seconds > SLOW_SNAPSHOT_SECONDS:
        alternative = samples * cost.probe["hvp"]
        cost.warnings.append(
            f"the exact reference falls back to one Hessian-vector product per parameter ({coordinates:,}): "
            f"about {_seconds(cost.reference_seconds)} per snapshot, {_seconds(cost.reference_seconds * snapshots)} "
            f"for {snapshots} snapshots; --reference hutchinson would take about {_seconds(alternative)} per "
            "snapshot, or take fewer snapshots (--every)"
        )
    return cost


def check_free_space(cost: RunCost) -> None:
    """Refuse a run whose estimated size exceeds the free space of its disk.

    Raises:
        InsufficientSpace: naming the sizes, the disk and what would make it fit.
    """
    if cost.free_bytes is None or cost.total_bytes <= cost.free_bytes:
        return
    if cost.disk is not None and not os.access(cost.disk, os.W_OK):
        return  # not writable at all: the writer names the path and the OS's reason
    raise InsufficientSpace(
        f"cannot write {cost.out} (No space left on device, estimated): the run's snapshots need about {_size(cost.total_bytes)} ({cost.snapshots} x "
        f"{_size(cost.bytes_per_snapshot)}) but {cost.disk} has {_size(cost.free_bytes)} free; take fewer "
        "snapshots (--every), keep fewer coordinates (--subsample N), store float32 (--snapshot-dtype float32) "
        "or write elsewhere (--out)",
        errno.ENOSPC,
    )


# ---------------------------------------------------------------------------------------- probe
def _time_reference(
    cost: RunCost,
    model: nn.Module,
    loss_fn: Callable,
    batch: Sequence[Tensor],
    reference: str,
    exact_method: str,
    samples: int,
    instruments: Sequence[str],
    train: bool,
    coordinates: int,
) -> None:
    inputs, targets = batch[0], batch[1]
    names, params, loss = loss_of_parameters(model, loss_fn, inputs, targets, train=train)
    gradient = _timed(lambda: torch.func.grad(loss)(params))
    products = batched_hvp(loss, params, True)
    ones = tuple(torch.ones_like(p).unsqueeze(0) for p in params)
    hvp = _timed(lambda: products(ones))
    cost.probe.update({"gradient": gradient, "hvp": hvp})
    seconds, methods = 0.0, []
    for estimator in estimators_of(reference):
        name, prefix = estimator.name, ""
        if name == "auto":  # the one it will take (the same proof the reference runs)
            name, prefix = ("exact" if _exact_method(model, loss_fn, "auto", train) == "ggn" else "cv"), "auto: "
            exact_method = "ggn"  # what auto's exact choice runs
        if name == "exact":
            method = _exact_method(model, loss_fn, exact_method, train)
            if method == "ggn":  # linear in the examples: a few timed, or all where that is cheap
                ggn = lambda n: exact_diagonal(model, loss_fn, inputs[:n], targets[:n], method="ggn", train=train)
                n = min(_GGN_PROBE_EXAMPLES, inputs.shape[0])
                timed = _timed(lambda: ggn(n)) * inputs.shape[0] / n
                seconds += timed if timed > _RUN_WHOLE_BELOW else _timed(lambda: ggn(inputs.shape[0]))
            else:
                seconds += _hvp_seconds(loss, params, hvp, coordinates)
            methods.append(f"{prefix}exact ({method})")
        elif name == "ggn":
            seconds += _general_ggn_seconds(model, loss_fn, inputs, targets, train)
            methods.append("ggn (general)")
        elif name == "cv":
            seconds += _general_ggn_seconds(model, loss_fn, inputs, targets, train)
            try:
                check_ggn_exact(model, loss_fn, train=train)
                methods.append(f"{prefix}cv (ggn; no probe: diag(H - G) = 0 proved)")
            except GGNNotExactError:
                seconds += samples * 2 * hvp  # per probe an HVP and a GGN-vector product
                methods.append(f"{prefix}cv (ggn + {samples} probes)")
        elif estimator.name == "hutchinson":
            generator = torch.Generator(device=params[0].device).manual_seed(0)  # its own stream
            probes = lambda k: hutchinson_diagonal(model, loss_fn, inputs, targets, k, generator, train=train)
            timed = _timed(lambda: probes(2)) * samples / 2
            seconds += timed if timed > _RUN_WHOLE_BELOW else _timed(lambda: probes(samples))
            methods.append(f"hutchinson ({samples} probes)")
        else:  # a registered reference of unknown cost: as many HVPs as Hutchinson's probes
            seconds += samples * hvp
            methods.append(f"{estimator.name} (~{samples} HVPs)")
    cost.reference_seconds = seconds
    cost.method = " + ".join(methods)
    settings = SpectrumSettings()
    spectrum_hvps = settings.probes + settings.hutchpp + 20 * settings.top_k + settings.slq_probes * settings.slq_steps
    model_of: dict[str, Callable[[], float]] = {  # seconds of one run of the instrument
        # per-sample gradients, linear in the examples (memory-bound on big models: timed, not modelled)
        "noise": lambda: _noise_seconds(model, loss_fn, inputs, targets, train),
        "alpha": lambda: 2 * gradient,  # two losses and directional derivatives
        "innovation": lambda: 0.0,  # arithmetic on the filter state
        # the spectrum's own operator (one graph, products in sequence), its product timed
        "spectrum": lambda: spectrum_hvps * _operator_hvp_seconds(model, loss_fn, inputs, targets, train),
    }
    for name in instruments:
        runs = _runs(cost.snapshots, INSTRUMENTS[name].every)
        seconds = model_of.get(name, lambda: gradient)()
        cost.instrument_seconds[name] = seconds * runs / max(cost.snapshots, 1)
        cost.probe[f"{name}_runs"] = runs


def _general_ggn_seconds(model: nn.Module, loss_fn: Callable, inputs: Tensor, targets: Tensor, train: bool) -> float:
    """:func:`ggn_diagonal` timed on a few examples, scaled to the batch: linearly, or quadratically
    where the rows are coupled (N whole-batch products per factor column; an upper bound, since the
    forward mode it may take instead is linear); the whole batch where that is predicted cheap."""
    total = inputs.shape[0]
    n = min(_GGN_PROBE_EXAMPLES, total)
    run = lambda k: ggn_diagonal(model, loss_fn, inputs[:k], targets[:k], train=train)
    coupled = run(n).coupled  # also the warm-up
    timed = _timed(lambda: run(n)) * (total / n) ** (2 if coupled else 1)
    return timed if timed > _RUN_WHOLE_BELOW else _timed(lambda: run(total))


def _runs(snapshots: int, every: int) -> int:
    """How many of ``snapshots`` an instrument due every ``every``-th one (and at the last) runs at."""
    if snapshots <= 0:
        return 0
    return len(set(range(0, snapshots, every)) | {snapshots - 1})


def _noise_seconds(model: nn.Module, loss_fn: Callable, inputs: Tensor, targets: Tensor, train: bool) -> float:
    n = min(_NOISE_PROBE_EXAMPLES, inputs.shape[0])
    timed = _timed(lambda: gradient_noise(model, loss_fn, inputs[:n], targets[:n], train=train)) * inputs.shape[0] / n
    if timed > _RUN_WHOLE_BELOW:
        return timed
    return _timed(lambda: gradient_noise(model, loss_fn, inputs, targets, train=train))


def _operator_hvp_seconds(model: nn.Module, loss_fn: Callable, inputs: Tensor, targets: Tensor, train: bool) -> float:
    operator = hessian_operator(model, loss_fn, inputs, targets, train=train)
    vector = torch.ones(operator.dimension, dtype=torch.float64)
    return _timed(lambda: operator.matvec(vector))


def _exact_method(model: nn.Module, loss_fn: Callable, exact_method: str, train: bool) -> str:
    if exact_method != "auto":
        return exact_method
    try:
        check_ggn_exact(model, loss_fn, train=train)
    except GGNNotExactError:
        return "hvp"
    return "ggn"


def _hvp_seconds(loss, params: tuple[Tensor, ...], hvp: float, coordinates: int) -> float:
    """One-hot HVPs for every coordinate, in the chunks :func:`exact_diagonal` takes: one chunk is
    timed where that takes under 2 s, else every product is counted at the single one's time."""
    plan = hvp_plan(loss, params, HVP_CHUNK_BYTES)
    chunk = min(plan.chunk, coordinates)
    if chunk > 1 and chunk * hvp < 2.0:
        products = batched_hvp(loss, params, plan.batched)
        tangents = tuple(torch.zeros(chunk, *p.shape, dtype=p.dtype, device=p.device) for p in params)
        timed = _timed(lambda: products(tangents))
        return math.ceil(coordinates / chunk) * timed
    return coordinates * hvp


def _timed(work: Callable[[], Any], repeats: int = 3, enough: float = 0.25) -> float:
    """Seconds of ``work`` after one warm-up call (torch.func's first call costs more): its second
    call where that took over ``enough``, else the median of ``repeats`` calls."""
    work()
    start = time.perf_counter()
    work()
    second = time.perf_counter() - start
    if second > enough:
        return second
    times = [second]
    for _ in range(repeats - 1):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _free_space(out: Path) -> tuple[str, int | None]:
    where = out.absolute()
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        return str(where), int(shutil.disk_usage(where).free)
    except OSError:
        return str(where), None


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"


def _seconds(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.3g} h"
    if s >= 60:
        return f"{s / 60:.3g} min"
    if s >= 1:
        return f"{s:.3g} s"
    return f"{s * 1e3:.3g} ms"
