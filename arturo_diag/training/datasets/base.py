"""What every dataset is and how training reads it: :class:`ArrayDataset`, :func:`batches`,
:func:`probe_batch`, and the checks of dtypes and sizes every loader shares.

Every dataset is an :class:`ArrayDataset`: float inputs ``(N, C, H, W)`` (or int64 token ids
``(N, T)``, the ``chars`` corpus) and int64 labels for a train and a test split, all in memory. Minibatches come from :func:`batches` (a seeded shuffle per
epoch, driven by a ``torch.Generator``) and a fixed probe batch for curvature snapshots from
:func:`probe_batch`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from arturo_diag.errors import ConfigError, DataError
from arturo_diag.training.seeding import _check_seed

__all__ = ["ArrayDataset", "batches", "probe_batch"]


@dataclass(frozen=True)
class ArrayDataset:
    """An image (or token) classification dataset held in memory as tensors.

    Images are float ``(N, C, H, W)``; token sequences (``inputs == "tokens"``) are int64 ids
    ``(N, T)`` in ``[0, num_classes)`` with ``input_shape = (T,)``, and their labels are the next
    token (the vocabulary is the classes). For them ``in_channels`` is 1 and ``image_size`` is
    ``T``, what :func:`~arturo_diag.training.models.build_model` passes on to a token model.

    Attributes:
        name: dataset name, e.g. ``"digits"``.
        x_train: float inputs of the train split, shape ``(N_train, C, H, W)`` (tokens: int64 ``(N_train, T)``).
        y_train: int64 labels of the train split, shape ``(N_train,)``, values in ``[0, num_classes)``.
        x_test: float inputs of the test split, shape ``(N_test, C, H, W)``.
        y_test: int64 labels of the test split, shape ``(N_test,)``.
        num_classes: number of classes.
        input_shape: ``(C, H, W)`` of one input (tokens: ``(T,)``).
        mean: per-channel train mean subtracted from the [0, 1]-scaled inputs (``None`` if the
            inputs were not standardised).
        std: per-channel train standard deviation the inputs were divided by (or ``None``).
        train_transform: the training augmentation, ``(x_batch, generator) -> x_batch`` of the
            same shape, applied by the training loop to each train minibatch (``None``: none);
            evaluation and the curvature probe see the untransformed inputs.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    input_shape: tuple[int, ...]
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    train_transform: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None

    def __post_init__(self) -> None:
        for split, x, y in (("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test)):
            if self.inputs == "tokens":
                self._check_tokens(split, x)
            elif x.ndim != 4 or tuple(x.shape[1:]) != tuple(self.input_shape):
                raise DataError(
                    f"{self.name}: {split} inputs have shape {tuple(x.shape)}, "
                    f"expected (N, {', '.join(map(str, self.input_shape))})"
                )
            if self.inputs == "image" and not x.is_floating_point():
                raise DataError(f"{self.name}: {split} inputs have dtype {x.dtype}, expected a float dtype")
            if y.dtype != torch.int64 or y.ndim != 1 or y.shape[0] != x.shape[0]:
                raise DataError(
                    f"{self.name}: {split} labels have shape {tuple(y.shape)} and dtype {y.dtype}, "
                    f"expected ({x.shape[0]},) int64"
                )

    def _check_tokens(self, split: str, x: torch.Tensor) -> None:
        if x.ndim != 2 or tuple(x.shape[1:]) != tuple(self.input_shape) or x.dtype != torch.int64:
            raise DataError(
                f"{self.name}: {split} inputs have shape {tuple(x.shape)} and dtype {x.dtype}, "
                f"expected (N, {self.input_shape[0]}) int64 token ids"
            )
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.num_classes):
            raise DataError(f"{self.name}: {split} token ids outside [0, {self.num_classes})")

    @property
    def inputs(self) -> str:
        """``"image"`` (float ``(N, C, H, W)``) or ``"tokens"`` (int64 ids ``(N, T)``)."""
        return "tokens" if len(self.input_shape) == 1 else "image"

    @property
    def in_channels(self) -> int:
        """Channels ``C`` of one input (tokens: 1)."""
        return 1 if self.inputs == "tokens" else self.input_shape[0]

    @property
    def image_size(self) -> int:
        """Side ``H`` (= ``W``) of one square input (tokens: the sequence length ``T``)."""
        return self.input_shape[0] if self.inputs == "tokens" else self.input_shape[1]

    @property
    def num_train(self) -> int:
        """Number of training examples."""
        return self.x_train.shape[0]

    @property
    def num_test(self) -> int:
        """Number of test examples."""
        return self.x_test.shape[0]

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> ArrayDataset:
        """A copy with inputs cast to the float ``dtype`` and everything moved to ``device``.

        Labels (and token ids) stay int64. ``None`` keeps the current dtype or device.
        """
        if dtype is not None:
            _check_float_dtype(dtype)
        if self.inputs == "tokens":
            dtype = None
        return dataclasses.replace(
            self,
            x_train=self.x_train.to(device=device, dtype=dtype),
            y_train=self.y_train.to(device=device),
            x_test=self.x_test.to(device=device, dtype=dtype),
            y_test=self.y_test.to(device=device),
        )


def _check_float_dtype(dtype: torch.dtype) -> None:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ConfigError("dtype", dtype, "a torch float dtype such as torch.float32 or torch.float64")


def _check_size(field: str, value: int | None, available: int | None = None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(field, value, "a positive integer")
    if available is not None and value > available:
        raise ConfigError(field, value, f"at most {available}, the size of that split")


def _take_first(ds: ArrayDataset, train_size: int | None, test_size: int | None) -> ArrayDataset:
    _check_size("train_size", train_size, ds.num_train)
    _check_size("test_size", test_size, ds.num_test)
    return dataclasses.replace(
        ds,
        x_train=ds.x_train[:train_size],
        y_train=ds.y_train[:train_size],
        x_test=ds.x_test[:test_size],
        y_test=ds.y_test[:test_size],
    )


def batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
    *,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of shuffled minibatches ``(x[idx], y[idx])``.

    Each call draws a fresh permutation from ``generator``, so calling it once per epoch with one
    generator gives a new order every epoch, and a generator with the same seed replays the same
    sequence of epochs. The last batch is smaller unless ``drop_last``.

    Raises:
        ConfigError: ``batch_size`` if it is not a positive integer.
        DataError: ``x`` and ``y`` hold different numbers of examples.
    """
    _check_size("batch_size", batch_size)
    n = x.shape[0]
    if y.shape[0] != n:
        raise DataError(f"batches: {x.shape[0]} inputs but {y.shape[0]} labels")
    order = torch.randperm(n, generator=generator, device=generator.device)
    if order.device != x.device:
        order = order.to(x.device)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = order[start : start + batch_size]
        yield x[idx], y[idx]


def probe_batch(dataset: ArrayDataset, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed probe batch ``(inputs, targets)`` of ``size`` distinct training examples, drawn by
    ``seed`` (the same seed gives the same examples), on the dataset's device and dtype.

    Raises:
        ConfigError: ``probe_size`` if ``size`` is not in ``1..num_train``; ``seed`` if negative.
    """
    _check_size("probe_size", size, dataset.num_train)
    g = torch.Generator().manual_seed(_check_seed(seed))
    idx = torch.randperm(dataset.num_train, generator=g)[:size].to(dataset.x_train.device)
    return dataset.x_train[idx], dataset.y_train[idx]
