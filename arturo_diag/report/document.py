"""One intermediate structure for every report (a run's, a study's), and its three renderers.

A report is a list of blocks (:class:`Heading`, :class:`Paragraph`, :class:`Bullets`,
:class:`Table`, :class:`Image`; defined in :mod:`arturo_diag.report.blocks`, re-exported here);
inline content is a tuple of spans ``(kind, text)`` with kind ``"text"``, ``"code"`` or
``"strong"``, so text taken from elsewhere (findings, layer names) is never parsed as markup. :func:`to_markdown`, :func:`to_html` and :func:`to_json` render the same
blocks, so the files always carry the same content; :func:`from_json` reads the JSON form back.
The HTML has a table of contents (the level-2 headings, level-3 nested), embeds images as base64
``data:`` URIs and carries its CSS inline: it loads nothing from anywhere and runs no script.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from arturo_diag.report.blocks import (
    Block,
    Bullets,
    Heading,
    Image,
    Inline,
    Paragraph,
    Table,
    code,
    inline,
    strong,
    text,
)

__all__ = [
    "DOCUMENT_FORMAT",
    "Block",
    "Bullets",
    "Heading",
    "Image",
    "Inline",
    "Paragraph",
    "Table",
    "code",
    "from_json",
    "inline",
    "slug",
    "strong",
    "text",
    "to_html",
    "to_json",
    "to_markdown",
]

DOCUMENT_FORMAT = "arturo-diag-document/1"


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


# ------------------------------------------------------------------------------------- anchors
def slug(s: str) -> str:
    """``s`` as an anchor: lower-case letters and digits, runs of anything else as one ``-``."""
    return re.sub(r"[^0-9a-z]+", "-", str(s).lower()).strip("-") or "section"


def _anchors(blocks: Sequence[Block]) -> dict[int, str]:
    """Block index -> the anchor of each heading: its own or the slug of its text; unique in the
    document (a repeated one gets ``-2``, ``-3``, ... in document order)."""
    out: dict[int, str] = {}
    used: set[str] = set()
    for i, block in enumerate(blocks):
        if isinstance(block, Heading):
            base = block.anchor or slug("".join(value for _, value in block.content))
            anchor, n = base, 2
            while anchor in used:
                anchor, n = f"{base}-{n}", n + 1
            used.add(anchor)
            out[i] = anchor
    return out


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
nav.toc { background: #f6f8fa; border: 1px solid #d0d7de; border-radius: 6px; padding: 6px 20px;
          margin: 1em 0 1.6em; font-size: .92em; }
nav.toc p.toc-title { font-weight: 600; margin: .3em 0; }
nav.toc ul { margin: .1em 0 .3em; padding-left: 1.3em; }
nav.toc a { color: #0969da; text-decoration: none; }
nav.toc a:hover { text-decoration: underline; }
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


def _html_table(block: Table) -> str:
    align = _alignments(block)
    caption = f'<p class="table-caption">{html.escape(block.caption)}</p>\n' if block.caption else ""
    header = "<tr>" + "".join(f'<th class="{a}">{html.escape(h)}</th>' for h, a in zip(block.header, align)) + "</tr>"
    rows = [
        "<tr>" + "".join(f'<td class="{a}">{html.escape(c)}</td>' for c, a in zip(row, align)) + "</tr>"
        for row in block.rows
    ]
    return f"{caption}<table>\n<thead>\n{header}\n</thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody>\n</table>"


def _html_block(block: Block, anchor: str | None) -> str:
    if isinstance(block, Heading):
        level = min(max(block.level, 1), 6)
        return f'<h{level} id="{html.escape(anchor or "", quote=True)}">{_html_inline(block.content)}</h{level}>'
    if isinstance(block, Paragraph):
        css = f' class="{html.escape(block.css_class, quote=True)}"' if block.css_class else ""
        return f"<p{css}>{_html_inline(block.content)}</p>"
    if isinstance(block, Bullets):
        items = []
        for i, item in enumerate(block.items):
            css = block.css_classes[i] if i < len(block.css_classes) else ""
            attr = f' class="{html.escape(css, quote=True)}"' if css else ""
            items.append(f"<li{attr}>{_html_inline(item)}</li>")
        return "<ul>\n" + "\n".join(items) + "\n</ul>"
    if isinstance(block, Table):
        return _html_table(block)
    if isinstance(block, Image):
        data = base64.b64encode(block.png).decode("ascii")
        return (
            f'<figure>\n<img src="data:image/png;base64,{data}" alt="{html.escape(block.alt)}">\n'
            f"<figcaption>{html.escape(block.path)}: {_html_inline(block.caption)}</figcaption>\n"
            "</figure>"
        )
    raise TypeError(f"unknown block {type(block).__name__}")  # pragma: no cover - a programming error


def _toc_position(blocks: Sequence[Block]) -> int:
    """After the first level-1 heading and the paragraphs right after it (the top when there is none)."""
    first = next((i for i, b in enumerate(blocks) if isinstance(b, Heading) and b.level == 1), None)
    if first is None:
        return 0
    position = first + 1
    while position < len(blocks) and isinstance(blocks[position], Paragraph):
        position += 1
    return position


def _html_toc(blocks: Sequence[Block], anchors: dict[int, str]) -> str:
    """``<nav class="toc">``: every level-2 heading, the level-3 ones nested under the level 2 above
    them (those before any level 2 at the top level); "" when there is no level-2 heading."""
    if not any(isinstance(b, Heading) and b.level == 2 for b in blocks):
        return ""
    entries: list[tuple[str, list[str]]] = []  # (level-2 item, its level-3 items)
    for i, block in enumerate(blocks):
        if not isinstance(block, Heading) or block.level not in (2, 3):
            continue
        link = f'<a href="#{html.escape(anchors[i], quote=True)}">{_html_inline(block.content)}</a>'
        if block.level == 3 and entries:
            entries[-1][1].append(f"<li>{link}</li>")
        else:
            entries.append((link, []))
    items = [
        f"<li>{link}" + ("\n<ul>\n" + "\n".join(children) + "\n</ul>\n" if children else "") + "</li>"
        for link, children in entries
    ]
    return '<nav class="toc">\n<p class="toc-title">Contents</p>\n<ul>\n' + "\n".join(items) + "\n</ul>\n</nav>"


def to_html(blocks: Iterable[Block], *, title: str) -> str:
    """The blocks as one self-contained HTML page (inline CSS, images as base64 data URIs, a table of
    contents after the title; no script, nothing loaded)."""
    blocks = list(blocks)
    anchors = _anchors(blocks)
    body = [_html_block(block, anchors.get(i)) for i, block in enumerate(blocks)]
    toc = _html_toc(blocks, anchors)
    if toc:
        body.insert(_toc_position(blocks), toc)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
        + "\n".join(body)
        + "\n</main>\n</body>\n</html>\n"
    )


# --------------------------------------------------------------------------------------- json
def _json_spans(content: Inline) -> list[dict[str, str]]:
    return [{"kind": kind, "text": value} for kind, value in content]


def _json_block(block: Block, anchor: str | None) -> dict[str, Any]:
    if isinstance(block, Heading):
        return {"type": "heading", "level": block.level, "anchor": anchor, "content": _json_spans(block.content)}
    if isinstance(block, Paragraph):
        return {"type": "paragraph", "css_class": block.css_class, "content": _json_spans(block.content)}
    if isinstance(block, Bullets):
        classes = [block.css_classes[i] if i < len(block.css_classes) else "" for i in range(len(block.items))]
        return {
            "type": "bullets",
            "items": [{"css_class": c, "content": _json_spans(item)} for c, item in zip(classes, block.items)],
        }
    if isinstance(block, Table):
        return {
            "type": "table",
            "caption": block.caption,
            "header": list(block.header),
            "align": list(_alignments(block)),
            "rows": [list(row) for row in block.rows],
        }
    if isinstance(block, Image):  # the PNG stays in its file (``path``); the JSON carries no bytes
        return {"type": "image", "path": block.path, "alt": block.alt, "caption": _json_spans(block.caption)}
    raise TypeError(f"unknown block {type(block).__name__}")  # pragma: no cover - a programming error


def to_json(blocks: Iterable[Block]) -> dict[str, Any]:
    """The blocks as one JSON-serialisable dict ``{"format": DOCUMENT_FORMAT, "blocks": [...]}``.

    Each block is ``{"type": ...}`` with: heading ``level``, ``anchor`` (the HTML id) and
    ``content``; paragraph ``content``, ``css_class``; bullets ``items`` (``content``,
    ``css_class``); table ``caption``, ``header``, ``align``, ``rows``; image ``path``, ``alt``,
    ``caption`` (no PNG bytes). Inline content is a list of ``{"kind", "text"}`` spans.
    """
    blocks = list(blocks)
    anchors = _anchors(blocks)
    return {"format": DOCUMENT_FORMAT, "blocks": [_json_block(block, anchors.get(i)) for i, block in enumerate(blocks)]}


def _spans(items: Sequence[Mapping[str, str]]) -> Inline:
    return tuple((item["kind"], item["text"]) for item in items)


def from_json(document: Mapping[str, Any]) -> list[Block]:
    """The blocks of a :func:`to_json` dict (images without their PNG bytes).

    Raises:
        ValueError: not a document of :data:`DOCUMENT_FORMAT`, or a block of unknown type.
    """
    if document.get("format") != DOCUMENT_FORMAT:
        raise ValueError(f"not a {DOCUMENT_FORMAT} document (format {document.get('format')!r})")
    out: list[Block] = []
    for b in document["blocks"]:
        kind = b.get("type")
        if kind == "heading":
            out.append(Heading(int(b["level"]), _spans(b["content"]), anchor=b.get("anchor") or ""))
        elif kind == "paragraph":
            out.append(Paragraph(_spans(b["content"]), css_class=b.get("css_class", "")))
        elif kind == "bullets":
            items = b["items"]
            out.append(
                Bullets(tuple(_spans(i["content"]) for i in items), tuple(i.get("css_class", "") for i in items))
            )
        elif kind == "table":
            rows = tuple(tuple(row) for row in b["rows"])
            out.append(Table(tuple(b["header"]), rows, tuple(b.get("align", ())), b.get("caption", "")))
        elif kind == "image":
            out.append(Image(b["path"], b["alt"], _spans(b["caption"])))
        else:
            raise ValueError(f"unknown block type {kind!r}")
    return out
