"""``fashion_mnist``: Fashion-MNIST from its four IDX files (raw or ``.gz``) in ``data_dir``."""

from __future__ import annotations

from pathlib import Path

import torch

from arturo_diag.errors import DataError
from arturo_diag.training.datasets.base import ArrayDataset, _check_float_dtype
from arturo_diag.training.datasets.files import (
    _build_uint8_dataset,
    _check_dir,
    _check_labels,
)
from arturo_diag.training.datasets.idx import _find_file, read_idx

__all__ = ["load", "load_fashion_mnist"]


def load_fashion_mnist(
    data_dir: str | Path, *, dtype: torch.dtype = torch.float32, normalize: bool = True
) -> ArrayDataset:
    """Fashion-MNIST (or any MNIST-format set of 10 classes) from the four IDX files in ``data_dir``.

    Looks for ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``
    and ``t10k-labels-idx1-ubyte``, each raw or ``.gz``, in ``data_dir`` or, if not there, in the
    torchvision layout ``data_dir/FashionMNIST/raw``. Images must be ubyte 3-D (magic 0x00000803),
    labels ubyte 1-D (0x00000801) with values 0..9 and one label per image. Images become
    ``1 x H x W`` in [0, 1], standardised with the train mean and std if ``normalize``.

    Raises:
        DataError: a file is missing or malformed (the message names it).
    """
    _check_float_dtype(dtype)
    directory = _check_dir(data_dir)
    torchvision_dir = directory / "FashionMNIST" / "raw"
    if not any((directory / f"train-images-idx3-ubyte{s}").is_file() for s in ("", ".gz")) and any(
        (torchvision_dir / f"train-images-idx3-ubyte{s}").is_file() for s in ("", ".gz")
    ):
        directory = torchvision_dir
    splits = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images_path = _find_file(directory, f"{prefix}-images-idx3-ubyte")
        labels_path = _find_file(directory, f"{prefix}-labels-idx1-ubyte")
        images = read_idx(images_path, expected_dtype=0x08, expected_ndim=3, what="images")
        labels = read_idx(labels_path, expected_dtype=0x08, expected_ndim=1, what="labels")
        if labels.shape[0] != images.shape[0]:
            raise DataError(f"{labels_path}: {labels.shape[0]} labels for {images.shape[0]} images in {images_path}")
        splits[split] = (images[:, None], _check_labels(labels_path, labels, 10))
    (x_train, y_train), (x_test, y_test) = splits["train"], splits["test"]
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(
            f"{directory}: train images are {x_train.shape[2]}x{x_train.shape[3]} but test images are "
            f"{x_test.shape[2]}x{x_test.shape[3]}"
        )
    return _build_uint8_dataset("fashion_mnist", x_train, y_train, x_test, y_test, 10, dtype, normalize)


def load(
    data_dir: str | Path | None,
    *,
    seed: int,
    dtype: torch.dtype,
    normalize: bool,
    train_size: int | None,
    test_size: int | None,
) -> ArrayDataset:
    """The registry's loader: the whole dataset (the split is the release's; ``seed`` is not used)."""
    return load_fashion_mnist(data_dir, dtype=dtype, normalize=normalize)  # type: ignore[arg-type]
