"""``analyze_record(record)``: every diagnostic quantity of one run record, as the dict of ``metrics.json``.

A pure function of a :class:`~arturo_diag.diagnostics.record.RunRecord` (ARTURO.md, "Diagnostic
quantities"). It makes one pass over the snapshots, handing each one to the observers of the
quantities of :data:`arturo_diag.quantities.QUANTITIES`, then asks every quantity for its entry
(in registry order) and for its findings. It is deterministic: the same record gives an identical
dict, so a re-rendered report equals the first.

Which reference ``h`` is compared with the estimate ``a`` at a snapshot: the exact diagonal
Hessian when the snapshot has it (for every parameter), otherwise the Hutchinson estimate. A
snapshot whose ``a`` or ``h`` is NaN/inf, or whose ``h`` is 0 everywhere, is "unusable": it is
listed in ``run.unusable_snapshots`` and left out of agreement, movement, calibration and lag.

The structure of each entry is documented in the quantity's module (``docs/metrics.md`` lists
them); the top level is ``format`` (``"arturo-diag-metrics/1"``), one key per quantity, then
``verdicts`` (``[{id, outcome, estimate, ci_low, ci_high, rule, text}]``, the decided questions,
:mod:`arturo_diag.quantities.verdicts`) and ``findings`` (``[{text, severity ("info" |
"warning"), topic}]``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from arturo_diag import quantities
from arturo_diag.curvature.references import REFERENCE_ESTIMATORS, method_of
from arturo_diag.diagnostics.agreement import INITIAL_CURVATURE
from arturo_diag.diagnostics.io import atomic_write_json
from arturo_diag.diagnostics.record import RunRecord
from arturo_diag.quantities.base import Context, Findings, Options, SnapshotView

__all__ = ["METRICS_FORMAT", "analyze_record", "findings", "verdicts", "write_metrics"]

METRICS_FORMAT = "arturo-diag-metrics/1"
# Defaults of the published configs (ARTURO.md), used only when the record does not say.
_DEFAULT_SETTINGS = {"var_init": 0.01, "eta_tol": 0.5}


def _setting(record: RunRecord, name: str) -> tuple[Any, str]:
    """A setting from the manifest, the manifest's optimizer, the config's [optimizer], or the default."""
    manifest_optimizer = record.manifest.get("optimizer") or {}
    config_optimizer = record.config.get("optimizer") or {}
    for value, source in (
        (record.manifest.get(name), "record.json"),
        (manifest_optimizer.get(name) if isinstance(manifest_optimizer, Mapping) else None, "record.json optimizer"),
        (config_optimizer.get(name) if isinstance(config_optimizer, Mapping) else None, "config.toml [optimizer]"),
    ):
        if value is not None:
            return value, source
    return _DEFAULT_SETTINGS.get(name), "default"


def _unusable(a: Mapping[str, np.ndarray], h: Mapping[str, np.ndarray], layers: Mapping[str, str]) -> str | None:
    """Why a snapshot's a and h cannot be compared (None if they can): NaN/inf in either (a run
    that was diverging), or h identically 0 (every relative metric would be 0/0)."""
    for what, arrays in (("the curvature estimate a", a), ("the reference h", h)):
        bad = {name: int(np.count_nonzero(~np.isfinite(x))) for name, x in arrays.items()}
        total = sum(bad.values())
        if total:
            first = next(name for name, count in bad.items() if count)
            size = sum(int(np.size(x)) for x in arrays.values())
            return (
                f"{what} is NaN/inf in {total} of {size} coordinates (first in layer "
                f"{layers.get(first, first)}, {first})"
            )
    if not any(np.any(x != 0) for x in h.values()):
        return "the reference h is 0 at every coordinate"
    return None


def _snapshots(record: RunRecord):
    """``(step, record.snapshot(step))`` in step order, the next snapshot read in a thread while the
    caller works on the current one (reading is file I/O and float64 conversion: it overlaps the
    analysis). At most two snapshots are in memory; errors are raised where the snapshot is reached."""
    steps = list(record.snapshot_steps)
    if len(steps) < 2:
        for step in steps:
            yield step, record.snapshot(step)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="arturo-diag-read") as pool:
        pending = pool.submit(record.snapshot, steps[0])
        try:
            for i, step in enumerate(steps):
                snapshot = pending.result()
                pending = pool.submit(record.snapshot, steps[i + 1]) if i + 1 < len(steps) else None
                yield step, snapshot
                del snapshot
        finally:
            if pending is not None:
                pending.cancel()


def snapshot_views(record: RunRecord):
    """Each snapshot of ``record`` as a :class:`SnapshotView`, in step order (the next one read while
    this one is looked at)."""
    # (reference field, h by parameter, the view's cache)
    previous: tuple[str, Mapping[str, np.ndarray], dict[str, Any]] | None = None
    for step, snapshot in _snapshots(record):
        names = [name for name, fields in snapshot.items() if "curvature" in fields]
        # the fields a view says whether every parameter has: the references', the filter's, another
        # optimizer's claimed variance of its estimate
        fields = (
            *(f for e in REFERENCE_ESTIMATORS.values() for f in e.fields),
            "filter_cov_aa",
            "precision",
            "curvature_var",
        )
        has = {f: bool(names) and all(f in snapshot[name] for name in names) for f in fields}
        present = tuple(e for e in REFERENCE_ESTIMATORS.values() if has[e.field])
        label = method_of(tuple(e.name for e in present)) if present else "none"
        field = present[0].field if present else None  # the preferred reference compares with a
        a = {name: snapshot[name]["curvature"] for name in names}
        h = {name: snapshot[name][field] for name in names} if field else None
        problem = _unusable(a, h, record.layers) if h is not None else None
        if h is None or problem is not None:
            yield SnapshotView(int(step), snapshot, names, has, label, field, a, None, None, problem)
            previous = None
            continue
        usable = previous is not None and previous[0] == field and set(previous[1]) >= set(h)
        cache: dict[str, Any] = {"previous": previous[2]} if usable else {}
        h_prev = previous[1] if usable else None
        yield SnapshotView(int(step), snapshot, names, has, label, field, a, h, h_prev, None, cache)
        # the next view may reuse this one's ranks of h (as its h_prev), nothing else
        previous = (field, h, {"h": cache["h"]} if "h" in cache else {})


# Snapshots at least this large (coordinates) are handed to the observers in parallel threads
# (numpy's sorts, partitions and array arithmetic run without the GIL); smaller ones in turn, in
# this thread, where a thread's start-up would cost more than it saves.
PARALLEL_COORDINATES = 1 << 20


def _observer_pool(n_observers: int) -> ThreadPoolExecutor | contextlib.nullcontext:
    """Two threads for the observers (the machine's cores beyond the reader's), or none on one core."""
    workers = min(2, n_observers, os.cpu_count() or 1)
    if workers < 2:
        return contextlib.nullcontext()
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="arturo-diag-observe")


def _observe(pool: ThreadPoolExecutor | None, observers: list[Any], view: SnapshotView) -> None:
    """Every observer's ``snapshot(view)``; in ``pool``'s threads when the snapshot is large.

    Each observer only touches its own state and the view's rank cache (which is locked), so
    the order in which they run does not change any number. In the pool the first error (in
    registry order) is raised after every observer has finished with the snapshot, so no thread is
    left working on it when the analysis stops.
    """
    size = sum(int(np.size(x)) for x in view.a.values()) if view.a else 0
    if pool is None or size < PARALLEL_COORDINATES:
        for observer in observers:
            observer.snapshot(view)
        return
    futures = [pool.submit(observer.snapshot, view) for observer in observers]
    errors = [f.exception() for f in futures]  # waits for every one
    for error in errors:
        if error is not None:
            raise error


def analyze_record(
    record: RunRecord | str | os.PathLike[str],
    *,
    collapse_fraction: float = 0.01,
    max_lag: int = 5,
    lag_metric: str = "spearman",
    burn_in: int | None = None,
    constant: float = INITIAL_CURVATURE,
) -> dict[str, Any]:
    """Every diagnostic of one run record (ARTURO.md, "Diagnostic quantities"), as a dict.

    Args:
        record: a loaded :class:`RunRecord` or its directory (loaded, complete records only).
        collapse_fraction: variance collapse is ``1/pi < collapse_fraction * var_init``.
        max_lag: the largest lag (in snapshots) of the lag curve.
        lag_metric: the metric that decides the lag (``"spearman"`` or ``"relative_error"``).
        burn_in: trust-region shares are also given after this step (default a tenth of the run).
        constant: the constant-vector baseline (arTuRO's initial ``a`` = 0.1).

    Returns:
        ``{"format", <one key per registered quantity>, "findings"}``; NaN marks undefined numbers
        (written as null by ``atomic_write_json``).
    """
    if not isinstance(record, RunRecord):
        record = RunRecord.load(record)
    # BLAS on one thread: numpy's dot products of millions of coordinates then add up in one fixed
    # order, so the numbers do not depend on the machine's core count; and OpenBLAS's own threads
    # would compete with the observers' (on a busy 2-core machine a dot product took 15x longer)
    with threadpool_limits(limits=1, user_api="blas"):
        return _analyze(record, collapse_fraction, max_lag, lag_metric, burn_in, constant)


def _analyze(
    record: RunRecord, collapse_fraction: float, max_lag: int, lag_metric: str, burn_in: int | None, constant: float
) -> dict[str, Any]:
    options = Options(collapse_fraction, max_lag, lag_metric, burn_in, constant)
    settings = {name: _setting(record, name) for name in ("var_init", "eta_tol", "fixed_eta")}
    context = Context(record, options, settings)
    registry = quantities.QUANTITIES
    context.observers = {q.name: q.observer(context) if q.observer else None for q in registry}
    active = [o for o in context.observers.values() if o is not None]
    with _observer_pool(len(active)) as pool:
        for view in snapshot_views(record):
            context.labels.append(view.label)
            if view.problem is not None:
                context.unusable.append({"step": view.step, "reason": view.problem})
            _observe(pool, active, view)

    metrics: dict[str, Any] = {"format": METRICS_FORMAT}
    for quantity in registry:
        metrics[quantity.name] = quantity.compute(context)
    metrics["verdicts"] = verdicts(metrics)
    metrics["findings"] = findings(metrics)
    return metrics


def verdicts(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every quantity's verdicts (registry order), as the dicts of ``metrics["verdicts"]``."""
    out: list[dict[str, Any]] = []
    for quantity in quantities.QUANTITIES:
        if quantity.verdicts is not None:
            out += [verdict.as_dict() for verdict in quantity.verdicts(metrics)]
    return out


def findings(metrics: Mapping[str, Any]) -> list[dict[str, str]]:
    """Plain-English findings with numbers, from a metrics dict: each quantity's, in registry order.

    Returns a list of ``{"text": str, "severity": "info" | "warning", "topic": str}``; a diverged
    run's first finding says where it went NaN/inf. Missing parts of ``metrics`` are skipped.
    """
    out = Findings()
    for quantity in quantities.QUANTITIES:
        quantity.findings(out, metrics)
    return out.items


def write_metrics(run_dir: str | os.PathLike[str], metrics: Mapping[str, Any]) -> None:
    """Write ``metrics`` to ``RUN_DIR/metrics.json`` atomically (NaN as null)."""
    atomic_write_json(os.path.join(os.fspath(run_dir), "metrics.json"), metrics)
