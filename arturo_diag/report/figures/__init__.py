"""The report's figures: one module per diagnostic topic, one function per plot (seaborn styling on
matplotlib's Agg backend).

Every figure function has the signature ``plot_NAME(record, metrics, fig) -> None``: it draws
into the empty :class:`matplotlib.figure.Figure` ``fig`` from the run record
(:class:`~arturo_diag.diagnostics.record.RunRecord`) and the metrics dict of
:func:`~arturo_diag.quantities.analysis.analyze_record`. Its docstring says what the plot means
and which record/metrics fields it needs. When those are missing it raises
:class:`FigureSkipped` with the reason, which the report lists instead of the figure (a missing
quantity is never a crash).

:func:`draw_figure` renders one figure to PNG bytes, deterministically: fixed size
and DPI, fixed style (``rc_context``, nothing global is changed), no pyplot state, and PNG
metadata without the matplotlib version, so the same record gives byte-identical files.

Modules: :mod:`.common` (style, PNG writing, shared helpers), :mod:`.agreement`,
:mod:`.movement` (the log10(a/h) vs log10|h| scatter), :mod:`.calibration`, :mod:`.lag`,
:mod:`.trust_region`, :mod:`.health` (precision), :mod:`.training`. Each defines its plot
function and its ``FIGURE`` (a :class:`FigureSpec`: file name, size, caption). To add a figure:
write its plot function and ``FigureSpec`` and list it in its quantity's ``figures``
(:mod:`arturo_diag.quantities`); the report draws it in that quantity's section.
"""

from __future__ import annotations

import matplotlib  # noqa: F401 - figures.matplotlib, on the Agg backend .common selects

from arturo_diag.report.figures.agreement import plot_agreement
from arturo_diag.report.figures.calibration import plot_calibration
from arturo_diag.report.figures.common import (
    DPI,
    FigureSkipped,
    FigureSpec,
    draw_figure,
)
from arturo_diag.report.figures.health import plot_precision
from arturo_diag.report.figures.lag import plot_lag
from arturo_diag.report.figures.movement import MAX_SCATTER_POINTS, plot_scatter
from arturo_diag.report.figures.training import plot_training
from arturo_diag.report.figures.trust_region import plot_trust_region

__all__ = [
    "DPI",
    "MAX_SCATTER_POINTS",
    "FigureSkipped",
    "FigureSpec",
    "draw_figure",
    "plot_agreement",
    "plot_calibration",
    "plot_lag",
    "plot_precision",
    "plot_scatter",
    "plot_training",
    "plot_trust_region",
]
