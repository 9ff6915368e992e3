"""The typer application: composes the commands, each in its own module."""

from __future__ import annotations

import typer
import typer.core

from .ablate import ablate
from .common import fail, is_usage_error, usage_error_message
from .compare import compare
from .report import report


class _Commands(typer.core.TyperGroup):
    """The command group; a bad option of a command (``--steps 1e30``, ``--stepz``) is one
    ``error:`` line and exit code 2, like every other user error, not a usage panel."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except Exception as error:
            if not is_usage_error(error):
                raise
            raise fail(usage_error_message(error)) from None


app = typer.Typer(
    cls=_Commands,
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
