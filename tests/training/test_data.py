"""Datasets: IDX and CIFAR files round-trip, malformed files fail with their path, determinism."""

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from arturo_diag.errors import ConfigError, DataError
from arturo_diag.training.datasets import (
    DATASETS,
    ArrayDataset,
    batches,
    load_cifar,
    load_dataset,
    load_fashion_mnist,
    probe_batch,
    read_idx,
)
from arturo_diag.training.seeding import make_generator, seed_everything

# ------------------------------------------------------------------------------------------------
# helpers that write tiny files in the real formats


def idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">i", d) for d in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_file(path, data: bytes):
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def write_fashion(directory, *, gz: bool, n_train=7, n_test=3, size=5, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, size, size), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, size, size), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        write_file(directory / (name + (".gz" if gz else "")), idx_bytes(array))
    return arrays


def write_cifar(directory, kind: str, seed=0):
    """Tiny CIFAR release (``kind`` "cifar10" or "cifar100") inside ``directory``; returns arrays."""
    rng = np.random.default_rng(seed)
    if kind == "cifar10":
        folder, names, key, k = (
            directory / "cifar-10-batches-py",
            [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"],
            b"labels",
            10,
        )
    else:
        folder, names, key, k = directory / "cifar-100-python", ["train", "test"], b"fine_labels", 100
    folder.mkdir(parents=True)
    written = {}
    for i, name in enumerate(names):
        n = 2 + i
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, k, n)]  # the release stores a python list
        batch = {b"batch_label": name.encode(), b"data": data, key: labels}
        if kind == "cifar100":
            batch[b"coarse_labels"] = [v // 5 for v in labels]
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
        written[name] = (data, np.asarray(labels))
    return folder, written


def unnormalise(x: torch.Tensor, ds: ArrayDataset) -> np.ndarray:
    """Back to the original uint8 pixels."""
    mean = torch.tensor(ds.mean, dtype=x.dtype).view(1, -1, 1, 1)
    std = torch.tensor(ds.std, dtype=x.dtype).view(1, -1, 1, 1)
    return torch.round((x * std + mean) * 255).numpy().astype(np.int64)


# ------------------------------------------------------------------------------------------------
# Fashion-MNIST IDX


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_fashion_mnist_idx_round_trip(tmp_path, gz):
    arrays = write_fashion(tmp_path, gz=gz)
    ds = load_dataset("fashion_mnist", tmp_path, dtype=torch.float64, normalize=False)
    assert ds.name == "fashion_mnist" and ds.num_classes == 10 and ds.input_shape == (1, 5, 5)
    assert ds.x_train.shape == (7, 1, 5, 5) and ds.x_test.shape == (3, 1, 5, 5)
    assert ds.x_train.dtype == torch.float64 and ds.y_train.dtype == torch.int64
    np.testing.assert_array_equal((ds.x_train[:, 0] * 255).round().numpy(), arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal((ds.x_test[:, 0] * 255).round().numpy(), arrays["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(ds.y_train.numpy(), arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(ds.y_test.numpy(), arrays["t10k-labels-idx1-ubyte"])


def test_fashion_mnist_is_standardised_with_train_statistics(tmp_path):
    arrays = write_fashion(tmp_path, gz=True)
    ds = load_fashion_mnist(tmp_path, dtype=torch.float64)
    train = arrays["train-images-idx3-ubyte"] / 255.0
    assert ds.mean == pytest.approx((train.mean(),), rel=1e-12)
    assert ds.std == pytest.approx((train.std(),), rel=1e-12)
    assert float(ds.x_train.mean()) == pytest.approx(0.0, abs=1e-12)
    assert float(ds.x_train.std(unbiased=False)) == pytest.approx(1.0, rel=1e-12)
    np.testing.assert_array_equal(unnormalise(ds.x_test, ds)[:, 0], arrays["t10k-images-idx3-ubyte"])


def test_fashion_mnist_accepts_the_torchvision_layout(tmp_path):
    write_fashion(tmp_path / "FashionMNIST" / "raw", gz=False)
    assert load_fashion_mnist(tmp_path).num_train == 7


def test_read_idx_other_dtypes(tmp_path):
    for code, dtype in [(0x0B, np.int16), (0x0C, np.int32), (0x0D, np.float32), (0x0E, np.float64)]:
        array = (np.arange(24).reshape(2, 3, 4) - 7).astype(dtype)
        path = write_file(tmp_path / f"a{code}.idx", idx_bytes(array, code))
        np.testing.assert_array_equal(read_idx(path), array)


def _fashion_file(tmp_path, name, gz=True):
    return tmp_path / (name + (".gz" if gz else ""))


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_idx_bad_magic_number(tmp_path, gz):
    arrays = write_fashion(tmp_path, gz=gz)
    # labels written where images belong: magic 0x00000801 instead of 0x00000803
    path = write_file(
        _fashion_file(tmp_path, "train-images-idx3-ubyte", gz), idx_bytes(arrays["train-labels-idx1-ubyte"])
    )
    with pytest.raises(DataError) as info:
        load_dataset("fashion_mnist", tmp_path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    assert "bad magic number 0x00000801, expected 0x00000803 for images" in message


def test_idx_malformed_header(tmp_path):
    write_fashion(tmp_path, gz=False)
    path = write_file(tmp_path / "t10k-labels-idx1-ubyte", b"\x12\x34\x08\x01\x00\x00\x00\x03abc")
    with pytest.raises(DataError, match="bad magic number 0x12340801") as info:
        load_dataset("fashion_mnist", tmp_path)
    assert str(path) in str(info.value)
    with pytest.raises(DataError, match="first two bytes must be zero"):
        read_idx(path)
    bad_code = write_file(tmp_path / "x.idx", b"\x00\x00\x07\x01\x00\x00\x00\x01a")
    with pytest.raises(DataError, match="unknown IDX data type code 0x07"):
        read_idx(bad_code)


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_idx_truncated_file(tmp_path, gz):
    arrays = write_fashion(tmp_path, gz=gz)
    full = idx_bytes(arrays["train-images-idx3-ubyte"])
    path = write_file(_fashion_file(tmp_path, "train-images-idx3-ubyte", gz), full[:-10])
    with pytest.raises(DataError, match="truncated") as info:
        load_dataset("fashion_mnist", tmp_path)
    assert str(path) in str(info.value)
    # a header cut inside the dimensions
    write_file(path, full[:9])
    with pytest.raises(DataError, match="truncated header") as info:
        load_dataset("fashion_mnist", tmp_path)
    assert str(path) in str(info.value)
    write_file(path, b"\x00\x00")
    with pytest.raises(DataError, match="truncated"):
        load_dataset("fashion_mnist", tmp_path)


def test_idx_trailing_bytes(tmp_path):
    arrays = write_fashion(tmp_path, gz=False)
    path = write_file(tmp_path / "t10k-images-idx3-ubyte", idx_bytes(arrays["t10k-images-idx3-ubyte"]) + b"xx")
    with pytest.raises(DataError, match="2 unexpected trailing bytes") as info:
        load_dataset("fashion_mnist", tmp_path)
    assert str(path) in str(info.value)


def test_idx_corrupt_gzip(tmp_path):
    write_fashion(tmp_path, gz=True)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(b"this is not gzip")
    with pytest.raises(DataError, match="not a valid gzip file") as info:
        load_dataset("fashion_mnist", tmp_path)
    assert str(path) in str(info.value)
    images = tmp_path / "train-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:-12])  # cut inside the compressed stream
    with pytest.raises(DataError, match="truncated or not a valid gzip file") as info:
        load_fashion_mnist(tmp_path)
    assert str(images) in str(info.value)


def test_idx_missing_file_names_both_candidates(tmp_path):
    write_fashion(tmp_path, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError) as info:
        load_dataset("fashion_mnist", tmp_path)
    raw = tmp_path / "t10k-labels-idx1-ubyte"
    assert str(info.value) == f"{raw}: not found (looked for {raw} and {raw}.gz)"


def test_idx_label_count_and_range_are_checked(tmp_path):
    arrays = write_fashion(tmp_path, gz=False)
    labels = tmp_path / "train-labels-idx1-ubyte"
    write_file(labels, idx_bytes(arrays["train-labels-idx1-ubyte"][:-1]))
    with pytest.raises(DataError, match="6 labels for 7 images") as info:
        load_dataset("fashion_mnist", tmp_path)
    assert str(labels) in str(info.value)
    bad = arrays["train-labels-idx1-ubyte"].copy()
    bad[2] = 12
    write_file(labels, idx_bytes(bad))
    with pytest.raises(DataError, match="label 12 out of range 0..9"):
        load_dataset("fashion_mnist", tmp_path)


# ------------------------------------------------------------------------------------------------
# CIFAR pickles


@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
@pytest.mark.parametrize("point_at", ["parent", "folder"])
def test_cifar_round_trip(tmp_path, kind, point_at):
    folder, written = write_cifar(tmp_path, kind)
    data_dir = tmp_path if point_at == "parent" else folder
    ds = load_dataset(kind, data_dir, dtype=torch.float64, normalize=False)
    train_names = [n for n in written if n not in ("test_batch", "test")]
    test_name = "test_batch" if kind == "cifar10" else "test"
    x_train = np.concatenate([written[n][0] for n in train_names]).reshape(-1, 3, 32, 32)
    y_train = np.concatenate([written[n][1] for n in train_names])
    assert ds.input_shape == (3, 32, 32)
    assert ds.num_classes == (10 if kind == "cifar10" else 100)
    assert ds.x_train.shape == (len(y_train), 3, 32, 32)
    np.testing.assert_array_equal((ds.x_train * 255).round().numpy(), x_train)
    np.testing.assert_array_equal(ds.y_train.numpy(), y_train)
    np.testing.assert_array_equal((ds.x_test * 255).round().numpy(), written[test_name][0].reshape(-1, 3, 32, 32))
    np.testing.assert_array_equal(ds.y_test.numpy(), written[test_name][1])


def test_cifar_pixel_layout_is_channel_major(tmp_path):
    folder, written = write_cifar(tmp_path, "cifar100")
    ds = load_cifar("cifar100", folder, normalize=False, dtype=torch.float64)
    data = written["train"][0]
    # row 0: first 1024 bytes red (row-major 32x32), then green, then blue
    assert round(float(ds.x_train[0, 1, 2, 3]) * 255) == data[0, 1024 + 2 * 32 + 3]


@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
def test_cifar_standardised_with_the_authors_normalize_constants(tmp_path, kind):
    # ARTURO.md: Normalize(mean, std) with the authors' fixed constants, not the train statistics
    authors = {
        "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
        "cifar100": ((0.5074, 0.4867, 0.4411), (0.2011, 0.1987, 0.2025)),
    }[kind]
    folder, _ = write_cifar(tmp_path, kind)
    ds = load_dataset(kind, folder, dtype=torch.float64)
    raw = load_dataset(kind, folder, dtype=torch.float64, normalize=False)
    assert (ds.mean, ds.std) == authors
    mean = torch.tensor(authors[0], dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(authors[1], dtype=torch.float64).view(1, 3, 1, 1)
    torch.testing.assert_close(ds.x_train, (raw.x_train - mean) / std)
    torch.testing.assert_close(ds.x_test, (raw.x_test - mean) / std)
    np.testing.assert_array_equal(unnormalise(ds.x_test, ds), (raw.x_test * 255).round().numpy())
    assert ds.train_transform is not None and raw.train_transform is not None


def test_cifar_missing_file(tmp_path):
    folder, _ = write_cifar(tmp_path, "cifar10")
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", tmp_path)
    assert str(info.value) == f"{folder / 'data_batch_3'}: not found"


@pytest.mark.parametrize(
    "content,match",
    [
        (b"not a pickle at all", "not a readable CIFAR pickle"),
        (pickle.dumps([1, 2, 3]), "expected a pickled dict"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}), "missing key b'fine_labels'"),
        (pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"fine_labels": [0, 1]}), r"expected \(N, 3072\)"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0]}), "1 labels for 2 images"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0, 100]}), "label 100 out of range"),
    ],
    ids=["garbage", "list", "no-labels", "bad-shape", "count", "range"],
)
def test_cifar_malformed_file(tmp_path, content, match):
    folder, _ = write_cifar(tmp_path, "cifar100")
    (folder / "test").write_bytes(content)
    with pytest.raises(DataError, match=match) as info:
        load_dataset("cifar100", folder)
    assert str(info.value).startswith(f"{folder / 'test'}: ")


