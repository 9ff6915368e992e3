"""IDX files (the MNIST format): :func:`read_idx` parses one, raw or gzip-compressed."""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from arturo_diag.errors import DataError

__all__ = ["read_idx"]

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
            raise DataError(f"{path}: bad magic number 0x{magic:08X}, expected 0x{expected_magic:08X} for {what}")
    if raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path}: bad magic number 0x{magic:08X}, first two bytes must be zero in IDX")
    if code not in _IDX_DTYPES:
        raise DataError(f"{path}: unknown IDX data type code 0x{code:02X} in magic number 0x{magic:08X}")
    if ndim == 0:
        raise DataError(f"{path}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated header: {ndim} dimensions need {header} bytes, file has {len(raw)}")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_DTYPES[code]
    expected = math.prod(dims) * dtype.itemsize
    found = len(raw) - header
    if found < expected:
        raise DataError(f"{path}: truncated: dimensions {dims} need {expected} data bytes, found {found}")
    if found > expected:
        raise DataError(
            f"{path}: {found - expected} unexpected trailing bytes after the {expected} data bytes of dimensions {dims}"
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
    raise DataError(f"{directory / name}: not found (looked for {directory / name} and {directory / name}.gz)")
