"""Argument checks shared by every curvature function, so that each argument is refused alike
everywhere (a bool is never a count: ``chunk_size=True`` is refused, not read as 1)."""

from __future__ import annotations

from typing import Any

import torch

from arturo_diag.curvature.errors import CurvatureError

__all__ = ["check_chunk_size", "check_count", "check_generator"]


def check_count(name: str, value: Any, least: int = 1) -> None:
    """``value`` is an int (not a bool) >= ``least``, else a CurvatureError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise CurvatureError(f"{name}: got {value!r}; allowed: an integer >= {least}")


def check_chunk_size(chunk_size: Any) -> None:
    """``chunk_size`` is None (size it by the memory budget) or a positive int (not a bool)."""
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise CurvatureError(f"chunk_size: got {chunk_size!r}; allowed: a positive integer or None")


def check_generator(generator: Any) -> None:
    """``generator`` is a ``torch.Generator`` or None."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise CurvatureError(f"generator: got {type(generator).__name__}; allowed: a torch.Generator or None")
