"""The seeded training loop behind ``arturo-diag compare`` (and each run of a study).

``run(config)`` builds data, model and optimizer from a :class:`RunConfig`, trains with a
:class:`~arturo_diag.diagnostics.Monitor` attached, evaluates at the end of every epoch, and leaves
a complete run record in ``config.out`` (``docs/record.md``). Same config, same numbers, bit for
bit (on the same machine and torch build).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from arturo_diag.curvature import exact_diagonal, hutchinson_diagonal
from arturo_diag.curvature.instruments import applicable
from arturo_diag.diagnostics.monitor import Monitor
from arturo_diag.diagnostics.snapshot_cost import RunCost, check_free_space, estimate_run
from arturo_diag.errors import ConfigError
from arturo_diag.training.config import MAX_TOTAL_STEPS, RunConfig, config_to_toml
from arturo_diag.training.datasets import ArrayDataset, batches, load_dataset, probe_batch
from arturo_diag.training.models import build_model, model_inputs
from arturo_diag.training.optimizers import OPTIMIZERS
from arturo_diag.training.seeding import make_generator, seed_everything

__all__ = [
    "run",
    "prepare",
    "PreparedRun",
    "check_against_data",
    "build_optimizer",
    "evaluate",
    "RunResult",
    "ProgressCallback",
]

#: ``progress(event, info)``: events "start" {total_steps, snapshots}, "step" {step, loss}, "epoch" {epoch, ...},
#: "snapshot" {step, phase}, "done" {seconds}.
ProgressCallback = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    steps: int
    seconds: float
    diagnostics_seconds: float


def build_optimizer(config: RunConfig, model: nn.Module, num_train: int | None = None) -> torch.optim.Optimizer:
    """The optimizer a (resolved) config names, built by its spec in :data:`OPTIMIZERS`
    (``num_train``: the training set's size; IVON's ess, required for it)."""
    return OPTIMIZERS[config.optimizer].build(config, model, num_train)


@contextlib.contextmanager
def _one_torch_thread():
    """Train on one torch thread (restored after): float sums then run in one order whatever the
    machine's cores, so a `compare` run and the same cell of a study (whose workers have one thread
    each) give the same numbers bit for bit."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` (in eval mode) on ``(x, y)``."""
    was_training = model.training
    model.eval()
    total_loss, correct = 0.0, 0
    for start in range(0, x.shape[0], batch_size):
        out = model(x[start : start + batch_size])
        target = y[start : start + batch_size]
        total_loss += float(nn.functional.cross_entropy(out, target, reduction="sum"))
        correct += int((out.argmax(dim=1) == target).sum())
    model.train(was_training)
    n = max(x.shape[0], 1)
    return total_loss / n, correct / n


def _oracle_curvature(
    config: RunConfig, model: nn.Module, x: torch.Tensor, y: torch.Tensor, step: int
) -> dict[torch.Tensor, torch.Tensor]:
    """The reference diagonal Hessian of the current minibatch, for the oracle ablation."""
    loss_fn = nn.functional.cross_entropy
    if config.oracle == "exact":
        h = exact_diagonal(model, loss_fn, x, y, method=config.exact_method)
    else:
        generator = torch.Generator(device=x.device).manual_seed(config.seed * 1_000_003 + step)
        h, _ = hutchinson_diagonal(model, loss_fn, x, y, config.samples, generator)
    by_name = dict(model.named_parameters())
    return {by_name[name]: tensor for name, tensor in h.items()}


@dataclass
class PreparedRun:
    """A run checked and built up to its first step (:func:`prepare`): the resolved config, the
    data, the model, the optimizer, and the monitor whose record directory is already created."""

    config: RunConfig
    dataset: ArrayDataset
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    monitor: Monitor
    total_steps: int
    epochs: int
    batches_per_epoch: int
    snapshots: int
    warnings: tuple[str, ...] = ()  # things the run will do that the user may not expect (no snapshot at all, ...)
    cost: RunCost | None = None  # the snapshots' estimated size and seconds (printed before training)


