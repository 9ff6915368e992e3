"""`arturo-diag report DIR`: re-render a report from saved records (no training).

DIR is a run directory (compare, the Monitor, one run of a study) or a study directory written by
`arturo-diag ablate` (it holds study.toml / study.json): then the aggregate report is re-rendered.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from .common import user_errors


def report(
    run_dir: Annotated[
        Path, typer.Argument(help="A run directory (compare, the Monitor) or a study directory (ablate).")
    ],
) -> None:
    """Re-render report.md/.html, figures and metrics.json of a run, or study.md/.html/.json of a study."""
    with user_errors():
        from arturo_diag.study import is_study_dir

        if is_study_dir(run_dir):
            from arturo_diag.study import render_study

            result = render_study(run_dir)
        else:
            from arturo_diag.report.render import render_report

            result = render_report(run_dir)
    out = Console()
    for finding in result.findings:
        marker = "[yellow]![/yellow]" if finding.get("severity") == "warning" else "-"
        out.print(f" {marker} {escape(finding['text'])}")
    out.print(f"[bold]report[/bold] {escape(f'{result.markdown}  {result.html}')}")
