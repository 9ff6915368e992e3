"""report: metrics.json, figures, report.md and report.html of a run record.

``render_report(run_dir) -> ReportResult`` analyses a complete run record
(:func:`~arturo_diag.diagnostics.analysis.analyze_record`) and writes its report; it never trains,
and re-rendering a record gives byte-identical files (``arturo-diag report RUN_DIR``).

Modules, one concept each:

- ``render``: :func:`render_report` and :class:`ReportResult` (the order and atomicity of writes);
- ``figures``: a package, one module per diagnostic topic with its plot function (seaborn styling
  on matplotlib's Agg backend), ``figures.common`` for the style and deterministic PNG rendering,
  the registry ``FIGURES``; missing data -> ``FigureSkipped(reason)``;
- ``sections``: the report's sections from the metrics dict (title, Settings, Findings, Agreement,
  Movement, Calibration, Lag, Trust region, Health, Training, Figures);
- ``document``: the block structure both ``report.md`` and the self-contained ``report.html`` are
  written from;
- ``format``: number formatting (3 significant digits, percentages for shares).
"""

from arturo_diag.report.render import ReportResult, render_report

__all__ = ["ReportResult", "render_report"]
