"""Datasets of arturo-diag: in-memory image classification arrays, built-in or read from local files.

Every dataset is an :class:`ArrayDataset`: float inputs ``(N, C, H, W)`` and int64 labels for a
train and a test split, all in memory. :func:`load_dataset` builds one by name; the names, their
loaders and help texts are declared once in :mod:`~arturo_diag.training.datasets.registry`:

- ``digits`` (:mod:`.digits`): scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes;
  shipped inside scikit-learn, no download), scaled to [0, 1], split by a seeded stratified
  permutation and standardised with the train split's mean and standard deviation.
- ``teacher`` (:mod:`.teacher`): a synthetic teacher-student problem drawn from the seed: Gaussian
  1x8x8 inputs labelled by the argmax of a random one-hidden-layer ReLU network. Small and fast,
  for tests.
- ``fashion_mnist`` (:mod:`.fashion_mnist`, IDX parsing in :mod:`.idx`): Fashion-MNIST from its
  four IDX files (raw or ``.gz``) in ``data_dir``.
- ``cifar10`` / ``cifar100`` (:mod:`.cifar`): CIFAR from the python-pickle release in ``data_dir``
  (``cifar-10-batches-py`` / ``cifar-100-python``, or their parent folder), unpickled by a
  restricted unpickler that admits only dicts, strings, numbers, lists and numpy arrays: a file
  whose pickle references anything else (a function a payload would call) is refused, not run.

The file-based datasets are scaled to [0, 1] and standardised per channel with the train split's
statistics (:mod:`.files`). Nothing is downloaded. A missing or malformed file raises
:class:`~arturo_diag.errors.DataError` with a one-line message that starts with the file's path.

Minibatches come from :func:`batches` (a seeded shuffle per epoch, driven by a ``torch.Generator``)
and a fixed probe batch for curvature snapshots from :func:`probe_batch` (:mod:`.base`).

To add a dataset: one new module here with its loader, and one line in ``registry.DATASET_SPECS``.
"""

from __future__ import annotations

from arturo_diag.training.datasets.base import ArrayDataset, batches, probe_batch
from arturo_diag.training.datasets.cifar import load_cifar
from arturo_diag.training.datasets.digits import load_digits
from arturo_diag.training.datasets.fashion_mnist import load_fashion_mnist
from arturo_diag.training.datasets.idx import read_idx
from arturo_diag.training.datasets.registry import (
    DATASET_SPECS,
    DATASETS,
    DatasetSpec,
    load_dataset,
)
from arturo_diag.training.datasets.teacher import make_teacher

__all__ = [
    "DATASETS",
    "DATASET_SPECS",
    "ArrayDataset",
    "DatasetSpec",
    "batches",
    "load_cifar",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "make_teacher",
    "probe_batch",
    "read_idx",
]
