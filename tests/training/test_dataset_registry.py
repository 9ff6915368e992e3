"""The dataset registry: one declaration per dataset, and load_dataset dispatches over it."""

import pytest
import torch

from arturo_diag.errors import DataError
from arturo_diag.training.datasets import (
    DATASET_SPECS,
    DATASETS,
    ArrayDataset,
    DatasetSpec,
    load_dataset,
    registry,
)


def test_names_help_and_data_dir_come_from_one_declaration():
    assert DATASETS == ("digits", "teacher", "fashion_mnist", "cifar10", "cifar100", "chars")
    assert [n for n, s in DATASET_SPECS.items() if s.needs_data_dir] == ["fashion_mnist", "cifar10", "cifar100"]
    assert all(s.name == n and s.help and "\n" not in s.help for n, s in DATASET_SPECS.items())


def test_a_registered_dataset_is_loadable_by_name(monkeypatch):
    calls = []

    def load(data_dir, *, seed, dtype, normalize, train_size, test_size):
        calls.append((data_dir, seed, dtype, normalize, train_size, test_size))
        x = torch.arange(5 * 4, dtype=dtype).reshape(5, 1, 2, 2)
        return ArrayDataset("toy", x, torch.arange(5) % 2, x[:3], torch.arange(3) % 2, 2, (1, 2, 2))

    monkeypatch.setitem(DATASET_SPECS, "toy", DatasetSpec("toy", load, True, "a toy"))
    with pytest.raises(DataError, match="toy: no data directory given"):
        load_dataset("toy")
    ds = load_dataset("toy", "/nowhere", seed=3, train_size=4, dtype=torch.float64)
    assert calls == [("/nowhere", 3, torch.float64, True, 4, None)]
    assert (ds.num_train, ds.num_test) == (4, 3)  # not draws_sizes: the first train_size are kept
    assert registry.load_dataset is load_dataset
