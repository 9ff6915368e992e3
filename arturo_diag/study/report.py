"""The aggregate report of a study: study.json, runs.csv, curves.csv, eta.csv, estimates.csv, study_long.csv
(and study_long.parquet), study.md, study.html.

``render_study(study_dir)`` is a pure function of the files in the study directory (``study.toml``
and the run records): it never trains, and rendering twice gives byte-identical files (no times,
no absolute paths; figures drawn with the Agg backend without metadata). The document is built
from the report engine's blocks, the same as a run's report (:mod:`arturo_diag.study.sections`,
one function per section) and written by the engine's renderers
(:mod:`arturo_diag.report.document`): ``study.md`` (Markdown, links ``figures/*.png``) and
``study.html`` (self-contained, figures embedded as base64 PNG, a table of contents).
``study.json`` is the data (every number), not the document; its list ``"verdicts"`` holds each
variant's verdict against faithful (:mod:`arturo_diag.study.verdicts`). The figures are drawn by
:mod:`arturo_diag.study.figures`. ``study_long.csv`` (and ``study_long.parquet`` where pyarrow
imports) stacks the long tables of the complete runs' metrics (:mod:`arturo_diag.report.exports`),
one block per run in the grid's order, behind its ``variant``, ``seed`` and ``run`` (``runs.csv``'s
``run_dir``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from arturo_diag.diagnostics.io import atomic_write_bytes, atomic_write_csv, atomic_write_json
from arturo_diag.diagnostics.lock import DirectoryLock
from arturo_diag.diagnostics.record import RunRecord, looks_like_study_dir
from arturo_diag.report.exports import study_long_table, write_table
from arturo_diag.report.formats import write_documents
from arturo_diag.study.aggregate import CURVE_COLUMNS, ESTIMATE_COLUMNS, StudyData, _metrics, collect, summarize
from arturo_diag.study.estimate_findings import report_findings
from arturo_diag.study.figures import draw_figures, plot_accuracy, plot_curves, plot_eta
from arturo_diag.study.sections import study_document
from arturo_diag.study.verdicts import study_verdicts

__all__ = ["render_study", "StudyReport", "is_study_dir", "STUDY_FORMAT", "plot_curves", "plot_eta", "plot_accuracy"]

STUDY_FORMAT = "arturo-diag-study/1"
#: ``study_long.csv`` / ``study_long.parquet``: the complete runs' long tables.
STUDY_LONG_STEM = "study_long"


@dataclass(frozen=True)
class StudyReport:
    study_dir: Path
    markdown: Path
    html: Path
    json: Path
    runs_csv: Path
    curves_csv: Path
    findings: list[dict[str, str]]
    data: dict[str, Any]  # the content of study.json
    long: list[Path] = field(default_factory=list)  # study_long.csv (and .parquet where pyarrow imports)


def is_study_dir(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds a study (``study.toml`` or ``study.json``), not a single run record."""
    path = Path(path)
    return path.is_dir() and looks_like_study_dir(path)


def _study_long(data: StudyData) -> pd.DataFrame:
    """The long table of every complete run's metrics (grid order), behind variant, seed and run."""
    complete = {(row.setup, row.variant, int(row.seed)) for row in data.runs.itertuples() if row.status == "complete"}
    runs = []
    for spec in data.specs:
        if spec.key in complete:
            run_dir = Path(spec.config.out)
            runs.append((spec.variant.name, spec.seed, spec.relative_dir, _metrics(run_dir, RunRecord.load(run_dir))))
    return study_long_table(runs)


# ------------------------------------------------------------------------------------------ render
def _study_json(
    data: StudyData, summary: dict[str, Any], findings: list[dict[str, str]], verdicts: list[dict[str, Any]]
) -> dict[str, Any]:
    study, runs = data.study, data.runs
    counts = {
        s: int((runs.status == s).sum()) for s in ("complete", "failed", "damaged", "missing", "incomplete", "stale")
    }
    return {
        "format": STUDY_FORMAT,
        "name": study.name,
        "description": study.description,
        "seeds": list(study.seeds),
        "variants": [
            {
                "name": v.name,
                "kind": v.kind,
                "family": v.family,
                "describes": v.describe(study.setups[0].config.oracle_every),
                "changes": v.changes() if v.family != "baseline" else {"optimizer": v.kind},
                "has_estimate": v.has_estimate,
            }
            for v in study.variants
        ],
        "setups": {
            s.name: {
                "model": s.config.model,
                "dataset": s.config.dataset,
                "epochs": s.config.epochs,
                "steps": s.config.steps,
                "batch_size": s.config.batch_size,
                "preset": s.config.preset,
                "lr_milestones": list(s.config.lr_milestones),
                "every": s.config.every,
                "reference": s.config.reference,
                "oracle_every": s.config.oracle_every,
                "baselines": {k: dict(v) for k, v in s.baselines.values.items()},
                "baselines_source": s.baselines.source,
            }
            for s in study.setups
        },
        "counts": {"total": int(len(runs)), **counts},
        "failed": [
            {"setup": r.setup, "variant": r.variant, "seed": int(r.seed), "error": r.error}
            for r in runs[runs.status == "failed"].itertuples()
        ],
        "results": summary,
        "findings": findings,
        "runs": [
            {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
            for row in runs.to_dict(orient="records")
        ],
        "verdicts": verdicts,
    }


def render_study(study_dir: str | os.PathLike[str], *, figures: bool = True) -> StudyReport:
    """(Re-)render the aggregate report of the study in ``study_dir`` from its files.

    ``figures=False`` skips drawing (faster; study.md/.html then have no figures).

    Raises:
        RecordError: ``study_dir`` is not a study directory, or another process is writing it
            (its lock, ``docs/record.md``; run_study holds it and lets this nest).
    """
    if not Path(study_dir).is_dir():
        return _render_study(study_dir, figures)  # collect() says what is wrong
    with DirectoryLock(study_dir, advice="wait for it to finish", create=False):
        return _render_study(study_dir, figures)


def _render_study(study_dir: str | os.PathLike[str], figures: bool) -> StudyReport:
    data = collect(study_dir)
    study_dir = data.study_dir
    summary = summarize(data)
    verdicts = study_verdicts(data, summary)
    findings = report_findings(data, summary, verdicts)
    drawn = draw_figures(data) if figures else {}
    blocks = study_document(data, summary, findings, drawn, verdicts)
    content = _study_json(data, summary, findings, verdicts)

    for setup, items in drawn.items():
        for key, png in items.items():
            atomic_write_bytes(study_dir / "figures" / f"{setup}_{key}.png", png)
    atomic_write_csv(study_dir / "runs.csv", data.runs)
    atomic_write_csv(study_dir / "curves.csv", data.curves[list(CURVE_COLUMNS)])
    atomic_write_csv(study_dir / "eta.csv", data.eta)
    atomic_write_csv(study_dir / "estimates.csv", data.estimates[list(ESTIMATE_COLUMNS)])
    long = write_table(study_dir, STUDY_LONG_STEM, _study_long(data))
    atomic_write_json(study_dir / "study.json", content)
    write_documents(study_dir, "study", blocks, title=f"Ablation study: {data.study.name}")
    return StudyReport(
        study_dir,
        study_dir / "study.md",
        study_dir / "study.html",
        study_dir / "study.json",
        study_dir / "runs.csv",
        study_dir / "curves.csv",
        findings,
        content,
        long,
    )