def test_cifar_truncated_pickle(tmp_path):
    folder, _ = write_cifar(tmp_path, "cifar10")
    path = folder / "data_batch_1"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match="not a readable CIFAR pickle") as info:
        load_dataset("cifar10", tmp_path)
    assert str(path) in str(info.value)


# ------------------------------------------------------------------------------------------------
# load_dataset entry point


def test_unknown_dataset_is_a_config_error():
    with pytest.raises(ConfigError) as info:
        load_dataset("mnist")
    assert info.value.field == "dataset" and info.value.value == "mnist"
    for name in DATASETS:
        assert name in info.value.allowed


@pytest.mark.parametrize("name", ["fashion_mnist", "cifar10", "cifar100"])
def test_file_dataset_without_data_dir_says_pass_data_dir(name):
    with pytest.raises(DataError, match="--data-dir"):
        load_dataset(name)


def test_missing_data_directory(tmp_path):
    with pytest.raises(DataError, match="data directory not found") as info:
        load_dataset("fashion_mnist", tmp_path / "nope")
    assert str(tmp_path / "nope") in str(info.value)


def test_sizes_take_the_first_examples(tmp_path):
    write_fashion(tmp_path, gz=False)
    full = load_dataset("fashion_mnist", tmp_path)
    part = load_dataset("fashion_mnist", tmp_path, train_size=4, test_size=2)
    torch.testing.assert_close(part.x_train, full.x_train[:4])
    torch.testing.assert_close(part.y_test, full.y_test[:2])
    with pytest.raises(ConfigError, match="train_size"):
        load_dataset("fashion_mnist", tmp_path, train_size=8)
    with pytest.raises(ConfigError, match="test_size"):
        load_dataset("fashion_mnist", tmp_path, test_size=0)


