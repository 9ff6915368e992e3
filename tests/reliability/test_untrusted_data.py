"""Untrusted data files and study names: a crafted CIFAR pickle is refused without running its
payload, every malformed dataset file is answered in one line naming the file and the problem, and
a study name cannot put its directory outside runs/ablate/."""

from __future__ import annotations

import builtins
import gzip
import os
import pickle
import posix
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from arturo_diag.training.datasets import load_dataset

from .harness import assert_nothing_complete, assert_user_error, invoke

#: compare options around --dataset/--data-dir that train a few steps on the tiny fake files.
FILE_RUN = (
    "--model",
    "mlp",
    "--batch-size",
    "4",
    "--epochs",
    "1",
    "--every",
    "2",
    "--probe-size",
    "4",
    "--lr-milestones",
    "2",
)

# ------------------------------------------------------------------------------------------------
# tiny files in the real formats


def idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">i", d) for d in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


FASHION = {
    "train-images-idx3-ubyte": np.random.default_rng(0).integers(0, 256, (7, 5, 5), dtype=np.uint8),
    "train-labels-idx1-ubyte": np.random.default_rng(1).integers(0, 10, 7, dtype=np.uint8),
    "t10k-images-idx3-ubyte": np.random.default_rng(2).integers(0, 256, (3, 5, 5), dtype=np.uint8),
    "t10k-labels-idx1-ubyte": np.random.default_rng(3).integers(0, 10, 3, dtype=np.uint8),
}


def write_fashion(directory: Path, compressed: bool = False) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in FASHION.items():
        data = idx_bytes(array)
        (directory / (name + ".gz" if compressed else name)).write_bytes(gz(data) if compressed else data)
    return directory


def cifar_batch(n: int, num_classes: int = 10, key: bytes = b"labels", seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"training batch",
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        key: [int(v) for v in rng.integers(0, num_classes, n)],
    }


