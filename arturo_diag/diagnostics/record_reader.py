"""The loader of a run record (used by analysis and report): :class:`RunRecord`.

Files are checked by the rules of :mod:`~arturo_diag.diagnostics.record_checks`; snapshot arrays
are read on demand.
"""

from __future__ import annotations

import json
import os
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from arturo_diag.diagnostics.record_checks import (
    _CONFIG_SCHEMA,
    _NPZ_MAGIC,
    _WHOLE_COLUMNS,
    _check_agreement,
    _check_manifest,
    _load_config,
    _npz_header,
    _read_table,
    reference_fields,
)
from arturo_diag.diagnostics.record_format import (
    _CONFIG,
    _INSTRUMENT_KEY_RE,
    _MANIFEST,
    _SNAPSHOT_DIR,
    _SNAPSHOT_RE,
    _TABLES,
    INITIAL_WEIGHTS,
    SUBSAMPLE_INDEX,
    instrument_filename,
    layer_of,
    snapshot_filename,
)
from arturo_diag.errors import RecordError


class RunRecord:
    """A run record loaded from disk; snapshot arrays are read on demand.

    Attributes:
        run_dir: the record's directory.
        manifest: ``record.json`` as a dict.
        config: ``config.toml`` as a dict.
        steps, epochs, snapshots: the three tables as DataFrames (columns of docs/record.md).
        parameters: parameter name -> shape (tuple), in the model's order.
        layers: parameter name -> layer (module path).
        snapshot_steps: steps that have a snapshot, ascending.
    """

    def __init__(
        self,
        run_dir: Path,
        manifest: dict[str, Any],
        config: dict[str, Any],
        steps: pd.DataFrame,
        epochs: pd.DataFrame,
        snapshots: pd.DataFrame,
        snapshot_steps: list[int],
    ) -> None:
        self.run_dir = run_dir
        self.manifest = manifest
        self.config = config
        self.steps = steps
        self.epochs = epochs
        self.snapshots = snapshots
        self.snapshot_steps = snapshot_steps
        params = manifest.get("parameters") or {}
        self.parameters: dict[str, tuple[int, ...]] = {
            name: tuple(int(n) for n in (info or {}).get("shape", ())) for name, info in params.items()
        }
        self.layers: dict[str, str] = {
            name: str((info or {}).get("layer") or layer_of(name)) for name, info in params.items()
        }
        #: parameter name -> the shape its snapshot arrays have: its own, or (kept coordinates,)
        #: where the snapshots keep only some coordinates (:attr:`subsample_index`)
        self.stored_shapes: dict[str, tuple[int, ...]] = {
            name: tuple(int(n) for n in (info or {}).get("stored", self.parameters[name]))
            for name, info in params.items()
        }

    @property
    def subsampled(self) -> bool:
        """Whether the snapshots keep only some coordinates of some parameters (``--subsample``)."""
        return any(self.stored_shapes[name] != shape for name, shape in self.parameters.items())

    def subsample_index(self) -> dict[str, np.ndarray]:
        """Parameter name -> the flat coordinates (int64, sorted) its snapshot arrays hold, for
        the subsampled parameters ({} when none is). ``subsample_index.npz``.

        Raises:
            RecordError: the file is missing, unreadable, or its indices do not fit the manifest.
        """
        if not self.subsampled:
            return {}
        path = self.run_dir / SUBSAMPLE_INDEX
        try:
            with np.load(path, allow_pickle=False) as archive:
                index = {name: np.asarray(archive[name]) for name in archive.files}
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as error:
            raise RecordError(f"{path}: unreadable subsample index ({type(error).__name__}: {error})") from None
        for name, shape in self.stored_shapes.items():
            if shape == self.parameters[name]:
                continue
            kept = index.get(name)
            numel = int(np.prod(self.parameters[name]))
            if (
                kept is None
                or kept.dtype.kind not in "iu"
                or kept.shape != shape
                or kept.size
                and (kept.min() < 0 or kept.max() >= numel)
            ):
                raise RecordError(f"{path}: no valid index of {name} ({shape[0]} coordinates of {numel})")
        return index

    @property
    def status(self) -> str:
        """``"complete"``, ``"running"`` (or killed), ``"failed"`` or ``"diverged"`` (see :attr:`divergence`)."""
        return str(self.manifest.get("status"))

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    @property
    def divergence(self) -> dict[str, Any] | None:
        """``record.json``'s ``"divergence"`` of a ``"diverged"`` record (step, quantity, parameter,
        layer, count, kind, message), else None."""
        info = self.manifest.get("divergence")
        return dict(info) if self.status == "diverged" and isinstance(info, dict) else None

    @property
    def kind(self) -> str:
        return str(self.manifest.get("kind"))

    @property
    def instruments(self) -> dict[str, float]:
        """``record.json``'s ``"instruments"``: the instruments that ran -> their seconds in total
        (``{}`` for an older record without the key: none ran)."""
        return {str(k): float(v) for k, v in (self.manifest.get("instruments") or {}).items()}

    @classmethod
    def load(cls, run_dir: str | os.PathLike[str], *, allow_incomplete: bool = False) -> RunRecord:
        """Load the record in ``run_dir``.

        Every file is checked against docs/record.md (types, columns, numbers) and, for a complete
        record, against the manifest (one steps.csv row per step, the final evaluation, one
        snapshots.csv row and file per snapshot). Snapshot arrays are checked when read
        (:meth:`snapshot`), so loading stays cheap for big records.

        Raises:
            RecordError: naming the file and the problem: the directory is missing or holds no
                record, a file is unreadable, malformed or disagrees with the manifest, a snapshot
                file is missing, or the run did not finish (status other than ``"complete"``) and
                ``allow_incomplete`` is false.
        """
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            what = "not a directory" if run_dir.exists() else "no such run directory"
            raise RecordError(f"{run_dir}: {what}")
        manifest_path = run_dir / _MANIFEST
        if not manifest_path.is_file():
            raise RecordError(
                f"{run_dir} is not a run record (no {_MANIFEST}); the run did not start or did not finish"
            )
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as error:
            raise RecordError(f"{manifest_path}: unreadable manifest ({error})") from None
        _check_manifest(manifest_path, manifest)
        status = manifest["status"]
        complete = status == "complete"
        # a diverged run is finished too (it ended at its first NaN/inf); its tables are checked as
        # an incomplete record's: it has no final evaluation
        if not complete and not allow_incomplete and status != "diverged":
            raise RecordError(f"{run_dir} is incomplete (status {status}): the run did not finish")

        config_path = run_dir / _CONFIG
        config: dict[str, Any] = {}
        if config_path.is_file():
            resolved = complete and manifest["kind"] == "compare"
            config = _load_config(config_path, sections=tuple(_CONFIG_SCHEMA) if resolved else ())
        elif complete:
            raise RecordError(f"{run_dir}: {_CONFIG} is missing")

        tables = {
            key: _read_table(run_dir / filename, columns, _WHOLE_COLUMNS[key], required=complete)
            for key, (filename, columns) in _TABLES.items()
        }

        if complete:
            _check_agreement(run_dir, manifest, tables)
            snapshot_steps = sorted(manifest["snapshot_steps"])
            for step in snapshot_steps:
                if not (run_dir / snapshot_filename(step)).is_file():
                    raise RecordError(f"{run_dir / snapshot_filename(step)}: snapshot file missing")
        else:
            # A killed run's manifest lags behind; its snapshot files are each complete (atomic).
            snapshot_steps = _snapshot_steps_on_disk(run_dir / _SNAPSHOT_DIR)
        return cls(run_dir, manifest, config, tables["steps"], tables["epochs"], tables["snapshots"], snapshot_steps)

    def snapshot_path(self, step: int) -> Path:
        return self.run_dir / snapshot_filename(step)

    def snapshot(self, step: int, fields: Iterable[str] | None = None) -> dict[str, dict[str, np.ndarray]]:
        """The arrays of the snapshot at ``step``: parameter name -> field -> float64 array (shaped
        like the parameter, or 1-D of its kept coordinates where the record is :attr:`subsampled`).

        Read from disk at each call. ``fields`` restricts which fields are read. Parameters come
        in the manifest's order.

        Raises:
            RecordError: naming the file and the problem: not an npz archive, a key that is not
                ``PARAMETER/FIELD`` of a parameter of the manifest, an array of another shape than
                its parameter's or not of numbers (object arrays are never unpickled), unreadable
                data; in a complete record also a parameter without arrays, a reference field that
                snapshots.csv's ``reference`` promises but is missing, or an array all NaN.
        """
        step = int(step)
        if step not in self.snapshot_steps:
            raise RecordError(f"{self.run_dir}: no snapshot at step {step}; snapshots at steps {self.snapshot_steps}")
        wanted = None if fields is None else set(fields)
        path = self.snapshot_path(step)
        result: dict[str, dict[str, np.ndarray]] = {}
        try:
            with open(path, "rb") as handle:
                if handle.read(4) not in _NPZ_MAGIC:
                    raise RecordError(f"{path}: not an npz archive (a zip of .npy arrays)")
            with np.load(path, allow_pickle=False) as archive:
                for key, (name, field) in self._snapshot_keys(path, step, archive.zip).items():
                    if wanted is not None and field not in wanted:
                        continue
                    array = archive[key]
                    self._check_array(path, key, array.shape, array.dtype)
                    if self.complete and array.size and not np.isfinite(array).any():
                        what = "is all NaN" if np.isnan(array).all() else "holds no finite number"
                        raise RecordError(f"{path}: {key} {what}")
                    result.setdefault(name, {})[field] = np.asarray(array, dtype=np.float64)
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as error:
            raise RecordError(f"{path}: unreadable snapshot ({type(error).__name__}: {error})") from None
        order = {name: i for i, name in enumerate(self.parameters)}
        return dict(sorted(result.items(), key=lambda item: (order.get(item[0], len(order)), item[0])))

    def initial_weights(self) -> dict[str, np.ndarray] | None:
        """The weights when the Monitor started (``initial_weights.npz``: step 0), parameter -> float64
        array, or None for a record without them (older than issue 12, or written by hand).

        Raises:
            RecordError: naming the file and the problem (not an npz archive, a key that is no
                parameter of the manifest, a shape other than its parameter's, not numbers).
        """
        path = self.run_dir / INITIAL_WEIGHTS
        if not path.is_file():
            return None
        result: dict[str, np.ndarray] = {}
        try:
            with open(path, "rb") as handle:
                if handle.read(4) not in _NPZ_MAGIC:
                    raise RecordError(f"{path}: not an npz archive (a zip of .npy arrays)")
            with np.load(path, allow_pickle=False) as archive:
                for member in archive.zip.namelist():
                    name = member[: -len(".npy")] if member.endswith(".npy") else member
                    if name not in self.parameters:
                        raise RecordError(f"{path}: key {name!r} names no parameter of {_MANIFEST}")
                    header = _npz_header(archive.zip, member)
                    if header is not None:
                        self._check_array(path, f"{name}/weight", *header)
                    result[name] = np.asarray(archive[name], dtype=np.float64)
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as error:
            raise RecordError(f"{path}: unreadable initial weights ({type(error).__name__}: {error})") from None
        return result

    def instrument_arrays(self, step: int) -> dict[str, np.ndarray]:
        """The instruments' arrays of any shape at the snapshot at ``step`` (``INSTRUMENT/FIELD`` ->
        float64 array; {} when no instrument stored any there). Read from disk at each call.

        Raises:
            RecordError: naming the file and the problem: not an npz archive, a key that is not
                ``INSTRUMENT/FIELD``, an array not of numbers (never unpickled), unreadable data.
        """
        step = int(step)
        if step not in self.snapshot_steps:
            raise RecordError(f"{self.run_dir}: no snapshot at step {step}; snapshots at steps {self.snapshot_steps}")
        path = self.run_dir / instrument_filename(step)
        if not path.is_file():
            return {}
        result: dict[str, np.ndarray] = {}
        try:
            with open(path, "rb") as handle:
                if handle.read(4) not in _NPZ_MAGIC:
                    raise RecordError(f"{path}: not an npz archive (a zip of .npy arrays)")
            with np.load(path, allow_pickle=False) as archive:
                for member in archive.zip.namelist():
                    key = member[: -len(".npy")] if member.endswith(".npy") else member
                    if not member.endswith(".npy") or not _INSTRUMENT_KEY_RE.match(key):
                        raise RecordError(f"{path}: member {member!r} is not an INSTRUMENT/FIELD .npy array")
                    header = _npz_header(archive.zip, member)
                    if header is not None and header[1].kind not in "fiu":
                        raise RecordError(f"{path}: {key} holds {header[1]} values; instrument arrays hold numbers")
                    result[key] = np.asarray(archive[key], dtype=np.float64)
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as error:
            raise RecordError(f"{path}: unreadable instrument arrays ({type(error).__name__}: {error})") from None
        return result

    def _check_array(self, path: Path, key: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
        name = key.rpartition("/")[0]
        if dtype.kind not in "fiu":
            held = "Python objects (dtype object)" if dtype.hasobject else f"{dtype} values"
            raise RecordError(f"{path}: {key} holds {held}; a snapshot holds float64 arrays")
        if tuple(shape) != self.stored_shapes[name]:
            stored = self.stored_shapes[name]
            kept = f" (its snapshots keep {stored[0]} coordinates)" if stored != self.parameters[name] else ""
            raise RecordError(
                f"{path}: {key} has shape {list(shape)}; {_MANIFEST} gives {name} shape {list(self.parameters[name])}{kept}"
            )

    def _snapshot_keys(self, path: Path, step: int, archive: zipfile.ZipFile) -> dict[str, tuple[str, str]]:
        """Key -> (parameter, field) of every array of a snapshot, each checked from its header."""
        keys: dict[str, tuple[str, str]] = {}
        for member in archive.namelist():
            if not member.endswith(".npy"):
                raise RecordError(f"{path}: member {member!r} is not a .npy array")
            key = member[: -len(".npy")]
            name, _, field = key.rpartition("/")
            if not name or not field:
                raise RecordError(f"{path}: key {key!r} is not PARAMETER/FIELD")
            if name not in self.parameters:
                raise RecordError(f"{path}: key {key!r} names no parameter of {_MANIFEST}")
            header = _npz_header(archive, member)
            if header is not None:
                self._check_array(path, key, *header)
            keys[key] = (name, field)
        if self.complete:
            present: dict[str, set[str]] = {name: set() for name in self.parameters}
            for name, field in keys.values():
                present[name].add(field)
            absent = [name for name, held in present.items() if not held]
            if absent:
                raise RecordError(f"{path}: no arrays of parameter {absent[0]} ({_MANIFEST} lists it)")
            rows = self.snapshots.loc[self.snapshots["step"] == step, "reference"]
            reference = rows.iloc[0] if len(rows) else None
            for field in reference_fields(reference):
                for name, held in present.items():
                    if field not in held:
                        raise RecordError(
                            f"{path}: {name}/{field} missing; snapshots.csv says reference {reference!r} at step {step}"
                        )
        return keys


def _snapshot_steps_on_disk(snapshot_dir: Path) -> list[int]:
    if not snapshot_dir.is_dir():
        return []
    steps = []
    for path in snapshot_dir.iterdir():
        match = _SNAPSHOT_RE.match(path.name)
        if match:
            steps.append(int(match.group(1)))
    return sorted(steps)
