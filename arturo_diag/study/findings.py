"""A study's results in words: each variant against faithful, what did not learn, the caveats.

``study_findings(data, summary)`` returns ``[{text, severity ("info" | "warning"), topic}]`` in a
fixed order. Each variant's comparison with faithful quotes its verdict's text
(:mod:`arturo_diag.study.verdicts`: the rule, the margins, the cautions). A baseline whose mean
final train accuracy is more than TRAIN_GAP (5 points) below the best variant's gets a finding: it
did not converge, so its difference in test accuracy measures its settings and budget.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from arturo_diag.study.aggregate import REFERENCE_VARIANT, StudyData
from arturo_diag.study.verdicts import ACCURACY_MARGIN, LOSS_MARGIN_RELATIVE, study_verdicts

__all__ = ["study_findings", "TRAIN_GAP"]

TRAIN_GAP = 0.05  # a baseline more than 5 points of train accuracy below the best variant did not converge


def _finding(text: str, topic: str, severity: str = "info") -> dict[str, str]:
    return {"text": text, "severity": severity, "topic": topic}


def _convergence_findings(prefix: str, setup: str, study, runs: pd.DataFrame) -> list[dict[str, str]]:
    """A baseline whose mean final train accuracy is more than TRAIN_GAP below the best variant's:
    it did not converge, so its test-accuracy difference measures its settings, not the optimizer."""
    done = runs[(runs.setup == setup) & (runs.status == "complete")]
    train = pd.to_numeric(done.train_accuracy, errors="coerce")
    means = {
        v.name: float(train[done.variant == v.name].mean())
        for v in study.variants
        if train[done.variant == v.name].notna().any()
    }
    if not means:
        return []
    best = max(means, key=lambda k: means[k])
    out = []
    for variant in study.variants:
        gap = means[best] - means.get(variant.name, math.nan)
        if variant.family != "baseline" or not gap > TRAIN_GAP:
            continue
        values = train[done.variant == variant.name].dropna()
        spread = f", {values.min():.1%} to {values.max():.1%}" if len(values) > 1 else ""
        out.append(
            _finding(
                f"{prefix}{variant.name} did not converge: its final train accuracy is {means[variant.name]:.1%} "
                f"(mean over {len(values)} seed{'s' if len(values) != 1 else ''}{spread}), {gap * 100:.1f} points "
                f"below the best variant's ({best}, {means[best]:.1%}; rule: a baseline more than "
                f"{TRAIN_GAP * 100:g} points below). Its difference in test accuracy measures its settings and "
                "budget, not the optimizer.",
                "convergence",
                "warning",
            )
        )
    return out


def _some_runs(runs: pd.DataFrame, detail: str) -> str:
    """The first five runs as ``setup/variant/seedN`` + ``detail`` (formatted with the row's
    ``error``), and how many more."""
    listed = "; ".join(
        f"{r.setup}/{r.variant}/seed{r.seed}" + detail.format(r.error) for r in runs.head(5).itertuples()
    )
    more = f" and {len(runs) - 5} more" if len(runs) > 5 else ""
    return listed + more


def _execution_findings(runs: pd.DataFrame) -> list[dict[str, str]]:
    """Runs left out: failed, damaged, diverged, unfinished (warnings, in that order)."""
    out: list[dict[str, str]] = []
    failed = runs[runs.status == "failed"]
    if len(failed):
        out.append(
            _finding(
                f"{len(failed)} of {len(runs)} runs failed and are left out: {_some_runs(failed, ' ({})')}.",
                "execution",
                "warning",
            )
        )
    damaged = runs[runs.status == "damaged"]
    if len(damaged):
        out.append(
            _finding(
                f"{len(damaged)} of {len(runs)} runs have a damaged record and are left out of every "
                f"number: {_some_runs(damaged, ' ({})')}. Run the study again to redo them.",
                "execution",
                "warning",
            )
        )
    diverged = runs[runs.status == "diverged"]
    if len(diverged):
        out.append(
            _finding(
                f"{len(diverged)} of {len(runs)} runs diverged (NaN/inf; a result, not retried) and are "
                f"left out of the accuracy statistics: {_some_runs(diverged, ': {}')}.",
                "execution",
                "warning",
            )
        )
    counts = runs.status.value_counts().to_dict()
    unfinished = int(sum(counts.get(s, 0) for s in ("missing", "incomplete", "stale")))
    if unfinished:
        out.append(
            _finding(
                f"{unfinished} of {len(runs)} runs are not finished (never run, interrupted, or made "
                "with another config); run the study again to finish them. They are left out.",
                "execution",
                "warning",
            )
        )
    return out


def _outcome_findings(prefix: str, name: str, done: pd.DataFrame) -> list[dict[str, str]]:
    """A variant's complete runs at chance level (all or some seeds), and non-finite final losses."""
    out: list[dict[str, str]] = []
    acc = pd.to_numeric(done.test_accuracy, errors="coerce")
    loss = pd.to_numeric(done.test_loss, errors="coerce")
    classes = pd.to_numeric(done.num_classes, errors="coerce").dropna()
    if len(classes) and acc.notna().all():
        chance = 1.0 / float(classes.iloc[0])
        stuck = int((acc <= 1.5 * chance).sum())
        if stuck == len(done):
            out.append(
                _finding(
                    f"{prefix}{name} ends at chance level (test accuracy <= 1.5 x {chance:.0%}) in every seed "
                    f"(mean {acc.mean():.1%}): it did not learn in this setup.",
                    "outcome",
                    "warning",
                )
            )
        elif stuck:
            out.append(
                _finding(
                    f"{prefix}{name} ends at chance level (test accuracy <= 1.5 x {chance:.0%}) in {stuck} of "
                    f"{len(done)} seeds.",
                    "outcome",
                    "warning",
                )
            )
    diverged = int((~loss.apply(lambda x: math.isfinite(x))).sum())
    if diverged:
        out.append(
            _finding(
                f"{prefix}{name}: non-finite final test loss in {diverged} of {len(done)} seeds (diverged).",
                "outcome",
                "warning",
            )
        )
    return out


