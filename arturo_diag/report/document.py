"""One intermediate structure for a report, written out as Markdown and as self-contained HTML.

A report is a list of blocks (:class:`Heading`, :class:`Paragraph`, :class:`Bullets`,
:class:`Table`, :class:`Image`); inline content is a tuple of spans ``(kind, text)`` with kind
``"text"``, ``"code"`` or ``"strong"``, so text taken from elsewhere (findings, layer names) is
never parsed as markup. :func:`to_markdown` and :func:`to_html` render the same blocks, so the two
files always carry the same content. The HTML embeds images as base64 ``data:`` URIs and carries
its CSS inline: it loads nothing from anywhere.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "Block",
    "Bullets",
    "Heading",
    "Image",
    "Inline",
    "Paragraph",
    "Table",
    "code",
    "inline",
    "strong",
    "text",
    "to_html",
    "to_markdown",
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


# ----------------------------------------------------------------------------------- markdown
_UNDERSCORE_AT_BOUNDARY = re.compile(r"(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])")
_UNDERSCORE_OPENER = re.compile(r"(?<![0-9A-Za-z])_(?=\S)")
_TAG_START = re.compile(r"<(?=[A-Za-z/!?])")
_ENTITY = re.compile(r"&(?=#?[0-9A-Za-z]+;)")
_LINE_START_MARKER = re.compile(r"^(\s*)([-+*#>]|\d+[.)])(?=\s|$)")


def _md_text(s: str, *, in_table: bool = False, stars: bool | None = None, underscores: bool | None = None) -> str:
    """Escape only what CommonMark would otherwise read as markup, so plain text stays verbatim.

    ``|a-h| <= 2 sqrt(P_aa)``, ``h_(t-k)`` and ``eta*`` are left as they are; ``*`` when there are
    two (they could pair into emphasis), word-boundary underscores when one could open emphasis,
    backslashes, backticks, tag-like ``<x``, entities, link brackets and, in tables, ``|`` are
    backslash-escaped. ``stars``/``underscores`` decide those two for a whole line of spans
    (default: from ``s`` alone).
    """
    if stars is None:
        stars = s.count("*") >= 2
    if underscores is None:
        underscores = bool(_UNDERSCORE_OPENER.search(s))
    s = s.replace("\\", "\\\\").replace("`", "\\`")
    if stars:
        s = s.replace("*", "\\*")
    if underscores:
        s = _UNDERSCORE_AT_BOUNDARY.sub(r"\\_", s)
    s = _TAG_START.sub(r"\\<", s)
    s = _ENTITY.sub(r"\\&", s)
    if "](" in s or "][" in s:
        s = s.replace("[", "\\[")
    if in_table:
        s = s.replace("|", "\\|")
    return s.replace("\n", " ")


def _md_inline(content: Inline, *, in_table: bool = False) -> str:
    # emphasis can pair across spans, so the escaping decisions are taken on the whole line
    plain = "".join(value for kind, value in content if kind != "code")
    options = {
        "in_table": in_table,
        "stars": plain.count("*") >= 2,
        "underscores": bool(_UNDERSCORE_OPENER.search(plain)),
    }
    parts = []
    for kind, value in content:
        if kind == "code":
            ticks = "``" if "`" in value else "`"
            padded = f" {value} " if ticks == "``" else value
            parts.append(f"{ticks}{padded}{ticks}")
        elif kind == "strong":
            parts.append(f"**{_md_text(value, **options)}**")
        else:
            parts.append(_md_text(value, **options))
    return "".join(parts)


def _md_block_start(s: str) -> str:
    """Keep a paragraph or list item from starting with a list/heading/quote marker."""
    return _LINE_START_MARKER.sub(lambda m: m.group(1) + "\\" + m.group(2), s, count=1)


def _alignments(table: Table) -> tuple[str, ...]:
    n = len(table.header)
    return tuple(table.align[i] if i < len(table.align) else ("l" if i == 0 else "r") for i in range(n))


def to_markdown(blocks: Iterable[Block]) -> str:
    """The blocks as CommonMark with pipe tables (GitHub-flavoured); ends with one newline."""
    out: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            out.append("#" * block.level + " " + _md_inline(block.content))
        elif isinstance(block, Paragraph):
            out.append(_md_block_start(_md_inline(block.content)))
        elif isinstance(block, Bullets):
            out.append("\n".join("- " + _md_block_start(_md_inline(item)) for item in block.items))
        elif isinstance(block, Table):
            lines = []
            if block.caption:
                lines.append(_md_block_start(_md_text(block.caption)))
                lines.append("")
            cells = [_md_text(h, in_table=True) for h in block.header]
            lines.append("| " + " | ".join(cells) + " |")
            lines.append("|" + "|".join(":---" if a == "l" else "---:" for a in _alignments(block)) + "|")
            for row in block.rows:
                lines.append("| " + " | ".join(_md_text(c, in_table=True) for c in row) + " |")
            out.append("\n".join(lines))
        elif isinstance(block, Image):
            alt = _md_text(block.alt).replace("[", "\\[").replace("]", "\\]")
            out.append(f"![{alt}]({block.path})\n\n" + _md_block_start(_md_inline(block.caption)))
        else:  # pragma: no cover - a programming error
            raise TypeError(f"unknown block {type(block).__name__}")
    return "\n\n".join(out) + "\n"


# --------------------------------------------------------------------------------------- html
_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1f2328;
       margin: 0; background: #fff; line-height: 1.5; font-size: 15px; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 32px 64px; }
h1 { font-size: 1.6em; border-bottom: 1px solid #d0d7de; padding-bottom: .3em; word-break: break-all; }
h2 { font-size: 1.3em; border-bottom: 1px solid #d0d7de; padding-bottom: .2em; margin-top: 1.8em; }
h3 { font-size: 1.1em; margin-top: 1.4em; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .9em;
       background: #f6f8fa; padding: .1em .3em; border-radius: 4px; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: .92em; }
th, td { border: 1px solid #d0d7de; padding: 3px 9px; }
th { background: #f6f8fa; }
td.r, th.r { text-align: right; font-variant-numeric: tabular-nums; }
td.l, th.l { text-align: left; }
tr:nth-child(even) td { background: #fafbfc; }
p.caption { color: #57606a; margin-top: 0; }
p.table-caption { margin-bottom: .2em; }
li.warning { color: #7d4e00; }
p.note { color: #57606a; }
figure { margin: 1.2em 0 2em; }
figure img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
figcaption { color: #57606a; font-size: .92em; }
"""


