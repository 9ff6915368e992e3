"""The diagnostic quantities, one module per topic, and their registry :data:`QUANTITIES`.

Each module defines one :class:`~arturo_diag.quantities.base.Quantity` (``QUANTITY``): what it
needs from the record, how it is computed, its findings, its report section and figures, and how
a study aggregates it. The analysis, the report and the study iterate :data:`QUANTITIES`, in this
order (the order of ``metrics.json``, of the findings and of the report's sections). To add a
quantity: write ``quantities/<topic>.py`` with its ``QUANTITY`` and add it below
(``docs/architecture.md``).

Read the registry as ``quantities.QUANTITIES`` at call time (not ``from ... import QUANTITIES``),
so a registered quantity (e.g. a test's) is seen everywhere.
"""

from __future__ import annotations

from arturo_diag.quantities import (
    agreement,
    calibration,
    gauges,
    health,
    lag,
    movement,
    noise,
    run,
    spectrum,
    training,
    trust_region,
)
from arturo_diag.quantities.base import Quantity

__all__ = ["QUANTITIES", "Quantity", "figures", "quantity"]

#: The registry: one entry per topic, in report order.
QUANTITIES: tuple[Quantity, ...] = (
    run.QUANTITY,
    agreement.QUANTITY,
    movement.QUANTITY,
    calibration.QUANTITY,
    lag.QUANTITY,
    trust_region.QUANTITY,
    health.QUANTITY,
    gauges.QUANTITY,
    noise.QUANTITY,
    spectrum.QUANTITY,
    training.QUANTITY,
)


def quantity(name: str) -> Quantity:
    """The registered quantity called ``name`` (KeyError if none)."""
    for entry in QUANTITIES:
        if entry.name == name:
            return entry
    raise KeyError(name)


def figures() -> tuple:
    """Every registered quantity's figures (:class:`~arturo_diag.report.figures.common.FigureSpec`), in report order."""
    return tuple(spec for entry in QUANTITIES for spec in entry.figures)
