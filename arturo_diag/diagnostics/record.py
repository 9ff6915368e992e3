"""The run record: writer (used by the training loop and monitor) and loader (used by analysis).

Format ``arturo-diag-run/1``, specified in ``docs/record.md``::

    RUN_DIR/config.toml, steps.csv, epochs.csv, snapshots.csv,
    RUN_DIR/snapshots/step_XXXXXXX.npz   keys "{param_name}/{field}", float64
    RUN_DIR/record.json                  manifest; status "complete" only when the run finished

:class:`RecordWriter` writes ``record.json`` with status ``"running"`` as soon as it is created
and rewrites it with status ``"complete"`` as the very last act of :meth:`RecordWriter.finish`,
so a run killed at any point leaves a directory that says it is incomplete. Every file is
written atomically (:mod:`arturo_diag.diagnostics.io`).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
import zipfile
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

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
from arturo_diag.errors import RecordError

__all__ = [
    "RECORD_FORMAT",
    "RECORD_KINDS",
    "STEP_COLUMNS",
    "EPOCH_COLUMNS",
    "SNAPSHOT_COLUMNS",
    "RecordWriter",
    "RunRecord",
    "STUDY_MARKERS",
    "layer_of",
    "looks_like_study_dir",
    "study_marker",
    "snapshot_filename",
]

RECORD_FORMAT = "arturo-diag-run/1"
RECORD_KINDS = ("compare", "monitor")

# Column orders of docs/record.md; a table always has these columns (NaN where a row lacks one),
# followed by any extra columns in the order they were first seen.
STEP_COLUMNS = (
    "step",
    "epoch",
    "loss",
    "kl_bound",
    "eta",
    "eta_lo",
    "eta_hi",
    "iterations",
    "kl_ratio",
    "eta_prev",
    "precision_nonpos",
    "denominator_nonpos",
    "guard_acted",
    "precision_q01",
    "precision_q50",
    "precision_q99",
    "numel",
)
EPOCH_COLUMNS = ("epoch", "step", "train_loss", "train_accuracy", "test_loss", "test_accuracy")
SNAPSHOT_COLUMNS = (
    "step",
    "kl_bound",
    "eta",
    "kl0_ratio",
    "eta_star",
    "reference",
    "exact_method",
    "hutchinson_samples",
    "probe_loss",
    "seconds",
)

_MANIFEST = "record.json"
#: Files that make a directory an ablation study's (written by arturo_diag.study; diagnostics may
#: not import it): a run record is never written into one, nor a study into a run record.
STUDY_MARKERS = ("study.toml", "study.json")
_CONFIG = "config.toml"
_TABLES = {
    "steps": ("steps.csv", STEP_COLUMNS),
    "epochs": ("epochs.csv", EPOCH_COLUMNS),
    "snapshots": ("snapshots.csv", SNAPSHOT_COLUMNS),
}
_SNAPSHOT_DIR = "snapshots"
_SNAPSHOT_RE = re.compile(r"^step_(\d{7,})\.npz$")
# Files of a record and of its reports; removed when a directory is overwritten, so that nothing
# of the previous run can be mistaken for the new one's.
_RECORD_FILES = (
    _MANIFEST,
    _CONFIG,
    "steps.csv",
    "epochs.csv",
    "snapshots.csv",
    "metrics.json",
    "report.md",
    "report.html",
)


def layer_of(name: str) -> str:
    """The layer of a parameter: its module path, i.e. the name without the last component.

    ``"net.0.weight" -> "net.0"``; a top-level parameter (``"scale"``) is its own layer.
    """
    head, sep, _ = name.rpartition(".")
    return head if sep and head else name


def snapshot_filename(step: int) -> str:
    """Path of the arrays of the snapshot at ``step``, relative to the run directory."""
    return f"{_SNAPSHOT_DIR}/step_{int(step):07d}.npz"


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
    if hasattr(value, "detach"):  # torch tensor; torch is not imported here
        value = value.detach().cpu()
    return np.asarray(value, dtype=np.float64)


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
        overwrite: replace a record that ``run_dir`` already holds. Without it, a directory with a
            ``record.json`` (of any status) is refused with :class:`RecordError`.

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
    ) -> None:
        if kind not in RECORD_KINDS:
            raise ValueError(f"kind: got {kind!r}; allowed: {', '.join(map(repr, RECORD_KINDS))}")
        try:
            tomllib.loads(config_toml_text)
        except (tomllib.TOMLDecodeError, TypeError) as error:
            raise ValueError(f"config_toml_text: not valid TOML ({error})") from None
        self.run_dir = Path(run_dir)
        self._parameters: dict[str, dict[str, Any]] = {}
        for name, shape in parameters.items():
            self._parameters[str(name)] = {"shape": [int(n) for n in shape], "layer": layer_of(str(name))}
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
        }
        atomic_write_text(self.run_dir / _CONFIG, config_toml_text)
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

    def add_snapshot(
        self,
        step: int,
        scalars: Mapping[str, Any],
        arrays: Mapping[str, Mapping[str, Any]],
    ) -> None:
        """Write the arrays of one snapshot now (atomically) and queue its ``snapshots.csv`` row.

        ``arrays`` maps parameter name -> field (``curvature``, ``filter_cov_aa``, ``h_exact``, ...)
        -> array shaped like the parameter; arrays are stored as float64.
        """
        self._check_open()
        step = int(step)
        if step in self._snapshot_steps:
            raise ValueError(f"add_snapshot: step {step} already has a snapshot")
        payload: dict[str, np.ndarray] = {}
        for name, fields in arrays.items():
            if name not in self._parameters:
                raise ValueError(f"add_snapshot: unknown parameter {name!r}; known: {', '.join(self._parameters)}")
            shape = tuple(self._parameters[name]["shape"])
            for field, value in fields.items():
                if "/" in field or not field:
                    raise ValueError(f"add_snapshot: field name {field!r} must be non-empty and hold no '/'")
                array = _as_float64(value)
                if array.shape != shape:
                    raise ValueError(
                        f"add_snapshot: {name}/{field} has shape {list(array.shape)}; the parameter's is {list(shape)}"
                    )
                payload[f"{name}/{field}"] = array
        atomic_savez(self.run_dir / snapshot_filename(step), **payload)
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


def study_marker(path: str | os.PathLike[str]) -> str | None:
    """The file that makes ``path`` an ablation study's directory (``study.toml``, ``study.json``), or None."""
    path = Path(path)
    return next((name for name in STUDY_MARKERS if (path / name).is_file()), None)