def _html_inline(content: Inline) -> str:
    parts = []
    for kind, value in content:
        escaped = html.escape(value, quote=True)
        if kind == "code":
            parts.append(f"<code>{escaped}</code>")
        elif kind == "strong":
            parts.append(f"<strong>{escaped}</strong>")
        else:
            parts.append(escaped)
    return "".join(parts)


def _slug(content: Inline) -> str:
    words = re.sub(r"[^0-9a-z]+", "-", "".join(value for _, value in content).lower()).strip("-")
    return words or "section"


def to_html(blocks: Iterable[Block], *, title: str) -> str:
    """The blocks as one self-contained HTML page (inline CSS, images as base64 data URIs)."""
    body: list[str] = []
    used: set[str] = set()
    for block in blocks:
        if isinstance(block, Heading):
            anchor = block.anchor or _slug(block.content)
            base, n = anchor, 2
            while anchor in used:
                anchor, n = f"{base}-{n}", n + 1
            used.add(anchor)
            level = min(max(block.level, 1), 6)
            body.append(f'<h{level} id="{anchor}">{_html_inline(block.content)}</h{level}>')
        elif isinstance(block, Paragraph):
            css = f' class="{block.css_class}"' if block.css_class else ""
            body.append(f"<p{css}>{_html_inline(block.content)}</p>")
        elif isinstance(block, Bullets):
            items = []
            for i, item in enumerate(block.items):
                css = block.css_classes[i] if i < len(block.css_classes) else ""
                attr = f' class="{css}"' if css else ""
                items.append(f"<li{attr}>{_html_inline(item)}</li>")
            body.append("<ul>\n" + "\n".join(items) + "\n</ul>")
        elif isinstance(block, Table):
            align = _alignments(block)
            rows = []
            if block.caption:
                body.append(f'<p class="table-caption">{html.escape(block.caption)}</p>')
            rows.append(
                "<tr>"
                + "".join(f'<th class="{a}">{html.escape(h)}</th>' for h, a in zip(block.header, align))
                + "</tr>"
            )
            for row in block.rows:
                rows.append(
                    "<tr>" + "".join(f'<td class="{a}">{html.escape(c)}</td>' for c, a in zip(row, align)) + "</tr>"
                )
            body.append(
                "<table>\n<thead>\n" + rows[0] + "\n</thead>\n<tbody>\n" + "\n".join(rows[1:]) + "\n</tbody>\n</table>"
            )
        elif isinstance(block, Image):
            data = base64.b64encode(block.png).decode("ascii")
            body.append(
                f'<figure>\n<img src="data:image/png;base64,{data}" alt="{html.escape(block.alt)}">\n'
                f"<figcaption>{html.escape(block.path)}: {_html_inline(block.caption)}</figcaption>\n"
                "</figure>"
            )
        else:  # pragma: no cover - a programming error
            raise TypeError(f"unknown block {type(block).__name__}")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
        + "\n".join(body)
        + "\n</main>\n</body>\n</html>\n"
    )