def test_data_dir_that_is_a_file(tmp_path):
    path = write_file(tmp_path / "train-images-idx3-ubyte", b"")
    with pytest.raises(DataError, match="not a directory") as info:
        load_dataset("fashion_mnist", path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("name", ["digits", "teacher"])
def test_bad_seed_is_a_config_error(name):
    with pytest.raises(ConfigError, match="seed"):
        load_dataset(name, seed=-1)


def test_float_dtype_is_required():
    with pytest.raises(ConfigError, match="dtype"):
        load_dataset("teacher", dtype=torch.int32)


# ------------------------------------------------------------------------------------------------
# built-in datasets


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def test_digits_loads_offline(digits):
    assert digits.num_train + digits.num_test == 1797
    assert digits.num_classes == 10 and digits.input_shape == (1, 8, 8)
    assert digits.x_train.dtype == torch.float32 and digits.y_train.dtype == torch.int64
    assert set(digits.y_train.tolist()) == set(range(10)) == set(digits.y_test.tolist())
    assert 0.18 < digits.num_test / 1797 < 0.22
    # standardised with train statistics
    assert abs(float(digits.x_train.mean())) < 1e-5
    assert float(digits.x_train.double().std(unbiased=False)) == pytest.approx(1.0, rel=1e-5)
    assert 0 < digits.mean[0] < 1


def test_digits_split_is_stratified_and_a_partition():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    raw = load_dataset("digits", seed=3, normalize=False, dtype=torch.float64)
    assert float(raw.x_train.min()) == 0.0 and float(raw.x_train.max()) == 1.0
    # train + test is the whole data set, each image exactly once (as a multiset of rows)
    both = torch.cat([raw.x_train, raw.x_test]).flatten(1).numpy() * 16
    pairs = sorted(zip(map(tuple, both), torch.cat([raw.y_train, raw.y_test]).tolist()))
    assert pairs == sorted(zip(map(tuple, bunch.data.astype(np.float64)), bunch.target.tolist()))
    class_sizes = np.bincount(bunch.target, minlength=10)
    np.testing.assert_array_equal(
        torch.bincount(raw.y_test, minlength=10).numpy(), np.round(0.2 * class_sizes).astype(int)
    )


def test_digits_split_is_deterministic_per_seed(digits):
    again = load_dataset("digits", seed=0)
    other = load_dataset("digits", seed=1)
    assert torch.equal(digits.x_train, again.x_train) and torch.equal(digits.y_test, again.y_test)
    assert not torch.equal(digits.y_train, other.y_train)


def test_teacher_is_deterministic_per_seed():
    a = load_dataset("teacher", seed=5, train_size=200, test_size=50)
    b = load_dataset("teacher", seed=5, train_size=200, test_size=50)
    c = load_dataset("teacher", seed=6, train_size=200, test_size=50)
    assert a.input_shape == (1, 8, 8) and a.num_classes == 10
    assert a.x_train.shape == (200, 1, 8, 8) and a.x_test.shape == (50, 1, 8, 8)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_train, b.y_train)
    assert torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, c.x_train)


