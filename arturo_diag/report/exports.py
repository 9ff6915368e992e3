"""Tidy exports: every per-snapshot number of ``metrics.json`` as one long table (``docs/record.md``).

``long_table(metrics)`` flattens the snapshot series of every quantity of a metrics dict
(:func:`~arturo_diag.quantities.analysis.analyze_record`, or ``metrics.json`` as read back) into
one row per number, columns :data:`COLUMNS` = ``step, quantity, layer, metric, value``:

- a quantity is every top-level entry whose ``snapshots`` is a list of ``{step, ...}`` entries
  (or, as ``trust_region``'s, an object holding such a list under ``snapshots``);
- within a snapshot entry an ``overall`` object gives layer :data:`OVERALL`, a ``layers`` object
  one layer per key (its own name), and every other number is a number of the whole model
  (layer :data:`OVERALL` too); ``overall`` and ``layers`` may sit at any depth (``gauges``'
  ``radius.overall`` / ``radius.layers``), their path without the words ``overall``/``layers``;
- ``metric`` is the path of the number below that level, dotted (``estimate.relative_error``,
  ``scale.best_constant.value``, list items by position: ``top.0``); booleans are 1/0, null
  (NaN, inf) is NaN; a path that holds text, or an object, at any snapshot of the run, or null
  at every one, is left out (it has no number);
- rows in the order (step, quantity in the metrics' order, layer: :data:`OVERALL` first, then the
  record's layers, metric in first-seen order).

``write_exports(run_dir, metrics)`` writes ``metrics_long.csv`` always and ``metrics_long.parquet``
when pyarrow imports (otherwise only the CSV, and a parquet file of an earlier render is removed,
so the two never disagree). ``study_long_table(runs)`` stacks the tables of a study's runs behind
``variant, seed, run`` (:data:`STUDY_COLUMNS`); :func:`write_table` writes any such table.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from arturo_diag.diagnostics.io import atomic_open, atomic_write_csv, jsonable, remove_file
from arturo_diag.errors import RecordError

__all__ = [
    "COLUMNS",
    "STUDY_COLUMNS",
    "OVERALL",
    "LONG_STEM",
    "export_names",
    "long_table",
    "study_long_table",
    "write_exports",
    "write_table",
    "parquet_available",
]

#: The long table's columns, in order.
COLUMNS = ("step", "quantity", "layer", "metric", "value")
#: A study's long table: the run's variant, seed and directory (``SETUP/VARIANT/seedN``) first.
STUDY_COLUMNS = ("variant", "seed", "run", *COLUMNS)
#: The layer of a number of the whole model (an ``overall`` entry, or a snapshot's own scalar). In
#: parentheses so that no layer of a model can carry it: a layer is a module path or a top-level
#: parameter's name, and attribute-assigned modules and parameters are Python identifiers (or, in a
#: bare ``nn.Sequential``, read ``"7 (Linear)"``); a record with a layer of this name is refused.
OVERALL = "(all)"
#: The run's export files: ``metrics_long.csv``, ``metrics_long.parquet``.
LONG_STEM = "metrics_long"

_NUMBER, _NULL, _OTHER = "number", "null", "other"


def export_names(stem: str = LONG_STEM) -> tuple[str, str]:
    """The file names of a long table: ``(STEM.csv, STEM.parquet)``."""
    return f"{stem}.csv", f"{stem}.parquet"


def parquet_available() -> bool:
    """Whether parquet files can be written here (pyarrow imports)."""
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        return False
    return True


def _snapshot_entries(block: Any) -> list[Mapping[str, Any]]:
    """A quantity's snapshot series: ``block["snapshots"]`` (or ``block["snapshots"]["snapshots"]``)
    when it is a list of objects with a whole ``step``; else none."""
    entries = block.get("snapshots") if isinstance(block, Mapping) else None
    if isinstance(entries, Mapping):
        entries = entries.get("snapshots")
    if not isinstance(entries, list) or not entries:
        return []
    for entry in entries:
        step = entry.get("step") if isinstance(entry, Mapping) else None
        if isinstance(step, bool) or not isinstance(step, int):
            return []
    return entries


def _clash() -> RecordError:
    return RecordError(f"metrics: a layer is named {OVERALL!r}, the long table's label of the whole model")


def _series(metrics: Mapping[str, Any]) -> Iterator[tuple[str, list[Mapping[str, Any]]]]:
    """(quantity, snapshot entries) of every snapshot series: a top-level entry's own, then those
    one level below it (``agreement.hutchinson_vs_exact``, ``agreement.like_for_like``, ...)."""
    for name, block in metrics.items():
        if not isinstance(block, Mapping):
            continue
        entries = _snapshot_entries(block)
        if entries:
            yield str(name), entries
        for key, sub in block.items():
            entries = _snapshot_entries(sub) if key != "snapshots" else []
            if entries:
                yield f"{name}.{key}", entries


def _leaves(node: Mapping[str, Any], prefix: str, layer: str) -> Iterator[tuple[str, str, str, float]]:
    """(layer, metric, kind, value) of every leaf below ``node``; objects and text are kind "other"."""
    for key, value in node.items():
        if isinstance(value, Mapping) and layer == OVERALL and key in ("overall", "layers"):
            if key == "overall":
                yield from _leaves(value, prefix, OVERALL)
                continue
            if all(sub is None or isinstance(sub, Mapping) for sub in value.values()):
                for name, sub in value.items():
                    if sub is None:  # a layer without an entry at this snapshot
                        continue
                    if str(name) == OVERALL:
                        raise _clash()
                    yield from _leaves(sub, prefix, str(name))
                continue
        yield from _leaf(value, f"{prefix}{key}", layer)


def _leaf(value: Any, path: str, layer: str) -> Iterator[tuple[str, str, str, float]]:
    if isinstance(value, Mapping):
        yield layer, path, _OTHER, math.nan
        yield from _leaves(value, f"{path}.", layer)
    elif isinstance(value, list):
        yield layer, path, _OTHER, math.nan
        for i, item in enumerate(value):
            yield from _leaf(item, f"{path}.{i}", layer)
    elif value is None:
        yield layer, path, _NULL, math.nan
    elif isinstance(value, (bool, int, float)):
        yield layer, path, _NUMBER, float(value)
    else:  # text
        yield layer, path, _OTHER, math.nan


def long_table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """Every per-snapshot number of ``metrics`` as one row of :data:`COLUMNS` (the module's rules).

    Raises:
        RecordError: a layer of the record is named :data:`OVERALL`.
    """
    metrics = jsonable(metrics)  # NaN/inf -> null, numpy -> Python: the same table as from metrics.json
    run = metrics.get("run") if isinstance(metrics.get("run"), Mapping) else {}
    layers = [str(name) for name in run.get("layers") or [] if isinstance(name, str)]
    rows: list[tuple[int, int, str, str, float]] = []
    quantity_names: list[str] = []
    for quantity, entries in _series(metrics):
        leaves = [
            (entry["step"], *leaf)
            for entry in entries
            for leaf in _leaves({k: v for k, v in entry.items() if k != "step"}, "", OVERALL)
        ]
        kinds: dict[str, set[str]] = {}
        for _, _, metric, kind, _ in leaves:
            kinds.setdefault(metric, set()).add(kind)
        keep = {metric for metric, seen in kinds.items() if _OTHER not in seen and _NUMBER in seen}
        index = len(quantity_names)
        quantity_names.append(str(quantity))
        for step, layer, metric, _, value in leaves:
            if metric in keep:
                rows.append((step, index, layer, metric, value))
    if OVERALL in layers:
        raise _clash()
    layer_order = {OVERALL: 0}
    for layer in [*layers, *(row[2] for row in rows)]:  # the record's order, then any other in first-seen order
        layer_order.setdefault(layer, len(layer_order))
    metric_order: dict[tuple[int, str], int] = {}
    for _, index, _, metric, _ in rows:
        metric_order.setdefault((index, metric), len(metric_order))
    rows.sort(key=lambda row: (row[0], row[1], layer_order[row[2]], metric_order[(row[1], row[3])]))
    table = pd.DataFrame(
        {
            "step": pd.Series([row[0] for row in rows], dtype="int64"),
            "quantity": pd.Series([quantity_names[row[1]] for row in rows], dtype=str),
            "layer": pd.Series([row[2] for row in rows], dtype=str),
            "metric": pd.Series([row[3] for row in rows], dtype=str),
            "value": pd.Series([row[4] for row in rows], dtype="float64"),
        }
    )
    return table[list(COLUMNS)]


def study_long_table(runs: Iterable[tuple[str, int, str, Mapping[str, Any]]]) -> pd.DataFrame:
    """The long tables of a study's runs, one block per run in the order given, behind the run's
    ``variant``, ``seed`` and ``run`` (its directory below ``runs/``): columns :data:`STUDY_COLUMNS`.

    ``runs``: ``(variant, seed, run, metrics)`` of each run (its metrics dict or ``metrics.json``).
    """
    blocks = []
    for variant, seed, run, metrics in runs:
        table = long_table(metrics)
        table.insert(0, "run", pd.Series([str(run)] * len(table), dtype=str))
        table.insert(0, "seed", pd.Series([int(seed)] * len(table), dtype="int64"))
        table.insert(0, "variant", pd.Series([str(variant)] * len(table), dtype=str))
        blocks.append(table)
    if not blocks:
        empty = {column: pd.Series([], dtype=str) for column in STUDY_COLUMNS}
        empty.update(seed=pd.Series([], dtype="int64"), step=pd.Series([], dtype="int64"))
        empty["value"] = pd.Series([], dtype="float64")
        return pd.DataFrame(empty)[list(STUDY_COLUMNS)]
    return pd.concat(blocks, ignore_index=True)[list(STUDY_COLUMNS)]


def _write_parquet(path: Path, table: pd.DataFrame) -> None:
    """``table`` as parquet at ``path``, atomically (a temporary file in its directory, then
    ``os.replace``, :func:`~arturo_diag.diagnostics.io.atomic_open`)."""
    with atomic_open(path, "wb") as handle:
        table.to_parquet(handle, engine="pyarrow", index=False)


def write_table(directory: str | os.PathLike[str], stem: str, table: pd.DataFrame) -> list[Path]:
    """Write ``table`` as ``STEM.csv`` and, when pyarrow imports, ``STEM.parquet`` into
    ``directory`` (each atomically); without pyarrow a ``STEM.parquet`` left by an earlier write
    is removed. Returns the paths written."""
    csv_name, parquet_name = export_names(stem)
    directory = Path(directory)
    atomic_write_csv(directory / csv_name, table)
    written = [directory / csv_name]
    if parquet_available():
        _write_parquet(directory / parquet_name, table)
        written.append(directory / parquet_name)
    else:
        remove_file(directory / parquet_name)
    return written


def write_exports(run_dir: str | os.PathLike[str], metrics: Mapping[str, Any]) -> list[Path]:
    """Write the run's long table (:func:`long_table`) as ``RUN_DIR/metrics_long.csv`` and, when
    pyarrow imports, ``metrics_long.parquet``; returns the paths written."""
    return write_table(run_dir, LONG_STEM, long_table(metrics))
