"""Datasets of arturo-diag: in-memory image classification arrays, built-in or read from local files.

Every dataset is an :class:`ArrayDataset`: float inputs ``(N, C, H, W)`` and int64 labels for a
train and a test split, all in memory. :func:`load_dataset` builds one by name:

- ``digits``: scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes; shipped inside
  scikit-learn, no download), scaled to [0, 1], split by a seeded stratified permutation and
  standardised with the train split's mean and standard deviation.
- ``teacher``: a synthetic teacher-student problem drawn from the seed: Gaussian 1x8x8 inputs
  labelled by the argmax of a random one-hidden-layer ReLU network. Small and fast, for tests.
- ``fashion_mnist``: Fashion-MNIST from its four IDX files (raw or ``.gz``) in ``data_dir``.
- ``cifar10`` / ``cifar100``: CIFAR from the python-pickle release in ``data_dir``
  (``cifar-10-batches-py`` / ``cifar-100-python``, or their parent folder), unpickled by a
  restricted unpickler that admits only dicts, strings, numbers, lists and numpy arrays: a file
  whose pickle references anything else (a function a payload would call) is refused, not run.

The file-based datasets are scaled to [0, 1] and standardised per channel with the train split's
statistics. Nothing is downloaded. A missing or malformed file raises :class:`DataError` with a
one-line message that starts with the file's path.

Minibatches come from :func:`batches` (a seeded shuffle per epoch, driven by a ``torch.Generator``)
and a fixed probe batch for curvature snapshots from :func:`probe_batch`.
"""
from __future__ import annotations

import dataclasses
import gzip
import math
import pickle
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from arturo_diag.errors import ConfigError, DataError
from arturo_diag.training.seeding import _check_seed

__all__ = [
    "ArrayDataset",
    "DATASETS",
    "load_dataset",
    "load_digits",
    "make_teacher",
    "load_fashion_mnist",
    "load_cifar",
    "read_idx",
    "batches",
    "probe_batch",
]

#: Names accepted by :func:`load_dataset`.
DATASETS: tuple[str, ...] = ("digits", "teacher", "fashion_mnist", "cifar10", "cifar100")
_FILE_DATASETS = ("fashion_mnist", "cifar10", "cifar100")


@dataclass(frozen=True)
class ArrayDataset:
    """An image classification dataset held in memory as tensors.

    Attributes:
        name: dataset name, e.g. ``"digits"``.
        x_train: float inputs of the train split, shape ``(N_train, C, H, W)``.
        y_train: int64 labels of the train split, shape ``(N_train,)``, values in ``[0, num_classes)``.
        x_test: float inputs of the test split, shape ``(N_test, C, H, W)``.
        y_test: int64 labels of the test split, shape ``(N_test,)``.
        num_classes: number of classes.
        input_shape: ``(C, H, W)`` of one input.
        mean: per-channel train mean subtracted from the [0, 1]-scaled inputs (``None`` if the
            inputs were not standardised).
        std: per-channel train standard deviation the inputs were divided by (or ``None``).
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        for split, x, y in (("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test)):
            if x.ndim != 4 or tuple(x.shape[1:]) != tuple(self.input_shape):
                raise DataError(
                    f"{self.name}: {split} inputs have shape {tuple(x.shape)}, "
                    f"expected (N, {', '.join(map(str, self.input_shape))})"
                )
            if not x.is_floating_point():
                raise DataError(f"{self.name}: {split} inputs have dtype {x.dtype}, expected a float dtype")
            if y.dtype != torch.int64 or y.ndim != 1 or y.shape[0] != x.shape[0]:
                raise DataError(
                    f"{self.name}: {split} labels have shape {tuple(y.shape)} and dtype {y.dtype}, "
                    f"expected ({x.shape[0]},) int64"
                )

    @property
    def in_channels(self) -> int:
        """Channels ``C`` of one input."""
        return self.input_shape[0]

    @property
    def image_size(self) -> int:
        """Side ``H`` (= ``W``) of one square input."""
        return self.input_shape[1]

    @property
    def num_train(self) -> int:
        """Number of training examples."""
        return self.x_train.shape[0]

    @property
    def num_test(self) -> int:
        """Number of test examples."""
        return self.x_test.shape[0]

    def to(
        self, dtype: torch.dtype | None = None, device: torch.device | str | None = None
    ) -> ArrayDataset:
        """A copy with inputs cast to the float ``dtype`` and everything moved to ``device``.

        Labels stay int64. ``None`` keeps the current dtype or device.
        """
        if dtype is not None:
            _check_float_dtype(dtype)
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


# --------------------------------------------------------------------------------------------------
# Built-in datasets


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


# --------------------------------------------------------------------------------------------------
# IDX files (Fashion-MNIST)

# IDX data type code -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_bytes(path: Path) -> bytes:
    """The (decompressed, for ``.gz``) bytes of ``path``; a DataError naming it if unreadable."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DataError(f"{path}: truncated or not a valid gzip file ({e})") from e
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from e


