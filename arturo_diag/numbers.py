"""Number formatting for every text arturo-diag writes (reports, findings, study reports).

The one owner of how a number reads: :func:`num` (3 significant digits, plain notation in
1e-3..1e5), :func:`pct` (a share as a percentage), :func:`count` (thousands separators),
:func:`sig` (Python's general format, ``"6.03e+03"``), :func:`fixed` (fixed decimals), each giving
a placeholder for an undefined value (``"n/a"`` unless told). Below every part of the package:
imports nothing of it, so ``diagnostics``, ``report`` and ``study`` all can use it.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["NA", "count", "distinguishing_digits", "fixed", "is_number", "num", "pct", "sig"]

NA = "n/a"


def is_number(x: Any) -> bool:
    """A finite real number (not a bool)."""
    if isinstance(x, bool) or x is None:
        return False
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def num(x: Any, digits: int = 3) -> str:
    """``x`` to ``digits`` significant digits; plain notation for 1e-3 <= |x| < 1e5, else ``1.23e-05``.

    ``num(6030.85) == "6030"``, ``num(0.08871) == "0.0887"``, ``num(7.0) == "7"``,
    ``num(1.5e-6) == "1.5e-06"``, ``num(nan) == "n/a"``.
    """
    if not is_number(x):
        return NA
    x = float(x)
    if x == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(x)))
    rounded = round(x, digits - 1 - magnitude)
    if rounded != 0 and math.floor(math.log10(abs(rounded))) > magnitude:  # 9.996 -> 10.0
        magnitude += 1
    if -3 <= magnitude < 5:
        decimals = digits - 1 - magnitude
        text = f"{round(x, decimals):.{max(decimals, 0)}f}"
        if "." in text:
            text = text.rstrip("0").rstrip(".")
        return "0" if text == "-0" else text
    mantissa, exponent = f"{x:.{digits - 1}e}".split("e")
    if "." in mantissa:
        mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{exponent}"


def pct(x: Any, digits: int = 3) -> str:
    """A share in [0, 1] as a percentage with up to 3 significant digits (``"62.9%"``, ``"<0.1%"``)."""
    if not is_number(x):
        return NA
    x = float(x)
    if x == 0:
        return "0%"
    if x == 1:
        return "100%"
    if 0 < x < 0.001:
        return "<0.1%"
    if 0.999 < x < 1:
        return ">99.9%"
    return f"{num(100 * x, digits)}%"


def distinguishing_digits(values: Any, fmt: Any = num, digits: int = 3, most: int = 6) -> int:
    """The fewest significant digits (from ``digits`` up to ``most``) at which ``fmt`` tells apart
    every two of ``values`` that differ, so that "7.2214 vs 7.2209" never reads "7.22 vs 7.22"."""
    finite = sorted({float(v) for v in values if is_number(v)})
    for d in range(digits, most + 1):
        shown = [fmt(v, d) for v in finite]
        if len(set(shown)) == len(shown):
            return d
    return most


def count(n: Any) -> str:
    """A count with thousands separators (``"3,658"``); ``n/a`` if undefined."""
    if not is_number(n):
        return NA
    value = float(n)
    return f"{int(value):,}" if value.is_integer() else num(value)


def sig(x: Any, digits: int = 3, undefined: str = NA) -> str:
    """``x`` in Python's general format to ``digits`` significant digits (``sig(6030.85) == "6.03e+03"``,
    ``sig(0.08871) == "0.0887"``); ``undefined`` if ``x`` is not a finite number."""
    return f"{float(x):.{digits}g}" if is_number(x) else undefined


def fixed(x: Any, decimals: int = 2, undefined: str = NA) -> str:
    """``x`` with ``decimals`` decimals (``fixed(92.345) == "92.34"``); ``undefined`` if not a finite number."""
    return f"{float(x):.{decimals}f}" if is_number(x) else undefined
