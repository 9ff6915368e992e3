"""``render_report(run_dir)``: metrics.json, figures/*.png, report.md and report.html of one run record.

A pure function of the record on disk: it never trains, and rendering the same record twice gives
byte-identical files. Order of writes (each atomic, :mod:`arturo_diag.diagnostics.io`): first any
previous ``report.*`` files (and ``metrics_long.*``) are removed, then ``metrics.json``, then its long
table ``metrics_long.csv`` / ``.parquet`` (:mod:`arturo_diag.report.exports`), then the figures, and the report
files last (one per output format of :mod:`arturo_diag.report.formats`, ``report.md`` the very
last), so a render killed at any point leaves no report that looks complete.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arturo_diag import quantities
from arturo_diag.diagnostics.io import atomic_write_bytes, remove_file, write_error
from arturo_diag.diagnostics.lock import DirectoryLock
from arturo_diag.diagnostics.record import RunRecord
from arturo_diag.quantities.analysis import analyze_record, write_metrics
from arturo_diag.report import sections
from arturo_diag.report.document import Block, Image, Paragraph, code, text
from arturo_diag.report.exports import export_names, write_exports
from arturo_diag.report.figures.common import FigureSkipped, FigureSpec, draw_figure
from arturo_diag.report.format import is_number
from arturo_diag.report.formats import remove_documents, write_documents

__all__ = ["ReportResult", "render_report"]

REPORT_STEM = "report"  # report.md, report.html, report.document.json (report/formats.py)
METRICS_JSON = "metrics.json"
FIGURE_DIR = "figures"


@dataclass(frozen=True)
class ReportResult:
    """What :func:`render_report` wrote.

    Attributes:
        run_dir: the record's directory.
        markdown, html, metrics_json: paths of ``report.md``, ``report.html``, ``metrics.json``.
        metrics: the metrics dict of :func:`~arturo_diag.quantities.analysis.analyze_record` (NaN
            where ``metrics.json`` has null).
        findings: ``metrics["findings"]``, a list of ``{text, severity, topic}``.
        figures: figure name -> path of its PNG, for the figures drawn (report order).
        skipped: figure name -> why it was not drawn.
        documents: format name -> path of the report in that format (:data:`~arturo_diag.report.formats.FORMATS`).
        exports: the long table's files written (``metrics_long.csv``, and ``metrics_long.parquet``
            where pyarrow imports; :mod:`arturo_diag.report.exports`).
    """

    run_dir: Path
    markdown: Path
    html: Path
    metrics_json: Path
    metrics: dict[str, Any] = field(repr=False)
    findings: list[dict[str, Any]] = field(repr=False)
    figures: dict[str, Path]
    skipped: dict[str, str]
    documents: dict[str, Path] = field(default_factory=dict)
    exports: list[Path] = field(default_factory=list)


def _analysis_options(record: RunRecord) -> dict[str, Any]:
    """Analysis settings the run's config names (``[diagnostics] collapse_fraction``)."""
    diagnostics = (record.config or {}).get("diagnostics") or {}
    fraction = diagnostics.get("collapse_fraction") if isinstance(diagnostics, dict) else None
    return {"collapse_fraction": float(fraction)} if is_number(fraction) and float(fraction) > 0 else {}


def render_report(run_dir: str | os.PathLike[str]) -> ReportResult:
    """Analyse a complete run record and write its report (ARTURO.md, "Diagnostic quantities").

    Writes into ``run_dir``: ``metrics.json`` (the metrics dict), ``metrics_long.csv`` (and
    ``metrics_long.parquet`` where pyarrow imports: its per-snapshot numbers as one long table,
    :func:`~arturo_diag.report.exports.write_exports`), ``figures/NAME.png`` for every
    figure of the quantities of :data:`arturo_diag.quantities.QUANTITIES` whose data the record
    has (a figure without its data is named as skipped, with the reason, in its section, and a
    stale PNG of it is removed), then the report in every output format: ``report.document.json``,
    ``report.html`` (self-contained, with a table of contents, each figure in the section it
    illustrates) and ``report.md``.

    Raises:
        RecordError: ``run_dir`` is not a complete run record (missing, running, failed,
            unreadable), or another process is writing it (its lock, ``docs/record.md``).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        RunRecord.load(run_dir)  # raises: no such run directory
    # One writer per directory (docs/record.md, "Locks"): not while the run or another render writes it.
    with DirectoryLock(run_dir, advice="wait for it to finish", create=False):
        try:
            return _render(run_dir)
        except OSError as error:  # a stale report file that cannot be removed (read-only, no permission)
            raise write_error(error, run_dir) from None


def run_name(run_dir: Path) -> str:
    """The run's name for a page title: its directory's name, with the study grid's
    ``SETUP/VARIANT/seedN`` kept when the run belongs to a study (``runs/`` in the path)."""
    parts = run_dir.resolve().parts
    inside = [i for i, part in enumerate(parts[:-1]) if part == "runs"]
    return "/".join(parts[inside[-1] + 1 :]) if inside else (parts[-1] if len(parts) > 1 else str(run_dir))


def _render(run_dir: Path) -> ReportResult:
    record = RunRecord.load(run_dir)
    metrics = analyze_record(record, **_analysis_options(record))

    # from here until the end, no report file exists that could be taken for this render's
    remove_documents(run_dir, REPORT_STEM)
    for name in export_names():
        remove_file(run_dir / name)
    metrics_path = run_dir / METRICS_JSON
    write_metrics(run_dir, metrics)
    exports = write_exports(run_dir, metrics)

    figure_dir = run_dir / FIGURE_DIR
    figures: dict[str, Path] = {}
    skipped: dict[str, str] = {}

    def figure_blocks(spec: FigureSpec) -> list[Block]:
        """Draw one figure into figures/NAME.png; its block, or a line saying why it was skipped."""
        path = figure_dir / f"{spec.name}.png"
        try:
            png = draw_figure(spec, record, metrics)
        except FigureSkipped as skip:
            skipped[spec.name] = skip.reason
            path.unlink(missing_ok=True)
            return [Paragraph((code(f"figures/{spec.name}.png"), text(f": skipped: {skip.reason}")), css_class="note")]
        atomic_write_bytes(path, png)
        figures[spec.name] = path
        alt = f"{spec.name.replace('_', ' ')} figure"
        return [Image(f"figures/{spec.name}.png", alt=alt, caption=(text(spec.caption),), png=png)]

    blocks: list[Block] = []
    name = run_name(run_dir)
    blocks += sections.title_section(record, metrics, name)
    blocks += sections.settings_section(record, metrics)
    blocks += sections.findings_section(metrics.get("findings") or [])
    for quantity in quantities.QUANTITIES:  # each section with its figures in it
        if quantity.blocks is not None:
            blocks += quantity.blocks(metrics)
        for spec in quantity.figures:
            blocks += figure_blocks(spec)

    documents = write_documents(run_dir, REPORT_STEM, blocks, title=sections.report_title(metrics, name))
    return ReportResult(
        run_dir=run_dir,
        markdown=documents["markdown"],
        html=documents["html"],
        documents=documents,
        exports=exports,
        metrics_json=metrics_path,
        metrics=metrics,
        findings=list(metrics.get("findings") or []),
        figures=figures,
        skipped=skipped,
    )