def read_idx(
    path: str | Path,
    *,
    expected_dtype: int | None = None,
    expected_ndim: int | None = None,
    what: str = "data",
) -> np.ndarray:
    """Parse an IDX file (raw or gzip-compressed by its ``.gz`` suffix) into a numpy array.

    The header is two zero bytes, a data type code (0x08 ubyte, 0x09 byte, 0x0B short, 0x0C int,
    0x0D float, 0x0E double), the number of dimensions, then each dimension as a big-endian int32;
    the data follow in C order, big-endian. With ``expected_dtype``/``expected_ndim`` the magic
    number must match ``0x0000{dtype:02X}{ndim:02X}`` (``what`` names the content in the message).

    Raises:
        DataError: the file is unreadable, the header is malformed or unexpected, or the data are
            shorter or longer than the dimensions say. The message starts with the path.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if not raw:
        raise DataError(f"{path}: empty file (0 bytes), expected an IDX file")
    if len(raw) < 4:
        raise DataError(f"{path}: truncated: {len(raw)} bytes, shorter than the 4-byte IDX magic number")
    magic = int.from_bytes(raw[:4], "big")
    code, ndim = raw[2], raw[3]
    if raw[:2] == b"\x1f\x8b" and path.suffix != ".gz":
        raise DataError(f"{path}: gzip-compressed but not named .gz; rename it to {path.name}.gz or decompress it")
    if expected_dtype is not None and expected_ndim is not None:
        expected_magic = (expected_dtype << 8) | expected_ndim
        if magic != expected_magic:
            raise DataError(
                f"{path}: bad magic number 0x{magic:08X}, expected 0x{expected_magic:08X} for {what}"
            )
    if raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path}: bad magic number 0x{magic:08X}, first two bytes must be zero in IDX")
    if code not in _IDX_DTYPES:
        raise DataError(f"{path}: unknown IDX data type code 0x{code:02X} in magic number 0x{magic:08X}")
    if ndim == 0:
        raise DataError(f"{path}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(
            f"{path}: truncated header: {ndim} dimensions need {header} bytes, file has {len(raw)}"
        )
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_DTYPES[code]
    expected = math.prod(dims) * dtype.itemsize
    found = len(raw) - header
    if found < expected:
        raise DataError(
            f"{path}: truncated: dimensions {dims} need {expected} data bytes, found {found}"
        )
    if found > expected:
        raise DataError(
            f"{path}: {found - expected} unexpected trailing bytes after the {expected} data bytes "
            f"of dimensions {dims}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _find_file(directory: Path, name: str) -> Path:
    """``directory/name`` or ``directory/name.gz`` (raw preferred); DataError if neither exists."""
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_dir():
            raise DataError(f"{candidate}: is a directory, expected the IDX file")
    raise DataError(
        f"{directory / name}: not found (looked for {directory / name} and {directory / name}.gz)"
    )


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


def _uint8_to_tensor(x: np.ndarray, mean: np.ndarray | None, std: np.ndarray | None,
                     dtype: torch.dtype) -> torch.Tensor:
    """uint8 images -> float ``dtype`` in [0, 1], standardised per channel if ``mean`` is given."""
    t = torch.from_numpy(np.ascontiguousarray(x)).to(dtype).div_(255.0)
    if mean is not None and std is not None:
        shape = (1, -1, 1, 1)
        safe_std = np.where(std > 0, std, 1.0)  # a constant channel stays centred at zero
        t.sub_(torch.as_tensor(mean, dtype=dtype).view(shape))
        t.div_(torch.as_tensor(safe_std, dtype=dtype).view(shape))
    return t


def _build_uint8_dataset(name: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                         y_test: np.ndarray, num_classes: int, dtype: torch.dtype,
                         normalize: bool) -> ArrayDataset:
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
            raise DataError(
                f"{labels_path}: {labels.shape[0]} labels for {images.shape[0]} images in {images_path}"
            )
        splits[split] = (images[:, None], _check_labels(labels_path, labels, 10))
    (x_train, y_train), (x_test, y_test) = splits["train"], splits["test"]
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(
            f"{directory}: train images are {x_train.shape[2]}x{x_train.shape[3]} but test images are "
            f"{x_test.shape[2]}x{x_test.shape[3]}"
        )
    return _build_uint8_dataset("fashion_mnist", x_train, y_train, x_test, y_test, 10, dtype, normalize)


# --------------------------------------------------------------------------------------------------
# CIFAR pickles

_CIFAR = {
    # name -> (folder, train files, test file, label key, classes)
    "cifar10": ("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch",
                b"labels", 10),
    "cifar100": ("cifar-100-python", ("train",), "test", b"fine_labels", 100),
}


# What a genuine CIFAR python pickle references: numpy rebuilding its arrays, dtypes and scalars
# (numpy 1 and 2 spell the module differently), and, in a protocol-2 pickle written by Python 3,
# _codecs.encode turning the latin-1 text of the raw bytes back into bytes. Nothing else is loaded.
_PICKLE_REFUSED_TAIL = "a CIFAR batch holds only dicts, strings, lists and numpy arrays"
_NDARRAY = object()  # stands for numpy.ndarray: only _reconstruct may receive it, nothing can call it


class _RefusedPickle(pickle.UnpicklingError):
    """A CIFAR pickle asked for something a CIFAR batch never holds (the reason is the message)."""


def _numpy_internals():
    try:  # numpy >= 2
        from numpy._core import multiarray, numeric
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    return multiarray, numeric


def _cifar_globals() -> dict[tuple[str, str], object]:
    multiarray, numeric = _numpy_internals()

    def reconstruct(subtype, shape, dtype):
        # numpy pickles an array as _reconstruct(ndarray, (0,), b'b') and then sets its state from
        # the file's bytes; an empty start means nothing is allocated that the file does not hold.
        if subtype is not _NDARRAY:
            raise _RefusedPickle(f"the pickle rebuilds a numpy array of type {type(subtype).__name__}")
        if (not isinstance(shape, tuple) or not all(type(d) is int and d >= 0 for d in shape)
                or math.prod(shape) != 0):
            raise _RefusedPickle(f"the pickle starts a numpy array with shape {_short_repr(shape)}, not an empty one")
        return multiarray._reconstruct(np.ndarray, shape, dtype)

    def encode(text, encoding="utf-8", errors="strict"):
        if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
            raise _RefusedPickle(f"the pickle calls _codecs.encode with encoding {_short_repr(encoding)}, not 'latin1'")
        return text.encode("latin1")

    def frombuffer(*args):  # a fresh function: a BUILD opcode could set attributes on numpy's own
        return numeric._frombuffer(*args)

    allowed: dict[tuple[str, str], object] = {("numpy", "ndarray"): _NDARRAY, ("numpy", "dtype"): np.dtype,
                                              ("_codecs", "encode"): encode}
    for module in ("numpy.core", "numpy._core"):
        allowed[(f"{module}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{module}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{module}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles only what a CIFAR batch holds: builtin containers, strings, numbers and numpy
    arrays. Any other global (a function a payload would call) is refused before it is looked up."""

    def __init__(self, file):
        super().__init__(file, encoding="bytes")  # the release was written by Python 2's cPickle
        self._allowed = _cifar_globals()

    def find_class(self, module: str, name: str):
        target = self._allowed.get((module, name))
        if target is None:
            raise _RefusedPickle(f"the pickle references {_short_repr(module, str)}.{_short_repr(name, str)}")
        return target

    def persistent_load(self, pid):
        raise _RefusedPickle(f"the pickle references the persistent object {_short_repr(pid)}")


