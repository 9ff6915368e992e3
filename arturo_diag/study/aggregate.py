"""A study's run records gathered into tidy tables, and its statistics (no training, no drawing).

:func:`collect` reads ``STUDY_DIR/study.toml``, finds every run of the grid, and returns
:class:`StudyData`: ``runs`` (one row per run: status, final numbers, curvature agreement and
calibration at the final snapshot), ``curves`` (one row per run and evaluation), ``eta`` (one row per
arTuRO run and step), ``estimates`` (one row per run with a curvature estimate and snapshot: c* and
Spearman against h, :mod:`arturo_diag.study.estimates`). :func:`summarize` turns them into the
per-variant means with t intervals, the paired comparisons with faithful, the paper-shaped table and
the cross-optimizer summary of the estimates. All pure functions of the files.

Which runs get which columns: every run whose variant keeps a curvature estimate
(:attr:`~arturo_diag.study.variants.Variant.has_estimate`: arTuRO, Adam/AdamW, IVON, AdaHessian,
Sophia-H/G; not SGD) gets every registered quantity's study columns and the estimate columns, but
the quantities of :data:`ARTURO_ONLY` (the trust region: eta, the dual) only for arTuRO's runs.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from arturo_diag import quantities
from arturo_diag.diagnostics.record import RunRecord
from arturo_diag.errors import RecordError
from arturo_diag.quantities.analysis import METRICS_FORMAT, analyze_record
from arturo_diag.quantities.base import number
from arturo_diag.study.config import RunSpec, StudyConfig, expand_grid, load_study
from arturo_diag.study.estimates import (
    ESTIMATE_KEYS,
    SERIES_COLUMNS,
    estimate_columns,
    estimate_series,
    estimate_summary,
)
from arturo_diag.study.stats import holm, mean_ci, paired_comparison
from arturo_diag.study.status import STUDY_FILE, run_status

__all__ = [
    "StudyData",
    "collect",
    "summarize",
    "RUN_COLUMNS",
    "run_columns",
    "CURVE_COLUMNS",
    "ETA_COLUMNS",
    "ESTIMATE_COLUMNS",
    "ARTURO_ONLY",
    "REFERENCE_VARIANT",
    "PAPER_RESULTS",
]

REFERENCE_VARIANT = "faithful"
#: Quantities whose study columns only mean something for arTuRO (eta, the dual): left out of other optimizers' runs.
ARTURO_ONLY = ("trust_region",)
_BASE_COLUMNS = (
    "setup",
    "variant",
    "family",
    "seed",
    "status",
    "run_dir",
    "steps",
    "epochs",
    "test_accuracy",
    "test_loss",
    "train_loss",
    "train_accuracy",
    "best_test_accuracy",
)


def run_columns() -> tuple[str, ...]:
    """The columns of ``runs.csv``: the run's own, then each registered quantity's study columns
    (:attr:`~arturo_diag.quantities.base.Quantity.study_keys`, registry order), the curvature
    estimate's (:data:`~arturo_diag.study.estimates.ESTIMATE_KEYS`), then two more."""
    keys = [key for quantity in quantities.QUANTITIES for key in quantity.study_keys]
    return (*_BASE_COLUMNS, *dict.fromkeys([*keys, *ESTIMATE_KEYS]), "num_classes", "error")


#: ``runs.csv``'s columns with the quantities registered at import (:func:`run_columns` is current).
RUN_COLUMNS = run_columns()
CURVE_COLUMNS = (
    "setup",
    "variant",
    "family",
    "seed",
    "epoch",
    "step",
    "train_loss",
    "train_accuracy",
    "test_loss",
    "test_accuracy",
)
ETA_COLUMNS = ("setup", "variant", "seed", "step", "eta", "kl_bound")
ESTIMATE_COLUMNS = SERIES_COLUMNS

#: Test accuracies the paper reports (ARTURO.md), by (model, dataset).
PAPER_RESULTS = {
    ("fashion_cnn", "fashion_mnist"): {
        "label": "Fashion-MNIST CNN, 120 epochs",
        "faithful": 93.01,
        "sgd": 92.84,
        "adam": 92.90,
    },
    ("resnet34", "cifar10"): {"label": "CIFAR-10 ResNet-34", "faithful": 87.37, "sgd": 87.11, "adam": 85.86},
}


@dataclass(frozen=True)
class StudyData:
    study_dir: Path
    study: StudyConfig
    specs: list[RunSpec]
    runs: pd.DataFrame
    curves: pd.DataFrame
    eta: pd.DataFrame
    estimates: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(ESTIMATE_COLUMNS)))


