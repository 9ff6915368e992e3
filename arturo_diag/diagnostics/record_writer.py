"""The writer of a run record (used by the training loop and monitor): :class:`RecordWriter`.

:class:`RecordWriter` writes ``record.json`` with status ``"running"`` as soon as it is created
and rewrites it with status ``"complete"`` as the very last act of :meth:`RecordWriter.finish`,
so a run killed at any point leaves a directory that says it is incomplete. Every file is
written atomically (:mod:`arturo_diag.diagnostics.io`). The format is that of
:mod:`~arturo_diag.diagnostics.record_format` (``docs/record.md``).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from arturo_diag._toml import tomllib
from arturo_diag.diagnostics.io import (
    atomic_savez,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    make_directory,
    write_error,
)
from arturo_diag.diagnostics.lock import DirectoryLock
from arturo_diag.diagnostics.record_format import (
    _CONFIG,
    _INSTRUMENT_DIR,
    _INSTRUMENT_KEY_RE,
    _MANIFEST,
    _RECORD_FILES,
    _REPORT_GLOB,
    _SNAPSHOT_DIR,
    _SNAPSHOT_RE,
    _TABLES,
    INITIAL_WEIGHTS,
    RECORD_FORMAT,
    RECORD_KINDS,
    SNAPSHOT_DTYPES,
    SUBSAMPLE_INDEX,
    instrument_filename,
    layer_of,
    snapshot_filename,
    study_marker,
)
from arturo_diag.errors import RecordError


def _plain(value: Any) -> Any:
    """A table cell as a plain Python value (0-d tensors and numpy scalars via ``.item()``)."""
    if value is None:
        return math.nan
    if isinstance(value, (str, bool, int, float)):
        return value
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    raise ValueError(f"table cell: got {type(value).__name__} {value!r}; allowed: a number or a string")


def _as_float64(value: Any) -> np.ndarray:
    return _as_array(value, np.float64)


def _as_array(value: Any, dtype: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # torch tensor; torch is not imported here
        value = value.detach().cpu()
    return np.asarray(value, dtype=dtype)


def _table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> pd.DataFrame:
    order = list(columns)
    seen = set(order)
    for row in rows:
        for key in row:
            if key not in seen:
                seen.add(key)
                order.append(key)
    return pd.DataFrame.from_records(list(rows), columns=order)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _version() -> str:
    from arturo_diag import __version__

    return __version__


class RecordWriter:
    """Writes one run record, incrementally and atomically.

    Args:
        run_dir: the directory of the record (created if missing).
        kind: ``"compare"`` or ``"monitor"`` (``record.json``'s ``kind``).
        config_toml_text: the resolved config as TOML text; written to ``config.toml``.
        parameters: parameter name -> shape, in the model's order. A parameter's layer is
            :func:`layer_of` its name.
        optimizer: the optimizer's settings (``record.json``'s ``optimizer``), e.g. the group's
            ``lr`` (the KL bound), ``eta_tol``, ``var_init``.
        var_init: the initial variance of every coordinate (used by the variance-collapse check).
        layers: parameter name -> its layer's name, where it is not :func:`layer_of` the name.
        manifest: further ``record.json`` keys known from the start (the reference's mode, ...).
        overwrite: replace a record that ``run_dir`` already holds. Without it, a directory with a
            ``record.json`` (of any status) is refused with :class:`RecordError`.
        snapshot_dtype: ``"float64"`` (default) or ``"float32"``: the dtype the per-parameter arrays
            of the snapshots and the initial weights are stored in (``record.json``'s ``snapshot_dtype``).
        subsample: parameter name -> the flat coordinates kept of it (sorted, unique), for the
            parameters whose snapshots keep only some coordinates. Their arrays are 1-D, of those
            coordinates in that order (``parameters[name]["stored"]``); the indices are written to
            ``subsample_index.npz`` at once.

    ``record.json`` is written with status ``"running"`` at once; :meth:`finish` rewrites it with
    status ``"complete"`` after everything else, so a killed run is recognisably incomplete.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        kind: str,
        config_toml_text: str,
        parameters: Mapping[str, Sequence[int]],
        *,
        optimizer: Mapping[str, Any] | None = None,
        var_init: float | None = None,
        overwrite: bool = False,
        layers: Mapping[str, str] | None = None,
        manifest: Mapping[str, Any] | None = None,
        snapshot_dtype: str = "float64",
        subsample: Mapping[str, Any] | None = None,
    ) -> None:
        if kind not in RECORD_KINDS:
            raise ValueError(f"kind: got {kind!r}; allowed: {', '.join(map(repr, RECORD_KINDS))}")
        try:
            tomllib.loads(config_toml_text)
        except (tomllib.TOMLDecodeError, TypeError) as error:
            raise ValueError(f"config_toml_text: not valid TOML ({error})") from None
        if snapshot_dtype not in SNAPSHOT_DTYPES:
            raise ValueError(
                f"snapshot_dtype: got {snapshot_dtype!r}; allowed: {', '.join(map(repr, SNAPSHOT_DTYPES))}"
            )
        self.run_dir = Path(run_dir)
        self.snapshot_dtype = np.dtype(snapshot_dtype)
        self._parameters: dict[str, dict[str, Any]] = {}
        for name, shape in parameters.items():
            layer = (layers or {}).get(name) or layer_of(str(name))
            self._parameters[str(name)] = {"shape": [int(n) for n in shape], "layer": str(layer)}
        self._subsample = _check_subsample(subsample or {}, self._parameters)
        for name, index in self._subsample.items():
            self._parameters[name]["stored"] = [int(index.size)]
        self._extra = {k: v for k, v in (manifest or {}).items() if k not in ("format", "status")}
        _refuse_study_dir(self.run_dir)
        # One writer per run directory (docs/record.md, "Locks"): held from before a previous record
        # is looked at or removed until the record's last write (see ``_finished``).
        self._lock = DirectoryLock(self.run_dir)
        self._lock.acquire()
        try:
            _refuse_study_dir(self.run_dir)  # again, now that no one else can write it
            self._start(kind, config_toml_text, optimizer=optimizer, var_init=var_init, overwrite=overwrite)
        except BaseException:
            self._lock.release()
            raise

    def _start(
        self,
        kind: str,
        config_toml_text: str,
        *,
        optimizer: Mapping[str, Any] | None,
        var_init: float | None,
        overwrite: bool,
    ) -> None:
        """Under the lock: refuse or remove a previous record, write config.toml and the manifest."""
        manifest_path = self.run_dir / _MANIFEST
        if manifest_path.exists():
            if not overwrite:
                status = _peek_status(manifest_path)
                raise RecordError(
                    f"{self.run_dir} already holds a run record (status {status}); "
                    "choose another directory or overwrite it explicitly"
                )
            try:
                _remove_record_files(self.run_dir)
            except OSError as error:  # read-only, no permission: the path and the OS's reason
                raise write_error(error, self.run_dir) from None

        make_directory(self.run_dir, "out")  # a RecordError naming the path and the OS's reason
        make_directory(self.run_dir / _SNAPSHOT_DIR, "out")
        self._steps: list[dict[str, Any]] = []
        self._epochs: list[dict[str, Any]] = []
        self._snapshot_rows: list[dict[str, Any]] = []
        self._snapshot_steps: list[int] = []
        self._finished = False
        self._manifest: dict[str, Any] = {
            "format": RECORD_FORMAT,
            "status": "running",
            "kind": kind,
            "steps": 0,
            "snapshot_steps": [],
            "parameters": self._parameters,
            "optimizer": dict(optimizer) if optimizer is not None else {},
            "var_init": var_init,
            "created": _now(),
            "arturo_diag_version": _version(),
            "snapshot_dtype": self.snapshot_dtype.name,
            **self._extra,
        }
        atomic_write_text(self.run_dir / _CONFIG, config_toml_text)
        if self._subsample:
            atomic_savez(self.run_dir / SUBSAMPLE_INDEX, **self._subsample)
        self._write_manifest()

    # -- end and lock ---------------------------------------------------------------------------
    # Every terminal method (finish, fail, ...) ends with ``self._finished = True`` after its last
    # write: that one assignment releases the run directory's lock.
    @property
    def _finished(self) -> bool:
        return self.__dict__.get("_done", False)

    @_finished.setter
    def _finished(self, value: bool) -> None:
        self.__dict__["_done"] = bool(value)
        if value:
            self.close()

    def close(self) -> None:
        """Release the run directory's lock (done by :meth:`finish` and :meth:`fail`). A record not
        finished stays ``"running"``: incomplete. Idempotent."""
        lock = self.__dict__.get("_lock")
        if lock is not None:
            lock.release()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is not None and not self.finished:
                self.fail(f"{exc_type.__name__}: {exc}")
        finally:
            self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # -- rows ---------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._finished:
            raise RecordError(f"{self.run_dir}: the record is already finished; nothing more can be added")

    def add_step(self, row: Mapping[str, Any]) -> None:
        """Append one row of ``steps.csv`` (columns of docs/record.md; ``step`` required)."""
        self._check_open()
        if "step" not in row:
            raise ValueError("add_step: the row has no 'step'")
        self._steps.append({key: _plain(value) for key, value in row.items()})

    def add_epoch(self, row: Mapping[str, Any]) -> None:
        """Append one row of ``epochs.csv`` (``epoch``, ``step``, train/test loss and accuracy)."""
        self._check_open()
        if "epoch" not in row:
            raise ValueError("add_epoch: the row has no 'epoch'")
        self._epochs.append({key: _plain(value) for key, value in row.items()})

    def stored_shape(self, name: str) -> tuple[int, ...]:
        """The shape ``name``'s snapshot arrays are stored in: the parameter's, or (kept coordinates,)."""
        info = self._parameters[name]
        return tuple(info.get("stored", info["shape"]))

    def _stored(self, name: str, value: Any, what: str) -> np.ndarray:
        """``value`` (shaped like the parameter, or already like its stored shape) as stored."""
        array = _as_array(value, self.snapshot_dtype)
        shape, stored = tuple(self._parameters[name]["shape"]), self.stored_shape(name)
        if array.shape == shape and stored != shape:
            array = array.reshape(-1)[self._subsample[name]]
        if array.shape != stored:
            allowed = f"{list(shape)}" + (f" or {list(stored)} (its kept coordinates)" if stored != shape else "")
            raise ValueError(f"{what}: {name} has shape {list(array.shape)}; the parameter's is {allowed}")
        return array

    def write_initial_weights(self, weights: Mapping[str, Any]) -> None:
        """Write the weights at the start (step 0) once, atomically: ``initial_weights.npz``, one
        array per parameter of the manifest, shaped like it, or its kept coordinates where the
        snapshots are subsampled (``distance from initialisation``)."""
        self._check_open()
        payload = {}
        for name, value in weights.items():
            if name not in self._parameters:
                raise ValueError(f"write_initial_weights: unknown parameter {name!r}")
            payload[name] = self._stored(name, value, "write_initial_weights")
        atomic_savez(self.run_dir / INITIAL_WEIGHTS, **payload)

    def add_snapshot(
        self,
        step: int,
        scalars: Mapping[str, Any],
        arrays: Mapping[str, Mapping[str, Any]],
        extras: Mapping[str, Any] | None = None,
    ) -> None:
        """Write the arrays of one snapshot now (atomically) and queue its ``snapshots.csv`` row.

        ``arrays`` maps parameter name -> field (``curvature``, ``filter_cov_aa``, ``h_exact``, ...)
        -> array shaped like the parameter (or like its kept coordinates, where subsampled); arrays
        are stored in ``snapshot_dtype`` (a subsampled parameter's kept coordinates only). ``extras``: the
        instruments' arrays of any shape, keyed ``INSTRUMENT/FIELD`` (``instruments/step_*.npz``,
        written before the snapshot's own file).
        """
        self._check_open()
        step = int(step)
        if step in self._snapshot_steps:
            raise ValueError(f"add_snapshot: step {step} already has a snapshot")
        payload: dict[str, np.ndarray] = {}
        for name, fields in arrays.items():
            if name not in self._parameters:
                raise ValueError(f"add_snapshot: unknown parameter {name!r}; known: {', '.join(self._parameters)}")
            for field, value in fields.items():
                if "/" in field or not field:
                    raise ValueError(f"add_snapshot: field name {field!r} must be non-empty and hold no '/'")
                payload[f"{name}/{field}"] = self._stored(name, value, f"add_snapshot: field {field}")
        if extras:
            bad = [key for key in extras if not _INSTRUMENT_KEY_RE.match(key)]
            if bad:
                raise ValueError(f"add_snapshot: instrument array key {bad[0]!r} is not INSTRUMENT/FIELD (lower case)")
            make_directory(self.run_dir / _INSTRUMENT_DIR, "out")
            atomic_savez(self.run_dir / instrument_filename(step), **{k: _as_float64(v) for k, v in extras.items()})
        atomic_savez(self.run_dir / snapshot_filename(step), **payload)
        self._manifest["snapshot_bytes"] = self._manifest.get("snapshot_bytes", 0) + _size_of(
            self.run_dir / snapshot_filename(step), self.run_dir / instrument_filename(step) if extras else None
        )
        row = {"step": step}
        row.update({key: _plain(value) for key, value in scalars.items() if key != "step"})
        self._snapshot_rows.append(row)
        self._snapshot_steps.append(step)

    # -- files --------------------------------------------------------------------------------
    def _last_step(self) -> int:
        steps = [row["step"] for row in self._steps if isinstance(row.get("step"), (int, float))]
        finite = [int(s) for s in steps if not (isinstance(s, float) and math.isnan(s))]
        return max(finite, default=0)

    def _write_manifest(self) -> None:
        atomic_write_json(self.run_dir / _MANIFEST, self._manifest)

    def flush(self) -> None:
        """Rewrite ``steps.csv``, ``epochs.csv``, ``snapshots.csv`` and the running manifest."""
        self._check_open()
        self._write_tables()
        self._manifest["steps"] = self._last_step()
        self._manifest["snapshot_steps"] = sorted(self._snapshot_steps)
        self._write_manifest()

    def _write_tables(self) -> None:
        for rows, (filename, columns) in (
            (self._steps, _TABLES["steps"]),
            (self._epochs, _TABLES["epochs"]),
            (self._snapshot_rows, _TABLES["snapshots"]),
        ):
            atomic_write_csv(self.run_dir / filename, _table(rows, columns))

    def finish(self, extra: Mapping[str, Any] | None = None) -> None:
        """Write the tables, then ``record.json`` with status ``"complete"`` (last).

        ``extra`` is merged into the manifest (e.g. ``optimizer``, ``var_init``, ``seconds``); it
        may not set ``format`` or ``status``.
        """
        self._check_open()
        extra = dict(extra or {})
        for reserved in ("format", "status"):
            if reserved in extra:
                raise ValueError(f"finish: extra may not set {reserved!r}")
        self._write_tables()
        self._manifest["steps"] = self._last_step()
        self._manifest["snapshot_steps"] = sorted(self._snapshot_steps)
        self._manifest.update(extra)
        self._manifest["status"] = "complete"
        self._manifest["finished"] = _now()
        self._write_manifest()
        self._finished = True

    def fail(self, reason: str) -> None:
        """Write the tables and mark the record ``"failed"`` with ``reason`` (e.g. an exception)."""
        self._check_open()
        self._write_tables()
        self._manifest["steps"] = self._last_step()
        self._manifest["snapshot_steps"] = sorted(self._snapshot_steps)
        self._manifest["status"] = "failed"
        self._manifest["error"] = str(reason)
        self._write_manifest()
        self._finished = True

    def diverge(self, info: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> None:
        """Write the tables, then ``record.json`` with status ``"diverged"`` and ``"divergence": info``
        (last): the run ended at its first non-finite quantity (``step``, ``quantity``, ``parameter``,
        ``layer``, ``count``, ``kind``, see :class:`arturo_diag.errors.Diverged`). A diverged record is
        finished: reports render from it. ``extra`` is merged into the manifest as in :meth:`finish`."""
        self._check_open()
        extra = dict(extra or {})
        for reserved in ("format", "status", "divergence"):
            if reserved in extra:
                raise ValueError(f"diverge: extra may not set {reserved!r}")
        self._write_tables()
        self._manifest["steps"] = self._last_step()
        self._manifest["snapshot_steps"] = sorted(self._snapshot_steps)
        self._manifest.update(extra)
        self._manifest["status"] = "diverged"
        self._manifest["divergence"] = {
            key: _plain(value) if value is not None else None for key, value in info.items()
        }
        self._manifest["finished"] = _now()
        self._write_manifest()
        self._finished = True

    @property
    def finished(self) -> bool:
        """Whether :meth:`finish` or :meth:`fail` has been called."""
        return self._finished


def _size_of(*paths: Path | None) -> int:
    return sum(path.stat().st_size for path in paths if path is not None and path.exists())


def _check_subsample(
    subsample: Mapping[str, Any], parameters: Mapping[str, Mapping[str, Any]]
) -> dict[str, np.ndarray]:
    """The kept coordinates of each subsampled parameter as sorted, unique, in-range int64 arrays."""
    checked: dict[str, np.ndarray] = {}
    for name, index in subsample.items():
        if name not in parameters:
            raise ValueError(f"subsample: unknown parameter {name!r}")
        index = _as_array(index, np.int64).reshape(-1)
        numel = int(np.prod(parameters[name]["shape"]))
        if index.size == 0 or np.any(np.diff(index) <= 0) or index[0] < 0 or index[-1] >= numel:
            raise ValueError(f"subsample: {name}'s indices must be sorted, unique and within [0, {numel})")
        checked[name] = index
    return checked


def _refuse_study_dir(run_dir: Path) -> None:
    marker = study_marker(run_dir)
    if marker is not None:
        raise RecordError(
            f"{run_dir} is an ablation study's directory (it holds {marker}), not a run's; choose another --out"
        )


def _peek_status(manifest_path: Path) -> str:
    try:
        return str(json.loads(manifest_path.read_text(encoding="utf-8")).get("status", "unknown"))
    except (OSError, ValueError, AttributeError):
        return "unreadable"


def _remove_record_files(run_dir: Path) -> None:
    # The manifest goes first: from then on the directory is not a (complete) record.
    for name in _RECORD_FILES:
        (run_dir / name).unlink(missing_ok=True)
    for path in run_dir.glob(_REPORT_GLOB):
        if path.is_file():
            path.unlink()
    snapshot_dir = run_dir / _SNAPSHOT_DIR
    if snapshot_dir.is_dir():
        for path in snapshot_dir.iterdir():
            if _SNAPSHOT_RE.match(path.name):
                path.unlink()
    instrument_dir = run_dir / _INSTRUMENT_DIR
    if instrument_dir.is_dir():
        for path in instrument_dir.iterdir():
            if _SNAPSHOT_RE.match(path.name):
                path.unlink()
    events = run_dir / "tensorboard"  # the TensorBoard sink's (Monitor(tensorboard=True)): a new run, new events
    if events.is_dir():
        for path in events.glob("events.out.tfevents.*"):
            path.unlink()
    figures = run_dir / "figures"
    if figures.is_dir():
        for path in figures.glob("*.png"):
            path.unlink()
