"""Number formatting for reports (owned by :mod:`arturo_diag.numbers`, re-exported here): 3 significant
digits, percentages for shares, "n/a" for undefined; and :func:`get` for nested metrics.

Every number in ``report.md`` / ``report.html`` goes through these functions, so the same metric
always reads the same way and a re-rendered report is byte-identical to the first.
"""

from __future__ import annotations

from typing import Any

from arturo_diag.numbers import NA, count, distinguishing_digits, is_number, num, pct

__all__ = ["NA", "is_number", "num", "pct", "count", "get", "distinguishing_digits", "plural", "yes_no"]


def get(mapping: Any, *keys: Any) -> Any:
    """``mapping[k1][k2]...``, or None where a level is missing or not a mapping."""
    for key in keys:
        if isinstance(mapping, dict):
            mapping = mapping.get(key)
        elif isinstance(mapping, (list, tuple)) and isinstance(key, int) and -len(mapping) <= key < len(mapping):
            mapping = mapping[key]
        else:
            return None
    return mapping


def plural(n: Any, noun: str) -> str:
    """``1 step``, ``3 steps`` (the count formatted by :func:`count`)."""
    return f"{count(n)} {noun}" + ("" if is_number(n) and float(n) == 1 else "s")


def yes_no(value: Any) -> str:
    """``yes`` / ``no`` for True / False, ``n/a`` for anything else."""
    return "yes" if value is True else "no" if value is False else NA
