"""The validation rules of the run-record reader: what each file of a record must hold.

Used by :class:`~arturo_diag.diagnostics.record_reader.RunRecord`; every problem is a
:class:`~arturo_diag.errors.RecordError` naming the file and the problem.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from arturo_diag._toml import tomllib
from arturo_diag.curvature.references import REFERENCE_BATCHES, REFERENCE_METHODS, REFERENCE_MODES, estimators_of
from arturo_diag.diagnostics.record_format import (
    _MANIFEST,
    _TABLES,
    RECORD_FORMAT,
    RECORD_KINDS,
    RECORD_STATUSES,
    SNAPSHOT_DTYPES,
)
from arturo_diag.errors import RecordError
from arturo_diag.estimators.protocol import TARGETS

# -- reading: what each file of a record must hold ----------------------------------------------
# One small schema per file of docs/record.md, checked in one place: RunRecord.load checks the
# manifest, config.toml and the three tables (and, for a complete record, that they agree with the
# manifest); RunRecord.snapshot checks each snapshot's keys, shapes and dtypes from the npz headers
# before reading any array. A damaged file is refused with a RecordError naming the file and the
# problem, never rendered. Incomplete records (running, killed, failed) only get the checks of
# each file on its own: their tables and manifest may lag each other.


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
_GROUPS = _Rule(
    lambda v: isinstance(v, list) and all(isinstance(g, dict) and (g.get("lr") is None or _finite(g["lr"])) for g in v),
    'a list of objects {"lr": a finite number or null, ...}',
)
_NAMES = _Rule(
    lambda v: isinstance(v, dict) and all(isinstance(t, str) for t in v.values()), "an object: layer -> type"
)
# Keys of newer records (issue 11): a record without them reads as before (eval mode, probe batch, loss unknown).
_MANIFEST_OPTIONAL = {
    "var_init": _optional(_POSITIVE),
    "reference_mode": _one_of(*REFERENCE_MODES),
    "reference_batch": _one_of(*REFERENCE_BATCHES),
    "loss": _optional(_TEXT),
    "model_class": _optional(_TEXT),
    "param_groups": _GROUPS,
    "layer_types": _NAMES,
    # issue 12: the instruments that ran and the seconds each took (absent: none ran)
    "instruments": _Rule(
        lambda v: isinstance(v, dict) and all(isinstance(k, str) and _finite(t) and t >= 0 for k, t in v.items()),
        "an object: instrument name -> seconds (a finite number >= 0)",
    ),
    "instrument_steps": _Rule(
        lambda v: (
            isinstance(v, dict)
            and all(
                isinstance(k, str)
                and isinstance(s, list)
                and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in s)
                for k, s in v.items()
            )
        ),
        "an object: instrument name -> the snapshot steps it measured (whole numbers >= 0)",
    ),
    # issue 13: what the snapshots' ``curvature`` estimates (null: no adapter read the optimizer)
    "estimator": _optional(
        _Rule(
            lambda v: (
                isinstance(v, dict)
                and all(isinstance(v.get(k), str) for k in ("name", "target", "scale"))
                and v["target"] in TARGETS
            ),
            f'an object {{"name", "target", "scale"}} (strings; target one of {", ".join(TARGETS)})',
        )
    ),
    # issue 15: the dtype of the snapshots' arrays, and what was estimated of the run before it
    "snapshot_dtype": _one_of(*SNAPSHOT_DTYPES),
    "subsample": _optional(_OBJECT),
    "estimate": _optional(_OBJECT),
    "instruments_skipped": _Rule(
        lambda v: isinstance(v, dict) and all(isinstance(k, str) and isinstance(r, str) for k, r in v.items()),
        "an object: instrument name -> why it could not measure this run (a string)",
    ),
}
_MANIFEST_OPTIMIZER = {"lr": _optional(_NUMBER), "var_init": _optional(_POSITIVE), "eta_tol": _optional(_POSITIVE)}
_PARAMETER_REQUIRED = {"shape": _SHAPE}
_PARAMETER_OPTIONAL = {
    "layer": _TEXT,
    "stored": _Rule(
        lambda v: isinstance(v, list) and len(v) == 1 and _whole(v[0]) and v[0] >= 1,
        "[n]: the number of coordinates its snapshots keep (a whole number >= 1)",
    ),
}

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
        "reference_mode": _TEXT,
        "reference_batch": _TEXT,
        "instruments": _Rule(lambda v: isinstance(v, list) and all(isinstance(n, str) for n in v), "a list of names"),
        "exact_method": _TEXT,
        "samples": _COUNT,
        "probe_size": _POSITIVE_COUNT,
        "collapse_fraction": _NUMBER,
    },
}

# The tables: columns that must hold numbers (NaN allowed: an empty cell), and those that must hold
# a whole number in every row.
_TEXT_COLUMNS = {"reference": REFERENCE_METHODS, "exact_method": None}  # allowed values (read at check time)
_WHOLE_COLUMNS = {"steps": ("step",), "epochs": ("epoch", "step"), "snapshots": ("step",)}


# A snapshot's fields that each value of snapshots.csv's ``reference`` requires of every parameter.
def reference_fields(reference: Any) -> tuple[str, ...]:
    """The fields snapshots.csv's ``reference`` requires of every parameter (curvature/references.py)."""
    if not isinstance(reference, str) or reference not in REFERENCE_METHODS:
        return ()
    return tuple(f for e in estimators_of(reference) for f in e.fields)


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
            odd = table[column].notna() & ~table[column].isin(tuple(allowed or ()))
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
