"""Atomic file writes for run records and reports.

Every file of a run record (``docs/record.md``) is written the same way: to a temporary file in
the destination's directory, flushed and fsynced, then moved over the destination with
``os.replace`` (atomic on POSIX and Windows within one file system). A reader therefore sees
either the old file or the complete new one, never a partial write, and a run killed mid-write
leaves at most a stray ``.<name>.*.tmp`` file, never a truncated record.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from arturo_diag.errors import RecordError

__all__ = [
    "atomic_open",
    "cannot_write",
    "make_directory",
    "WriteError",
    "write_error",
    "remove_file",
    "STOPPING_ERRNOS",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_savez",
    "atomic_write_csv",
    "jsonable",
]


def _read_umask() -> int:
    # os.umask can only be read by setting it; done once at import, before threads write files.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


class WriteError(RecordError):
    """The OS refused a write (full disk, read-only file system, no permission, ...): the message
    names the path and the OS's reason; ``errno`` is the OS error number (None if unknown)."""

    def __init__(self, message: str, errno: int | None = None):
        super().__init__(message)
        self.errno = errno

    def __reduce__(self):  # keeps errno across processes (study workers)
        return (type(self), (str(self), self.errno))


#: OS errors after which no write into the same directory can succeed: a study stops on them
#: rather than failing its runs one by one.
STOPPING_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


def cannot_write(path: str | os.PathLike[str], error: OSError) -> WriteError:
    """The :class:`WriteError` for an OS error writing ``path``: the path and the OS's reason."""
    return WriteError(f"cannot write {os.fspath(path)} ({error.strerror or error})", error.errno)


def write_error(error: OSError, path: str | os.PathLike[str]) -> WriteError:
    """:func:`cannot_write` for an OS error raised somewhere while writing into ``path`` (a
    directory): names the file the OS names, else ``path``."""
    return cannot_write(error.filename if error.filename is not None else path, error)


def remove_file(path: str | os.PathLike[str]) -> None:
    """Remove ``path`` if it exists; an OS error (read-only, no permission) is a :class:`WriteError`."""
    try:
        Path(path).unlink(missing_ok=True)
    except OSError as error:
        raise WriteError(f"cannot remove {os.fspath(path)} ({error.strerror or error})", error.errno) from None


def make_directory(path: str | os.PathLike[str], field: str | None = None) -> Path:
    """``mkdir -p path``; an OS error (a file in the way, read-only, no permission, full disk)
    becomes a :class:`RecordError` naming ``field`` (e.g. ``"out"``), the path and the reason."""
    path = Path(path)
    where = f"{field}: " if field else ""
    if path.exists() and not path.is_dir():
        raise WriteError(f"{where}cannot create directory {path} (a file of that name is in the way)", errno.EEXIST)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise WriteError(f"{where}cannot create directory {path} ({error.strerror or error})", error.errno) from None
    return path


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike[str], mode: str = "w", *, encoding: str | None = "utf-8", newline: str | None = None
) -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on clean exit fsync it and move it onto ``path``.

    If the body raises, the temporary file is removed and ``path`` is left as it was (absent or
    holding its previous content). ``mode`` is ``"w"`` (text) or ``"wb"`` (binary). The parent
    directory is created if missing.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode: got {mode!r}; allowed: 'w' or 'wb'")
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as error:
        raise cannot_write(target, error) from None
    tmp = Path(tmp_name)
    try:
        # mkstemp creates the file 0600; give it the permissions a plain open() would.
        os.chmod(tmp, 0o666 & ~_UMASK)
        if mode == "wb":
            handle: IO[Any] = os.fdopen(fd, "wb")
        else:
            handle = os.fdopen(fd, "w", encoding=encoding, newline=newline)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    try:
        with handle:  # from here on the handle owns (and closes) the descriptor
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except OSError as error:  # full disk, read-only file system, no permission: the path and the reason
        tmp.unlink(missing_ok=True)
        raise cannot_write(target, error) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(target.parent)


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; not possible on every platform (e.g. Windows).
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, ``os.replace``)."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (temporary file, fsync, ``os.replace``)."""
    with atomic_open(path, "w", encoding=encoding, newline="") as handle:
        handle.write(text)


def jsonable(obj: Any) -> Any:
    """A copy of ``obj`` that strict JSON can hold.

    Mappings become dicts (insertion order kept, keys as strings), tuples/lists/arrays become
    lists, numpy scalars become Python numbers, and the non-finite floats NaN, inf and -inf become
    ``None`` (JSON ``null``: strict JSON has no NaN).
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, Mapping):
        return {str(key): jsonable(value) for key, value in obj.items()}
    if isinstance(obj, np.ndarray):
        return [jsonable(value) for value in obj.tolist()]
    if isinstance(obj, (list, tuple)):
        return [jsonable(value) for value in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "item") and callable(obj.item):  # 0-d tensors and similar
        return jsonable(obj.item())
    raise TypeError(f"cannot write a {type(obj).__name__} to JSON: {obj!r}")


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON (indent 2, key order kept) atomically; NaN/inf -> null."""
    text = json.dumps(jsonable(obj), indent=2, allow_nan=False, ensure_ascii=False)
    atomic_write_text(path, text + "\n")


def atomic_savez(path: str | os.PathLike[str], **arrays: Any) -> None:
    """Save ``arrays`` as an uncompressed ``.npz`` at exactly ``path``, atomically.

    Keys may hold any characters (``"net.0.weight/curvature"``), so pass them as ``**mapping``.
    """
    with atomic_open(path, "wb") as handle:  # streamed: a 500 MB snapshot is not held twice in memory
        np.savez(handle, **{key: np.asarray(value) for key, value in arrays.items()})


def atomic_write_csv(path: str | os.PathLike[str], dataframe: pd.DataFrame) -> None:
    """Write ``dataframe`` as CSV (no index; NaN as an empty field; floats round-trip) atomically."""
    text = dataframe.to_csv(index=False, lineterminator="\n")
    atomic_write_text(path, text)