def _short_repr(value, kind=repr, limit: int = 60) -> str:
    text = " ".join(kind(value).split())  # one line
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _cifar_value(path: Path, batch: dict, key: bytes):
    for candidate in (key, key.decode()):  # Python 2 pickles hold bytes keys, Python 3 ones str
        if candidate in batch:
            return batch[candidate]
    keys = ", ".join(_short_repr(k, limit=30) for k in list(batch)[:8]) + (", ..." if len(batch) > 8 else "")
    raise DataError(f"{path}: missing key {key!r} (the batch has keys {keys or 'none'})")


def _load_cifar_pickle(path: Path) -> dict:
    """The dict of one CIFAR batch, unpickled by :class:`_CifarUnpickler`; DataError naming the file
    for anything else."""
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected the CIFAR batch file")
    if not path.is_file():
        raise DataError(f"{path}: not found")
    try:
        with path.open("rb") as f:
            head = f.read(2)
            if not head:
                raise DataError(f"{path}: empty file, expected a CIFAR python pickle")
            if head == b"\x1f\x8b":
                raise DataError(f"{path}: a gzip file, not a CIFAR python pickle; extract the release "
                                "(tar xzf cifar-10-python.tar.gz) and pass the extracted folder")
            f.seek(0)
            batch = _CifarUnpickler(f).load()
    except DataError:
        raise
    except _RefusedPickle as e:
        raise DataError(f"{path}: refused to load: {e}; {_PICKLE_REFUSED_TAIL}") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from e
    except (EOFError, pickle.UnpicklingError) as e:
        if isinstance(e, EOFError) or "truncated" in str(e):
            raise DataError(f"{path}: not a readable CIFAR pickle: its data end early (a truncated file, "
                            f"or not a pickle at all: {_short_repr(e, str)})") from None
        raise DataError(f"{path}: not a readable CIFAR pickle ({_short_repr(e, str)})") from None
    except Exception as e:  # noqa: BLE001 - unpickling a corrupt file can raise almost anything
        raise DataError(f"{path}: not a readable CIFAR pickle ({type(e).__name__}: {_short_repr(e, str)})") from None
    if not isinstance(batch, dict):
        raise DataError(f"{path}: expected a pickled dict, found {type(batch).__name__}")
    for key in batch:
        if not isinstance(key, (bytes, str)):
            raise DataError(f"{path}: the batch dict has a key of type {type(key).__name__}, expected strings")
    return batch