def _variant_findings(prefix: str, variant, done: pd.DataFrame, eta: pd.Series) -> list[dict[str, str]]:
    """What a variant's own switch did: whether the guard acted; whether fixed-eta kept its eta.
    ``eta`` is the eta trace of the variant's runs in this setup."""
    out: list[dict[str, str]] = []
    if variant.kind == "guarded":
        acted = pd.to_numeric(done.guard_acted, errors="coerce")
        if acted.notna().all() and (acted == 0).all():
            out.append(
                _finding(
                    f"{prefix}guarded: the guard never acted (no curvature estimate below 0 at any "
                    "step of any seed), so it equals faithful by construction.",
                    "variant",
                )
            )
        elif acted.notna().any():
            out.append(
                _finding(
                    f"{prefix}guarded: the guard clamped {int(acted.sum())} coordinate-steps of "
                    f"negative curvature in {int((acted > 0).sum())} of {len(done)} seeds.",
                    "variant",
                )
            )
    if variant.kind == "fixed-eta":
        iterations = pd.to_numeric(done.dual_iterations_mean, errors="coerce")
        if (
            iterations.notna().all()
            and (iterations == 0).all()
            and len(eta)
            and (pd.to_numeric(eta) == float(variant.value)).all()
        ):
            out.append(
                _finding(
                    f"{prefix}{variant.name} never solved the dual (0 K evaluations per step; "
                    f"eta = {variant.value:g} throughout).",
                    "variant",
                )
            )
    return out


def _curvature_and_paper_findings(prefix: str, setup, block: dict[str, Any]) -> list[dict[str, str]]:
    """Per setup: in how many seeds a beats the constant 0.1; what the paper reports for it."""
    out: list[dict[str, str]] = []
    curvature = [
        (e["variant"], e["curvature"])
        for e in block["summary"]
        if e.get("curvature") and e["curvature"]["assessed_seeds"]
    ]
    if curvature:
        parts = ", ".join(f"{name} {c['beats_constant_seeds']}/{c['assessed_seeds']}" for name, c in curvature)
        out.append(
            _finding(
                f"{prefix}Does the curvature estimate a beat the constant 0.1 (relative error to the "
                f"reference h at the final snapshot, the verdict agreement.beats_constant of each run: "
                f"interval beyond a 1 % margin)? Seeds where it does, of the seeds decided (an "
                f"inconclusive seed is not counted): {parts}.",
                "curvature",
            )
        )
    if block["paper"]:
        config = setup.config
        length = f"{config.steps} steps" if config.steps is not None else f"{config.epochs} epochs"
        reported = ", ".join(
            f"{k} {v:.2f} %"
            for k, v in ((row["optimizer"], row["paper_percent"]) for row in block["paper_table"])
            if math.isfinite(v)
        )
        out.append(
            _finding(
                f"{prefix}The paper reports ({block['paper']}): {reported}. This study ran {length} "
                "of that protocol; compare with care when that is shorter.",
                "paper",
            )
        )
    return out


