"""The output formats of every report, run or study: one renderer per format, one registry.

A report (``render_report``'s ``report.*``, ``render_study``'s ``study.*``) is a list of blocks
(:mod:`arturo_diag.report.blocks`); :func:`write_documents` writes it once per entry of
:data:`FORMATS`, as ``STEM + suffix``: ``report.md`` (CommonMark), ``report.html`` (one
self-contained page with a table of contents) and ``report.document.json`` (the same blocks as
JSON, format ``arturo-diag-document/1``, images by path; the data behind the numbers is in
``metrics.json`` / ``study.json``). To add a format: write its renderer ``(blocks, title) -> str``
and add one :class:`OutputFormat` line below; run and study reports both write it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from arturo_diag.diagnostics.io import atomic_write_text
from arturo_diag.report.blocks import Block
from arturo_diag.report.document import to_html, to_json, to_markdown

__all__ = ["FORMATS", "OutputFormat", "document_paths", "remove_documents", "write_documents"]


@dataclass(frozen=True)
class OutputFormat:
    """One output format: ``name`` (``"markdown"``), the file ``suffix`` after the stem, its renderer."""

    name: str
    suffix: str
    render: Callable[[Sequence[Block], str], str]


def _json_text(blocks: Sequence[Block], title: str) -> str:
    return json.dumps({"title": title, **to_json(blocks)}, indent=1, ensure_ascii=False) + "\n"


#: Every report is written in each of these, in this order (the Markdown file last: its presence
#: means the render finished).
FORMATS: tuple[OutputFormat, ...] = (
    OutputFormat("json", ".document.json", _json_text),
    OutputFormat("html", ".html", lambda blocks, title: to_html(blocks, title=title)),
    OutputFormat("markdown", ".md", lambda blocks, title: to_markdown(blocks)),
)


def document_paths(directory: Path, stem: str) -> dict[str, Path]:
    """Format name -> the path its file has for ``stem`` in ``directory`` (``report`` -> ``report.md``, ...)."""
    return {fmt.name: Path(directory) / f"{stem}{fmt.suffix}" for fmt in FORMATS}


def remove_documents(directory: Path, stem: str) -> None:
    """Remove ``stem``'s files of every format (before a render, so none of them can be taken for its)."""
    for path in document_paths(directory, stem).values():
        path.unlink(missing_ok=True)


def write_documents(directory: Path, stem: str, blocks: Sequence[Block], title: str) -> dict[str, Path]:
    """Write ``blocks`` in every format of :data:`FORMATS`, each atomically; returns :func:`document_paths`."""
    blocks = list(blocks)
    paths = document_paths(directory, stem)
    for fmt in FORMATS:
        atomic_write_text(paths[fmt.name], fmt.render(blocks, title))
    return paths
