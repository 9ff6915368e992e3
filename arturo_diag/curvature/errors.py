"""Errors of the curvature package.

Both belong to the project's one exception family (:class:`arturo_diag.errors.ArturoDiagError`),
so the CLI turns them into a one-line message and exit code 2.
"""

from __future__ import annotations

from arturo_diag.errors import ArturoDiagError


class CurvatureError(ArturoDiagError, ValueError):
    """A curvature quantity cannot be computed for this model, loss or probe batch.

    The message says what is wrong (e.g. "no parameter requires grad", "empty probe batch",
    "targets have 7 rows but inputs have 8") and, where there is one, what to do instead.
    """


class GGNNotExactError(CurvatureError):
    """The "ggn" method cannot prove that diag(H) = diag(GGN) for this model and loss.

    Raised by ``exact_diagonal(..., method="ggn")``; ``method="auto"`` catches it and falls
    back to "hvp", recording the reason in the result's ``note``.
    """
