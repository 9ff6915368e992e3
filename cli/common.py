"""What the commands share: turning library errors into one-line messages with exit code 2."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping

import typer
from rich.markup import escape

from arturo_diag.errors import ArturoDiagError, Diverged

#: Exit codes of every command (README, "Exit codes"): 0 done; 1 an internal error (a bug: a
#: traceback) or, for ablate, runs that failed; 2 bad input (one ``error:`` line); 3 the run diverged
#: (NaN/inf; the record and report say where); 130 interrupted.
EXIT_OK, EXIT_FAILED, EXIT_USER_ERROR, EXIT_DIVERGED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def choices_help(declaration: Mapping[str, str] | Iterable[str], default: str | None = None, lead: str = "") -> str:
    """The ``help=`` of an option from the declaration of its choices (name -> one line, or names):
    ``lead`` then ``name (default): line; name: line; ...`` (``name (default), name, ...`` when the
    declaration has no lines, e.g. a registry of builders; a value with a ``help`` attribute gives
    that line), escaped for typer's rich markup."""
    lines = dict(declaration) if isinstance(declaration, Mapping) else dict.fromkeys(declaration, "")
    lines = {name: getattr(line, "help", line) for name, line in lines.items()}  # a spec with a help line
    described = all(isinstance(line, str) and line for line in lines.values())
    parts = [
        name + (" (default)" if name == default else "") + (f": {lines[name]}" if described else "") for name in lines
    ]
    return escape(lead + ("; " if described else ", ").join(parts) + ".")


def fail(message: str, code: int = 2) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code=code)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Library errors (bad config, data, record) become one line on stderr and exit code 2."""
    try:
        yield
    except Diverged as error:  # a run that went NaN/inf, not a user's mistake
        raise fail(f"diverged: {error}", EXIT_DIVERGED) from None
    except ArturoDiagError as error:
        raise fail(str(error)) from None
    except KeyboardInterrupt:
        typer.secho("interrupted: the record is left incomplete", err=True)
        raise typer.Exit(code=130) from None


try:  # typer >= 0.20 vendors click
    from typer._click.exceptions import NoArgsIsHelpError, UsageError
except ImportError:  # pragma: no cover - older typer on click
    from click.exceptions import UsageError

    try:
        from click.exceptions import NoArgsIsHelpError
    except ImportError:
        NoArgsIsHelpError = ()


def usage_error_message(error: Exception) -> str:
    """A command-line parse error as one line in the ``field: got X; allowed: Y`` form where it is
    a bad value (``--steps 1e30``), else the parser's own sentence."""
    from arturo_diag.training.config import LIMITS

    param = getattr(error, "param", None)
    cause = error.__cause__
    details = cause.errors() if hasattr(cause, "errors") else None  # pydantic's, with the input
    message = " ".join(error.format_message().split())
    if param is not None and details:
        name = param.name
        given = details[0].get("input")
        if "integer" in message:
            limit = LIMITS.get("steps" if name == "max_steps" else name)
            allowed = "an integer" + (f" <= {limit:,}" if limit else "")
        elif "number" in message:
            allowed = "a number"
        else:
            return f"{name}: {message}"
        return f"{name}: got {given!r}; allowed: {allowed}"
    return message


def is_usage_error(error: BaseException) -> bool:
    return isinstance(error, UsageError) and not isinstance(error, NoArgsIsHelpError)
