"""Whose curvature estimate a run record holds, and how the report words it (issue 13).

``record.json``'s ``estimator`` (:mod:`arturo_diag.diagnostics.monitor_estimate`) says what the
snapshots' ``curvature`` estimates: ``{name, target, scale}``, or null when no adapter read the
optimizer (then no snapshot holds an estimate). A record written before the key existed holds
arTuRO's ``a`` if its optimizer was arTuRO (or is not named): it reads as arTuRO's, with
``source`` saying so. ``metrics["run"]["estimator"]`` is :func:`estimator_of` of the record;
every text that is generic reads it through :func:`estimate_words`, and the parts that only mean
something for arTuRO (the trust region, the dual and eta, the prior 0.1) ask :func:`is_arturo`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "ARTURO",
    "TARGET_WORDS",
    "estimate_words",
    "estimator",
    "estimator_of",
    "is_arturo",
    "not_arturo_reason",
    "optimizer_name",
    "variance_words",
]

ARTURO = "arturo"
#: What each target of :data:`arturo_diag.estimators.TARGETS` is, in words.
TARGET_WORDS = {
    "hessian_diagonal": "the diagonal of the Hessian of the training loss",
    "ggn_diagonal": "the diagonal of the generalized Gauss-Newton matrix",
    "fisher_diagonal": "the diagonal of the model Fisher (labels drawn from the model)",
    "gradient_second_moment": (
        "E[g_B^2], the uncentered second moment of the minibatch gradient (an empirical-Fisher proxy), "
        "not the Hessian diagonal"
    ),
}


def estimator_of(manifest: Mapping[str, Any]) -> dict[str, Any] | None:
    """``{name, target, scale, source}`` of a record's ``record.json`` (None: no estimate stored)."""
    if "estimator" in manifest:
        value = manifest["estimator"]
        if not isinstance(value, Mapping):
            return None
        return {**{k: value.get(k) for k in ("name", "target", "scale")}, "source": "record.json"}
    optimizer = manifest.get("optimizer") or {}
    name = optimizer.get("name") if isinstance(optimizer, Mapping) else None
    if name not in (None, "Arturo"):
        return None  # a baseline optimizer before issue 13: no estimate was stored
    return {
        "name": ARTURO,
        "target": "hessian_diagonal",
        "scale": None,
        "source": "assumed: the record predates record.json's estimator (arTuRO's a)",
    }


def estimator(metrics: Mapping[str, Any]) -> dict[str, Any] | None:
    """``metrics["run"]["estimator"]``; a metrics dict without ``run`` (a test's) reads as arTuRO's."""
    run = metrics.get("run")
    if not isinstance(run, Mapping) or "estimator" not in run:
        return {"name": ARTURO, "target": "hessian_diagonal", "scale": None, "source": "assumed"}
    return run["estimator"]


def is_arturo(metrics: Mapping[str, Any]) -> bool:
    """The record's estimate is arTuRO's ``a`` (so its trust region, dual and prior 0.1 exist)."""
    info = estimator(metrics)
    return bool(info) and info.get("name") == ARTURO


def optimizer_name(metrics: Mapping[str, Any]) -> str:
    """The estimator's name, else the optimizer's class from record.json, else "the optimizer"."""
    info = estimator(metrics)
    if info and info.get("name"):
        return str(info["name"])
    name = ((metrics.get("run") or {}).get("optimizer") or {}).get("name")
    return str(name) if name else "the optimizer"


def estimate_words(metrics: Mapping[str, Any]) -> str:
    """ "arTuRO's curvature estimate a" or "the optimizer's curvature estimate (adam)"."""
    if is_arturo(metrics):
        return "arTuRO's curvature estimate a"
    return f"the optimizer's curvature estimate ({optimizer_name(metrics)})"


def not_arturo_reason(metrics: Mapping[str, Any], what: str) -> str:
    """Why an arTuRO-only part does not apply: ``what`` and the optimizer's name."""
    return f"not applicable: only arTuRO has {what}, and this run's optimizer is {optimizer_name(metrics)}"


def variance_words(metrics: Mapping[str, Any], sentence: str) -> str:
    """``sentence``, written for arTuRO's filter and its P_aa, for the run's claimed variance: unchanged
    for P_aa (``metrics["calibration"]["variance_field"]`` ``filter_cov_aa`` or unknown), else about
    the optimizer and the variance V its adapter claims (``curvature_var``)."""
    if (metrics.get("calibration") or {}).get("variance_field") != "curvature_var":
        return sentence
    for old, new in (("The filter", "The optimizer"), ("the filter", "the optimizer"), ("P_aa", "V")):
        sentence = sentence.replace(old, new)
    return sentence.replace("(filter_cov_aa)", "(curvature_var)")