def looks_like_study_dir(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds an ablation study (``arturo_diag.study`` writes these files)."""
    return study_marker(path) is not None


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
    snapshot_dir = run_dir / _SNAPSHOT_DIR
    if snapshot_dir.is_dir():
        for path in snapshot_dir.iterdir():
            if _SNAPSHOT_RE.match(path.name):
                path.unlink()
    figures = run_dir / "figures"
    if figures.is_dir():
        for path in figures.glob("*.png"):
            path.unlink()


# -- reading: what each file of a record must hold ----------------------------------------------
# One small schema per file of docs/record.md, checked in one place: RunRecord.load checks the
# manifest, config.toml and the three tables (and, for a complete record, that they agree with the
# manifest); RunRecord.snapshot checks each snapshot's keys, shapes and dtypes from the npz headers
# before reading any array. A damaged file is refused with a RecordError naming the file and the
# problem, never rendered. Incomplete records (running, killed, failed) only get the checks of
# each file on its own: their tables and manifest may lag each other.

#: Every status a record may have; ``"complete"`` is the only one a report is rendered from as is.
RECORD_STATUSES = ("running", "complete", "failed", "diverged")


class _Rule(NamedTuple):
    test: Callable[[Any], bool]
    allowed: str


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _optional(rule: _Rule) -> _Rule:
    return _Rule(lambda v: v is None or rule.test(v), f"{rule.allowed}, or null")


def _one_of(*values: str) -> _Rule:
    return _Rule(lambda v: isinstance(v, str) and v in values, "one of " + ", ".join(map(repr, values)))


_TEXT = _Rule(lambda v: isinstance(v, str), "a string")
_WHOLE = _Rule(_whole, "a whole number")
_COUNT = _Rule(lambda v: _whole(v) and v >= 0, "a whole number >= 0")
_POSITIVE_COUNT = _Rule(lambda v: _whole(v) and v >= 1, "a whole number >= 1")
_NUMBER = _Rule(_finite, "a finite number")
_POSITIVE = _Rule(lambda v: _finite(v) and v > 0, "a finite number > 0")
_FLAG = _Rule(lambda v: isinstance(v, bool), "true or false")
_OBJECT = _Rule(lambda v: isinstance(v, dict), "an object")
_STEP_LIST = _Rule(
    lambda v: isinstance(v, list) and all(_whole(s) and s >= 0 for s in v) and len(set(v)) == len(v),
    "a list of distinct whole numbers >= 0",
)
_SHAPE = _Rule(lambda v: isinstance(v, list) and all(_whole(n) and n >= 0 for n in v), "a list of whole numbers >= 0")
_PARAMETERS = _Rule(lambda v: isinstance(v, dict), 'an object: parameter name -> {"shape": [...], "layer": "..."}')

# record.json: required keys, then keys checked when present (others pass: "seconds", "divergence", ...)
_MANIFEST_REQUIRED = {
    "status": _one_of(*RECORD_STATUSES),
    "kind": _one_of(*RECORD_KINDS),
    "steps": _COUNT,
    "snapshot_steps": _STEP_LIST,
    "parameters": _PARAMETERS,
    "optimizer": _OBJECT,
}
_MANIFEST_OPTIONAL = {"var_init": _optional(_POSITIVE)}
_MANIFEST_OPTIMIZER = {"lr": _optional(_NUMBER), "var_init": _optional(_POSITIVE), "eta_tol": _optional(_POSITIVE)}
_PARAMETER_REQUIRED = {"shape": _SHAPE}
_PARAMETER_OPTIONAL = {"layer": _TEXT}

# config.toml: the fields of the resolved config that a report reads, by section (others pass: a
# Monitor's config is the user's own TOML). Unset fields are comments, so there is no null here.
_CONFIG_SCHEMA: dict[str, dict[str, _Rule]] = {
    "run": {
        "model": _TEXT,
        "dataset": _TEXT,
        "data_dir": _TEXT,
        "epochs": _COUNT,
        "steps": _COUNT,
        "batch_size": _POSITIVE_COUNT,
        "train_size": _POSITIVE_COUNT,
        "seed": _WHOLE,
        "device": _TEXT,
        "dtype": _TEXT,
        "out": _TEXT,
    },
    "optimizer": {
        "optimizer": _TEXT,
        "preset": _TEXT,
        "lr": _NUMBER,
        "reg_weight": _NUMBER,
        "prior_prec": _NUMBER,
        "var_init": _POSITIVE,
        "nu": _NUMBER,
        "dynamic_model_noise": _NUMBER,
        "measurement_noise": _NUMBER,
        "start_filter_cov": _NUMBER,
        "eta_tol": _POSITIVE,
        "weight_decay": _NUMBER,
        "kl": _TEXT,
        "dual": _TEXT,
        "fixed_eta": _NUMBER,
        "guard": _FLAG,
        "oracle": _TEXT,
        "oracle_every": _POSITIVE_COUNT,
        "momentum": _NUMBER,
    },
    "schedule": {
        "lr_milestones": _Rule(lambda v: isinstance(v, list) and all(_whole(m) for m in v), "a list of whole numbers"),
        "lr_gamma": _NUMBER,
    },
    "diagnostics": {
        "every": _POSITIVE_COUNT,
        "reference": _TEXT,
        "exact_method": _TEXT,
        "samples": _COUNT,
        "probe_size": _POSITIVE_COUNT,
        "collapse_fraction": _NUMBER,
    },
}

# The tables: columns that must hold numbers (NaN allowed: an empty cell), and those that must hold
# a whole number in every row.
_TEXT_COLUMNS = {"reference": ("exact", "hutchinson", "both", "none"), "exact_method": None}  # allowed values
_WHOLE_COLUMNS = {"steps": ("step",), "epochs": ("epoch", "step"), "snapshots": ("step",)}

# A snapshot's fields that each value of snapshots.csv's ``reference`` requires of every parameter.
_REFERENCE_FIELDS = {
    "exact": ("h_exact",),
    "hutchinson": ("h_hutchinson", "h_hutchinson_se"),
    "both": ("h_exact", "h_hutchinson", "h_hutchinson_se"),
}
_NPZ_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip with members, an empty zip


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _problem(
    data: Mapping[str, Any], required: Mapping[str, _Rule], optional: Mapping[str, _Rule], where: str = ""
) -> str | None:
    """The first key of ``data`` that is missing (of ``required``) or breaks its rule, in words."""
    for key in required:
        if key not in data:
            return f"{where}{key!r} is missing"
    for key, rule in {**required, **optional}.items():
        if key in data and not rule.test(data[key]):
            return f"{where}{key!r}: got {_short(data[key])}; allowed: {rule.allowed}"
    return None


def _check_manifest(path: Path, manifest: Any) -> None:
    if not isinstance(manifest, dict):
        raise RecordError(f"{path}: a JSON {type(manifest).__name__}, not an object (the manifest of a run record)")
    if manifest.get("format") != RECORD_FORMAT:
        raise RecordError(f"{path}: format {manifest.get('format')!r}; expected {RECORD_FORMAT!r}")
    problem = _problem(manifest, _MANIFEST_REQUIRED, _MANIFEST_OPTIONAL)
    if problem is None:
        problem = _problem(manifest["optimizer"], {}, _MANIFEST_OPTIMIZER, where="optimizer ")
    for name, info in (manifest.get("parameters") or {}).items() if problem is None else ():
        if not isinstance(info, dict):
            problem = f"parameters {name!r}: got {_short(info)}; allowed: " + '{"shape": [...], "layer": "..."}'
        else:
            problem = _problem(info, _PARAMETER_REQUIRED, _PARAMETER_OPTIONAL, where=f"parameters {name!r} ")
        if problem:
            break
    if problem:
        raise RecordError(f"{path}: {problem}")


def _load_config(path: Path, *, sections: Sequence[str] = ()) -> dict[str, Any]:
    """config.toml, checked; ``sections``: the tables it must hold (a complete compare run's
    resolved config has them all)."""
    try:
        config = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise RecordError(f"{path}: not UTF-8 text (byte {error.start}: {error.reason})") from None
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise RecordError(f"{path}: unreadable config ({error})") from None
    for section, rules in _CONFIG_SCHEMA.items():
        if section not in config:
            if section in sections:
                raise RecordError(f"{path}: [{section}] missing (a compare run's config.toml has every field)")
            continue
        if not isinstance(config[section], dict):
            raise RecordError(f"{path}: [{section}] is {_short(config[section])}, not a table")
        problem = _problem(config[section], {}, rules, where=f"[{section}] ")
        if problem:
            raise RecordError(f"{path}: {problem}")
    return config


def _read_table(path: Path, columns: Sequence[str], whole: Sequence[str], *, required: bool) -> pd.DataFrame:
    """A table of the record, with its documented ``columns`` present and holding numbers.

    ``required``: the file must exist and hold at least its header (a complete record); otherwise a
    missing or empty file is an empty table (a run killed before its first flush).
    """
    if not path.is_file():
        if required:
            raise RecordError(f"{path}: missing (a complete record has it)")
        return pd.DataFrame(columns=list(columns))
    try:
        table = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        if required:
            raise RecordError(f"{path}: empty (not even the header of columns)") from None
        return pd.DataFrame(columns=list(columns))
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise RecordError(f"{path}: unreadable table ({error})") from None
    missing = [column for column in columns if column not in table.columns]
    if missing:
        raise RecordError(
            f"{path}: column{'s' if len(missing) > 1 else ''} {', '.join(missing)} missing "
            f"(docs/record.md: {', '.join(columns)})"
        )
    for column in columns:
        if column in _TEXT_COLUMNS:
            allowed = _TEXT_COLUMNS[column]
            odd = table[column].notna() & ~table[column].isin(allowed or ())
            if allowed and odd.any():
                row = int(np.flatnonzero(odd.to_numpy())[0])
                raise RecordError(
                    f"{path}: line {row + 2}, column {column}: {_short(table[column].iloc[row])}; "
                    f"allowed: {', '.join(allowed)} or empty"
                )
            continue
        if pd.api.types.is_numeric_dtype(table[column]):
            continue
        cells = table[column]
        bad = cells.notna() & pd.to_numeric(cells, errors="coerce").isna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise RecordError(f"{path}: line {row + 2}, column {column}: {_short(cells.iloc[row])} is not a number")
        table[column] = pd.to_numeric(cells)
    for column in whole:
        values = table[column].to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values) | (values != np.round(values))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            cell = "an empty cell" if np.isnan(values[row]) else f"{values[row]:g}"
            raise RecordError(f"{path}: line {row + 2}, column {column}: {cell} is not a whole number")
    return table


def _check_agreement(run_dir: Path, manifest: Mapping[str, Any], tables: Mapping[str, pd.DataFrame]) -> None:
    """A complete record's tables against its manifest: steps 1..steps, the final evaluation of a
    compare run at the last step, one snapshots.csv row per snapshot of ``snapshot_steps``."""
    n = manifest["steps"]
    path = run_dir / _TABLES["steps"][0]
    steps = tables["steps"]["step"].to_numpy(dtype=np.float64)
    if len(steps) != n:
        raise RecordError(
            f"{path}: {len(steps)} row{'s' if len(steps) != 1 else ''}, but {_MANIFEST} says the run took {n} steps"
        )
    wrong = np.flatnonzero(steps != np.arange(1, n + 1))
    if wrong.size:
        row = int(wrong[0])
        raise RecordError(
            f"{path}: line {row + 2} is step {steps[row]:g}; expected step {row + 1} (one row per step, 1 to {n})"
        )
    path = run_dir / _TABLES["epochs"][0]
    evaluated = tables["epochs"]["step"].to_numpy(dtype=np.float64)
    if manifest["kind"] == "compare":
        if not len(evaluated):
            raise RecordError(f"{path}: no evaluation rows; a complete compare run is evaluated at its end (step {n})")
        if evaluated.max() > n or evaluated[-1] != n:
            raise RecordError(
                f"{path}: the last evaluation is at step {evaluated[-1]:g}, but {_MANIFEST} says the run took {n} steps"
            )
    path = run_dir / _TABLES["snapshots"][0]
    rows = sorted(int(s) for s in tables["snapshots"]["step"])
    if rows != sorted(manifest["snapshot_steps"]):
        raise RecordError(
            f"{path}: rows at steps {_short(rows)}, but {_MANIFEST} lists snapshots at steps "
            f"{_short(sorted(manifest['snapshot_steps']))}"
        )


def _npz_header(archive: zipfile.ZipFile, member: str) -> tuple[tuple[int, ...], np.dtype] | None:
    """Shape and dtype of one ``.npy`` member of a zip, from its header (no data read); None for a
    header version without a public reader (the array is then checked after reading)."""
    with archive.open(member) as handle:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
        else:
            return None
    return tuple(shape), dtype


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
        """The arrays of the snapshot at ``step``: parameter name -> field -> float64 array.

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

    def _check_array(self, path: Path, key: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
        name = key.rpartition("/")[0]
        if dtype.kind not in "fiu":
            held = "Python objects (dtype object)" if dtype.hasobject else f"{dtype} values"
            raise RecordError(f"{path}: {key} holds {held}; a snapshot holds float64 arrays")
        if tuple(shape) != self.parameters[name]:
            raise RecordError(
                f"{path}: {key} has shape {list(shape)}; {_MANIFEST} gives {name} shape {list(self.parameters[name])}"
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
            for field in _REFERENCE_FIELDS.get(reference if isinstance(reference, str) else "", ()):
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