def _read_cifar_file(path: Path, label_key: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 3, 32, 32)`` uint8 and int64 labels from one CIFAR python pickle."""
    batch = _load_cifar_pickle(path)
    data = _cifar_value(path, batch, b"data")
    raw_labels = _cifar_value(path, batch, label_key)
    if not isinstance(data, np.ndarray):
        raise DataError(f"{path}: data is a {type(data).__name__}, expected a numpy uint8 array (N, 3072)")
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: data has shape {data.shape}, expected (N, 3072)")
    if data.dtype != np.uint8:
        if not np.issubdtype(data.dtype, np.integer) or (data.size and (data.min() < 0 or data.max() > 255)):
            raise DataError(f"{path}: data has dtype {data.dtype}, expected uint8 pixels")
        data = data.astype(np.uint8)
    if isinstance(raw_labels, (list, tuple)):
        # checked element by element first: np.asarray of nested (possibly shared) lists could blow up
        if len(raw_labels) != data.shape[0]:
            raise DataError(f"{path}: {len(raw_labels)} labels for {data.shape[0]} images")
        for i, v in enumerate(raw_labels):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise DataError(f"{path}: label at position {i} is {_short_repr(v)}, expected a whole number")
            if not 0 <= v < num_classes:
                raise DataError(f"{path}: label {_short_repr(int(v), str)} out of range 0..{num_classes - 1}")
        raw_labels = np.asarray(raw_labels, dtype=np.int64)
    elif not isinstance(raw_labels, np.ndarray):
        raise DataError(f"{path}: {label_key.decode()} is a {type(raw_labels).__name__}, "
                        "expected a list of whole numbers")
    labels = _check_labels(path, raw_labels, num_classes)
    if labels.shape[0] != data.shape[0]:
        raise DataError(f"{path}: {labels.shape[0]} labels for {data.shape[0]} images")
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar(
    name: str,
    data_dir: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    normalize: bool = True,
) -> ArrayDataset:
    """CIFAR-10 (``name="cifar10"``) or CIFAR-100 (``"cifar100"``, fine labels) from the python
    pickles, as ``3x32x32`` images in [0, 1] standardised per channel with the train mean and std.

    ``data_dir`` is either the release folder itself (``cifar-10-batches-py`` with ``data_batch_1``
    .. ``data_batch_5`` and ``test_batch``; ``cifar-100-python`` with ``train`` and ``test``) or
    its parent.

    Raises:
        ConfigError: ``dataset`` if ``name`` is not a CIFAR name.
        DataError: a file is missing or malformed (the message names it).
    """
    if name not in _CIFAR:
        raise ConfigError("dataset", name, "one of " + ", ".join(_CIFAR))
    _check_float_dtype(dtype)
    folder, train_files, test_file, label_key, num_classes = _CIFAR[name]
    directory = _check_dir(data_dir)
    if (directory / folder).is_dir():
        directory = directory / folder
    parts = [_read_cifar_file(directory / f, label_key, num_classes) for f in train_files]
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    x_test, y_test = _read_cifar_file(directory / test_file, label_key, num_classes)
    return _build_uint8_dataset(name, x_train, y_train, x_test, y_test, num_classes, dtype, normalize)


# --------------------------------------------------------------------------------------------------
# Entry point


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
        name: ``digits``, ``teacher``, ``fashion_mnist``, ``cifar10`` or ``cifar100``.
        data_dir: folder holding the files of a file-based dataset (ignored by the built-in ones).
        seed: draws the digits split and the teacher data; file-based splits are fixed.
        train_size: for ``teacher`` the number of train examples drawn (default 1,024); for the
            others, keep only the first ``train_size`` of the train split (default all). The
            normalisation statistics always come from the whole train split.
        test_size: likewise for the test split (``teacher`` default 256).
        dtype: float dtype of the inputs (labels are int64).
        device: where the tensors live.
        normalize: standardise the inputs with the train statistics (not used by ``teacher``).

    Raises:
        ConfigError: ``dataset`` if the name is unknown; a seed, size or dtype that is not allowed.
        DataError: a file-based dataset without ``data_dir``, or with missing or malformed files.
    """
    if name not in DATASETS:
        raise ConfigError("dataset", name, "one of " + ", ".join(DATASETS))
    _check_float_dtype(dtype)
    _check_seed(seed)
    if name in _FILE_DATASETS and data_dir is None:
        raise DataError(
            f"{name}: no data directory given; pass --data-dir pointing at the folder with the "
            f"{name} files (nothing is downloaded)"
        )
    if name == "teacher":
        ds = make_teacher(
            seed=seed,
            train_size=1024 if train_size is None else train_size,
            test_size=256 if test_size is None else test_size,
            dtype=dtype,
        )
    else:
        if name == "digits":
            ds = load_digits(seed=seed, dtype=dtype, normalize=normalize)
        elif name == "fashion_mnist":
            ds = load_fashion_mnist(data_dir, dtype=dtype, normalize=normalize)  # type: ignore[arg-type]
        else:
            ds = load_cifar(name, data_dir, dtype=dtype, normalize=normalize)  # type: ignore[arg-type]
        if train_size is not None or test_size is not None:
            ds = _take_first(ds, train_size, test_size)
    return ds.to(device=device)


# --------------------------------------------------------------------------------------------------
# Minibatches


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
        idx = order[start:start + batch_size]
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
