"""One writer per directory: an advisory lock on a run (or study) directory while it is written.

``DIR/.arturo-diag.lock`` (``docs/record.md``) is locked exclusively, without waiting, for as long
as a process writes ``DIR``: the :class:`~arturo_diag.diagnostics.record.RecordWriter` from before
it looks at or removes a previous record until the record's last write, report rendering while it
writes, a study for the whole study. A second writer is refused with a :class:`RecordError` that
names the directory and the holder's pid (written into the lock file), ``--overwrite`` included.

How the lock is taken, by platform:

- POSIX: ``fcntl.flock(LOCK_EX | LOCK_NB)`` on the lock file. The kernel releases it when the
  holder exits, however it dies (``kill -9`` included), so a stale pid in the file blocks nobody;
  the file stays (emptied) after release.
- Windows: ``msvcrt.locking(LK_NBLCK)`` on the file's first byte; released by the OS as well.
- Elsewhere (or where the file system refuses ``flock``): the file is created with ``O_EXCL``
  and removed at release; one left by a process that no longer runs (pid checked on POSIX) is
  taken over.

Within one process, a lock taken with ``allow_nested=True`` (a study holding its directory,
``keep_locked``) lets one writer at a time take the same directory inside it; otherwise a second
lock on a directory this process already writes is refused like another process's.

Whoever takes a directory's lock from nobody removes the stray temporary files of a dead writer
(``.{name}.XXXXXXXX.tmp``, :mod:`arturo_diag.diagnostics.io`) in it and in its ``snapshots/``
and ``figures/``: no live writer can own them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from arturo_diag.diagnostics.io import make_directory
from arturo_diag.errors import RecordError

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows and others
    fcntl = None  # type: ignore[assignment]
try:  # Windows
    import msvcrt
except ImportError:
    msvcrt = None  # type: ignore[assignment]

__all__ = ["LOCK_FILE", "DirectoryLock", "keep_locked", "remove_stray_temporaries"]

LOCK_FILE = ".arturo-diag.lock"
#: Subdirectories whose temporaries are cleaned with the directory's (snapshots of a record,
#: figures of a report or study).
TEMPORARY_SUBDIRS = ("snapshots", "figures")
# io.atomic_open's temporaries: tempfile.mkstemp(prefix=".{name}.", suffix=".tmp"), whose random
# part is 8 characters of [a-z0-9_].
_TEMPORARY_RE = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")
_BUSY = (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK)
_WRITING = "wait for it to finish or choose another --out"


class _Held:
    """The OS lock of one directory, as this process holds it, and who inside it holds it."""

    def __init__(self, handle: Any, method: str, path: Path) -> None:
        self.handle = handle
        self.method = method
        self.path = path
        self.pid = os.getpid()
        self.stack: list[DirectoryLock] = []


_HELD: dict[str, _Held] = {}  # realpath of the directory -> its lock, held by this process
_RETAIN: dict[str, int] = {}  # realpath -> open keep_locked() contexts
_GUARD = threading.RLock()


def _key(directory: Path) -> str:
    return os.path.realpath(directory)


def remove_stray_temporaries(directory: str | os.PathLike[str]) -> list[Path]:
    """Remove ``.{name}.XXXXXXXX.tmp`` files in ``directory`` and its ``snapshots/``, ``figures/``.

    Only safe while holding the directory's lock (no live writer can own them). Returns what was
    removed.
    """
    removed = []
    directory = Path(directory)
    for folder in (directory, *(directory / sub for sub in TEMPORARY_SUBDIRS)):
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            if _TEMPORARY_RE.match(entry.name) and entry.is_file(follow_symlinks=False):
                try:
                    os.unlink(entry.path)
                except OSError:
                    continue
                removed.append(Path(entry.path))
    return removed


def _holder_text(text: str) -> str:
    parts = text.split()
    if not parts or not parts[0].isdigit():
        return ""
    pid = parts[0]
    if len(parts) > 1 and parts[1] != socket.gethostname():
        return f" (pid {pid} on {parts[1]})"
    return f" (pid {pid})"


def _read_holder(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _stamp() -> bytes:
    return f"{os.getpid()} {socket.gethostname()}\n".encode()


def _pid_gone(text: str) -> bool:
    """Whether the pid in an ``O_EXCL`` lock file is certainly not running (POSIX, this host)."""
    parts = text.split()
    if not parts or not parts[0].isdigit():
        return True  # empty or garbled: its writer died before writing its pid
    if os.name != "posix" or (len(parts) > 1 and parts[1] != socket.gethostname()):
        return False
    try:
        os.kill(int(parts[0]), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


class DirectoryLock:
    """The exclusive advisory lock of ``directory`` (a context manager; :meth:`acquire` / :meth:`release`).

    Args:
        directory: the directory to lock; created if missing (``create=True``).
        allow_nested: let one lock of the same directory at a time be taken inside this one by
            this process (a study holding its directory while it renders its report).
        advice: what the refusal suggests, after "is being written by another arturo-diag process".

    Raises (from :meth:`acquire`):
        RecordError: another process (or another writer in this process) holds the lock, or the
            directory cannot be created or the lock file cannot be written (the path and the
            OS's reason).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        allow_nested: bool = False,
        advice: str = _WRITING,
        create: bool = True,
    ) -> None:
        self.directory = Path(directory)
        self.allow_nested = allow_nested
        self.advice = advice
        self.create = create
        self._key: str | None = None
        self._keeper = False  # the part of keep_locked()

    @property
    def held(self) -> bool:
        return self._key is not None

    @property
    def path(self) -> Path:
        return self.directory / LOCK_FILE

    # ------------------------------------------------------------------ acquire
    def acquire(self) -> DirectoryLock:
        if self.held:
            raise RuntimeError(f"{self.directory}: this lock is already held")
        if self.create:
            make_directory(self.directory)
        elif not self.directory.is_dir():
            raise RecordError(f"{self.directory}: no such directory")
        key = _key(self.directory)
        with _GUARD:
            held = _HELD.get(key)
            if held is not None and held.pid != os.getpid():  # inherited through fork: not ours
                del _HELD[key]
                held = None
            if held is not None:
                top = held.stack[-1] if held.stack else None
                if top is None or not top.allow_nested:
                    raise RecordError(
                        f"{self.directory} is being written by another writer in this process "
                        f"(pid {os.getpid()}): end that one first (its finish(), fail() or "
                        f"close()), or choose another directory"
                    )
                held.stack.append(self)
                self._key = key
                return self
            held = self._lock_os()
            _HELD[key] = held
            if _RETAIN.get(key):  # inside keep_locked(): the lock outlives this holder
                held.stack.append(_new_keeper(self.directory, key))
            held.stack.append(self)
            self._key = key
        remove_stray_temporaries(self.directory)
        return self

    def _refuse(self, holder: str) -> RecordError:
        return RecordError(
            f"{self.directory} is being written by another arturo-diag process{_holder_text(holder)}; {self.advice}"
        )

    def _cannot(self, error: OSError) -> RecordError:
        return RecordError(f"cannot lock {self.path} ({error.strerror or error})")

    def _lock_os(self) -> _Held:
        path = self.path
        if fcntl is not None or msvcrt is not None:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as error:
                raise self._cannot(error) from None
            try:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    method = "flock"
                else:  # pragma: no cover - Windows
                    os.lseek(fd, 0, os.SEEK_SET)
                    msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
                    method = "msvcrt"
            except OSError as error:
                os.close(fd)
                if error.errno in _BUSY:
                    raise self._refuse(_read_holder(path)) from None
                if error.errno not in (errno.ENOLCK, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise self._cannot(error) from None
                return self._lock_exclusive_file()  # a file system without flock (some NFS)
            try:
                if method == "flock":
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, _stamp(), 0)
                else:  # pragma: no cover - Windows: byte 0 is locked, the pid follows it
                    os.lseek(fd, 1, os.SEEK_SET)
                    os.write(fd, b" " + _stamp())
            except OSError as error:
                _unlock(fd, method)
                raise self._cannot(error) from None
            return _Held(fd, method, path)
        return self._lock_exclusive_file()  # pragma: no cover - neither fcntl nor msvcrt

    def _lock_exclusive_file(self) -> _Held:
        path = self.path
        for _ in range(2):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                holder = _read_holder(path)
                if not _pid_gone(holder):
                    raise self._refuse(holder) from None
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()  # its writer is dead: take over
                continue
            except OSError as error:
                raise self._cannot(error) from None
            try:
                os.write(fd, _stamp())
            except OSError as error:
                os.close(fd)
                path.unlink(missing_ok=True)
                raise self._cannot(error) from None
            return _Held(fd, "exclusive-file", path)
        raise self._refuse(_read_holder(path))

    # ------------------------------------------------------------------ release
    def release(self) -> None:
        """Release the lock (nothing if not held). The OS lock goes with the outermost holder."""
        key = self._key
        if key is None:
            return
        with _GUARD:
            self._key = None
            held = _HELD.get(key)
            if held is None or held.pid != os.getpid():
                return
            if self in held.stack:
                held.stack.remove(self)
            if held.stack:
                return
            del _HELD[key]
        _release_os(held)

    def __enter__(self) -> DirectoryLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:  # a writer dropped without finishing still frees its directory
        try:
            self.release()
        except Exception:
            pass


