"""report: metrics.json, figures, report.md and report.html of a run record.

The package imports nothing when imported (the quantities import its document engine, and
``render`` imports the quantities): ``from arturo_diag.report.render import render_report``.

``render_report(run_dir) -> ReportResult`` analyses a complete run record
(:func:`~arturo_diag.quantities.analysis.analyze_record`) and writes its report; it never trains,
and re-rendering a record gives byte-identical files (``arturo-diag report RUN_DIR``).

Modules, one concept each:

- ``render``: :func:`render_report` and :class:`ReportResult` (the order and atomicity of writes);
- ``figures``: a package, one module per diagnostic topic with its plot function (seaborn styling
  on matplotlib's Agg backend), ``figures.common`` for the style and deterministic PNG rendering;
  each quantity lists its figures (:mod:`arturo_diag.quantities`); missing data ->
  ``FigureSkipped(reason)``;
- ``sections``: the report's own sections (title, Settings, Findings); every quantity of
  :data:`arturo_diag.quantities.QUANTITIES` renders its own section, with its figures in it;
- ``document``: the block structure both ``report.md`` and the self-contained ``report.html`` are
  written from;
- ``format``: number formatting (3 significant digits, percentages for shares).
"""
