"""A study's run records gathered into tidy tables, and its statistics (no training, no drawing).

:func:`collect` reads ``STUDY_DIR/study.toml``, finds every run of the grid, and returns
:class:`StudyData`: ``runs`` (one row per run: status, final numbers, curvature agreement and
calibration at the final snapshot), ``curves`` (one row per run and evaluation), ``eta`` (one row per
arTuRO run and step). :func:`summarize` turns them into the per-variant means with t intervals,
the paired comparisons with faithful, and the paper-shaped table. All pure functions of the files.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from arturo_diag.diagnostics.record import RunRecord
from arturo_diag.errors import RecordError
from arturo_diag.study.config import RunSpec, StudyConfig, expand_grid, load_study
from arturo_diag.study.stats import holm, mean_ci, paired_comparison
from arturo_diag.study.status import STUDY_FILE, run_status

__all__ = [
    "StudyData",
    "collect",
    "summarize",
    "RUN_COLUMNS",
    "CURVE_COLUMNS",
    "ETA_COLUMNS",
    "REFERENCE_VARIANT",
    "PAPER_RESULTS",
]

REFERENCE_VARIANT = "faithful"
RUN_COLUMNS = (
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
    "eta_final",
    "eta_median",
    "dual_iterations_mean",
    "kl_ratio_median",
    "guard_acted",
    "snapshot_step",
    "agreement_relative_error",
    "constant_relative_error",
    "agreement_spearman",
    "beats_constant",
    "calibration_coverage",
    "calibration_sharpness",
    "num_classes",
    "error",
)
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


def _number(value: Any) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return math.nan
    return value


def _metrics(run_dir: Path, record: RunRecord) -> dict[str, Any]:
    """The run's metrics.json (written by the study), else, if it is missing or not well formed,
    the metrics computed again from the record (a derived file is never trusted over its record)."""
    from arturo_diag.diagnostics.analysis import METRICS_FORMAT, analyze_record

    path = run_dir / "metrics.json"
    if path.is_file():
        try:
            cached = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(cached, dict) and cached.get("format") == METRICS_FORMAT:
                _curvature_columns(cached)  # the parts read here have their documented shape
                return cached
        except (OSError, ValueError, AttributeError, TypeError, RecursionError):
            pass
    return analyze_record(record)


def _at_last_snapshot(metrics: dict[str, Any], entry: Any) -> Any:
    """``entry`` if it belongs to the run's last snapshot, else None.

    The analysis skips snapshots it cannot compare (h all 0 or non-finite) and its ``final`` is then
    an earlier one; the study's columns are "at the final snapshot", so such a run is not assessed.
    """
    if not entry:
        return None
    steps = (metrics.get("run") or {}).get("snapshot_steps") or []
    if steps and entry.get("step") != steps[-1]:
        return None
    return entry


def _curvature_columns(metrics: dict[str, Any]) -> dict[str, Any]:
    final = _at_last_snapshot(metrics, (metrics.get("agreement") or {}).get("final"))
    out: dict[str, Any] = {}
    steps = (metrics.get("run") or {}).get("snapshot_steps") or []
    if steps and not final:
        out["snapshot_step"] = steps[-1]
    if final:
        overall = final.get("overall") or {}
        out["snapshot_step"] = final.get("step")
        out["agreement_relative_error"] = _number((overall.get("estimate") or {}).get("relative_error"))
        out["constant_relative_error"] = _number((overall.get("constant") or {}).get("relative_error"))
        out["agreement_spearman"] = _number((overall.get("estimate") or {}).get("spearman"))
        verdict = (overall.get("beats_constant") or {}).get("relative_error")
        out["beats_constant"] = math.nan if verdict is None else float(bool(verdict))
    calibration = _at_last_snapshot(metrics, (metrics.get("calibration") or {}).get("final"))
    if calibration:
        overall = calibration.get("overall") or {}
        out["calibration_coverage"] = _number(overall.get("coverage"))
        out["calibration_sharpness"] = _number(overall.get("sharpness"))
    return out


def _series(table: pd.DataFrame, column: str) -> pd.Series:
    if column not in table.columns:
        return pd.Series(dtype=float)
    return pd.to_numeric(table[column], errors="coerce")


def _complete_run(spec: RunSpec, row: dict[str, Any]) -> tuple[list[dict[str, Any]], list[pd.DataFrame]]:
    """Fill ``row`` with the final numbers of a complete run; return its curve rows and eta frames.

    Raises:
        RecordError: the record's files are damaged (e.g. a snapshot read for the curvature columns).
    """
    curve_rows: list[dict[str, Any]] = []
    eta_frames: list[pd.DataFrame] = []
    record = RunRecord.load(spec.config.out)
    epochs = record.epochs.sort_values("step", kind="stable") if "step" in record.epochs.columns else record.epochs
    steps = record.steps
    row["steps"] = int(record.manifest.get("steps") or 0)
    row["epochs"] = int(len(epochs))
    if len(epochs):
        last = epochs.iloc[-1]
        for column in ("test_accuracy", "test_loss", "train_loss", "train_accuracy"):
            row[column] = _number(last.get(column))
        row["best_test_accuracy"] = float(_series(epochs, "test_accuracy").max())
    eta = _series(steps, "eta")
    if spec.variant.family == "arturo" and eta.notna().any():
        row["eta_final"] = float(eta.dropna().iloc[-1])
        row["eta_median"] = float(eta.median())
        row["dual_iterations_mean"] = float(_series(steps, "iterations").mean())
        row["kl_ratio_median"] = float(_series(steps, "kl_ratio").median())
        row["guard_acted"] = float(_series(steps, "guard_acted").fillna(0).sum())
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
    if spec.variant.family == "arturo":
        row.update(_curvature_columns(_metrics(Path(spec.config.out), record)))
    for _, epoch_row in epochs.iterrows():
        curve_rows.append(
            {
                "setup": spec.setup,
                "variant": spec.variant.name,
                "family": spec.variant.family,
                "seed": spec.seed,
                **{c: _number(epoch_row.get(c)) for c in CURVE_COLUMNS[4:]},
            }
        )
    return curve_rows, eta_frames


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
    run_rows, curve_rows, eta_frames = [], [], []
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
                run_curves, run_eta = _complete_run(spec, row)
            except RecordError as error:  # left out, with a finding naming the run and the file
                row = {key: row[key] for key in ("setup", "variant", "family", "seed", "run_dir")}
                row.update(status="damaged", error=str(error))
            else:
                curve_rows += run_curves
                eta_frames += run_eta
        run_rows.append(row)
    runs = pd.DataFrame.from_records(run_rows, columns=list(RUN_COLUMNS))
    curves = pd.DataFrame.from_records(curve_rows, columns=list(CURVE_COLUMNS))
    for column in ("epoch", "step"):
        curves[column] = curves[column].astype("int64")
    eta = (pd.concat(eta_frames, ignore_index=True) if eta_frames else pd.DataFrame(columns=list(ETA_COLUMNS)))[
        list(ETA_COLUMNS)
    ]
    return StudyData(study_dir, study, specs, runs, curves, eta)


def _by_seed(runs: pd.DataFrame, setup: str, variant: str, column: str) -> dict[int, float]:
    rows = runs[(runs.setup == setup) & (runs.variant == variant) & (runs.status == "complete")]
    return {int(s): float(v) for s, v in zip(rows.seed, pd.to_numeric(rows[column], errors="coerce"))}


def summarize(data: StudyData) -> dict[str, Any]:
    """Per setup: ``summary`` (per variant mean and CI of the final numbers, curvature means),
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
                curvature = {}
                for column in (
                    "agreement_relative_error",
                    "constant_relative_error",
                    "agreement_spearman",
                    "calibration_coverage",
                    "calibration_sharpness",
                    "eta_median",
                    "dual_iterations_mean",
                ):
                    values = pd.to_numeric(done[column], errors="coerce")
                    curvature[column] = float(values.mean()) if values.notna().any() else math.nan
                beats = pd.to_numeric(done["beats_constant"], errors="coerce").dropna()
                curvature["beats_constant_seeds"] = int(beats.sum())
                curvature["assessed_seeds"] = int(len(beats))
                entry["curvature"] = curvature
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