def test_teacher_labels_are_varied_and_learnable_by_the_teacher_shape():
    ds = load_dataset("teacher", seed=0)
    assert (ds.num_train, ds.num_test) == (1024, 256)
    counts = torch.bincount(ds.y_train, minlength=10)
    assert (counts > 0).sum() >= 8  # centring the teacher's logits spreads the classes


def test_to_changes_dtype_and_device_but_not_labels():
    ds = load_dataset("teacher", train_size=16, test_size=8)
    d64 = ds.to(torch.float64, "cpu")
    assert d64.x_train.dtype == torch.float64 and d64.y_train.dtype == torch.int64
    torch.testing.assert_close(d64.x_train.float(), ds.x_train)
    assert ds.x_train.dtype == torch.float32  # the original is untouched
    with pytest.raises(ConfigError, match="dtype"):
        ds.to(torch.int64)


def test_array_dataset_validates_shapes():
    x, y = torch.zeros(3, 1, 4, 4), torch.zeros(3, dtype=torch.int64)
    with pytest.raises(DataError, match="labels"):
        ArrayDataset("toy", x, y[:2], x, y, 10, (1, 4, 4))
    with pytest.raises(DataError, match="inputs"):
        ArrayDataset("toy", x, y, x, y, 10, (1, 8, 8))


