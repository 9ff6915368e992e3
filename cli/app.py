"""The typer application: composes the commands, each in its own module."""
from __future__ import annotations

import typer

app = typer.Typer(
    name="arturo-diag",
    help="Diagnostics for the arTuRO optimizer: its curvature estimate against the true diagonal Hessian.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """arturo-diag: train with arTuRO, compare its curvature estimate with the true diagonal Hessian."""


def main() -> None:
    app()


if __name__ == "__main__":
    main()
