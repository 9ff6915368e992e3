"""TOML for the whole package: the one ``tomllib`` import (``tomli`` before Python 3.11) and the one
writer of TOML literals, :func:`toml_value`, used by every file arturo-diag writes (a run's
``config.toml``, a study's ``study.toml``), so that what is written parses back to the same values.
"""

from __future__ import annotations

import sys
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["toml_value", "tomllib"]

# Characters a TOML basic string may not hold literally (all controls but tab, and DEL): escaped.
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _string(text: str) -> str:
    out = []
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def toml_value(value: Any) -> str:
    """The TOML literal of ``value``: a bool, int, float, string, or a list/tuple of them.

    Floats are written by ``repr`` (shortest round-trip text; ``nan``, ``inf``, ``-inf`` are TOML's
    own spellings); any other object is written as the string ``str(value)``. ``None`` has no TOML
    literal and raises ``TypeError``: callers skip unset fields or write them as comments.
    """
    if value is None:
        raise TypeError("None has no TOML literal: skip the key or write it as a comment")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        return repr(float(value))
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return _string(str(value))