def write_cifar(directory: Path, kind: str = "cifar10", protocol: int = 2, str_keys: bool = False) -> Path:
    """A tiny CIFAR release folder inside ``directory``; returns the folder."""
    if kind == "cifar10":
        folder, names, key, k = (
            directory / "cifar-10-batches-py",
            [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"],
            b"labels",
            10,
        )
    else:
        folder, names, key, k = directory / "cifar-100-python", ["train", "test"], b"fine_labels", 100
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        batch = cifar_batch(4 + i, k, key, seed=i)
        if kind == "cifar100":
            batch[b"coarse_labels"] = [v // 5 for v in batch[key]]
        if str_keys:
            batch = {key.decode(): value for key, value in batch.items()}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    return folder


def python2_cifar_pickle(batch: dict) -> bytes:
    """What Python 2's cPickle (protocol 2) wrote for the CIFAR release: str keys and the raw array
    bytes as BINSTRING, numpy's globals as numpy.core.multiarray._reconstruct / numpy.ndarray /
    numpy.dtype (Python 3 pickles spell these differently, so they are written by hand here)."""

    def string(b: bytes) -> bytes:
        return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b

    data = batch[b"data"]
    n, width = data.shape
    out = [b"\x80\x02}q\x00("]
    for key, value in batch.items():
        out.append(string(key))
        if isinstance(value, np.ndarray):
            out.append(
                b"cnumpy.core.multiarray\n_reconstruct\nq\x01cnumpy\nndarray\nq\x02K\x00\x85U\x01b\x87R("
                b"K\x01J" + struct.pack("<i", n) + b"M" + struct.pack("<H", width) + b"\x86"
                b"cnumpy\ndtype\nU\x02u1K\x00K\x01\x87R(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
                b"\x89" + string(value.tobytes()) + b"tb"
            )
        elif isinstance(value, list):
            out.append(b"](" + b"".join(b"K" + bytes([v]) for v in value) + b"e")
        else:
            out.append(string(value))
    out.append(b"u.")
    return b"".join(out)


# ------------------------------------------------------------------------------------------------
# a crafted CIFAR pickle: its payload must not run


class Payload:
    """Pickles as a call of ``func(*args)``: what unpickling it would execute."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _payloads(marker: Path) -> dict[str, tuple[object, str]]:
    """id -> (payload, the global the error names; a protocol < 3 pickle spells builtins __builtin__)."""
    return {
        "os.system": (Payload(os.system, f"touch {marker}"), "posix.system"),
        "posix.system": (Payload(posix.system, f"touch {marker}"), "posix.system"),
        "builtins.open": (Payload(builtins.open, str(marker), "w"), "io.open"),
        "builtins.eval": (Payload(builtins.eval, f"open({str(marker)!r}, 'w')"), ".eval"),
        "builtins.exec": (Payload(builtins.exec, f"open({str(marker)!r}, 'w')"), ".exec"),
        "subprocess.Popen": (Payload(subprocess.Popen, ["touch", str(marker)]), ".Popen"),
        "builtins.getattr": (Payload(getattr, "text", "upper"), ".getattr"),
        "torch.load": (Payload(torch.load, str(marker)), "torch.serialization.load"),
    }


PAYLOAD_IDS = list(_payloads(Path("m")))


@pytest.mark.parametrize("where", ["whole-file", "beside-valid-data"])
@pytest.mark.parametrize("payload_id", PAYLOAD_IDS)
@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_a_crafted_cifar_pickle_is_refused_and_its_payload_never_runs(tmp_path, payload_id, where, protocol):
    marker = tmp_path / "MARKER"
    payload, global_name = _payloads(marker)[payload_id]
    folder = write_cifar(tmp_path / "data")
    # beside-valid-data: a genuine-looking batch with one extra key: without the refusal the run
    # would load, train and finish normally with the payload executed
    content = payload if where == "whole-file" else {**cifar_batch(4), b"extra": payload}
    (folder / "data_batch_1").write_bytes(pickle.dumps(content, protocol=protocol))
    out = tmp_path / "out"
    outcome = invoke("compare", "--dataset", "cifar10", "--data-dir", tmp_path / "data", *FILE_RUN, "--out", out)
    line = assert_user_error(outcome, "data_batch_1", "refused to load", global_name)
    assert str(folder / "data_batch_1") in line
    assert not marker.exists(), f"the payload ran ({payload_id})"
    assert_nothing_complete(out)


@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
@pytest.mark.parametrize(
    "protocol,str_keys",
    [(2, False), (2, True), (4, False), (5, False), (5, True), (0, False)],
    ids=["p2-bytes", "p2-str", "p4-bytes", "p5-bytes", "p5-str", "p0-bytes"],
)
def test_a_genuine_cifar_pickle_still_loads(tmp_path, kind, protocol, str_keys):
    folder = write_cifar(tmp_path, kind, protocol=protocol, str_keys=str_keys)
    ds = load_dataset(kind, folder, dtype=torch.float64, normalize=False)
    test_name = "test_batch" if kind == "cifar10" else "test"
    written = pickle.loads((folder / test_name).read_bytes(), encoding="bytes")  # the unrestricted reference
    written = {key.encode() if isinstance(key, str) else key: value for key, value in written.items()}
    data, labels = written[b"data"], written[b"labels" if kind == "cifar10" else b"fine_labels"]
    np.testing.assert_array_equal((ds.x_test * 255).round().numpy().reshape(len(data), -1), data)
    np.testing.assert_array_equal(ds.y_test.numpy(), labels)
    assert ds.num_train == sum(4 + i for i in range(5 if kind == "cifar10" else 1))


def test_a_python2_cpickle_cifar_release_loads(tmp_path):
    """The real release's shape: Python 2 cPickle, numpy.core names, the bytes as BINSTRING."""
    folder = write_cifar(tmp_path / "data")
    written = {}
    for i, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        written[name] = batch = cifar_batch(3 + i, seed=i)
        (folder / name).write_bytes(python2_cifar_pickle(batch))
        loaded = pickle.loads((folder / name).read_bytes(), encoding="bytes")  # the unrestricted reference
        np.testing.assert_array_equal(loaded[b"data"], batch[b"data"])
    ds = load_dataset("cifar10", tmp_path / "data", dtype=torch.float64, normalize=False)
    train = np.concatenate([written[f"data_batch_{i}"][b"data"] for i in range(1, 6)])
    np.testing.assert_array_equal((ds.x_train * 255).round().numpy().reshape(len(train), -1), train)
    np.testing.assert_array_equal(ds.y_test.numpy(), written["test_batch"][b"labels"])


# ------------------------------------------------------------------------------------------------
# the data-file corpus: one line naming the file and the problem, for every malformed input


def _put(directory: Path, name: str, data: bytes) -> None:
    (directory / name).write_bytes(data)


def _remove(path: Path) -> None:
    path.unlink()


def _fashion(mutate, compressed: bool = False):
    def build(tmp: Path) -> Path:
        directory = write_fashion(tmp / "fmnist", compressed)
        mutate(directory)
        return directory

    return build


def _cifar(kind: str, name: str, content):
    """A CIFAR folder whose file ``name`` holds ``content`` (bytes, or an object pickled; None
    removes it; "dir" makes it a directory)."""

    def build(tmp: Path) -> Path:
        folder = write_cifar(tmp / "cifar", kind)
        path = folder / name
        path.unlink()
        if content == "dir":
            path.mkdir()
        elif isinstance(content, bytes):
            path.write_bytes(content)
        elif content is not None:
            path.write_bytes(pickle.dumps(content, protocol=2))
        return folder

    return build


_IMAGES, _LABELS = FASHION["train-images-idx3-ubyte"], FASHION["train-labels-idx1-ubyte"]
_TRAIN_IMAGES = "train-images-idx3-ubyte"
_TRAIN_LABELS = "train-labels-idx1-ubyte"
_GOOD = np.zeros((2, 3072), np.uint8)


def _labels_out_of_range(d: Path) -> None:
    bad = _LABELS.copy()
    bad[2] = 12
    _put(d, _TRAIN_LABELS, idx_bytes(bad))


def _header_claims_more(d: Path) -> None:
    raw = bytearray(idx_bytes(_IMAGES))
    raw[4:8] = struct.pack(">i", 70)  # 70 images declared, 7 present
    _put(d, _TRAIN_IMAGES, bytes(raw))


def _data_dir_is_a_file(tmp: Path) -> Path:
    path = tmp / "fmnist.tar"
    path.write_bytes(b"not a folder")
    return path


# id -> (dataset, build(tmp) -> data dir, names the error line must hold)
DATA_CASES = {
    # Fashion-MNIST IDX files
    "fmnist-missing-file": (
        "fashion_mnist",
        _fashion(lambda d: _remove(d / "t10k-labels-idx1-ubyte")),
        ["t10k-labels-idx1-ubyte", "not found"],
    ),
    "fmnist-empty-file": (
        "fashion_mnist",
        _fashion(lambda d: _put(d, _TRAIN_IMAGES, b"")),
        [_TRAIN_IMAGES, "empty file"],
    ),
    "fmnist-wrong-magic": (
        "fashion_mnist",
        _fashion(lambda d: _put(d, _TRAIN_IMAGES, b"\x12\x34" + idx_bytes(_IMAGES)[2:])),
        [_TRAIN_IMAGES, "bad magic number 0x12340803"],
    ),
    "fmnist-wrong-dtype-byte": (
        "fashion_mnist",
        _fashion(lambda d: _put(d, _TRAIN_IMAGES, idx_bytes(_IMAGES.astype(np.float32), 0x0D))),
        [_TRAIN_IMAGES, "bad magic number 0x00000D03, expected 0x00000803 for images"],
    ),
    "fmnist-wrong-ndim": (
        "fashion_mnist",
        _fashion(lambda d: _put(d, _TRAIN_IMAGES, idx_bytes(_IMAGES.reshape(7, 25)))),
        [_TRAIN_IMAGES, "bad magic number 0x00000802, expected 0x00000803"],
    ),
    "fmnist-unknown-dtype-code": (
        "fashion_mnist",
        _fashion(lambda d: _put(d, _TRAIN_LABELS, b"\x00\x00\x07\x01\x00\x00\x00\x01a")),
        [_TRAIN_LABELS, "bad magic number 0x00000701"],
    ),
    "fmnist-truncated-data": (
        "fashion_mnist",
        _fashion(lambda d: _put(d, _TRAIN_IMAGES, idx_bytes(_IMAGES)[:-10])),
        [_TRAIN_IMAGES, "truncated", "found 165"],
    ),
    "fmnist-truncated-header": (
        "fashion_mnist",
        _fashion(lambda d: _put(d, _TRAIN_IMAGES, idx_bytes(_IMAGES)[:9])),
        [_TRAIN_IMAGES, "truncated header"],
    ),
    "fmnist-header-claims-more": (
        "fashion_mnist",
        _fashion(_header_claims_more),
        [_TRAIN_IMAGES, "truncated: dimensions (70, 5, 5) need 1750 data bytes, found 175"],
    ),
    "fmnist-trailing-bytes": (
        "fashion_mnist",
        _fashion(lambda d: _put(d, _TRAIN_IMAGES, idx_bytes(_IMAGES) + b"xx")),
        [_TRAIN_IMAGES, "2 unexpected trailing bytes"],
    ),
    "fmnist-labels-out-of-range": (
        "fashion_mnist",
        _fashion(_labels_out_of_range),
        [_TRAIN_LABELS, "label 12 out of range 0..9"],
    ),
    "fmnist-count-mismatch": (
        "fashion_mnist",
        _fashion(lambda d: _put(d, _TRAIN_LABELS, idx_bytes(_LABELS[:-1]))),
        [_TRAIN_LABELS, "6 labels for 7 images"],
    ),
    "fmnist-test-size-differs": (
        "fashion_mnist",
        _fashion(lambda d: _put(d, "t10k-images-idx3-ubyte", idx_bytes(np.zeros((3, 6, 6), np.uint8)))),
        ["fmnist", "train images are 5x5 but test images are 6x6"],
    ),
    "fmnist-gz-not-gzip": (
        "fashion_mnist",
        _fashion(lambda d: _put(d, _TRAIN_LABELS + ".gz", b"this is not gzip"), True),
        [_TRAIN_LABELS + ".gz", "not a valid gzip file"],
    ),
    "fmnist-gz-truncated": (
        "fashion_mnist",
        _fashion(lambda d: _put(d, _TRAIN_IMAGES + ".gz", gz(idx_bytes(_IMAGES))[:-12]), True),
        [_TRAIN_IMAGES + ".gz", "truncated or not a valid gzip file"],
    ),
    "fmnist-gzip-without-gz-name": (
        "fashion_mnist",
        _fashion(lambda d: _put(d, _TRAIN_IMAGES, gz(idx_bytes(_IMAGES)))),
        [_TRAIN_IMAGES, "gzip-compressed but not named .gz"],
    ),
    "fmnist-directory-not-file": (
        "fashion_mnist",
        _fashion(lambda d: (_remove(d / _TRAIN_LABELS), (d / _TRAIN_LABELS).mkdir())),
        [_TRAIN_LABELS, "is a directory"],
    ),
    "fmnist-data-dir-is-a-file": ("fashion_mnist", _data_dir_is_a_file, ["fmnist.tar", "not a directory"]),
    "fmnist-data-dir-missing": (
        "fashion_mnist",
        lambda tmp: tmp / "no-such-dir",
        ["no-such-dir", "data directory not found"],
    ),
    "fmnist-empty-data-dir": (
        "fashion_mnist",
        lambda tmp: (tmp / "empty").mkdir() or tmp / "empty",
        [_TRAIN_IMAGES, "not found"],
    ),
    # CIFAR pickles
    "cifar-missing-batch": ("cifar10", _cifar("cifar10", "data_batch_3", None), ["data_batch_3", "not found"]),
    "cifar-missing-test-batch": ("cifar10", _cifar("cifar10", "test_batch", None), ["test_batch", "not found"]),
    "cifar-truncated-pickle": (
        "cifar10",
        _cifar("cifar10", "data_batch_1", pickle.dumps(cifar_batch(4), protocol=2)[:300]),
        ["data_batch_1", "not a readable CIFAR pickle", "end early"],
    ),
    "cifar-empty-file": ("cifar10", _cifar("cifar10", "data_batch_1", b""), ["data_batch_1", "empty file"]),
    "cifar-random-bytes": (
        "cifar10",
        _cifar("cifar10", "data_batch_2", np.random.default_rng(7).bytes(512)),
        ["data_batch_2", "not a readable CIFAR pickle"],
    ),
    "cifar-gzip-not-extracted": (
        "cifar10",
        _cifar("cifar10", "data_batch_1", gz(pickle.dumps(cifar_batch(4)))),
        ["data_batch_1", "a gzip file, not a CIFAR python pickle"],
    ),
    "cifar-unsupported-protocol": (
        "cifar10",
        _cifar("cifar10", "data_batch_1", b"\x80\x09}."),
        ["data_batch_1", "unsupported pickle protocol"],
    ),
    "cifar-directory-not-file": ("cifar10", _cifar("cifar10", "test_batch", "dir"), ["test_batch", "is a directory"]),
    "cifar-list-not-dict": (
        "cifar10",
        _cifar("cifar10", "data_batch_1", [1, 2, 3]),
        ["data_batch_1", "expected a pickled dict, found list"],
    ),
    "cifar-int-key": (
        "cifar10",
        _cifar("cifar10", "data_batch_1", {1: _GOOD, b"labels": [0, 1]}),
        ["data_batch_1", "key of type int"],
    ),
    "cifar-missing-data-key": (
        "cifar10",
        _cifar("cifar10", "data_batch_1", {b"labels": [0, 1]}),
        ["data_batch_1", "missing key b'data'"],
    ),
    "cifar-data-wrong-dtype": (
        "cifar10",
        _cifar("cifar10", "data_batch_1", {b"data": _GOOD.astype(np.float32), b"labels": [0, 1]}),
        ["data_batch_1", "dtype float32, expected uint8"],
    ),
    "cifar-data-wrong-shape": (
        "cifar10",
        _cifar("cifar10", "data_batch_1", {b"data": _GOOD[:, :1024], b"labels": [0, 1]}),
        ["data_batch_1", "shape (2, 1024), expected (N, 3072)"],
    ),
    "cifar-data-a-list": (
        "cifar10",
        _cifar("cifar10", "data_batch_1", {b"data": [[0] * 3072] * 2, b"labels": [0, 1]}),
        ["data_batch_1", "data is a list"],
    ),
    "cifar-labels-length": (
        "cifar10",
        _cifar("cifar10", "data_batch_1", {b"data": _GOOD, b"labels": [0]}),
        ["data_batch_1", "1 labels for 2 images"],
    ),
    "cifar-label-10-in-cifar10": (
        "cifar10",
        _cifar("cifar10", "data_batch_1", {b"data": _GOOD, b"labels": [0, 10]}),
        ["data_batch_1", "label 10 out of range 0..9"],
    ),
    "cifar-negative-label-array": (
        "cifar10",
        _cifar("cifar10", "test_batch", {b"data": _GOOD, b"labels": np.array([-1, 0])}),
        ["test_batch", "label -1 out of range 0..9"],
    ),
    "cifar-label-not-a-number": (
        "cifar10",
        _cifar("cifar10", "data_batch_1", {b"data": _GOOD, b"labels": [0, "cat"]}),
        ["data_batch_1", "label at position 1 is 'cat', expected a whole number"],
    ),
    "cifar-labels-a-dict": (
        "cifar10",
        _cifar("cifar10", "data_batch_1", {b"data": _GOOD, b"labels": {}}),
        ["data_batch_1", "labels is a dict"],
    ),
    "cifar100-fine-labels-missing": (
        "cifar100",
        _cifar("cifar100", "train", {b"data": _GOOD, b"coarse_labels": [0, 1]}),
        ["train", "missing key b'fine_labels'", "coarse_labels"],
    ),
    "cifar100-label-100": (
        "cifar100",
        _cifar("cifar100", "test", {b"data": _GOOD, b"fine_labels": [0, 100]}),
        ["test", "label 100 out of range 0..99"],
    ),
    "cifar-data-dir-missing": ("cifar10", lambda tmp: tmp / "no-cifar", ["no-cifar", "data directory not found"]),
}


@pytest.mark.parametrize("case_id", list(DATA_CASES))
def test_a_malformed_data_file_is_named_in_one_line(tmp_path, case_id):
    dataset, build, names = DATA_CASES[case_id]
    data_dir = build(tmp_path)
    out = tmp_path / "out"
    outcome = invoke("compare", "--dataset", dataset, "--data-dir", data_dir, *FILE_RUN, "--out", out)
    assert_user_error(outcome, *names)
    assert_nothing_complete(out)


def test_the_fake_files_are_valid_before_they_are_damaged(tmp_path):
    """The corpus damages files that load: the failures above come from the damage alone."""
    assert load_dataset("fashion_mnist", write_fashion(tmp_path / "raw")).num_train == 7
    assert load_dataset("fashion_mnist", write_fashion(tmp_path / "gz", compressed=True)).num_test == 3
    assert load_dataset("cifar10", write_cifar(tmp_path / "c10")).num_train == 4 + 5 + 6 + 7 + 8
    assert load_dataset("cifar100", write_cifar(tmp_path / "c100", "cifar100")).num_classes == 100


# ------------------------------------------------------------------------------------------------
# a study name (or setup name) cannot leave runs/ablate/


def _study_toml(name_line: str, setup: str = "tiny") -> str:
    return "\n".join(
        [
            "[study]",
            name_line,
            "seeds = [0]",
            'variants = ["sgd"]',
            "",
            f"[setups.{setup}]",
            'model = "mlp"',
            'dataset = "teacher"',
            "train_size = 96",
            "batch_size = 32",
            "epochs = 1",
            "every = 2",
            "probe_size = 16",
            "lr_milestones = [2]",
            "",
        ]
    )


# id -> (the [study] name line or None for the file's own name, setup key, file name,
#        path (relative to the deep cwd) that must not appear, names in the error line)
STUDY_NAME_CASES = {
    "parent-escape": (
        'name = "../../../escaped_study"',
        "tiny",
        "s.toml",
        "../../../escaped_study",
        ["[study] name", "escaped_study"],
    ),
    "dotdot": ('name = ".."', "tiny", "s.toml", "runs", ["[study] name", "'..'"]),
    "dot": ('name = "."', "tiny", "s.toml", "runs", ["[study] name", "'.'"]),
    "hidden": ('name = ".hidden"', "tiny", "s.toml", "runs/ablate/.hidden", ["[study] name", ".hidden"]),
    "slash": ('name = "a/b"', "tiny", "s.toml", "runs/ablate/a", ["[study] name", "a/b"]),
    "absolute": ('name = "ABSOLUTE"', "tiny", "s.toml", "ABSOLUTE", ["[study] name", "escaped_abs"]),
    "inner-newline": ('name = "a\\nb"', "tiny", "s.toml", "runs/ablate/a\nb", ["[study] name", "'a\\nb'"]),
    "file-name-default": (None, "tiny", "..toml", "runs", ["[study] name", "'.'"]),
    "setup-dotdot": ('name = "fine"', '".."', "s.toml", "runs/ablate/fine", ["[setups...]", "setup name"]),
    "setup-dot": ('name = "fine"', '"."', "s.toml", "runs/ablate/fine", ["[setups..]", "setup name"]),
    "setup-parent-escape": (
        'name = "fine"',
        '"../../x"',
        "s.toml",
        "runs/ablate/fine",
        ["[setups.../../x]", "setup name"],
    ),
    "setup-trailing-newline": (
        'name = "fine"',
        '"ok\\n"',
        "s.toml",
        "runs/ablate/fine",
        ["[setups.'ok\\n']", "setup name"],
    ),
}


@pytest.mark.parametrize("case_id", list(STUDY_NAME_CASES))
def test_a_study_or_setup_name_cannot_escape_its_folder(tmp_path, case_id):
    name_line, setup, file_name, forbidden, names = STUDY_NAME_CASES[case_id]
    escaped_abs = tmp_path / "escaped_abs"
    if name_line is not None:
        name_line = name_line.replace("ABSOLUTE", str(escaped_abs))
    forbidden = forbidden.replace("ABSOLUTE", str(escaped_abs))
    cwd = tmp_path / "a" / "b" / "c"  # ../../../ still lands inside tmp_path
    cwd.mkdir(parents=True)
    config = cwd / file_name
    config.write_text(_study_toml(name_line or "", setup))
    outcome = invoke("ablate", "--config", config, "--workers", "1", cwd=cwd)
    assert_user_error(outcome, *names)
    assert not (cwd / forbidden).exists(), f"{cwd / forbidden} written"
    assert not escaped_abs.exists()
    assert sorted(p.name for p in cwd.iterdir()) == [file_name], "something was written beside the config"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"], "something was written outside the working directory"
