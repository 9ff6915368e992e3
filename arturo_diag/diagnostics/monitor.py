"""A snapshot monitor for any training loop that uses arTuRO (or a baseline optimizer).

Usage, in a loop of your own::

    monitor = Monitor(model, optimizer, loss_fn, (probe_x, probe_y), every=10, out="runs/mine")
    for x, y in data:
        optimizer.zero_grad(); loss = loss_fn(model(x), y); loss.backward(); optimizer.step()
        monitor.step(loss)
    monitor.finish()
    # then: arturo-diag report runs/mine

Every step it records the optimizer's health (``optimizer.last_step``: eta, its bracket, the
bisection's iterations, K/eps, non-positive precision/denominator counts) and quantiles of the
precision; every ``every`` steps a snapshot on the fixed probe batch: per parameter the filter's
curvature ``a``, its variance ``P_aa``, the intercept ``b``, the precision, the weight, and the
reference diagonal Hessian ``h`` (exact, Hutchinson with its standard error, or both), of the
loss on the probe batch (``reference_batch="minibatch"``: on the step's minibatch, given as
``step(loss, batch=(x, y))``) with the model in eval mode (``reference_mode="train"``: batch statistics; dropout is off either
way). For another optimizer ``curvature`` is its own estimate, read through its adapter
(:mod:`~arturo_diag.diagnostics.monitor_estimate`). ``record.json`` says so from the start, with the model's class, the loss's name, every param
group's lr and the layers' module types (:mod:`~arturo_diag.diagnostics.monitor_facts`). The format
is ``docs/record.md``. The monitor never changes what the optimizer does, except that before a
snapshot step it sets ``optimizer.dual_diagnostics`` so that the step also reports K(0)/eps and the
exact root ``eta*`` (extra passes that do not change the update), and, when a step instrument is due
at that snapshot, copies the weights and the filter state (:mod:`~arturo_diag.diagnostics.monitor_step`).

After every step it also checks the loss, the gradients, the weights and the optimizer's state
(arTuRO's ``P``, ``a``, ``b``, ``eta``, ``pi``) for NaN/inf, in one fused reduction. At the first
non-finite one the record is marked ``"diverged"`` (``record.json``'s ``"divergence"`` names the step,
the quantity, the parameter and its layer) and :meth:`Monitor.step` raises
:class:`arturo_diag.errors.Diverged` with that message, so the loop stops there.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from arturo_diag.curvature.functional import evaluation_mode
from arturo_diag.curvature.instruments import INSTRUMENTS, applicable, run_instruments
from arturo_diag.curvature.references import REFERENCE_ESTIMATORS, ReferenceRequest, dropout_off, estimators_of
from arturo_diag.curvature.references import REFERENCE_METHODS as REFERENCES
from arturo_diag.diagnostics.monitor_checks import first_non_finite
from arturo_diag.diagnostics.monitor_estimate import adapter_or_none, add_estimate, estimator_info
from arturo_diag.diagnostics.monitor_facts import (
    check_arguments,
    divergence_info,
    group_settings,
    layer_labels,
    layer_types,
    run_facts,
)
from arturo_diag.diagnostics.monitor_step import BeforeStep, before_step, needs_step
from arturo_diag.diagnostics.record import RecordWriter
from arturo_diag.diagnostics.snapshot_cost import snapshot_dtype as resolve_snapshot_dtype
from arturo_diag.diagnostics.snapshot_cost import snapshot_fields, subsample_indices
from arturo_diag.errors import Diverged

__all__ = ["Monitor", "MonitorSink", "REFERENCES"]

_QUANTILE_SAMPLE = 65536  # precision quantiles per step come from this many fixed coordinates
_FLUSH_SECONDS = 5.0  # the tables on disk lag the run by at most this (and a snapshot interval)
_STATE_FIELDS = ("curvature", "filter_cov_aa", "intercept", "precision")  # stored under their state names
# steps.csv's columns read from optimizer.last_step
_LAST_STEP_KEYS = tuple(
    "kl_bound eta eta_lo eta_hi iterations kl_ratio precision_nonpos denominator_nonpos guard_acted numel".split()
)


class MonitorSink(Protocol):
    """A live consumer of a Monitor's record (TensorBoard, a logger): called after the record's own
    write, with the same data; it must not change the model, the optimizer or any random stream."""

    def step(self, row: Mapping[str, Any]) -> None:
        """One ``steps.csv`` row (docs/record.md), just recorded."""

    def snapshot(self, step: int, scalars: Mapping[str, Any], arrays: Mapping[str, Mapping[str, Any]]) -> None:
        """One snapshot: its ``snapshots.csv`` scalars and its arrays (parameter -> field -> numpy array,
        as stored: the keys of docs/record.md)."""

    def close(self) -> None:
        """The run ended (complete, failed or diverged): flush and release."""


def _minimal_config(every: int, reference: str) -> str:
    return f'# written by arturo_diag.diagnostics.Monitor\n[diagnostics]\nevery = {every}\nreference = "{reference}"\n'


class Monitor:
    """Records steps and curvature snapshots of a training run into a run record.

    Args:
        model: the network being trained.
        optimizer: the optimizer stepping it: arTuRO (its filter state), one an adapter of
            :mod:`arturo_diag.estimators` reads (its estimate as ``curvature``, a claimed variance as
            ``curvature_var``, record.json's ``estimator``), or any other (h and loss curves only).
        loss_fn: ``(outputs, targets) -> scalar`` mean loss, as used for training.
        probe_batch: ``(inputs, targets)``, the fixed batch the reference Hessian is taken on
            (None with ``reference_batch="minibatch"``).
        every: snapshot every this many steps.
        reference: ``"exact"``, ``"hutchinson"``, ``"both"`` or ``"none"``.
        out: the run record's directory.
        samples: Hutchinson probes per snapshot.
        exact_method: ``"auto"``, ``"ggn"`` or ``"hvp"`` (see :func:`arturo_diag.curvature.exact_diagonal`).
        seed: seeds the Hutchinson probes (snapshot ``t`` uses ``seed + t``).
        config_toml: the run's config as TOML text (stored as ``config.toml``).
        kind: ``"monitor"`` (your loop) or ``"compare"``.
        overwrite: replace a record already in ``out``.
        on_snapshot: called with ``(step, "start" | "end")`` around each snapshot (progress display).
        reference_mode: ``"eval"`` (BatchNorm running statistics) or ``"train"`` (batch statistics);
            dropout is off in both (:data:`~arturo_diag.curvature.references.REFERENCE_MODES`).
        reference_batch: ``"probe"`` (``probe_batch``) or ``"minibatch"`` (the ``batch`` given to
            :meth:`step` at a snapshot step).
        loss_name: the loss's name in the record (default: ``loss_fn``'s, see
            :func:`~arturo_diag.curvature.references.loss_name`).
        instruments: names of :data:`~arturo_diag.curvature.instruments.INSTRUMENTS` run at each
            snapshot after the reference, on its batch and in its mode (their arrays in the snapshot,
            their seconds in ``record.json``'s ``instruments``, the steps each measured in
            ``instrument_steps``). An instrument with ``every`` > 1 runs at every ``every``-th
            snapshot and at the last one, which the Monitor knows when given ``total_steps``. One that
            cannot measure the model in the reference's mode is left out, its reason in
            ``instruments_skipped``.
        total_steps: the run's length in steps, if known (its last snapshot is then
            ``every * (total_steps // every)``).
        tensorboard: write TensorBoard event files too (:mod:`arturo_diag.diagnostics.tensorboard`,
            the ``tensorboard`` extra): ``True`` for ``out/tensorboard``, or a directory.
        sinks: further live consumers of what is recorded (:class:`MonitorSink`): each gets every
            ``steps.csv`` row and every snapshot as it is written, and is closed at the end.
        snapshot_dtype: ``"auto"`` (float64 up to 64 MiB a snapshot or for a float64 model, float32
            above), ``"float64"`` or ``"float32"`` (:mod:`~arturo_diag.diagnostics.snapshot_cost`).
        subsample: keep at most this many coordinates of each parameter tensor in the snapshots
            (and the initial weights): a fixed set drawn with ``seed``, the same in every snapshot,
            so a and h stay aligned (None or 0: every coordinate).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: Callable[[Tensor, Tensor], Tensor],
        probe_batch: Sequence[Tensor],
        *,
        every: int = 10,
        reference: str = "exact",
        out: str,
        samples: int = 64,
        exact_method: str = "auto",
        seed: int = 0,
        config_toml: str | None = None,
        kind: str = "monitor",
        overwrite: bool = False,
        on_snapshot: Callable[[int, str], None] | None = None,
        extra_manifest: Mapping[str, Any] | None = None,
        reference_mode: str = "eval",
        reference_batch: str = "probe",
        loss_name: str | None = None,
        instruments: Sequence[str] = (),
        total_steps: int | None = None,
        tensorboard: bool | str | os.PathLike[str] = False,
        sinks: Sequence[MonitorSink] = (),
        snapshot_dtype: str = "auto",
        subsample: int | None = None,
    ) -> None:
        check_arguments(instruments=instruments, reference=reference, every=every, probe_batch=probe_batch,
                        reference_batch=reference_batch)  # fmt: skip
        self.instruments, self.instruments_skipped = applicable(instruments, model, reference_mode == "train")
        self.instrument_seconds = dict.fromkeys(self.instruments, 0.0)  # record.json's "instruments"
        self.instrument_steps: dict[str, list[int]] = {name: [] for name in self.instruments}
        self._last_snapshot = every * (int(total_steps) // every) if total_steps else None
        self._snapshot_index = 0
        self.model = model
        self.optimizer = optimizer
        self.loss_fn = loss_fn
        self.probe_inputs, self.probe_targets = probe_batch if probe_batch is not None else (None, None)
        self.reference_mode, self.reference_batch = reference_mode, reference_batch
        self._batch: tuple[Tensor, Tensor] | None = None  # the step's minibatch (reference_batch "minibatch")
        self.every = every
        self.reference = reference
        self.samples = samples
        self.exact_method = exact_method
        self.seed = seed
        self.on_snapshot = on_snapshot
        optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
        self.named = [(name, p) for name, p in model.named_parameters() if id(p) in optimized]
        if not self.named:
            raise ValueError("optimizer: it holds none of the model's parameters")
        self.is_arturo = hasattr(optimizer, "last_step") and hasattr(optimizer, "dual_diagnostics")
        self.adapter = adapter_or_none(optimizer)  # None: no estimate is stored (monitor_estimate.py)
        self.estimator = estimator_info(self.adapter.estimate(optimizer, self.named)) if self.adapter else None
        settings = group_settings(optimizer.param_groups[0])
        names = [name for name, _ in self.named]
        types = layer_types(model, names)
        facts = run_facts(
            model, optimizer, loss_fn, mode=reference_mode, batch=reference_batch, loss=loss_name, types=types
        )
        self.layers = layer_labels(types, names)
        if tensorboard:  # a missing extra is refused before anything is written
            from arturo_diag.diagnostics.tensorboard import TensorBoardSink, _summary_writer

            _summary_writer()
        shapes = {name: tuple(p.shape) for name, p in self.named}
        kept = subsample_indices(shapes, subsample, seed)
        stored = sum(kept[name].size if name in kept else p.numel() for name, p in self.named)
        fields = snapshot_fields(reference, self.instruments, arturo=self.is_arturo, estimate=self.adapter is not None)
        dtype, why = resolve_snapshot_dtype(snapshot_dtype, self.named[0][1].dtype, stored, len(fields))
        self._store_dtype = getattr(torch, dtype)
        self._kept = {name: torch.from_numpy(index) for name, index in kept.items()}
        subsample_info = {"per_tensor": int(subsample), "seed": int(seed), "tensors": len(kept)} if kept else None
        self.writer = RecordWriter(
            out,
            kind,
            config_toml or _minimal_config(every, reference),
            {name: tuple(p.shape) for name, p in self.named},
            optimizer={"name": type(optimizer).__name__, **settings},
            var_init=settings.get("var_init"),
            overwrite=overwrite,
            layers=self.layers,
            manifest={
                **facts,
                "estimator": self.estimator,
                "snapshot_dtype_reason": why,
                "subsample": subsample_info,
                **(extra_manifest or {}),
            },
            snapshot_dtype=dtype,
            subsample=kept,
        )
        self._extra_manifest = dict(extra_manifest or {})
        self.writer.write_initial_weights({name: p.detach() for name, p in self.named})  # the distance's origin
        self.steps = 0
        self._previous_eta = math.nan  # steps.csv's eta_prev (the regime classifier needs it)
        self._last_flush = time.perf_counter()
        self.snapshot_seconds = 0.0
        self.step_seconds = 0.0
        total = self._total = sum(p.numel() for _, p in self.named)
        generator = torch.Generator().manual_seed(seed)
        self._quantile_index = (
            torch.randperm(total, generator=generator)[:_QUANTILE_SAMPLE] if total > _QUANTILE_SAMPLE else None
        )
        self._before: BeforeStep | None = None  # the copies before the next step (step instruments)
        self.sinks: list[MonitorSink] = list(sinks)
        if tensorboard:
            log_dir = Path(out) / "tensorboard" if tensorboard is True else Path(tensorboard)
            self.sinks.append(TensorBoardSink(log_dir, layers=self.layers))
        self._arm_dual_diagnostics()

    # ------------------------------------------------------------------ per step
    def _arm_dual_diagnostics(self) -> None:
        """Before a snapshot step: arTuRO's dual diagnostics on, and the step instruments' copies."""
        upcoming = self.reference != "none" and (self.steps + 1) % self.every == 0
        if self.is_arturo:
            self.optimizer.dual_diagnostics = upcoming
        wanted = upcoming and needs_step(self.instruments, self._snapshot_index, self.steps + 1 == self._last_snapshot)
        start = time.perf_counter()  # the copies' seconds count as the Monitor's per-step cost
        self._before = before_step(self.steps + 1, self.named, self.optimizer, self.is_arturo) if wanted else None
        self.step_seconds += time.perf_counter() - start

    def step(
        self, loss: Tensor | float | None = None, *, epoch: int | None = None, batch: Sequence[Tensor] | None = None
    ) -> None:
        """Record the step the optimizer just took; take a snapshot if one is due.

        ``batch``: the step's ``(inputs, targets)``; needed at snapshot steps with
        ``reference_batch="minibatch"`` (h is then taken on it), ignored otherwise.

        Raises:
            Diverged: the loss, a gradient, a weight or the optimizer's state is NaN/inf after this
                step; the record is left ``"diverged"`` (tables written), nothing more can be added.
        """
        start = time.perf_counter()
        self.steps += 1
        row: dict[str, Any] = {"step": self.steps, "epoch": epoch, "loss": math.nan if loss is None else float(loss)}
        last = getattr(self.optimizer, "last_step", None) if self.is_arturo else None
        if last is not None:
            row.update({key: last.get(key) for key in _LAST_STEP_KEYS})
            row["eta_prev"] = self._previous_eta
            self._previous_eta = last.get("eta")
            row.update(self._precision_quantiles())
        else:
            row["kl_bound"] = float(self.optimizer.param_groups[0]["lr"])
        self.writer.add_step(row)
        for sink in self.sinks:
            sink.step(row)
        divergence = self._first_non_finite(None if loss is None else row["loss"], last)
        if divergence is not None:  # the run ends here: the record says where, the caller gets the error
            self.step_seconds += time.perf_counter() - start
            self.writer.diverge(divergence, self._manifest_extra())
            raise Diverged(divergence)
        self.step_seconds += time.perf_counter() - start
        if self.reference != "none" and self.steps % self.every == 0:
            if self.reference_batch == "minibatch":
                if batch is None:
                    raise ValueError(
                        f"step {self.steps}: a snapshot with reference_batch='minibatch' needs the step's "
                        "batch: monitor.step(loss, batch=(inputs, targets))"
                    )
                self._batch = (batch[0], batch[1])
            self.snapshot()
            self._batch = None
        self._arm_dual_diagnostics()

    # ------------------------------------------------------------------ NaN / inf
    def _first_non_finite(self, loss: float | None, last: Mapping[str, Any] | None) -> dict[str, Any] | None:
        """The first NaN/inf of this step (None if all is finite); see :func:`monitor_checks.first_non_finite`."""
        return first_non_finite(self.optimizer, self.named, self.is_arturo, loss, last, self._divergence)

    def _divergence(self, quantity: str, name: str | None, tensor: Tensor) -> dict[str, Any]:
        return divergence_info(self.steps, quantity, name, self.layers.get(name) if name else None, tensor)

    def _precision_quantiles(self) -> dict[str, float]:
        state = self.optimizer.state
        parts = [state[p]["precision"].reshape(-1) for _, p in self.named if "precision" in state[p]]
        if not parts:
            return {}
        flat = torch.cat(parts)
        if self._quantile_index is not None and flat.numel() == self._total:
            flat = flat[self._quantile_index.to(flat.device)]
        elif flat.numel() > _QUANTILE_SAMPLE:  # some parameters have no state yet
            flat = flat[:: flat.numel() // _QUANTILE_SAMPLE + 1]
        flat = flat.double()
        q = torch.quantile(flat, torch.tensor([0.01, 0.5, 0.99], dtype=flat.dtype, device=flat.device)).tolist()
        return {"precision_q01": q[0], "precision_q50": q[1], "precision_q99": q[2]}

    def epoch(self, row: Mapping[str, Any]) -> None:
        """Record an evaluation row (``epoch``, ``step``, train/test loss and accuracy)."""
        self.writer.add_epoch(dict(row))

    # ------------------------------------------------------------------ snapshots
    def _reference_batch(self) -> tuple[Tensor, Tensor]:
        return self._batch if self.reference_batch == "minibatch" else (self.probe_inputs, self.probe_targets)

    def _probe_loss(self) -> float:
        """The loss h is the Hessian of, at the snapshot: its batch, in its mode."""
        inputs, targets = self._reference_batch()
        if self.reference_mode == "eval":  # as before the choice existed: the same numbers
            was_training = self.model.training
            self.model.eval()
            try:
                with torch.no_grad():
                    return float(self.loss_fn(self.model(inputs), targets))
            finally:
                self.model.train(was_training)
        with torch.no_grad(), dropout_off(self.model), evaluation_mode(self.model, train=True):
            return float(self.loss_fn(self.model(inputs), targets))

    def reference_diagonal(self, step: int) -> tuple[dict[str, dict[str, Tensor]], dict[str, Any], dict[str, Any]]:
        """The reference diagonal Hessian(s) at the current weights on the probe batch (or the step's
        minibatch), in the reference's mode: the arrays of every estimator of the run's reference
        method, and their ``snapshots.csv`` scalars (:mod:`arturo_diag.curvature.references`); then
        the arrays, scalars and other arrays of the run's instruments due at this snapshot
        (:mod:`arturo_diag.curvature.instruments`)."""
        arrays: dict[str, dict[str, Tensor]] = {name: {} for name, _ in self.named}
        info: dict[str, Any] = {}
        extras: dict[str, Any] = {}
        for estimator in REFERENCE_ESTIMATORS.values():
            info.update(estimator.info)  # the value of a scalar whose estimator does not run
        request = self._request(step)
        with dropout_off(self.model):
            for estimator in estimators_of(self.reference):
                fields, scalars = estimator.compute(request)
                for name, _ in self.named:
                    arrays[name].update(fields[name])
                info.update(scalars)
            if self.instruments:  # after the reference, on its batch and in its mode
                index, last = self._snapshot_index, step == self._last_snapshot
                fields, scalars, extras = run_instruments(
                    self.instruments, request, self.instrument_seconds, index=index, last=last
                )
                for name in self.instruments:
                    if INSTRUMENTS[name].due(index, last):
                        self.instrument_steps[name].append(step)
                for name, _ in self.named:
                    arrays[name].update(fields[name])
                info.update(scalars)
        return arrays, info, extras

    def _request(self, step: int) -> ReferenceRequest:
        inputs, targets = self._reference_batch()
        return ReferenceRequest(
            self.model,
            self.loss_fn,
            inputs,
            targets,
            tuple(name for name, _ in self.named),
            exact_method=self.exact_method,
            samples=self.samples,
            seed=self.seed + step,
            device=self.named[0][1].device,
            train=self.reference_mode == "train",
            step_state=self._before.state(step, self.named, self.optimizer) if self._before else None,
        )

    def snapshot(self) -> None:
        """Take a snapshot now (normally called by :meth:`step` every ``every`` steps)."""
        step = self.steps
        if self.on_snapshot:
            self.on_snapshot(step, "start")
        start = time.perf_counter()
        arrays, info, extras = self.reference_diagonal(step)
        self._snapshot_index += 1
        state = self.optimizer.state
        own = self.is_arturo or self.adapter is None  # arTuRO's filter state as stored before issue 13
        for name, p in self.named:
            arrays[name]["weight"] = p.detach()
            for key in _STATE_FIELDS if own else ():
                if key in state[p]:
                    arrays[name][key] = state[p][key]
        if not own and (info := add_estimate(arrays, self.adapter, self.optimizer, self.named)) != self.estimator:
            self.estimator = self._extra_manifest["estimator"] = info  # e.g. Adam's scale: coupled weight decay
        last = getattr(self.optimizer, "last_step", None) or {}
        scalars = {
            "kl_bound": last.get("kl_bound", float(self.optimizer.param_groups[0]["lr"])),
            "eta": last.get("eta", math.nan),
            "kl0_ratio": last.get("kl0_ratio", math.nan),
            "eta_star": last.get("eta_star", math.nan),
            "reference": self.reference,
            "probe_loss": self._probe_loss(),
            **info,
        }
        cpu = {name: {f: self._stored(name, t) for f, t in fields.items()} for name, fields in arrays.items()}
        scalars["seconds"] = time.perf_counter() - start
        self.writer.add_snapshot(step, scalars, cpu, extras)
        for sink in self.sinks:
            sink.snapshot(step, scalars, cpu)
        now = time.perf_counter()
        if now - self._last_flush >= _FLUSH_SECONDS:  # rewriting the tables costs ~10 ms
            self.writer.flush()
            self._last_flush = now
        self.snapshot_seconds += time.perf_counter() - start
        if self.on_snapshot:
            self.on_snapshot(step, "end")

    def _stored(self, name: str, tensor: Tensor):
        """``tensor`` as the snapshot stores it: its kept coordinates (gathered on its device, so
        only those cross to the CPU), in the snapshot dtype, as a numpy array."""
        tensor = tensor.detach()
        index = self._kept.get(name)
        if index is not None:
            if index.device != tensor.device:
                index = self._kept[name] = index.to(tensor.device)
            tensor = tensor.reshape(-1)[index]
        return tensor.to("cpu", self._store_dtype).numpy()

    # ------------------------------------------------------------------ end
    def finish(self, extra: Mapping[str, Any] | None = None) -> None:
        """Mark the record complete (written last, so a killed run never looks complete)."""
        self._close_sinks()
        self.writer.finish(self._manifest_extra(extra))

    def _close_sinks(self) -> None:
        sinks, self.sinks = self.sinks, []
        for sink in sinks:
            sink.close()

    def _manifest_extra(self, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return {
            **self._extra_manifest,
            "diagnostics_seconds": self.snapshot_seconds + self.step_seconds,
            "instruments": dict(self.instrument_seconds),
            **({"instruments_skipped": dict(self.instruments_skipped)} if self.instruments_skipped else {}),
            "instrument_steps": {name: list(steps) for name, steps in self.instrument_steps.items()},
            **(extra or {}),
        }

    def fail(self, reason: str) -> None:
        """Mark the record failed (the tables so far stay readable)."""
        self._close_sinks()
        if not self.writer.finished:
            self.writer.fail(reason)

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is not None:
                self.fail(f"{exc_type.__name__}: {exc}")
        finally:
            self._close_sinks()
            self.writer.close()  # the run directory's lock, even if the record could not be marked