# ------------------------------------------------------------------------------------------------
# minibatches, probe batch, seeding


def _epochs(x, y, seed, n_epochs=3, batch_size=7, **kwargs):
    g = make_generator(seed)
    return [[yb.tolist() for _, yb in batches(x, y, batch_size, g, **kwargs)] for _ in range(n_epochs)]


def test_batches_cover_each_epoch_once_in_a_new_order():
    x = torch.arange(30, dtype=torch.float64).view(30, 1, 1, 1)
    y = torch.arange(30)
    epochs = _epochs(x, y, seed=0)
    for epoch in epochs:
        assert [len(b) for b in epoch] == [7, 7, 7, 7, 2]
        assert sorted(sum(epoch, [])) == list(range(30))
    assert epochs[0] != epochs[1]
    for xb, yb in batches(x, y, 7, make_generator(0)):
        assert torch.equal(xb.flatten().long(), yb)


def test_batches_same_seed_same_order():
    y = torch.arange(50)
    x = y.double().view(50, 1, 1, 1)
    assert _epochs(x, y, seed=4) == _epochs(x, y, seed=4)
    assert _epochs(x, y, seed=4) != _epochs(x, y, seed=5)
    assert [len(b) for b in _epochs(x, y, seed=4, drop_last=True)[0]] == [7] * 7


def test_batches_errors():
    x, y = torch.zeros(4, 1, 1, 1), torch.zeros(3, dtype=torch.int64)
    with pytest.raises(DataError):
        next(batches(x, y, 2, make_generator(0)))
    with pytest.raises(ConfigError, match="batch_size"):
        next(batches(x, x, 0, make_generator(0)))


def test_probe_batch_is_fixed_per_seed(digits):
    xa, ya = probe_batch(digits, 32, seed=1)
    xb, yb = probe_batch(digits, 32, seed=1)
    xc, _ = probe_batch(digits, 32, seed=2)
    assert xa.shape == (32, 1, 8, 8) and ya.shape == (32,)
    assert torch.equal(xa, xb) and torch.equal(ya, yb) and not torch.equal(xa, xc)
    # distinct training examples
    assert len({tuple(r) for r in xa.flatten(1).tolist()}) == 32
    with pytest.raises(ConfigError, match="probe_size"):
        probe_batch(digits, digits.num_train + 1, seed=0)


def test_seed_everything_repeats_random_streams():
    import random

    seed_everything(123)
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    seed_everything(123)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first
    assert torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(False)  # leave the process as other tests expect it
    with pytest.raises(ConfigError, match="seed"):
        seed_everything(-1)
    with pytest.raises(ConfigError, match="seed"):
        make_generator(1.5)
