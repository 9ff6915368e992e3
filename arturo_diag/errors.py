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


class Diverged(ArturoDiagError):
    """A run went non-finite: the first NaN/inf loss, gradient, weight or optimizer state.

    Raised by :meth:`arturo_diag.diagnostics.monitor.Monitor.step` at the step it appears, after the
    record was marked ``"diverged"``. ``info`` is what ``record.json``'s ``"divergence"`` holds:
    ``step``, ``quantity`` (``"loss"``, ``"gradient"``, ``"weight"``, an optimizer state key such as
    ``"curvature"`` or ``"filter_cov_aa"``, or ``"eta"``), ``parameter`` and ``layer`` (None for the
    loss and eta), ``count`` and ``numel`` (non-finite coordinates of that parameter, of how many),
    ``kind`` (``"nan"`` if any of them is NaN, else ``"inf"``) and ``message``. The message reads like
    ``non-finite gradient at step 15 in layer net.3 (net.3.weight: 12 of 640 coordinates NaN)``.
    The CLI exits with code 3 (not 2: the input was valid, the run was not).
    """

    def __init__(self, info: dict[str, Any]):
        self.info = dict(info)
        super().__init__(str(self.info.get("message", "the run diverged")))