def check_against_data(config: RunConfig, num_train: int, name: str) -> list[str]:
    """Checks of a resolved config that need the training set's size ``num_train``; returns warnings.

    Raises:
        ConfigError: a batch larger than the training set, a probe batch larger than it (when there
            are snapshots), or more than :data:`MAX_TOTAL_STEPS` steps.
    """
    if config.batch_size > num_train:
        raise ConfigError("batch_size", config.batch_size, f"at most {num_train}, the training examples of {name}")
    snapshots_taken = OPTIMIZERS[config.optimizer].has_estimate and config.reference != "none"
    if snapshots_taken and config.reference_batch == "probe" and config.probe_size > num_train:
        raise ConfigError("probe_size", config.probe_size, f"at most {num_train}, the training examples of {name}")
    batches_per_epoch = math.ceil(num_train / config.batch_size)
    total_steps = config.steps if config.steps is not None else config.epochs * batches_per_epoch
    if total_steps > MAX_TOTAL_STEPS:
        raise ConfigError(
            "epochs",
            config.epochs,
            f"at most {MAX_TOTAL_STEPS // batches_per_epoch:,} "
            f"({batches_per_epoch} steps each; a run is at most {MAX_TOTAL_STEPS:,} steps)",
        )
    warnings = []
    if snapshots_taken and config.every > total_steps:
        warnings.append(
            f"every: {config.every} > {total_steps} steps of the run; no reference snapshot will be "
            f"taken (pass --every {total_steps} or less, or --reference none)"
        )
    return warnings


def prepare(
    config: RunConfig, *, overwrite: bool = False, dataset: ArrayDataset | None = None, kind: str = "compare"
) -> PreparedRun:
    """Everything of :func:`run` before the first step: resolve and check the config, load the
    data, build model and optimizer, create the record directory (``record.json`` says running).

    Raises:
        ConfigError / DataError: bad settings or data (before anything is written).
        RecordError: ``config.out`` holds another run and ``overwrite`` is false, or cannot be
            created or written (the path and the OS's reason).
    """
    config = config.resolved()
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", config.device, "cpu (no CUDA device is available here)")
    dtype = getattr(torch, config.dtype)
    seed_everything(config.seed)
    if dataset is None:
        dataset = load_dataset(
            config.dataset, config.data_dir, seed=config.seed, train_size=config.train_size, dtype=dtype, device=device
        )
    warnings = check_against_data(config, dataset.num_train, config.dataset)
    if dataset.inputs != model_inputs(config.model):  # a dataset passed in, not the config's: its kind
        what = "token ids" if dataset.inputs == "tokens" else "images"
        raise ConfigError("model", config.model, f"a model that reads {what}, as dataset {dataset.name} holds")
    model = build_model(
        config.model, in_channels=dataset.in_channels, num_classes=dataset.num_classes, image_size=dataset.image_size
    ).to(device=device, dtype=dtype)
    optimizer = build_optimizer(config, model, dataset.num_train)
    batches_per_epoch = math.ceil(dataset.num_train / config.batch_size)
    total_steps = config.steps if config.steps is not None else config.epochs * batches_per_epoch
    epochs = math.ceil(total_steps / batches_per_epoch)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=list(config.lr_milestones), gamma=config.lr_gamma
    )
    probe = probe_batch(dataset, min(config.probe_size, dataset.num_train), config.seed)
    loss_fn = nn.functional.cross_entropy
    # snapshots for every optimizer that keeps a curvature estimate (the Monitor reads it via adapter_for)
    reference = config.reference if OPTIMIZERS[config.optimizer].has_estimate else "none"
    snapshots = total_steps // config.every if reference != "none" else 0
    # what the snapshots will cost, before anything is written: refused if the disk cannot hold them
    instruments = config.instruments if reference != "none" else ()
    reference_batch = (
        probe
        if config.reference_batch == "probe"
        else (dataset.x_train[: config.batch_size], dataset.y_train[: config.batch_size])
    )
    with _one_torch_thread():  # as the snapshots will run: inside the training loop
        cost = estimate_run(
            model,
            loss_fn,
            reference_batch,
            snapshots=snapshots,
            reference=reference,
            exact_method=config.exact_method,
            samples=config.samples,
            instruments=applicable(instruments, model, config.reference_mode == "train")[0],
            arturo=config.optimizer == "arturo",
            train=config.reference_mode == "train",
            dtype=config.snapshot_dtype,
            subsample=config.subsample,
            seed=config.seed,
            out=config.out,
        )
    check_free_space(cost)
    warnings += cost.warnings
    monitor = Monitor(
        model,
        optimizer,
        loss_fn,
        probe,
        every=config.every,
        reference=reference,
        out=config.out,
        samples=config.samples,
        exact_method=config.exact_method,
        seed=config.seed,
        reference_mode=config.reference_mode,
        reference_batch=config.reference_batch,
        instruments=instruments,
        total_steps=total_steps,
        snapshot_dtype=config.snapshot_dtype,
        subsample=config.subsample,
        tensorboard=config.tensorboard,
        config_toml=config_to_toml(config),
        kind=kind,
        overwrite=overwrite,
        extra_manifest={
            "dataset": config.dataset,
            "model": config.model,
            "optimizer_name": config.optimizer,
            "total_steps": total_steps,
            "batches_per_epoch": batches_per_epoch,
            "estimate": cost.as_dict(),
        },
    )
    return PreparedRun(
        config,
        dataset,
        model,
        optimizer,
        scheduler,
        monitor,
        total_steps,
        epochs,
        batches_per_epoch,
        snapshots,
        tuple(warnings),
        cost,
    )


