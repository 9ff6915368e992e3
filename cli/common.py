"""What the commands share: turning library errors into one-line messages with exit code 2."""
from __future__ import annotations

import contextlib
import sys
from typing import Iterator

import typer

from arturo_diag.errors import ArturoDiagError


def fail(message: str, code: int = 2) -> "typer.Exit":
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code=code)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Library errors (bad config, data, record) become one line on stderr and exit code 2."""
    try:
        yield
    except ArturoDiagError as error:
        raise fail(str(error)) from None
    except KeyboardInterrupt:
        typer.secho("interrupted: the record is left incomplete", err=True)
        raise typer.Exit(code=130) from None


def stderr_is_terminal() -> bool:
    return sys.stderr.isatty()
