"""`arturo-diag report RUN_DIR`: re-render a report from a saved run record (no training)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from .common import user_errors


def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by compare or the Monitor.")],
) -> None:
    """Re-render report.md, report.html, figures and metrics.json from a saved run record."""
    with user_errors():
        from arturo_diag.report import render_report

        result = render_report(run_dir)
    out = Console()
    for finding in result.findings:
        marker = "[yellow]![/yellow]" if finding.get("severity") == "warning" else "-"
        out.print(f" {marker} {finding['text']}")
    out.print(f"[bold]report[/bold] {result.markdown}  {result.html}")