def _unlock(fd: int, method: str) -> None:
    try:
        if method == "flock":
            fcntl.flock(fd, fcntl.LOCK_UN)
        elif method == "msvcrt":  # pragma: no cover - Windows
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
    except OSError:
        pass
    finally:
        os.close(fd)


def _release_os(held: _Held) -> None:
    fd = held.handle
    if held.method == "exclusive-file":
        with contextlib.suppress(OSError):
            held.path.unlink()
        with contextlib.suppress(OSError):
            os.close(fd)
        return
    if held.method == "flock":
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # no holder any more (the file stays: removing it would race)
    _unlock(fd, held.method)


@contextlib.contextmanager
def keep_locked(directory: str | os.PathLike[str]) -> Iterator[None]:
    """Keep ``directory``'s lock from the first time this process takes it until the end of the block.

    For one command that writes a directory in several steps (``compare``: the record, then its
    report): no other process can come in between. Nothing is created or locked until a writer
    inside the block takes the lock; inside, one writer at a time may take it again.
    """
    key = _key(Path(directory))
    with _GUARD:
        _RETAIN[key] = _RETAIN.get(key, 0) + 1
        held = _HELD.get(key)
        if held is not None and held.pid == os.getpid() and _keeper(held) is None:
            held.stack.insert(0, _new_keeper(held.path.parent, key))  # already held: keep it from now on
    try:
        yield
    finally:
        with _GUARD:
            _RETAIN[key] -= 1
            last = not _RETAIN[key]
            if last:
                del _RETAIN[key]
            held = _HELD.get(key)
            keeper = _keeper(held) if held is not None and held.pid == os.getpid() else None
        if last and keeper is not None:
            keeper.release()


def _new_keeper(directory: Path, key: str) -> DirectoryLock:
    keeper = DirectoryLock(directory, allow_nested=True)
    keeper._key = key
    keeper._keeper = True
    return keeper


def _keeper(held: _Held) -> DirectoryLock | None:
    return next((lock for lock in held.stack if lock._keeper), None)
