"""The one exception family of arturo-diag.

The library raises these; the CLI turns each into a one-line message and exit code 2.
Nothing in the library prints.
"""
from __future__ import annotations

from typing import Any


class ArturoDiagError(Exception):
    """Base of every error arturo-diag raises for a user's mistake or unusable input."""


class ConfigError(ArturoDiagError, ValueError):
    """A configuration field holds a value that is not allowed.

    The message names the field, the bad value and what is allowed: ``field: got X; allowed: Y``.
    """

    def __init__(self, field: str, value: Any, allowed: str):
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"{field}: got {value!r}; allowed: {allowed}")


class DataError(ArturoDiagError):
    """A dataset file is missing, unreadable or malformed, or a batch is unusable."""


class RecordError(ArturoDiagError):
    """A run record or study directory is missing, incomplete or belongs to another run."""
