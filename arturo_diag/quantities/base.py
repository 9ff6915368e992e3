"""What a diagnostic quantity is: one :class:`Quantity` per topic, and what the analysis hands it.

A quantity owns, in its own module, everything about one topic of the report (ARTURO.md,
"Diagnostic quantities"): what it reads from the record (``needs``), how it is computed
(``observer`` sees every snapshot once, ``compute`` returns the ``metrics.json`` entry), what it
says in words (``findings``), its report section (``blocks``), its figures, and how a study
aggregates it over runs (``study_columns`` per run, ``study_table`` per variant). The analysis
(:mod:`arturo_diag.quantities.analysis`), the report (:mod:`arturo_diag.report.render`) and the
study (:mod:`arturo_diag.study.aggregate`, :mod:`arturo_diag.study.report`) iterate the registry
:data:`arturo_diag.quantities.QUANTITIES` and know no topic by name.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd

from arturo_diag.diagnostics.record import RunRecord

__all__ = [
    "Context",
    "Findings",
    "Observer",
    "Options",
    "Quantity",
    "SnapshotView",
    "StudyColumn",
    "at_last_snapshot",
    "concat",
    "number",
    "relative_norm",
    "series",
    "snapshot_value",
    "split",
]


@dataclass(frozen=True)
class Options:
    """Analysis settings (the keyword arguments of ``analyze_record``)."""

    collapse_fraction: float = 0.01
    max_lag: int = 5
    lag_metric: str = "spearman"
    burn_in: int | None = None
    constant: float = 0.1


@dataclass(frozen=True)
class SnapshotView:
    """One snapshot as every quantity sees it during the analysis' single pass over the snapshots.

    ``names`` are the parameters that carry the estimate ``a`` (``curvature``); ``has[field]`` says
    whether all of them carry ``field``; ``label`` is ``"both" | "exact" | "hutchinson" | "none"``
    and ``field`` the reference compared with ``a`` (``"h_exact"``, ``"h_hutchinson"`` or None).
    ``h`` is None when there is no reference or the snapshot is unusable (``problem`` says why);
    ``h_prev`` is the previous usable snapshot's ``h`` of the same field, else None.
    """

    step: int
    snapshot: Mapping[str, Mapping[str, np.ndarray]]
    names: list[str]
    has: Mapping[str, bool]
    label: str
    field: str | None
    a: Mapping[str, np.ndarray]
    h: Mapping[str, np.ndarray] | None
    h_prev: Mapping[str, np.ndarray] | None
    problem: str | None
    #: what the quantities compute once per snapshot and share (ranks: :mod:`arturo_diag.quantities._ranks`);
    #: ``cache["previous"]`` is the previous usable view's cache where ``h_prev`` is its ``h``
    cache: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def usable(self) -> bool:
        """``a`` and ``h`` are there and comparable (agreement, movement, calibration, lag use it)."""
        return self.h is not None


class Observer(Protocol):
    """Sees each snapshot once, in step order, during the analysis pass."""

    def snapshot(self, view: SnapshotView) -> None: ...


@dataclass
class Context:
    """What ``compute`` receives: the record, the options, the run's settings and the pass's results.

    ``settings[name]`` is ``(value, source)`` for ``var_init``, ``eta_tol``, ``fixed_eta``;
    ``labels``/``unusable`` come from the snapshot pass; ``observers[name]`` is the quantity's own
    observer after the pass (None for a quantity without one).
    """

    record: RunRecord
    options: Options
    settings: dict[str, tuple[Any, str]]
    labels: list[str] = field(default_factory=list)
    unusable: list[dict[str, Any]] = field(default_factory=list)
    observers: dict[str, Any] = field(default_factory=dict)

    @property
    def var_init(self) -> float | None:
        value = self.settings["var_init"][0]
        return float(value) if value is not None else None

    @property
    def eta_tol(self) -> float:
        return float(self.settings["eta_tol"][0])

    @property
    def fixed_eta(self) -> float | None:
        value = self.settings["fixed_eta"][0]
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class Findings:
    """The findings list being written: ``add(topic, severity, text)`` appends ``{text, severity, topic}``."""

    def __init__(self) -> None:
        self.items: list[dict[str, str]] = []

    def add(self, topic: str, severity: str, text: str) -> None:
        self.items.append({"text": text, "severity": severity, "topic": topic})


@dataclass(frozen=True)
class StudyColumn:
    """One per-variant column of a study's curvature table (and ``study.json``'s ``curvature``).

    ``kind="mean"``: the mean over the variant's complete runs of the run column ``key``.
    ``kind="seeds"``: ``key`` is a 0/1 verdict per run; the summary gets ``{key}_seeds`` (how many
    runs said yes) and ``assessed_seeds`` (how many said anything), shown as ``yes/assessed``.
    """

    key: str
    header: str
    kind: str = "mean"
    digits: int = 3


def _nothing(*_: Any) -> Any:
    return None


@dataclass(frozen=True)
class Quantity:
    """One diagnostic topic: the registry entry the analysis, the report and the study iterate.

    Attributes:
        name: its key in ``metrics.json`` and its section's anchor in ``report.html``.
        needs: what it reads from the record, in words (``"snapshots: a, h"``, ``"steps.csv: eta"``).
        compute: ``Context -> metrics[name]`` (JSON-serialisable; NaN for undefined numbers).
        observer: ``Context -> Observer``, made before the snapshot pass; None if it needs no snapshot.
        findings: ``(Findings, metrics) -> None``, appends its findings (in the registry's order).
        blocks: ``metrics -> [Block]``, its report section (its own heading first); None for none.
        figures: its :class:`~arturo_diag.report.figures.common.FigureSpec` s, drawn in its section.
        study_columns: ``(metrics, record) -> {column: value}`` for one arTuRO run of a study.
        study_keys: the run columns ``study_columns`` fills, in ``runs.csv`` order.
        study_table: the per-variant summary of those columns (:class:`StudyColumn`).
        verdicts: ``metrics -> [Verdict]`` (:mod:`arturo_diag.quantities.verdicts`): its decided
            questions, each yes / no / inconclusive / not_applicable with estimate and interval.
    """

    name: str
    needs: tuple[str, ...]
    compute: Callable[[Context], Any]
    observer: Callable[[Context], Observer] | None = None
    findings: Callable[[Findings, Mapping[str, Any]], None] = _nothing
    blocks: Callable[[Mapping[str, Any]], list[Any]] | None = None
    figures: tuple[Any, ...] = ()
    study_columns: Callable[[Mapping[str, Any], RunRecord], Mapping[str, Any]] | None = None
    study_table: tuple[StudyColumn, ...] = ()

    study_keys: tuple[str, ...] = ()
    verdicts: Callable[[Mapping[str, Any]], list[Any]] | None = None


# ------------------------------------------------------------------- helpers shared by quantities
def concat(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """The arrays flattened and joined, as float64."""
    return np.concatenate([np.asarray(x, dtype=np.float64).reshape(-1) for x in arrays])


def relative_norm(numerator: np.ndarray, denominator: np.ndarray) -> float:
    """``||numerator|| / ||denominator||`` (NaN when the denominator is 0)."""
    norm = float(np.linalg.norm(denominator))
    return float(np.linalg.norm(numerator)) / norm if norm > 0 else math.nan


def split(result: Mapping[str, Any], step: int, **extra: Any) -> dict[str, Any]:
    """A ``per_layer`` result as a per-layer entry ``{"step", ..., "overall", "layers"}``."""
    entry: dict[str, Any] = {"step": int(step)}
    entry.update(extra)
    entry["overall"] = result["overall"]
    entry["layers"] = {layer: value for layer, value in result.items() if layer != "overall"}
    return entry


def series(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """``{"snapshots": entries, "final": a copy of the last entry or None}``."""
    return {"snapshots": entries, "final": copy.deepcopy(entries[-1]) if entries else None}


def snapshot_value(snapshots: pd.DataFrame, step: int | None, column: str) -> Any:
    """``snapshots.csv``'s ``column`` at ``step`` as a plain value (None when missing)."""
    if step is None or column not in snapshots.columns or "step" not in snapshots.columns:
        return None
    rows = snapshots.loc[pd.to_numeric(snapshots["step"], errors="coerce") == step, column]
    if rows.empty or pd.isna(rows.iloc[0]):
        return None
    value = rows.iloc[0]
    return value.item() if hasattr(value, "item") else value


def number(value: Any) -> float:
    """``float(value)``, NaN for what is not a number (a study column's value)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def at_last_snapshot(metrics: Mapping[str, Any], entry: Any) -> Any:
    """``entry`` if it belongs to the run's last snapshot, else None.

    The analysis skips snapshots it cannot compare (h all 0 or non-finite) and its ``final`` is then
    an earlier one; a study's columns are "at the final snapshot", so such a run is not assessed.
    """
    if not entry:
        return None
    steps = (metrics.get("run") or {}).get("snapshot_steps") or []
    if steps and entry.get("step") != steps[-1]:
        return None
    return entry