def _metrics(run_dir: Path, record: RunRecord) -> dict[str, Any]:
    """The run's metrics.json (written by the study), else, if it is missing or not well formed,
    the metrics computed again from the record (a derived file is never trusted over its record)."""
    path = run_dir / "metrics.json"
    if path.is_file():
        try:
            cached = json.loads(path.read_text(encoding="utf-8"))
            registered = all(quantity.name in cached for quantity in quantities.QUANTITIES)
            if isinstance(cached, dict) and cached.get("format") == METRICS_FORMAT and registered:
                _quantity_columns(cached, record)  # the parts read here have their documented shape
                return cached
        except (OSError, ValueError, AttributeError, TypeError, RecursionError):
            pass
    return analyze_record(record)


def _quantity_columns(metrics: dict[str, Any], record: RunRecord, *, arturo: bool = True) -> dict[str, Any]:
    """One run's study columns, from each registered quantity (registry order); those of
    :data:`ARTURO_ONLY` only for an arTuRO run (``arturo``)."""
    out: dict[str, Any] = {}
    for quantity in quantities.QUANTITIES:
        if quantity.study_columns is not None and (arturo or quantity.name not in ARTURO_ONLY):
            out.update(quantity.study_columns(metrics, record))
    return out


def _series(table: pd.DataFrame, column: str) -> pd.Series:
    if column not in table.columns:
        return pd.Series(dtype=float)
    return pd.to_numeric(table[column], errors="coerce")


def _complete_run(
    spec: RunSpec, row: dict[str, Any]
) -> tuple[list[dict[str, Any]], list[pd.DataFrame], list[dict[str, Any]]]:
    """Fill ``row`` with the final numbers of a complete run; return its curve rows, eta frames and
    estimate rows (c* and Spearman per snapshot, for a run whose variant keeps an estimate).

    Raises:
        RecordError: the record's files are damaged (e.g. a snapshot read for the curvature columns).
    """
    curve_rows: list[dict[str, Any]] = []
    eta_frames: list[pd.DataFrame] = []
    estimate_rows: list[dict[str, Any]] = []
    record = RunRecord.load(spec.config.out)
    epochs = record.epochs.sort_values("step", kind="stable") if "step" in record.epochs.columns else record.epochs
    steps = record.steps
    row["steps"] = int(record.manifest.get("steps") or 0)
    row["epochs"] = int(len(epochs))
    if len(epochs):
        last = epochs.iloc[-1]
        for column in ("test_accuracy", "test_loss", "train_loss", "train_accuracy"):
            row[column] = number(last.get(column))
        row["best_test_accuracy"] = float(_series(epochs, "test_accuracy").max())
    eta = _series(steps, "eta")
    if spec.variant.family == "arturo" and eta.notna().any():
        eta_frames.append(
            pd.DataFrame(
                {
                    "setup": spec.setup,
                    "variant": spec.variant.name,
                    "seed": spec.seed,
                    "step": _series(steps, "step").astype("int64"),
                    "eta": eta,
                    "kl_bound": _series(steps, "kl_bound"),
                }
            )
        )
    if record.parameters:
        last_shape = list(record.parameters.values())[-1]
        row["num_classes"] = int(last_shape[0]) if last_shape else math.nan
    if spec.variant.has_estimate:
        metrics = _metrics(Path(spec.config.out), record)
        row.update(_quantity_columns(metrics, record, arturo=spec.variant.optimizer == "arturo"))
        row.update(estimate_columns(metrics))
        where = {"setup": spec.setup, "variant": spec.variant.name, "family": spec.variant.family, "seed": spec.seed}
        estimate_rows += [{**where, **entry} for entry in estimate_series(metrics)]
    for _, epoch_row in epochs.iterrows():
        curve_rows.append(
            {
                "setup": spec.setup,
                "variant": spec.variant.name,
                "family": spec.variant.family,
                "seed": spec.seed,
                **{c: number(epoch_row.get(c)) for c in CURVE_COLUMNS[4:]},
            }
        )
    return curve_rows, eta_frames, estimate_rows


def collect(study_dir: str | Path) -> StudyData:
    """Read a study directory (``study.toml`` and the run records under ``runs/``).

    Raises:
        RecordError: no ``study.toml`` (not a study directory) or an unreadable one.
    """
    study_dir = Path(study_dir)
    if not (study_dir / STUDY_FILE).is_file():
        raise RecordError(f"{study_dir} is not a study directory (no {STUDY_FILE}); run arturo-diag ablate first")
    from arturo_diag.errors import ConfigError

    try:
        study = load_study(study_dir / STUDY_FILE)
    except ConfigError as error:
        raise RecordError(f"{study_dir / STUDY_FILE}: unusable study file ({error})") from None
    specs = expand_grid(study, study_dir)
    run_rows, curve_rows, eta_frames, estimate_rows = [], [], [], []
    for spec in specs:
        status, detail = run_status(spec)
        row: dict[str, Any] = {
            "setup": spec.setup,
            "variant": spec.variant.name,
            "family": spec.variant.family,
            "seed": spec.seed,
            "status": status,
            "run_dir": spec.relative_dir,
            "error": detail if status != "complete" else "",
        }
        if status == "diverged":  # counted and named, left out of the statistics (they use complete runs)
            try:
                row["steps"] = (RunRecord.load(spec.config.out).divergence or {}).get("step")
            except RecordError:
                pass
        if status == "complete":
            try:
                run_curves, run_eta, run_estimates = _complete_run(spec, row)
            except RecordError as error:  # left out, with a finding naming the run and the file
                row = {key: row[key] for key in ("setup", "variant", "family", "seed", "run_dir")}
                row.update(status="damaged", error=str(error))
            else:
                curve_rows += run_curves
                eta_frames += run_eta
                estimate_rows += run_estimates
        run_rows.append(row)
    runs = pd.DataFrame.from_records(run_rows, columns=list(run_columns()))
    curves = pd.DataFrame.from_records(curve_rows, columns=list(CURVE_COLUMNS))
    for column in ("epoch", "step"):
        curves[column] = curves[column].astype("int64")
    eta = (pd.concat(eta_frames, ignore_index=True) if eta_frames else pd.DataFrame(columns=list(ETA_COLUMNS)))[
        list(ETA_COLUMNS)
    ]
    estimates = pd.DataFrame.from_records(estimate_rows, columns=list(ESTIMATE_COLUMNS))
    estimates["step"] = estimates["step"].astype("int64")
    return StudyData(study_dir, study, specs, runs, curves, eta, estimates)


