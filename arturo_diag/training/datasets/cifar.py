"""``cifar10`` / ``cifar100``: CIFAR from the python-pickle release in ``data_dir``
(``cifar-10-batches-py`` / ``cifar-100-python``, or their parent folder), unpickled by a
restricted unpickler that admits only dicts, strings, numbers, lists and numpy arrays: a file
whose pickle references anything else (a function a payload would call) is refused, not run."""

from __future__ import annotations

import dataclasses
import math
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from arturo_diag.errors import ConfigError, DataError
from arturo_diag.training.datasets.base import ArrayDataset, _check_float_dtype
from arturo_diag.training.datasets.files import (
    _build_uint8_dataset,
    _check_dir,
    _check_labels,
)

__all__ = ["load_cifar", "load_cifar10", "load_cifar100", "CifarAugment", "CIFAR_NORMALIZE", "cifar_augment"]

#: The authors' Normalize(mean, std) per dataset (ARTURO.md, "The paper's experiments").
CIFAR_NORMALIZE = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5074, 0.4867, 0.4411), (0.2011, 0.1987, 0.2025)),
}

_CIFAR = {
    # name -> (folder, train files, test file, label key, classes)
    "cifar10": ("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", b"labels", 10),
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


@dataclass(frozen=True)
class CifarAugment:
    """The authors' CIFAR train augmentation in plain torch, on a normalised minibatch ``(N, C, H, W)``:
    ``RandomCrop(H, padding)`` with ``padding_mode`` "zeros" (a pad pixel is a black pixel, i.e.
    ``fill = -mean/std`` per channel after normalisation) or "reflect" (torch's reflect: the edge
    pixel not repeated), and ``RandomHorizontalFlip(0.5)``, in ``order``. Per example one flip
    (``rand < 0.5``) and one crop offset (``randint(0, 2*padding+1)`` for rows, then columns), drawn
    from ``generator`` in that order: the same generator state gives the same batch."""

    padding_mode: str  # "zeros" or "reflect"
    fill: tuple[float, ...]  # per channel, the normalised value of a zero pixel (zeros mode)
    order: tuple[str, str] = ("crop", "flip")
    padding: int = 4

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n = x.shape[0]
        flips = torch.rand(n, generator=generator, device=generator.device) < 0.5
        offsets = torch.randint(0, 2 * self.padding + 1, (n, 2), generator=generator, device=generator.device)
        flips, offsets = flips.to(x.device), offsets.to(x.device)
        for op in self.order:
            x = self._crop(x, offsets) if op == "crop" else torch.where(flips.view(-1, 1, 1, 1), x.flip(-1), x)
        return x

    def _crop(self, x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        p = self.padding
        if self.padding_mode == "reflect":
            padded = torch.nn.functional.pad(x, (p, p, p, p), mode="reflect")
        else:
            padded = torch.as_tensor(self.fill, dtype=x.dtype, device=x.device).view(1, c, 1, 1)
            padded = padded.expand(n, c, h + 2 * p, w + 2 * p).clone()
            padded[:, :, p : p + h, p : p + w] = x
        rows = (offsets[:, 0:1] + torch.arange(h, device=x.device)).view(n, 1, h, 1)
        cols = (offsets[:, 1:2] + torch.arange(w, device=x.device)).view(n, 1, 1, w)
        index = torch.arange(n, device=x.device).view(n, 1, 1, 1)
        channels = torch.arange(c, device=x.device).view(1, c, 1, 1)
        return padded[index, channels, rows, cols]


def cifar_augment(name: str, normalized: bool = True) -> CifarAugment:
    """The authors' train augmentation of ``cifar10`` (crop with zero padding, then flip) or
    ``cifar100`` (flip, then crop with reflect padding); ``normalized``: the inputs carry the
    authors' Normalize, so a zero pad pixel is ``-mean/std``."""
    mean, std = CIFAR_NORMALIZE[name]
    fill = tuple(-m / s for m, s in zip(mean, std)) if normalized else (0.0,) * len(mean)
    if name == "cifar10":
        return CifarAugment("zeros", fill, ("crop", "flip"))
    return CifarAugment("reflect", fill, ("flip", "crop"))


def _cifar_globals() -> dict[tuple[str, str], object]:
    multiarray, numeric = _numpy_internals()

    def reconstruct(subtype, shape, dtype):
        # numpy pickles an array as _reconstruct(ndarray, (0,), b'b') and then sets its state from
        # the file's bytes; an empty start means nothing is allocated that the file does not hold.
        if subtype is not _NDARRAY:
            raise _RefusedPickle(f"the pickle rebuilds a numpy array of type {type(subtype).__name__}")
        if not isinstance(shape, tuple) or not all(type(d) is int and d >= 0 for d in shape) or math.prod(shape) != 0:
            raise _RefusedPickle(f"the pickle starts a numpy array with shape {_short_repr(shape)}, not an empty one")
        return multiarray._reconstruct(np.ndarray, shape, dtype)

    def encode(text, encoding="utf-8", errors="strict"):
        if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
            raise _RefusedPickle(f"the pickle calls _codecs.encode with encoding {_short_repr(encoding)}, not 'latin1'")
        return text.encode("latin1")

    def frombuffer(*args):  # a fresh function: a BUILD opcode could set attributes on numpy's own
        return numeric._frombuffer(*args)

    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): _NDARRAY,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): encode,
    }
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
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
                raise DataError(
                    f"{path}: a gzip file, not a CIFAR python pickle; extract the release "
                    "(tar xzf cifar-10-python.tar.gz) and pass the extracted folder"
                )
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
            raise DataError(
                f"{path}: not a readable CIFAR pickle: its data end early (a truncated file, "
                f"or not a pickle at all: {_short_repr(e, str)})"
            ) from None
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
        raise DataError(
            f"{path}: {label_key.decode()} is a {type(raw_labels).__name__}, expected a list of whole numbers"
        )
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
    augment: bool = True,
) -> ArrayDataset:
    """CIFAR-10 (``name="cifar10"``) or CIFAR-100 (``"cifar100"``, fine labels) from the python
    pickles, as ``3x32x32`` images in [0, 1], as the authors ran them: standardised per channel with
    their Normalize constants (:data:`CIFAR_NORMALIZE`) if ``normalize``, and, if ``augment``, with
    their train augmentation (:func:`cifar_augment`) as the dataset's ``train_transform``.

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
    return _cifar_dataset(name, x_train, y_train, x_test, y_test, dtype, normalize, augment)


def _cifar_dataset(name, x_train, y_train, x_test, y_test, dtype, normalize, augment) -> ArrayDataset:
    """uint8 arrays -> the dataset with the authors' Normalize constants and augmentation."""
    data = _build_uint8_dataset(name, x_train, y_train, x_test, y_test, _CIFAR[name][4], dtype, False)
    if not normalize and not augment:
        return data
    mean, std = CIFAR_NORMALIZE[name]
    changes: dict = {"train_transform": cifar_augment(name, normalize) if augment else None}
    if normalize:
        shift = torch.tensor(mean, dtype=dtype).view(1, 3, 1, 1)
        scale = torch.tensor(std, dtype=dtype).view(1, 3, 1, 1)
        data.x_train.sub_(shift).div_(scale)  # in place: fresh tensors of _build_uint8_dataset
        data.x_test.sub_(shift).div_(scale)
        changes.update(mean=mean, std=std)
    return dataclasses.replace(data, **changes)


def load_cifar10(
    data_dir: str | Path | None,
    *,
    seed: int,
    dtype: torch.dtype,
    normalize: bool,
    train_size: int | None,
    test_size: int | None,
) -> ArrayDataset:
    """The registry's loader of ``cifar10``: the whole dataset (the release's split)."""
    return load_cifar("cifar10", data_dir, dtype=dtype, normalize=normalize)  # type: ignore[arg-type]


def load_cifar100(
    data_dir: str | Path | None,
    *,
    seed: int,
    dtype: torch.dtype,
    normalize: bool,
    train_size: int | None,
    test_size: int | None,
) -> ArrayDataset:
    """The registry's loader of ``cifar100`` (fine labels): the whole dataset (the release's split)."""
    return load_cifar("cifar100", data_dir, dtype=dtype, normalize=normalize)  # type: ignore[arg-type]
