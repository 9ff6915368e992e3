"""The blocks of a report document: what :mod:`arturo_diag.report.document` renders.

A report (a run's, a study's) is a list of blocks (:class:`Heading`, :class:`Paragraph`,
:class:`Bullets`, :class:`Table`, :class:`Image`); inline content is a tuple of spans
``(kind, text)`` with kind ``"text"``, ``"code"`` or ``"strong"``, so text taken from elsewhere
(findings, layer names) is never parsed as markup. Import them from ``report.document``, which
re-exports them beside the renderers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = [
    "Block",
    "Bullets",
    "Heading",
    "Image",
    "Inline",
    "InlineLike",
    "Paragraph",
    "Span",
    "Table",
    "code",
    "inline",
    "strong",
    "text",
]

Span = tuple[str, str]
Inline = tuple[Span, ...]
InlineLike = str | Span | Sequence[Span]


def text(s: str) -> Span:
    """Plain text (escaped wherever it is written)."""
    return ("text", str(s))


def code(s: str) -> Span:
    """A code span (file names, field names)."""
    return ("code", str(s))


def strong(s: str) -> Span:
    """Bold text."""
    return ("strong", str(s))


def inline(content: InlineLike) -> Inline:
    """Normalise a str, one span or a sequence of spans to a tuple of spans."""
    if isinstance(content, str):
        return (text(content),)
    if isinstance(content, tuple) and len(content) == 2 and all(isinstance(c, str) for c in content):
        return (content,)  # type: ignore[return-value]
    return tuple(content)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Heading:
    level: int
    content: Inline
    anchor: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "content", inline(self.content))


@dataclass(frozen=True)
class Paragraph:
    content: Inline
    css_class: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "content", inline(self.content))


@dataclass(frozen=True)
class Bullets:
    items: tuple[Inline, ...]
    css_classes: tuple[str, ...] = ()  # one per item ("" for none), e.g. "warning"

    def __post_init__(self) -> None:
        object.__setattr__(self, "items", tuple(inline(item) for item in self.items))


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    align: tuple[str, ...] = ()  # "l" or "r" per column (default: first left, others right)
    caption: str = ""


@dataclass(frozen=True)
class Image:
    path: str  # relative to the report, e.g. "figures/agreement.png"
    alt: str
    caption: Inline
    png: bytes = field(default=b"", repr=False)  # embedded in the HTML

    def __post_init__(self) -> None:
        object.__setattr__(self, "caption", inline(self.caption))


Block = Heading | Paragraph | Bullets | Table | Image
