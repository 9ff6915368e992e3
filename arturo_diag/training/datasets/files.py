"""Helpers shared by the datasets read from local files (Fashion-MNIST, CIFAR): the data
directory, label checks, and uint8 images -> float tensors in [0, 1] standardised per channel with
the train split's statistics. A missing or malformed file raises :class:`DataError` with a one-line
message that starts with the file's path; nothing is downloaded."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from arturo_diag.errors import DataError
from arturo_diag.training.datasets.base import ArrayDataset


def _check_labels(path: Path, labels: np.ndarray, num_classes: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise DataError(f"{path}: labels have shape {labels.shape}, expected one label per example")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: labels have dtype {labels.dtype}, expected integers")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)][0]
        raise DataError(f"{path}: label {int(bad)} out of range 0..{num_classes - 1}")
    return labels.astype(np.int64)


def _uint8_channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of uint8 images ``(N, C, H, W)``, in [0, 1] units, exactly from a
    histogram (no float copy of the whole array)."""
    values = np.arange(256, dtype=np.float64)
    means, stds = [], []
    for c in range(x.shape[1]):
        counts = np.bincount(x[:, c].ravel(), minlength=256).astype(np.float64)
        n = counts.sum()
        mean = (values * counts).sum() / n
        var = (((values - mean) ** 2) * counts).sum() / n
        means.append(mean / 255.0)
        stds.append(math.sqrt(var) / 255.0)
    return np.asarray(means), np.asarray(stds)


def _uint8_to_tensor(
    x: np.ndarray, mean: np.ndarray | None, std: np.ndarray | None, dtype: torch.dtype
) -> torch.Tensor:
    """uint8 images -> float ``dtype`` in [0, 1], standardised per channel if ``mean`` is given."""
    t = torch.from_numpy(np.ascontiguousarray(x)).to(dtype).div_(255.0)
    if mean is not None and std is not None:
        shape = (1, -1, 1, 1)
        safe_std = np.where(std > 0, std, 1.0)  # a constant channel stays centred at zero
        t.sub_(torch.as_tensor(mean, dtype=dtype).view(shape))
        t.div_(torch.as_tensor(safe_std, dtype=dtype).view(shape))
    return t


def _build_uint8_dataset(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    num_classes: int,
    dtype: torch.dtype,
    normalize: bool,
) -> ArrayDataset:
    if x_train.shape[0] == 0:
        raise DataError(f"{name}: the train split holds no images")
    mean = std = None
    if normalize:
        mean, std = _uint8_channel_stats(x_train)
    return ArrayDataset(
        name=name,
        x_train=_uint8_to_tensor(x_train, mean, std, dtype),
        y_train=torch.from_numpy(y_train),
        x_test=_uint8_to_tensor(x_test, mean, std, dtype),
        y_test=torch.from_numpy(y_test),
        num_classes=num_classes,
        input_shape=tuple(x_train.shape[1:]),  # type: ignore[arg-type]
        mean=None if mean is None else tuple(float(v) for v in mean),
        std=None if std is None else tuple(float(v) for v in std),
    )


def _check_dir(data_dir: str | Path) -> Path:
    path = Path(data_dir).expanduser()
    if not path.exists():
        raise DataError(f"{path}: data directory not found")
    if not path.is_dir():
        raise DataError(f"{path}: not a directory; pass the folder that holds the dataset files")
    return path
