"""The datasets, declared once: name -> loader, whether it reads files from ``--data-dir``, and a
one-line help text. :func:`load_dataset` loads any of them by name; config validation, the CLI's
help text and the docs read :data:`DATASET_SPECS` (or :data:`DATASETS`, its names).

To add a dataset: write ``datasets/NAME.py`` with a loader of the signature below (it builds an
:class:`~arturo_diag.training.datasets.base.ArrayDataset`), then add one :class:`DatasetSpec`
line to :data:`DATASET_SPECS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from arturo_diag.errors import ConfigError, DataError
from arturo_diag.training.datasets import chars, cifar, digits, fashion_mnist, teacher
from arturo_diag.training.datasets.base import (
    ArrayDataset,
    _check_float_dtype,
    _take_first,
)
from arturo_diag.training.seeding import _check_seed

__all__ = ["DATASETS", "DATASET_SPECS", "DatasetSpec", "load_dataset"]

#: ``load(data_dir, *, seed, dtype, normalize, train_size, test_size) -> ArrayDataset``.
Loader = Callable[..., ArrayDataset]


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset :func:`load_dataset` knows.

    Attributes:
        name: what ``--dataset`` and ``RunConfig.dataset`` call it.
        load: builds it, called as ``load(data_dir, seed=, dtype=, normalize=, train_size=,
            test_size=)`` with the arguments of :func:`load_dataset`.
        needs_data_dir: it is read from local files in ``data_dir`` (nothing is downloaded), so a
            missing ``data_dir`` is refused before ``load`` is called.
        help: one line for ``--help`` and the docs.
        draws_sizes: ``load`` draws ``train_size``/``test_size`` examples itself; otherwise
            :func:`load_dataset` keeps the first ones of the splits ``load`` returns.
        inputs: ``"image"`` (float ``(N, C, H, W)``) or ``"tokens"`` (int64 ids ``(N, T)``): which
            models can read it (:data:`~arturo_diag.training.models.MODEL_INPUTS`).
    """

    name: str
    load: Loader
    needs_data_dir: bool
    help: str
    draws_sizes: bool = False
    inputs: str = "image"


#: Every dataset, in the order of ``--help``.
DATASET_SPECS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("digits", digits.load, False, "scikit-learn's 8x8 digits (built in, the default)"),
        DatasetSpec(
            "teacher", teacher.load, False, "synthetic teacher-student data drawn from the seed", draws_sizes=True
        ),
        DatasetSpec("fashion_mnist", fashion_mnist.load, True, "Fashion-MNIST from its four IDX files in --data-dir"),
        DatasetSpec("cifar10", cifar.load_cifar10, True, "CIFAR-10 from the python-pickle release in --data-dir"),
        DatasetSpec(
            "cifar100",
            cifar.load_cifar100,
            True,
            "CIFAR-100 (fine labels) from the python-pickle release in --data-dir",
        ),
        DatasetSpec(
            "chars",
            chars.load,
            False,
            "a generated English-like character corpus, next character after 32 (built in; for --model transformer)",
            inputs="tokens",
        ),
    )
}

#: Names accepted by :func:`load_dataset`.
DATASETS: tuple[str, ...] = tuple(DATASET_SPECS)


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    *,
    seed: int = 0,
    train_size: int | None = None,
    test_size: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    normalize: bool = True,
) -> ArrayDataset:
    """Load the dataset called ``name`` (one of :data:`DATASETS`) onto ``device`` as ``dtype``.

    Args:
        name: ``digits``, ``teacher``, ``fashion_mnist``, ``cifar10``, ``cifar100`` or ``chars``.
        data_dir: folder holding the files of a file-based dataset (ignored by the built-in ones).
        seed: draws the digits split and the teacher data; file-based splits are fixed.
        train_size: for ``teacher`` the number of train examples drawn (default 1,024); for the
            others, keep only the first ``train_size`` of the train split (default all). The
            normalisation statistics always come from the whole train split.
        test_size: likewise for the test split (``teacher`` default 256).
        dtype: float dtype of the inputs (labels and ``chars``'s token ids are int64).
        device: where the tensors live.
        normalize: standardise the inputs with the train statistics (not used by ``teacher``).

    Raises:
        ConfigError: ``dataset`` if the name is unknown; a seed, size or dtype that is not allowed.
        DataError: a file-based dataset without ``data_dir``, or with missing or malformed files.
    """
    spec = DATASET_SPECS.get(name) if isinstance(name, str) else None
    if spec is None:
        raise ConfigError("dataset", name, "one of " + ", ".join(DATASETS))
    _check_float_dtype(dtype)
    _check_seed(seed)
    if spec.needs_data_dir and data_dir is None:
        raise DataError(
            f"{name}: no data directory given; pass --data-dir pointing at the folder with the "
            f"{name} files (nothing is downloaded)"
        )
    ds = spec.load(data_dir, seed=seed, dtype=dtype, normalize=normalize, train_size=train_size, test_size=test_size)
    if not spec.draws_sizes and (train_size is not None or test_size is not None):
        ds = _take_first(ds, train_size, test_size)
    return ds.to(device=device)
