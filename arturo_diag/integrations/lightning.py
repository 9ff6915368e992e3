"""A PyTorch Lightning callback that writes an arturo-diag run record of ``Trainer.fit`` (docs/lightning.md).

Usage::

    from arturo_diag.integrations.lightning import ArturoDiagCallback

    callback = ArturoDiagCallback("runs/lightning", (probe_x, probe_y), every=10)
    trainer = pl.Trainer(max_steps=300, callbacks=[callback])
    trainer.fit(module, train_loader)  # module.configure_optimizers() returns arturo_diag.optim.Arturo
    # then: arturo-diag report runs/lightning

The callback wraps :class:`arturo_diag.diagnostics.monitor.Monitor`: it builds it when training starts
(the LightningModule as the model, ``trainer.optimizers[0]`` as the optimizer), records every optimizer
step (not every batch: gradient accumulation steps once per group of batches), an ``epochs.csv`` row at
the end of every training epoch, and marks the record complete, failed or diverged as the fit ends.
A :class:`~arturo_diag.errors.Diverged` raised by the Monitor propagates: ``trainer.fit`` raises it,
the record is ``"diverged"``.

The callback subclasses ``pytorch_lightning.Callback`` when the ``pytorch_lightning`` package is
installed, else ``lightning.pytorch.Callback``: use the ``Trainer`` of the same namespace.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from arturo_diag._toml import toml_value
from arturo_diag.diagnostics.monitor import Monitor
from arturo_diag.diagnostics.monitor_facts import check_arguments
from arturo_diag.errors import ConfigError

_EXTRA_HINT = 'pip install -e ".[lightning]"'


def _lightning():
    """The installed Lightning namespace: ``pytorch_lightning``, else ``lightning.pytorch``."""
    try:
        import pytorch_lightning

        return pytorch_lightning
    except ImportError:
        pass
    try:
        import lightning.pytorch

        return lightning.pytorch
    except ImportError:
        raise ImportError(
            "arturo_diag.integrations.lightning needs PyTorch Lightning (pytorch_lightning or lightning.pytorch): "
            + _EXTRA_HINT
        ) from None


pl = _lightning()

__all__ = ["ArturoDiagCallback", "LOSS_ATTRIBUTE", "TRAIN_METRICS", "VALIDATION_METRICS"]

LOSS_ATTRIBUTE = "loss_fn"  # the LightningModule attribute read when no loss_fn is given
# epochs.csv column -> the logged metrics read for it, first found wins (trainer.callback_metrics)
TRAIN_METRICS = {
    "train_loss": ("train_loss_epoch", "train_loss"),
    "train_accuracy": ("train_acc_epoch", "train_acc", "train_accuracy_epoch", "train_accuracy"),
}
VALIDATION_METRICS = {
    "test_loss": ("val_loss_epoch", "val_loss"),
    "test_accuracy": ("val_acc_epoch", "val_acc", "val_accuracy_epoch", "val_accuracy"),
}
# the Monitor's arguments the callback sets itself
_OWN = ("model", "optimizer", "loss_fn", "probe_batch", "every", "reference", "out", "overwrite", "tensorboard", "kind")
_MONITOR_ARGUMENTS = tuple(inspect.signature(Monitor.__init__).parameters)[1:]


def _metric(metrics: Mapping[str, Any], names: Sequence[str]) -> float:
    for name in names:
        if name in metrics:
            value = metrics[name]
            return float(value.detach()) if isinstance(value, Tensor) else float(value)
    return math.nan


def _loss_of(outputs: Any) -> Tensor | float | None:
    """The loss in a ``training_step``'s outputs: a Tensor, or a mapping's ``"loss"``."""
    if isinstance(outputs, Mapping):
        outputs = outputs.get("loss")
    if isinstance(outputs, Tensor) and outputs.numel() == 1:
        return outputs
    if isinstance(outputs, (int, float)) and not isinstance(outputs, bool):
        return float(outputs)
    return None


def _pair(batch: Any) -> tuple[Any, Any] | None:
    """``(inputs, targets)`` of a batch, or None when the batch is not a pair."""
    if isinstance(batch, Sequence) and not isinstance(batch, str) and len(batch) == 2:
        return batch[0], batch[1]
    return None


def _on_device(batch: Any, device: torch.device) -> Any:
    return batch.detach().to(device) if isinstance(batch, Tensor) else batch


class ArturoDiagCallback(pl.Callback):
    """Writes a run record (docs/record.md, kind ``"monitor"``) of a ``Trainer.fit``.

    Args:
        out: the run record's directory.
        probe_batch: ``(inputs, targets)``, the fixed batch h is the Hessian of; converted like the
            Trainer's batches (its precision) and moved to ``pl_module.device``. None: the first training
            batch of the fit (copied before its step), recorded as ``probe_batch_source =
            "first_training_batch"`` in record.json; not needed with ``reference_batch="minibatch"``.
        loss_fn: ``(outputs, targets) -> scalar`` mean loss, with ``outputs = pl_module(inputs)``.
            None: the module's ``loss_fn`` attribute (:data:`LOSS_ATTRIBUTE`); a fit without either is
            refused with :class:`~arturo_diag.errors.ConfigError` before it starts.
        every: a snapshot every this many optimizer steps.
        reference: ``"exact"``, ``"hutchinson"``, ``"both"`` or ``"none"``.
        overwrite: replace a record already in ``out``.
        tensorboard: the Monitor's TensorBoard sink (``True``: ``out/tensorboard``, or a directory).
        **monitor_kwargs: further arguments of :class:`~arturo_diag.diagnostics.monitor.Monitor`
            (``samples``, ``exact_method``, ``seed``, ``reference_mode``, ``reference_batch``,
            ``instruments``, ``sinks``, ``config_toml``, ``extra_manifest``, ``total_steps``, ...).

    ``monitor`` is the Monitor of the last fit (None before one starts).
    """

    def __init__(
        self,
        out: str | Path,
        probe_batch: Sequence[Tensor] | None = None,
        *,
        loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
        every: int = 10,
        reference: str = "exact",
        overwrite: bool = False,
        tensorboard: bool | str | Path = False,
        **monitor_kwargs: Any,
    ) -> None:
        unknown = sorted(set(monitor_kwargs) - set(_MONITOR_ARGUMENTS))
        own = sorted(set(monitor_kwargs) & set(_OWN))
        if unknown or own:
            name = (unknown or own)[0]
            allowed = ", ".join(a for a in _MONITOR_ARGUMENTS if a not in _OWN)
            why = "is set by the callback" if name in own else "is not an argument of Monitor"
            raise TypeError(f"ArturoDiagCallback: {name!r} {why}; the Monitor's arguments it passes on: {allowed}")
        self._reference_batch = monitor_kwargs.get("reference_batch", "probe")
        check_arguments(
            instruments=monitor_kwargs.get("instruments", ()),
            reference=reference,
            every=every,
            probe_batch=probe_batch if probe_batch is not None else (),  # None: the first training batch
            reference_batch=self._reference_batch,
        )
        if probe_batch is not None and _pair(probe_batch) is None:
            raise ConfigError("probe_batch", type(probe_batch).__name__, "(inputs, targets) or None")
        self.out = str(out)
        self.probe_batch = probe_batch
        self.loss_fn = loss_fn
        self.every = every
        self.reference = reference
        self.overwrite = overwrite
        self.tensorboard = tensorboard
        self.monitor_kwargs = dict(monitor_kwargs)
        self.monitor: Monitor | None = None
        self._reset()

    def _reset(self) -> None:
        self._loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None
        self._optimizer: torch.optim.Optimizer | None = None
        self._waiting_for_probe = False  # the Monitor is built at the first training batch
        self._start_step = 0  # trainer.global_step when the fit's training started
        self._losses: list[float] = []  # the micro-batch losses since the last optimizer step
        self._validated: tuple[int, dict[str, float]] | None = None  # (epoch, metrics) of the last validation
        self._epoch_steps: set[int] = set()  # steps with an epochs.csv row
        self._last_epoch = 1
        self._started = 0.0

    # ------------------------------------------------------------------ start
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Refuse what the record cannot describe before anything trains."""
        if str(getattr(stage, "value", stage)) != "fit":
            return
        world_size = int(getattr(trainer, "world_size", 1))
        if world_size > 1:
            raise ConfigError(
                "trainer.world_size",
                world_size,
                "1: ArturoDiagCallback records one process's training; DDP and other multi-process strategies "
                "are not supported",
            )
        if type(pl_module).forward is pl.LightningModule.forward:
            raise ConfigError(
                "forward", type(pl_module).__name__, "a LightningModule with forward(inputs) -> what loss_fn takes"
            )
        loss_fn = self.loss_fn if self.loss_fn is not None else getattr(pl_module, LOSS_ATTRIBUTE, None)
        if not callable(loss_fn):
            raise ConfigError(
                "loss_fn",
                loss_fn,
                f"a callable (outputs, targets) -> scalar loss: ArturoDiagCallback(loss_fn=...) or the "
                f"LightningModule's {LOSS_ATTRIBUTE!r} attribute",
            )
        self._loss_fn = loss_fn

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._reset()
        self.monitor = None
        self.setup(trainer, pl_module, "fit")  # again: the Trainer's state as training starts
        optimizers = list(trainer.optimizers)
        if len(optimizers) != 1:
            raise ConfigError("optimizers", len(optimizers), "exactly one (configure_optimizers returning one)")
        self._optimizer = getattr(optimizers[0], "_optimizer", optimizers[0])  # a LightningOptimizer's own
        self._start_step = int(trainer.global_step)
        self._started = time.perf_counter()
        if self.probe_batch is None and self._reference_batch != "minibatch":
            self._waiting_for_probe = True
            return
        probe = None
        if self.probe_batch is not None and self._reference_batch != "minibatch":
            probe = trainer.precision_plugin.convert_input(tuple(self.probe_batch))
        self._build(trainer, pl_module, probe, "given" if probe is not None else None)

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if not self._waiting_for_probe:
            return
        pair = _pair(batch)
        if pair is None:
            raise ConfigError(
                "probe_batch",
                None,
                f"(inputs, targets): the first training batch is a {type(batch).__name__}, not a pair; "
                "pass ArturoDiagCallback(out, probe_batch=(inputs, targets))",
            )
        self._waiting_for_probe = False
        probe = tuple(t.detach().clone() if isinstance(t, Tensor) else t for t in pair)  # before its step
        self._build(trainer, pl_module, probe, "first_training_batch")

    def _build(self, trainer: Any, pl_module: Any, probe: Sequence[Any] | None, source: str | None) -> None:
        kwargs = dict(self.monitor_kwargs)
        if "total_steps" not in kwargs:
            kwargs["total_steps"] = self._total_steps(trainer)
        device = pl_module.device
        if probe is not None:
            probe = tuple(_on_device(t, device) for t in probe)
        manifest = {
            "integration": "lightning",
            "lightning_version": str(getattr(pl, "__version__", "unknown")),
            **({"probe_batch_source": source} if source else {}),
            **dict(kwargs.pop("extra_manifest", None) or {}),
        }
        config = kwargs.pop("config_toml", None) or self._config_toml(trainer, pl_module, kwargs, source)
        self.monitor = Monitor(
            pl_module,
            self._optimizer,
            self._loss_fn,
            probe,
            every=self.every,
            reference=self.reference,
            out=self.out,
            overwrite=self.overwrite,
            tensorboard=self.tensorboard,
            kind="monitor",
            config_toml=config,
            extra_manifest=manifest,
            **kwargs,
        )

    def _total_steps(self, trainer: Any) -> int | None:
        """The fit's optimizer steps still to take: ``max_steps``, else Lightning's estimate."""
        if int(trainer.max_steps) > 0:
            return max(int(trainer.max_steps) - self._start_step, 0) or None
        try:
            estimate = float(trainer.estimated_stepping_batches)
        except Exception:  # no sized dataloader: the Monitor then does not know the last snapshot
            return None
        return int(estimate) - self._start_step if math.isfinite(estimate) and estimate > self._start_step else None

    def _config_toml(self, trainer: Any, pl_module: Any, kwargs: Mapping[str, Any], source: str | None) -> str:
        diagnostics: dict[str, Any] = {"every": self.every, "reference": self.reference}
        for key in ("reference_mode", "reference_batch", "exact_method", "samples", "instruments"):
            if kwargs.get(key) is not None:
                diagnostics[key] = list(kwargs[key]) if key == "instruments" else kwargs[key]
        lightning = {
            "module": type(pl_module).__name__,
            "optimizer": type(self._optimizer).__name__,
            "max_steps": int(trainer.max_steps),
            "max_epochs": trainer.max_epochs,
            "accumulate_grad_batches": int(trainer.accumulate_grad_batches),
            "precision": str(trainer.precision),
            "probe_batch": source or "none",
        }
        lines = ["# written by arturo_diag.integrations.lightning.ArturoDiagCallback"]
        for table, fields in (("diagnostics", diagnostics), ("lightning", lightning)):
            lines.append(f"[{table}]")
            lines += [f"{key} = {toml_value(value)}" for key, value in fields.items() if value is not None]
        return "\n".join(lines) + "\n"

    # ------------------------------------------------------------------ per step
    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        monitor = self.monitor
        if monitor is None or monitor.writer.finished:
            return
        loss = _loss_of(outputs)
        if loss is not None:
            # automatic optimization hands the hooks the loss divided by accumulate_grad_batches
            scale = int(trainer.accumulate_grad_batches) if pl_module.automatic_optimization else 1
            self._losses.append(float(loss.detach() if isinstance(loss, Tensor) else loss) * scale)
        taken = int(trainer.global_step) - self._start_step - monitor.steps
        if taken <= 0:  # accumulating gradients, or a skipped step
            return
        if taken > 1:
            raise ConfigError(
                "optimizer steps per batch", taken, "at most 1 (manual optimization stepping twice is not supported)"
            )
        losses, self._losses = self._losses, []
        value = math.fsum(losses) / len(losses) if losses else None
        self._last_epoch = int(trainer.current_epoch) + 1
        with torch.enable_grad():
            monitor.step(value, epoch=self._last_epoch, batch=_pair(batch))  # Diverged propagates

    # ------------------------------------------------------------------ epochs
    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if self.monitor is None or trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        self._validated = (
            int(trainer.current_epoch),
            {column: _metric(metrics, names) for column, names in VALIDATION_METRICS.items()},
        )

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        monitor = self.monitor
        if monitor is None or monitor.writer.finished:
            return
        epoch = int(trainer.current_epoch)
        self._add_epoch(
            trainer, epoch + 1, self._validated[1] if self._validated and self._validated[0] == epoch else {}
        )

    def _add_epoch(self, trainer: Any, epoch: int, validation: Mapping[str, float]) -> None:
        metrics = trainer.callback_metrics
        row = {"epoch": epoch, "step": self.monitor.steps}
        row.update({column: _metric(metrics, names) for column, names in TRAIN_METRICS.items()})
        row.update({column: validation.get(column, math.nan) for column in VALIDATION_METRICS})
        self.monitor.epoch(row)
        self._epoch_steps.add(self.monitor.steps)

    # ------------------------------------------------------------------ end
    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        monitor = self.monitor
        if monitor is None or monitor.writer.finished:
            return
        if monitor.steps not in self._epoch_steps:  # the run's end has its row (docs/record.md)
            self._add_epoch(trainer, self._last_epoch, {})
        monitor.finish({"seconds": time.perf_counter() - self._started, "global_step": int(trainer.global_step)})

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        """The record is marked failed (a diverged one stays diverged) and its directory released."""
        if self.monitor is not None:
            self.monitor.__exit__(type(exception), exception, exception.__traceback__)

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """A fit that ended without on_train_end or on_exception leaves no record looking complete."""
        monitor = self.monitor
        if monitor is not None and str(getattr(stage, "value", stage)) == "fit" and not monitor.writer.finished:
            monitor.__exit__(RuntimeError, RuntimeError("the fit ended before training finished"), None)