def run(
    config: RunConfig,
    *,
    progress: ProgressCallback | None = None,
    overwrite: bool = False,
    dataset: ArrayDataset | None = None,
    kind: str = "compare",
    prepared: PreparedRun | None = None,
) -> RunResult:
    """Train as ``config`` says and write the run record to ``config.out``.

    ``prepared``: the :func:`prepare` of this config, when the caller checked everything before
    showing progress (``arturo-diag compare`` does); then ``overwrite``, ``dataset`` and ``kind``
    were given to :func:`prepare`.

    Raises:
        ConfigError / DataError: bad settings or data (before anything is written).
        RecordError: ``config.out`` holds another run and ``overwrite`` is false.
    """
    if prepared is None:
        prepared = prepare(config, overwrite=overwrite, dataset=dataset, kind=kind)
    config, dataset, model, optimizer = prepared.config, prepared.dataset, prepared.model, prepared.optimizer
    scheduler, monitor = prepared.scheduler, prepared.monitor
    total_steps, epochs, snapshots = prepared.total_steps, prepared.epochs, prepared.snapshots
    loss_fn = nn.functional.cross_entropy
    train_step = OPTIMIZERS[config.optimizer].train_step
    notify = progress or (lambda event, info: None)

    def on_snapshot(step: int, phase: str) -> None:
        notify("snapshot", {"step": step, "phase": phase})

    monitor.on_snapshot = on_snapshot
    notify("start", {"total_steps": total_steps, "epochs": epochs, "snapshots": snapshots, "run_dir": config.out})
    generator = make_generator(config.seed, "cpu")
    # the train augmentation's own stream (CIFAR's crops and flips): the batch order stays the seed's
    augment = dataset.train_transform
    augment_generator = make_generator(config.seed + 1, "cpu") if augment is not None else None
    start = time.perf_counter()
    step = 0
    with _one_torch_thread(), monitor:
        for epoch in range(1, epochs + 1):
            model.train()
            for x, y in batches(dataset.x_train, dataset.y_train, config.batch_size, generator):
                if step >= total_steps:
                    break
                if augment is not None:
                    x = augment(x, augment_generator)
                if config.oracle != "none" and step % config.oracle_every == 0:
                    optimizer.set_oracle_curvature(_oracle_curvature(config, model, x, y, step))
                loss = train_step(model, optimizer, loss_fn, x, y)  # zero_grad, forward, backward, step
                step += 1
                loss_value = float(loss)
                monitor.step(loss_value, epoch=epoch, batch=(x, y))
                notify("step", {"step": step, "loss": loss_value})
            train_loss, train_acc = evaluate(model, dataset.x_train, dataset.y_train)
            test_loss, test_acc = evaluate(model, dataset.x_test, dataset.y_test)
            row = {
                "epoch": epoch,
                "step": step,
                "train_loss": train_loss,
                "train_accuracy": train_acc,
                "test_loss": test_loss,
                "test_accuracy": test_acc,
            }
            monitor.epoch(row)
            notify("epoch", row)
            scheduler.step()
        seconds = time.perf_counter() - start
        monitor.finish({"seconds": seconds})
    notify("done", {"seconds": seconds})
    return RunResult(Path(config.out), step, seconds, monitor.snapshot_seconds + monitor.step_seconds)
