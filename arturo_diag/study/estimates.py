"""The cross-optimizer study (issue 13, item 4): every variant's curvature estimate against h, side by side.

Every optimizer of the registry but SGD keeps a diagonal curvature estimate a that its runs' snapshots
store as ``curvature`` (arTuRO's a, Adam's v-hat, IVON's hess, AdaHessian's and Sophia's EMAs), and
the analysis compares it with the reference h alike for all of them (:mod:`arturo_diag.quantities.agreement`).
A study reads, per run whose variant keeps an estimate (:attr:`~arturo_diag.study.variants.Variant.has_estimate`):

- at the final snapshot (:func:`estimate_columns`, ``runs.csv``): what the estimate estimates (record.json's
  ``estimator``: name and target), its scale c* = <a,h>/<a,a> (the factor minimising ||c a - h||: 1 when
  a has h's scale, 100 when a is 100x too small), and the run's three agreement verdicts as 1 (yes),
  0 (no) or NaN (inconclusive, not applicable or not decided): ``agreement.beats_constant``,
  ``agreement.scale`` (c* within [1/1.5, 1.5]), ``agreement.shape`` (Spearman(a, h) above 0.1). Spearman
  itself is the agreement quantity's own column ``agreement_spearman``. A run whose last snapshot could
  not be compared (h all 0) is not assessed, as for the agreement quantity's columns.
- at every snapshot (:func:`estimate_series`, ``estimates.csv``): c* and Spearman(a, h), from
  ``metrics["agreement"]["snapshots"][i]["overall"]`` (``scale.rescaled.factor``, ``estimate.spearman``).

:func:`estimate_summary` aggregates a variant's complete runs: c*, Spearman and final test accuracy as
the mean and 95 % t interval over seeds (:func:`~arturo_diag.study.stats.mean_ci`, as elsewhere in the
study), and per verdict how many seeds said yes of how many were assessed (as a ``StudyColumn`` of kind
``"seeds"``). Nothing here trains or draws.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

from arturo_diag.quantities.base import at_last_snapshot, number
from arturo_diag.study.stats import mean_ci

__all__ = [
    "ESTIMATE_KEYS",
    "SERIES_COLUMNS",
    "TARGET_LABELS",
    "VERDICT_COLUMNS",
    "estimate_columns",
    "estimate_series",
    "estimate_summary",
]

#: The run columns this module adds to ``runs.csv`` (after the quantities' own).
ESTIMATE_KEYS = ("estimator", "estimator_target", "scale_factor", "scale_verdict", "shape_verdict")
#: ``estimates.csv``: one row per run with an estimate and snapshot.
SERIES_COLUMNS = ("setup", "variant", "family", "seed", "step", "scale_factor", "spearman")
#: run column -> (the run's verdict id, the table's header); ``beats_constant`` is the agreement quantity's column.
VERDICT_COLUMNS = {
    "beats_constant": ("agreement.beats_constant", "beats constant"),
    "scale_verdict": ("agreement.scale", "scale within 1.5x"),
    "shape_verdict": ("agreement.shape", "shape (Spearman > 0.1)"),
}
#: A target of :data:`arturo_diag.estimators.TARGETS` as the table names it.
TARGET_LABELS = {
    "hessian_diagonal": "Hessian diagonal",
    "ggn_diagonal": "GGN diagonal",
    "fisher_diagonal": "model Fisher diagonal",
    "gradient_second_moment": "E[g^2]",
}
_OUTCOME = {"yes": 1.0, "no": 0.0}


def _factor(overall: Mapping[str, Any]) -> float:
    return number(((overall.get("scale") or {}).get("rescaled") or {}).get("factor"))


def _spearman(overall: Mapping[str, Any]) -> float:
    return number((overall.get("estimate") or {}).get("spearman"))


def estimate_columns(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """One run's columns :data:`ESTIMATE_KEYS` (the verdicts' ``beats_constant`` is the agreement
    quantity's): the estimator's name and target, and at the final snapshot c* and the scale and
    shape verdicts (1 yes, 0 no, NaN otherwise); a run whose last snapshot was unusable is not assessed."""
    info = (metrics.get("run") or {}).get("estimator") or {}
    out: dict[str, Any] = {"estimator": info.get("name") or "", "estimator_target": info.get("target") or ""}
    final = at_last_snapshot(metrics, (metrics.get("agreement") or {}).get("final"))
    if not final:
        return out
    out["scale_factor"] = _factor(final.get("overall") or {})
    decided = {v.get("id"): v.get("outcome") for v in metrics.get("verdicts") or ()}
    for column in ("scale_verdict", "shape_verdict"):
        out[column] = _OUTCOME.get(decided.get(VERDICT_COLUMNS[column][0]), math.nan)
    return out


def estimate_series(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """c* and Spearman(a, h) at every snapshot the agreement quantity compared: ``{step, scale_factor, spearman}``."""
    rows = []
    for entry in (metrics.get("agreement") or {}).get("snapshots") or ():
        overall = entry.get("overall") or {}
        rows.append({"step": int(entry["step"]), "scale_factor": _factor(overall), "spearman": _spearman(overall)})
    return rows


def _numbers(done: pd.DataFrame, column: str) -> list[float]:
    if column not in done.columns:
        return []
    return pd.to_numeric(done[column], errors="coerce").tolist()


def _assessed(done: pd.DataFrame, column: str) -> list[float]:
    """The column's values of the runs assessed at their final snapshot (NaN: not assessed, left out)."""
    return [x for x in _numbers(done, column) if not math.isnan(x)]


def _one(done: pd.DataFrame, column: str) -> str:
    """The column's value shared by the runs (e.g. the target); several joined by ' / '."""
    if column not in done.columns:
        return ""
    values = [str(v) for v in done[column].dropna() if str(v)]
    return " / ".join(dict.fromkeys(values))


def estimate_summary(done: pd.DataFrame) -> dict[str, Any]:
    """A variant's complete runs (``runs.csv`` rows): the estimator and target, c* and Spearman at the final
    snapshot and the final test accuracy (each :func:`mean_ci` over seeds, NaNs of unassessed runs left out),
    and per verdict column ``{"yes": seeds that said yes, "assessed": seeds that said yes or no}``."""
    verdicts = {}
    for column in VERDICT_COLUMNS:
        values = pd.Series(_numbers(done, column), dtype=float).dropna()
        verdicts[column] = {"yes": int((values == 1.0).sum()), "assessed": int(len(values))}
    return {
        "estimator": _one(done, "estimator"),
        "target": _one(done, "estimator_target"),
        "scale_factor": mean_ci(_assessed(done, "scale_factor")),
        "spearman": mean_ci(_assessed(done, "agreement_spearman")),
        "test_accuracy": mean_ci(_numbers(done, "test_accuracy")),
        "verdicts": verdicts,
    }
