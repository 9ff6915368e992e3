"""Analysis of a run record: every number the report shows, plus findings in words.

:func:`analyze_record` is a pure function of a :class:`~arturo_diag.diagnostics.record.RunRecord`
(ARTURO.md, "Diagnostic quantities"): it reads the tables and the snapshot arrays and assembles
agreement (with baselines), movement, calibration, lag, trust-region regimes, health and the
training outcome into one JSON-serialisable dict, the content of ``metrics.json``. It is
deterministic: the same record gives an identical dict, so a re-rendered report equals the first.

Which reference ``h`` is compared with the estimate ``a`` at a snapshot: the exact diagonal
Hessian when the snapshot has it (for every parameter), otherwise the Hutchinson estimate. When a
snapshot has both, Hutchinson's own agreement with the exact one is reported beside; when only
Hutchinson, its standard error is reported as the noise level of ``h``.

Structure of the returned dict (``metrics.json``, format ``arturo-diag-metrics/1``); a "per-layer
entry" is ``{"step", ["reference",] "overall": X, "layers": {layer: X}}`` and a "series" is
``{"snapshots": [entry per snapshot], "final": last entry or None}``::

    format        "arturo-diag-metrics/1"
    run           kind, status, divergence (record.json's, of a "diverged" run, else None),
                  unusable_snapshots ([{step, reason}]: a or h NaN/inf, or h all 0; such a snapshot
                  is left out of agreement, movement, calibration and lag), steps, n_step_rows, n_snapshots, snapshot_steps, reference
                  ("exact" | "hutchinson" | "both" | "none" | "mixed"), compared_against
                  ("h_exact" | "h_hutchinson" | None | "mixed"), exact_method, hutchinson_samples,
                  n_parameters, n_tensors, layers, optimizer, var_init, var_init_source, eta_tol,
                  eta_tol_source, constant_baseline, arturo_diag_version
    agreement     series of per-layer entries, X = agreement_with_baselines(...)
                    {estimate, constant, previous_h, constant_value, beats_constant,
                     beats_constant_summary {all, any, lost_on}, beats_previous_h}
                  + hutchinson_vs_exact: series of per-layer entries, X = agreement(h_hut, h_exact),
                    or None
                  + reference_noise: series of {step, relative_se, median_se_over_abs_h, samples},
                    or None
    movement      series of per-layer entries, X = movement(a, h)
    calibration   series of per-layer entries, X = calibration(a, h, P_aa)
    lag           summarize_lag(...): metric, window, n_snapshots, max_lag, snapshot_interval,
                  interval_regular, identifiable, best_k, best_lag_steps, reason,
                  curves {spearman, relative_error: {k, mean, n, range, noise, argbest,
                  identifiable, best_k}}
    trust_region  trust_region_summary(...)
    health        eta, iterations, kl_ratio, precision, nonpositive (from steps.csv),
                  collapse_fraction, and a series {snapshots, final} of
                  {step, precision_q01/q50/q99, precision_nonpositive_share, variance_collapse,
                   negative_a_share, negative_h_share}
    training      n_evaluations, final {epoch, step, train_loss, train_accuracy, test_loss,
                  test_accuracy} or None, best_test_accuracy, best_test_accuracy_epoch
    findings      [{text, severity ("info" | "warning"), topic}]
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from arturo_diag.diagnostics.agreement import INITIAL_CURVATURE, agreement, agreement_with_baselines, per_layer
from arturo_diag.diagnostics.calibration import calibration
from arturo_diag.diagnostics.findings import findings
from arturo_diag.diagnostics.health import (
    eta_health,
    iteration_histogram,
    kl_ratio_quantiles,
    nonpositive_events,
    precision_over_time,
    snapshot_health,
)
from arturo_diag.diagnostics.io import atomic_write_json
from arturo_diag.diagnostics.lag import LagAccumulator, summarize_lag
from arturo_diag.diagnostics.movement import movement
from arturo_diag.diagnostics.record import RunRecord
from arturo_diag.diagnostics.trust_region import trust_region_summary

__all__ = ["METRICS_FORMAT", "analyze_record", "write_metrics"]

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


def _concat(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(x, dtype=np.float64).reshape(-1) for x in arrays])


def _relative_norm(numerator: np.ndarray, denominator: np.ndarray) -> float:
    norm = float(np.linalg.norm(denominator))
    return float(np.linalg.norm(numerator)) / norm if norm > 0 else math.nan


def _split(result: Mapping[str, Any], step: int, **extra: Any) -> dict[str, Any]:
    """A per_layer result as ``{"step", ..., "overall", "layers"}``."""
    entry: dict[str, Any] = {"step": int(step)}
    entry.update(extra)
    entry["overall"] = result["overall"]
    entry["layers"] = {layer: value for layer, value in result.items() if layer != "overall"}
    return entry


def _series(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"snapshots": entries, "final": copy.deepcopy(entries[-1]) if entries else None}


def _snapshot_value(snapshots: pd.DataFrame, step: int, column: str) -> Any:
    if column not in snapshots.columns or "step" not in snapshots.columns:
        return None
    rows = snapshots.loc[pd.to_numeric(snapshots["step"], errors="coerce") == step, column]
    if rows.empty or pd.isna(rows.iloc[0]):
        return None
    value = rows.iloc[0]
    return value.item() if hasattr(value, "item") else value


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


def _training(epochs: pd.DataFrame) -> dict[str, Any]:
    if len(epochs) == 0:
        return {"n_evaluations": 0, "final": None, "best_test_accuracy": math.nan, "best_test_accuracy_epoch": None}
    ordered = epochs.sort_values([c for c in ("step", "epoch") if c in epochs.columns], kind="stable")
    last = ordered.iloc[-1]

    def number(row: pd.Series, column: str) -> float:
        value = pd.to_numeric(pd.Series([row.get(column)]), errors="coerce").iloc[0]
        return float(value)

    final = {
        column: number(last, column)
        for column in ("epoch", "step", "train_loss", "train_accuracy", "test_loss", "test_accuracy")
    }
    for column in ("epoch", "step"):
        if math.isfinite(final[column]):
            final[column] = int(final[column])
    accuracy = pd.to_numeric(ordered.get("test_accuracy", pd.Series(dtype=float)), errors="coerce")
    if accuracy.notna().any():
        best_at = int(np.nanargmax(accuracy.to_numpy(dtype=np.float64)))
        best, best_epoch = float(accuracy.iloc[best_at]), number(ordered.iloc[best_at], "epoch")
        best_epoch = int(best_epoch) if math.isfinite(best_epoch) else None
    else:
        best, best_epoch = math.nan, None
    return {
        "n_evaluations": int(len(epochs)),
        "final": final,
        "best_test_accuracy": best,
        "best_test_accuracy_epoch": best_epoch,
    }


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
        A dict with keys ``format``, ``run``, ``agreement``, ``movement``, ``calibration``,
        ``lag``, ``trust_region``, ``health``, ``training``, ``findings`` (structure in this
        module's docstring and in the docstrings of the functions each part comes from). NaN
        marks undefined numbers (written as null by ``atomic_write_json``).
    """
    if not isinstance(record, RunRecord):
        record = RunRecord.load(record)
    var_init, var_init_source = _setting(record, "var_init")
    eta_tol, eta_tol_source = _setting(record, "eta_tol")
    var_init = float(var_init) if var_init is not None else None
    eta_tol = float(eta_tol)
    fixed_eta, _ = _setting(record, "fixed_eta")
    fixed_eta = float(fixed_eta) if isinstance(fixed_eta, (int, float)) and not isinstance(fixed_eta, bool) else None

    agreement_entries: list[dict[str, Any]] = []
    hutchinson_entries: list[dict[str, Any]] = []
    noise_entries: list[dict[str, Any]] = []
    movement_entries: list[dict[str, Any]] = []
    calibration_entries: list[dict[str, Any]] = []
    health_entries: list[dict[str, Any]] = []
    labels: list[str] = []
    unusable: list[dict[str, Any]] = []
    lag = LagAccumulator(max_lag)
    previous: tuple[str, dict[str, np.ndarray]] | None = None  # (reference field, h by parameter)

    for step in record.snapshot_steps:
        snapshot = record.snapshot(step)
        names = [name for name, fields in snapshot.items() if "curvature" in fields]
        has = {
            field: bool(names) and all(field in snapshot[name] for name in names)
            for field in ("h_exact", "h_hutchinson", "h_hutchinson_se", "filter_cov_aa", "precision")
        }
        label = (
            "both"
            if has["h_exact"] and has["h_hutchinson"]
            else "exact"
            if has["h_exact"]
            else "hutchinson"
            if has["h_hutchinson"]
            else "none"
        )
        labels.append(label)
        field = {"both": "h_exact", "exact": "h_exact", "hutchinson": "h_hutchinson"}.get(label)
        a = {name: snapshot[name]["curvature"] for name in names}

        precision_all = [fields["precision"] for fields in snapshot.values() if "precision" in fields]
        health_entries.append(
            {
                "step": int(step),
                **snapshot_health(
                    precision=_concat(precision_all) if precision_all else None,
                    curvature=_concat(list(a.values())) if a else None,
                    reference=_concat([snapshot[n][field] for n in names]) if field else None,
                    var_init=var_init,
                    fraction=collapse_fraction,
                ),
            }
        )
        if field is None:
            previous = None
            continue

        h = {name: snapshot[name][field] for name in names}
        problem = _unusable(a, h, record.layers)
        if problem is not None:  # nothing to compare: say why, rather than report undefined metrics
            unusable.append({"step": int(step), "reason": problem})
            previous = None
            continue
        h_prev = previous[1] if previous is not None and previous[0] == field and set(previous[1]) >= set(h) else None
        agreement_entries.append(
            _split(
                per_layer(
                    lambda a, h, h_prev: agreement_with_baselines(a, h, h_prev, constant=constant),
                    {
                        name: {"a": a[name], "h": h[name], "h_prev": None if h_prev is None else h_prev[name]}
                        for name in names
                    },
                    record.layers,
                ),
                step,
                reference=field,
            )
        )
        movement_entries.append(
            _split(
                per_layer(
                    lambda a, h: movement(a, h, prior=constant),
                    {name: (a[name], h[name]) for name in names},
                    record.layers,
                ),
                step,
                reference=field,
            )
        )
        if has["filter_cov_aa"]:
            calibration_entries.append(
                _split(
                    per_layer(
                        calibration,
                        {name: (a[name], h[name], snapshot[name]["filter_cov_aa"]) for name in names},
                        record.layers,
                    ),
                    step,
                    reference=field,
                )
            )
        if label == "both":
            hutchinson_entries.append(
                _split(
                    per_layer(
                        agreement,
                        {name: (snapshot[name]["h_hutchinson"], snapshot[name]["h_exact"]) for name in names},
                        record.layers,
                    ),
                    step,
                )
            )
        if has["h_hutchinson"] and has["h_hutchinson_se"]:
            h_hat = _concat([snapshot[n]["h_hutchinson"] for n in names])
            se = _concat([snapshot[n]["h_hutchinson_se"] for n in names])
            nonzero = h_hat != 0
            noise_entries.append(
                {
                    "step": int(step),
                    "relative_se": _relative_norm(se, h_hat),
                    "median_se_over_abs_h": float(np.median(se[nonzero] / np.abs(h_hat[nonzero])))
                    if nonzero.any()
                    else math.nan,
                    "samples": _snapshot_value(record.snapshots, step, "hutchinson_samples"),
                }
            )
        lag.add(step, _concat(list(a.values())), _concat(list(h.values())))
        previous = (field, h)

    distinct = sorted(set(labels))
    run_reference = distinct[0] if len(distinct) == 1 else ("none" if not distinct else "mixed")
    compared = sorted({entry["reference"] for entry in agreement_entries})
    last_snapshot = record.snapshot_steps[-1] if record.snapshot_steps else None
    steps_table = record.steps
    optimizer = record.manifest.get("optimizer") or {}

    metrics: dict[str, Any] = {
        "format": METRICS_FORMAT,
        "run": {
            "kind": record.kind,
            "status": record.status,
            "divergence": record.divergence,
            "unusable_snapshots": unusable,
            "steps": int(record.manifest.get("steps") or 0),
            "n_step_rows": int(len(steps_table)),
            "n_snapshots": len(record.snapshot_steps),
            "snapshot_steps": [int(s) for s in record.snapshot_steps],
            "reference": run_reference,
            "compared_against": compared[0] if len(compared) == 1 else (None if not compared else "mixed"),
            "exact_method": _snapshot_value(record.snapshots, last_snapshot, "exact_method")
            if last_snapshot is not None
            else None,
            "hutchinson_samples": _snapshot_value(record.snapshots, last_snapshot, "hutchinson_samples")
            if last_snapshot is not None
            else None,
            "n_parameters": int(sum(int(np.prod(shape)) for shape in record.parameters.values())),
            "n_tensors": len(record.parameters),
            "layers": list(dict.fromkeys(record.layers[name] for name in record.parameters)),
            "optimizer": dict(optimizer) if isinstance(optimizer, Mapping) else {},
            "var_init": var_init,
            "var_init_source": var_init_source,
            "eta_tol": eta_tol,
            "eta_tol_source": eta_tol_source,
            "constant_baseline": float(constant),
            "arturo_diag_version": record.manifest.get("arturo_diag_version"),
        },
        "agreement": {
            **_series(agreement_entries),
            "hutchinson_vs_exact": _series(hutchinson_entries) if hutchinson_entries else None,
            "reference_noise": _series(noise_entries) if noise_entries else None,
        },
        "movement": _series(movement_entries),
        "calibration": _series(calibration_entries),
        "lag": summarize_lag(lag.table(), max_lag=max_lag, metric=lag_metric),
        "trust_region": trust_region_summary(
            steps_table, record.snapshots, eta_tol=eta_tol, burn_in=burn_in, fixed_eta=fixed_eta
        ),
        "health": {
            "eta": eta_health(steps_table),
            "iterations": iteration_histogram(steps_table),
            "kl_ratio": kl_ratio_quantiles(steps_table),
            "precision": precision_over_time(steps_table),
            "nonpositive": nonpositive_events(steps_table),
            "collapse_fraction": float(collapse_fraction),
            **_series(health_entries),
        },
        "training": _training(record.epochs),
    }
    metrics["findings"] = findings(metrics)
    return metrics


def write_metrics(run_dir: str | os.PathLike[str], metrics: Mapping[str, Any]) -> None:
    """Write ``metrics`` to ``RUN_DIR/metrics.json`` atomically (NaN as null)."""
    atomic_write_json(os.path.join(os.fspath(run_dir), "metrics.json"), metrics)
