"""Helpers the quantities' report sections share (blocks of :mod:`arturo_diag.report.document`).

A section adds no new numbers: everything it shows is in ``metrics.json`` or the record, through
the formatting of :mod:`arturo_diag.report.format`; a missing part gives a sentence saying why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from arturo_diag.report.document import Paragraph, strong, text

__all__ = [
    "_MAX_SNAPSHOT_ROWS",
    "_SECTION_WORDS",
    "_no_reference_reason",
    "_not_computed",
    "_thin",
]

_MAX_SNAPSHOT_ROWS = 30  # longer per-snapshot tables are thinned to this many rows
_SECTION_WORDS = {"spearman": "Spearman", "relative_error": "relative error"}


def _not_computed(reason: str) -> Paragraph:
    return Paragraph((strong("Not computed:"), text(" " + reason)), css_class="note")


def _no_reference_reason(metrics: Mapping[str, Any]) -> str:
    run = metrics.get("run") or {}
    if "estimator" in run and not run["estimator"]:
        name = (run.get("optimizer") or {}).get("name") or "the optimizer"
        return (
            f"no curvature adapter reads {name}, so no snapshot holds a curvature estimate to compare with h "
            "(arturo_diag.estimators.register_adapter adds one)."
        )
    if not run.get("n_snapshots"):
        return 'the record has no snapshots (reference "none", or no snapshot was due), so a cannot be compared with h.'
    return (
        f"none of the {run['n_snapshots']} snapshots has both the curvature estimate a and a reference h "
        f"(reference: {run.get('reference')})."
    )


def _thin(rows: Sequence[Any], limit: int) -> tuple[list[Any], bool]:
    """At most ``limit`` evenly spaced rows, first and last included."""
    if len(rows) <= limit:
        return list(rows), False
    picks = sorted({round(i * (len(rows) - 1) / (limit - 1)) for i in range(limit)})
    return [rows[i] for i in picks], True
