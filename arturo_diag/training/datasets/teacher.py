"""``teacher``: a synthetic teacher-student problem drawn from the seed: Gaussian 1x8x8 inputs
labelled by the argmax of a random one-hidden-layer ReLU network. Small and fast, for tests."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from arturo_diag.errors import ConfigError
from arturo_diag.training.datasets.base import (
    ArrayDataset,
    _check_float_dtype,
    _check_size,
)
from arturo_diag.training.seeding import _check_seed

__all__ = ["load", "make_teacher"]


def make_teacher(
    *,
    seed: int = 0,
    train_size: int = 1024,
    test_size: int = 256,
    num_classes: int = 10,
    image_size: int = 8,
    hidden: int = 32,
    dtype: torch.dtype = torch.float32,
) -> ArrayDataset:
    """A synthetic teacher-student dataset: Gaussian ``1 x image_size x image_size`` inputs labelled
    by a random ReLU teacher network, all drawn from ``seed``.

    The teacher is ``logits = relu(x W1 + b1) W2`` with ``W1``, ``W2`` scaled Gaussian and ``b1``
    Gaussian; its logits are centred per class on 4,096 calibration inputs so that every class
    occurs, and a label is the argmax. Inputs are already standard, so they are not rescaled.
    Train and test are drawn i.i.d. from the same distribution; the same seed gives the same data.
    """
    _check_size("train_size", train_size)
    _check_size("test_size", test_size)
    _check_size("num_classes", num_classes)
    _check_size("image_size", image_size)
    _check_size("hidden", hidden)
    _check_float_dtype(dtype)
    if num_classes < 2:
        raise ConfigError("num_classes", num_classes, "at least 2")
    g = torch.Generator().manual_seed(_check_seed(seed))
    d = image_size * image_size
    f64 = torch.float64
    w1 = torch.randn(d, hidden, generator=g, dtype=f64) / math.sqrt(d)
    b1 = torch.randn(hidden, generator=g, dtype=f64)
    w2 = torch.randn(hidden, num_classes, generator=g, dtype=f64) / math.sqrt(hidden)

    def teacher(x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ w1 + b1) @ w2

    centre = teacher(torch.randn(4096, d, generator=g, dtype=f64)).mean(0)
    x_train = torch.randn(train_size, d, generator=g, dtype=f64)
    x_test = torch.randn(test_size, d, generator=g, dtype=f64)
    shape = (1, image_size, image_size)
    return ArrayDataset(
        name="teacher",
        x_train=x_train.reshape(-1, *shape).to(dtype),
        y_train=(teacher(x_train) - centre).argmax(1),
        x_test=x_test.reshape(-1, *shape).to(dtype),
        y_test=(teacher(x_test) - centre).argmax(1),
        num_classes=num_classes,
        input_shape=shape,
    )


def load(
    data_dir: str | Path | None,
    *,
    seed: int,
    dtype: torch.dtype,
    normalize: bool,
    train_size: int | None,
    test_size: int | None,
) -> ArrayDataset:
    """The registry's loader: draws ``train_size`` (default 1,024) and ``test_size`` (default
    256) examples; the inputs are already standard, so ``normalize`` is not used."""
    return make_teacher(
        seed=seed,
        train_size=1024 if train_size is None else train_size,
        test_size=256 if test_size is None else test_size,
        dtype=dtype,
    )