def _by_seed(runs: pd.DataFrame, setup: str, variant: str, column: str) -> dict[int, float]:
    rows = runs[(runs.setup == setup) & (runs.variant == variant) & (runs.status == "complete")]
    return {int(s): float(v) for s, v in zip(rows.seed, pd.to_numeric(rows[column], errors="coerce"))}


def _curvature_summary(done: pd.DataFrame) -> dict[str, Any]:
    """Per arTuRO variant, each registered quantity's :attr:`study_table` columns over its complete runs:
    the mean (``kind="mean"``), or how many runs said yes of how many were assessed (``kind="seeds"``)."""
    out: dict[str, Any] = {}
    counted: dict[str, Any] = {}
    for quantity in quantities.QUANTITIES:
        for column in quantity.study_table:
            values = _series(done, column.key)
            if column.kind == "seeds":
                verdicts = values.dropna()
                counted[f"{column.key}_seeds"] = int(verdicts.sum())
                counted["assessed_seeds"] = int(len(verdicts))
            else:
                out[column.key] = float(values.mean()) if values.notna().any() else math.nan
    return {**out, **counted}


def summarize(data: StudyData) -> dict[str, Any]:
    """Per setup: ``summary`` (per variant mean and CI of the final numbers, curvature means for arTuRO's
    variants, ``estimate``: the cross-optimizer summary for every variant with an estimate),
    ``comparisons`` (paired with faithful, test accuracy and test loss, Holm-adjusted t p-values),
    ``paper_table`` (optimizer x test accuracy in %)."""
    runs = data.runs
    out: dict[str, Any] = {}
    for setup in data.study.setups:
        summary, comparisons = [], []
        for variant in data.study.variants:
            rows = runs[(runs.setup == setup.name) & (runs.variant == variant.name)]
            done = rows[rows.status == "complete"]
            entry: dict[str, Any] = {
                "variant": variant.name,
                "family": variant.family,
                "n_runs": int(len(rows)),
                "n_complete": int(len(done)),
            }
            for column in ("test_accuracy", "test_loss", "train_loss"):
                entry[column] = mean_ci(pd.to_numeric(done[column], errors="coerce").tolist())
            if variant.family == "arturo":
                entry["curvature"] = _curvature_summary(done)
            if variant.has_estimate:
                entry["estimate"] = estimate_summary(done)
            summary.append(entry)
        names = [v.name for v in data.study.variants]
        if REFERENCE_VARIANT in names:
            for metric in ("test_accuracy", "test_loss"):
                reference = _by_seed(runs, setup.name, REFERENCE_VARIANT, metric)
                block = []
                for variant in data.study.variants:
                    if variant.name == REFERENCE_VARIANT:
                        continue
                    result = paired_comparison(_by_seed(runs, setup.name, variant.name, metric), reference)
                    block.append({"variant": variant.name, "family": variant.family, "metric": metric, **result})
                for item, adjusted in zip(block, holm([b["p_t"] for b in block])):
                    item["p_t_holm"] = adjusted
                comparisons.extend(block)
        paper = PAPER_RESULTS.get((setup.config.model, setup.config.dataset))
        table = []
        for entry in summary:
            acc = entry["test_accuracy"]
            table.append(
                {
                    "optimizer": entry["variant"],
                    "family": entry["family"],
                    "n": acc["n"],
                    "test_accuracy_percent": acc["mean"] * 100.0,
                    "half_width_percent": acc["half_width"] * 100.0,
                    "paper_percent": (paper or {}).get(entry["variant"], math.nan),
                }
            )
        out[setup.name] = {
            "summary": summary,
            "comparisons": comparisons,
            "paper_table": table,
            "paper": paper["label"] if paper else None,
        }
    return out