def _setup_findings(
    data: StudyData, summary: dict[str, Any], setup, verdicts: list[dict[str, Any]]
) -> list[dict[str, str]]:
    """One setup's findings: no reference, each test-accuracy verdict against faithful, the baselines
    that did not converge, each variant's outcome and switch, then curvature and the paper (prefixed
    ``[setup]`` when the study has several)."""
    study, runs = data.study, data.runs
    prefix = f"[{setup.name}] " if len(study.setups) > 1 else ""
    block = summary[setup.name]
    variants = {v.name: v for v in study.variants}
    out: list[dict[str, str]] = []
    if not any(v.name == REFERENCE_VARIANT for v in study.variants):
        out.append(
            _finding(f"{prefix}No faithful variant in the study: no paired comparisons.", "statistics", "warning")
        )
    for verdict in verdicts:
        if verdict["setup"] == setup.name and verdict["metric"] == "test_accuracy" and verdict["n"]:
            out.append(_finding(prefix + verdict["text"], "comparison"))
    out += _convergence_findings(prefix, setup.name, study, runs)
    for entry in block["summary"]:
        variant = variants[entry["variant"]]
        done = runs[(runs.setup == setup.name) & (runs.variant == variant.name) & (runs.status == "complete")]
        if not len(done):
            continue
        eta = data.eta[(data.eta.setup == setup.name) & (data.eta.variant == variant.name)]["eta"]
        out += _outcome_findings(prefix, variant.name, done)
        out += _variant_findings(prefix, variant, done, eta)
    return out + _curvature_and_paper_findings(prefix, setup, block)


def _statistics_findings(study, summary: dict[str, Any]) -> list[dict[str, str]]:
    """The caveats of the whole study: the baselines' source, Wilcoxon's floor, uncorrected p-values."""
    out: list[dict[str, str]] = []
    if any(v.family == "baseline" for v in study.variants):
        sources = sorted({s.baselines.source for s in study.setups})
        out.append(
            _finding(
                "Baseline hyperparameters (SGD, Adam, AdamW): " + " / ".join(sources) + ".", "baselines", "warning"
            )
        )
    n_max = max([c["n"] for block in summary.values() for c in block["comparisons"]] or [0])
    if 0 < n_max < 6:
        out.append(
            _finding(
                f"With {n_max} paired seeds the Wilcoxon signed-rank test cannot reach p < 0.05 (smallest "
                f"possible p = {2.0 / 2**n_max:.3g}); the verdicts above use the t interval of the paired "
                "difference, Wilcoxon p-values are in the tables.",
                "statistics",
            )
        )
    n_tests = sum(
        1
        for block in summary.values()
        for c in block["comparisons"]
        if c["metric"] == "test_accuracy" and math.isfinite(c["p_t"])
    )
    if n_tests:
        out.append(
            _finding(
                "Verdicts (variant - faithful on the same seeds): a difference when the 95 % t interval of "
                f"the mean difference lies entirely beyond +-{ACCURACY_MARGIN * 100:g} points of test accuracy, "
                "equal within that margin when it lies inside it, inconclusive otherwise and when it has zero "
                'width (the same difference in every seed); the verdicts table and study.json ("verdicts", '
                f"test loss too, margin {LOSS_MARGIN_RELATIVE:.0%} of faithful's) have them all.",
                "statistics",
            )
        )
    if n_tests > 1:
        out.append(
            _finding(
                f"p-values and intervals are not corrected for the {n_tests} comparisons; the tables give "
                "Holm-adjusted p-values beside.",
                "statistics",
            )
        )
    return out


def study_findings(
    data: StudyData, summary: dict[str, Any], verdicts: list[dict[str, Any]] | None = None
) -> list[dict[str, str]]:
    """The findings of a study, in words (see the module docstring), in this order: the runs left
    out; per setup its findings; the study-wide caveats. ``verdicts`` are :func:`study_verdicts`'
    (computed when not given)."""
    verdicts = study_verdicts(data, summary) if verdicts is None else verdicts
    out = _execution_findings(data.runs)
    for setup in data.study.setups:
        out += _setup_findings(data, summary, setup, verdicts)
    return out + _statistics_findings(data.study, summary)
