"""Helpers the quantities' findings share: numbers in words (3 significant digits, "undefined"),
shares as percentages, counts with their noun, nested lookups. The wording rules are those of
ARTURO.md, "Diagnostic quantities"; each quantity's module states its own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from arturo_diag.numbers import sig

__all__ = ["_FINDING_WORDS", "_count", "_get", "_is_number", "_num", "_pct"]

_FINDING_WORDS = {
    "relative_error": "relative error",
    "cosine": "cosine",
    "spearman": "Spearman correlation",
    "sign_agreement": "sign agreement",
    "log_ratio_abs_median": "median |log10(|a|/|h|)|",
}


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _num(x: Any) -> str:
    return sig(x, 3, undefined="undefined")


def _pct(x: Any) -> str:
    if not _is_number(x):
        return "an undefined share"
    if 0 < x < 0.01:
        return "<1%"
    if 0.99 < x < 1:
        return ">99%"
    return f"{100 * x:.0f}%"


def _count(n: Any, noun: str) -> str:
    """``1 step``, ``3 steps``, ``2.5 coordinates``."""
    if isinstance(n, float) and n.is_integer():
        n = int(n)
    return f"{n} {noun}" if n == 1 else f"{n if isinstance(n, int) else _num(n)} {noun}s"


def _get(mapping: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(mapping, Mapping):
            return None
        mapping = mapping.get(key)
    return mapping
