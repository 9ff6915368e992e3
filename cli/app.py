"""The typer application: composes the commands, each in its own module."""
from __future__ import annotations

import typer

from .ablate import ablate
from .compare import compare
from .report import report

app = typer.Typer(
    name="arturo-diag",
    help="Diagnostics for the arTuRO optimizer: its curvature estimate against the true diagonal Hessian.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command()(compare)
app.command()(report)
app.command()(ablate)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
