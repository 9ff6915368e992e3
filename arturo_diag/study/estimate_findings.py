"""The cross-optimizer study's findings: each estimate's scale and shape against h, and the caveats.

:func:`estimate_findings` returns, per setup with a variant that keeps a curvature estimate, one
``curvature`` finding listing every such variant's final c* and Spearman(a, h) (the means over seeds of
:func:`~arturo_diag.study.estimates.estimate_summary`), its verdicts (seeds yes / decided) and its test
accuracy; a ``convergence`` warning for each other optimizer (family ``"estimator"``) whose mean final
train accuracy is more than :data:`~arturo_diag.study.findings.TRAIN_GAP` below the best variant's (its
estimate was measured on a run that did not train); and one study-wide warning that the other optimizers
run at their paper's or package's defaults. :func:`with_estimate_findings` places them after the
per-setup findings of :func:`~arturo_diag.study.findings.study_findings`, before its study-wide caveats;
:func:`report_findings` is the whole list a study report shows.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from arturo_diag.numbers import sig
from arturo_diag.study.aggregate import StudyData
from arturo_diag.study.estimates import TARGET_LABELS, VERDICT_COLUMNS
from arturo_diag.study.findings import TRAIN_GAP, study_findings

__all__ = ["estimate_findings", "report_findings", "with_estimate_findings"]

_CAVEAT_TOPICS = ("baselines", "statistics")  # study_findings' study-wide caveats, which come last
_VERDICT_WORDS = {"beats_constant": "beats the constant", "scale_verdict": "scale", "shape_verdict": "shape"}


def _finding(text: str, topic: str, severity: str = "info") -> dict[str, str]:
    return {"text": text, "severity": severity, "topic": topic}


def _scale_words(factor: float) -> str:
    """c* in words: a is ~Nx too small (c* > 1) or too large (c* < 1), or points against h (c* <= 0)."""
    if not math.isfinite(factor):
        return "c* n/a"
    if factor <= 0:
        return f"c* {sig(factor, 3)} (a points against h)"
    if factor >= 1:
        return f"c* {sig(factor, 3)} (a ~{sig(factor, 2)}x too small)"
    return f"c* {sig(factor, 3)} (a ~{sig(1 / factor, 2)}x too large)"


def _variant_words(entry: dict[str, Any]) -> str:
    est = entry["estimate"]
    target = " / ".join(TARGET_LABELS.get(t, t) for t in est["target"].split(" / ")) if est["target"] else "n/a"
    verdicts = ", ".join(
        f"{_VERDICT_WORDS[c]} {v['yes']}/{v['assessed']}" if v["assessed"] else f"{_VERDICT_WORDS[c]} n/a"
        for c, v in ((c, est["verdicts"][c]) for c in VERDICT_COLUMNS)
    )
    accuracy = est["test_accuracy"]["mean"]
    shown = f"{accuracy * 100:.2f} %" if math.isfinite(accuracy) else "n/a"
    return (
        f"{entry['variant']} ({est['estimator'] or 'n/a'}, estimates {target}): {_scale_words(est['scale_factor']['mean'])}, "
        f"Spearman {sig(est['spearman']['mean'], 2)}; {verdicts}; test accuracy {shown}"
    )


def _convergence(prefix: str, setup: str, data: StudyData) -> list[dict[str, str]]:
    """Other optimizers (family estimator) more than TRAIN_GAP of train accuracy below the best variant."""
    runs = data.runs
    done = runs[(runs.setup == setup) & (runs.status == "complete")]
    train = pd.to_numeric(done.train_accuracy, errors="coerce")
    means = {
        v.name: float(train[done.variant == v.name].mean())
        for v in data.study.variants
        if train[done.variant == v.name].notna().any()
    }
    if not means:
        return []
    best = max(means, key=lambda k: means[k])
    out = []
    config = data.study.setup(setup).config
    for variant in data.study.variants:
        gap = means[best] - means.get(variant.name, math.nan)
        if variant.family != "estimator" or not gap > TRAIN_GAP:
            continue
        lr = config.replace(**variant.changes()).resolved().lr
        whose = "the variant's" if variant.value is not None else "its default"
        out.append(
            _finding(
                f"{prefix}{variant.name} did not converge: its final train accuracy is {means[variant.name]:.1%}, "
                f"{gap * 100:.1f} points below the best variant's ({best}, {means[best]:.1%}; rule: more than "
                f"{TRAIN_GAP * 100:g} points below). It ran at lr {lr:g} ({whose}): "
                "its accuracy measures that setting, and its curvature estimate was measured on weights that "
                f"did not train (another learning rate: {variant.kind}:LR).",
                "convergence",
                "warning",
            )
        )
    return out


def estimate_findings(data: StudyData, summary: dict[str, Any]) -> list[dict[str, str]]:
    """The cross-optimizer findings of a study (module docstring), in order: per setup the table in
    words and the other optimizers that did not converge; then the caveat on their settings."""
    out: list[dict[str, str]] = []
    study = data.study
    for setup in study.setups:
        prefix = f"[{setup.name}] " if len(study.setups) > 1 else ""
        entries = [e for e in summary[setup.name]["summary"] if e.get("estimate") and e["n_complete"]]
        if entries:
            n = max(e["n_complete"] for e in entries)
            out.append(
                _finding(
                    f"{prefix}Each optimizer's curvature estimate a against the reference h at the final snapshot "
                    f"(mean over {n} seed{'s' if n != 1 else ''}; c* = <a,h>/<a,a> is its scale, 1 when right; "
                    "Spearman its shape; verdicts: seeds yes / decided): "
                    + "; ".join(_variant_words(e) for e in entries)
                    + ".",
                    "curvature",
                )
            )
        out += _convergence(prefix, setup.name, data)
    others = [v.name for v in study.variants if v.family == "estimator"]
    if others:
        out.append(
            _finding(
                "Other optimizers' hyperparameters (" + ", ".join(others) + "): their paper's or package's "
                "defaults, not tuned for this setup (the Variants section gives each value and its source); "
                "a variant NAME:LR sets the learning rate.",
                "baselines",
                "warning",
            )
        )
    return out


def with_estimate_findings(findings: list[dict[str, str]], extra: list[dict[str, str]]) -> list[dict[str, str]]:
    """``findings`` (:func:`~arturo_diag.study.findings.study_findings`') with ``extra`` after their
    per-setup part, i.e. before the trailing run of study-wide caveats (topics baselines, statistics)."""
    at = len(findings)
    while at > 0 and findings[at - 1]["topic"] in _CAVEAT_TOPICS:
        at -= 1
    setup_part = [f for f in extra if f["topic"] not in _CAVEAT_TOPICS]
    caveats = [f for f in extra if f["topic"] in _CAVEAT_TOPICS]
    return findings[:at] + setup_part + caveats + findings[at:]


def report_findings(
    data: StudyData, summary: dict[str, Any], verdicts: list[dict[str, Any]] | None = None
) -> list[dict[str, str]]:
    """The findings of a study's report: :func:`~arturo_diag.study.findings.study_findings` with the
    cross-optimizer findings (:func:`estimate_findings`) placed by :func:`with_estimate_findings`."""
    return with_estimate_findings(study_findings(data, summary, verdicts), estimate_findings(data, summary))
