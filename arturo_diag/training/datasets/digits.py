"""``digits``: scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes; shipped inside
scikit-learn, no download), scaled to [0, 1], split by a seeded stratified permutation and
standardised with the train split's mean and standard deviation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from arturo_diag.errors import ConfigError
from arturo_diag.training.datasets.base import ArrayDataset, _check_float_dtype
from arturo_diag.training.seeding import _check_seed

__all__ = ["load", "load_digits"]


def load_digits(
    *,
    seed: int = 0,
    test_fraction: float = 0.2,
    dtype: torch.dtype = torch.float32,
    normalize: bool = True,
) -> ArrayDataset:
    """scikit-learn's 8x8 digits as a ``1x8x8`` dataset with a seeded stratified train/test split.

    Pixels (0..16) are divided by 16; with ``normalize`` they are then standardised with the train
    split's mean and standard deviation (one channel). Each class puts
    ``round(test_fraction * n_class)`` examples into the test split (359 of 1,797 at 0.2); both
    splits are then shuffled. The same seed gives the same split.
    """
    from sklearn.datasets import load_digits as _sk_load_digits  # the data ships with sklearn

    if not 0.0 < test_fraction < 1.0:
        raise ConfigError("test_fraction", test_fraction, "a number strictly between 0 and 1")
    _check_float_dtype(dtype)
    seed = _check_seed(seed)
    bunch = _sk_load_digits()
    x = np.asarray(bunch.data, dtype=np.float64).reshape(-1, 1, 8, 8) / 16.0
    y = np.asarray(bunch.target, dtype=np.int64)
    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_test = int(round(test_fraction * idx.size))
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    train = rng.permutation(np.concatenate(train_idx))
    test = rng.permutation(np.concatenate(test_idx))
    x_train, x_test = x[train], x[test]
    mean = std = None
    if normalize:
        m, s = float(x_train.mean()), float(x_train.std())
        x_train, x_test = (x_train - m) / s, (x_test - m) / s
        mean, std = (m,), (s,)
    return ArrayDataset(
        name="digits",
        x_train=torch.from_numpy(x_train).to(dtype),
        y_train=torch.from_numpy(y[train]),
        x_test=torch.from_numpy(x_test).to(dtype),
        y_test=torch.from_numpy(y[test]),
        num_classes=10,
        input_shape=(1, 8, 8),
        mean=mean,
        std=std,
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
    """The registry's loader (see :mod:`~arturo_diag.training.datasets.registry`): the whole
    dataset; ``load_dataset`` keeps the first ``train_size``/``test_size`` examples."""
    return load_digits(seed=seed, dtype=dtype, normalize=normalize)
