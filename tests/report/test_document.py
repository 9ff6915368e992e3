"""The report engine's renderers on small documents: the HTML table of contents, the JSON form."""

import json
import re
from html.parser import HTMLParser

import pytest

from arturo_diag.report.document import (
    DOCUMENT_FORMAT,
    Bullets,
    Heading,
    Image,
    Paragraph,
    Table,
    code,
    from_json,
    strong,
    text,
    to_html,
    to_json,
    to_markdown,
)
from arturo_diag.report.render import render_report


class _Page(HTMLParser):
    """The ids of a page, the links of its ``nav.toc`` (in order) and the headings (level, id)."""

    def __init__(self):
        super().__init__()
        self.ids, self.toc_links, self.headings, self.navs = [], [], [], 0
        self._in_toc = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.append(attrs["id"])
        if re.fullmatch(r"h[1-6]", tag):
            self.headings.append((int(tag[1]), attrs.get("id")))
        if tag == "nav" and attrs.get("class") == "toc":
            self._in_toc, self.navs = True, self.navs + 1
        if tag == "a" and self._in_toc:
            self.toc_links.append(attrs["href"])

    def handle_endtag(self, tag):
        if tag == "nav":
            self._in_toc = False


def parse(page: str) -> _Page:
    parser = _Page()
    parser.feed(page)
    return parser


def assert_toc_resolves(page: str) -> _Page:
    """Every TOC link points to an id of the page; ids are unique; the TOC lists every level-2 and
    level-3 heading in document order, and the page loads and runs nothing."""
    parsed = parse(page)
    assert parsed.navs == 1
    assert len(parsed.ids) == len(set(parsed.ids))
    assert all(link.startswith("#") for link in parsed.toc_links)
    assert {link[1:] for link in parsed.toc_links} <= set(parsed.ids)
    assert [link[1:] for link in parsed.toc_links] == [i for level, i in parsed.headings if level in (2, 3)]
    assert "<script" not in page and "<link" not in page and not re.search(r'(src|href)="(?!data:|#)', page)
    return parsed


DOCUMENT = [
    Heading(1, (text("Run "), code("/tmp/a_b"))),
    Paragraph("first paragraph"),
    Paragraph((text("second, "), strong("bold"), text(" and *stars* and _underscores_"))),
    Heading(2, "Findings"),
    Bullets([(strong("Warning:"), text(" a <b>warning</b>")), "plain | pipe"], ("warning", "")),
    Heading(2, "Setup a"),
    Heading(3, "Test accuracy"),
    Table(("variant", "acc (%)"), (("faithful", "92.94"), ("x|y", "n/a")), align=("l", "r"), caption="a caption"),
    Heading(3, "Test accuracy"),  # the same text twice: a second, distinct anchor
    Heading(2, "Setup b", anchor="setup-b-explicit"),
    Heading(3, (text("Figures of "), code("b")), anchor="figures-b"),
    Image("figures/b.png", alt="b figure", caption=(text("A caption with "), code("code"))),
    Heading(4, "not in the contents"),
    Heading(2, "Setup a"),  # a repeated level-2 heading
]


def test_html_table_of_contents_links_resolve_to_the_headings():
    page = to_html(DOCUMENT, title="doc")
    parsed = assert_toc_resolves(page)
    assert parsed.toc_links == [
        "#findings",
        "#setup-a",
        "#test-accuracy",
        "#test-accuracy-2",
        "#setup-b-explicit",
        "#figures-b",
        "#setup-a-2",
    ]
    # after the title and the paragraphs right after it, before the first section
    toc, title, second, findings = (
        page.index('<nav class="toc">'),
        page.index("<h1 "),
        page.index("second, "),
        page.index('<h2 id="findings">'),
    )
    assert title < second < toc < findings
    # level 3 nested in the level 2 above it
    nav = page[toc : page.index("</nav>")]
    assert '<li><a href="#setup-a">Setup a</a>\n<ul>\n<li><a href="#test-accuracy">' in nav
    assert '<a href="#figures-b">Figures of <code>b</code></a>' in nav and "not in the contents" not in nav
    assert "<title>doc</title>" in page and "<style>" in page


def test_no_table_of_contents_without_level_2_headings():
    page = to_html([Heading(1, "Only a title"), Paragraph("text")], title="t")
    assert "<nav" not in page
    assert to_html([Heading(2, "A"), Heading(2, "A")], title="t").count('href="#a') == 2  # no h1: TOC at the top


def test_json_round_trips_to_the_same_document():
    document = to_json(DOCUMENT)
    assert document["format"] == DOCUMENT_FORMAT == "arturo-diag-document/1"
    again = json.loads(json.dumps(document))  # JSON-serialisable as it is
    assert again == document
    blocks = from_json(again)
    assert to_markdown(blocks) == to_markdown(DOCUMENT)
    assert to_html(blocks, title="doc") == to_html(DOCUMENT, title="doc")  # the image has no PNG bytes here
    assert to_json(blocks) == document

    types = [b["type"] for b in document["blocks"]]
    assert types == ["heading", "paragraph", "paragraph", "heading", "bullets", "heading", "heading", "table"] + [
        "heading",
        "heading",
        "heading",
        "image",
        "heading",
        "heading",
    ]
    headings = [b for b in document["blocks"] if b["type"] == "heading"]
    assert [h["anchor"] for h in headings] == parse(to_html(DOCUMENT, title="t")).ids  # the HTML ids
    assert [h["level"] for h in headings] == [1, 2, 2, 3, 3, 2, 3, 4, 2]
    assert document["blocks"][0]["content"] == [{"kind": "text", "text": "Run "}, {"kind": "code", "text": "/tmp/a_b"}]
    bullets = document["blocks"][4]
    assert [i["css_class"] for i in bullets["items"]] == ["warning", ""]
    assert bullets["items"][0]["content"][1] == {"kind": "text", "text": " a <b>warning</b>"}  # raw, not escaped
    table = document["blocks"][7]
    assert table["header"] == ["variant", "acc (%)"] and table["rows"] == [["faithful", "92.94"], ["x|y", "n/a"]]
    assert table["caption"] == "a caption" and table["align"] == ["l", "r"]


def test_json_carries_no_image_bytes():
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    document = to_json([Image("figures/a.png", alt="a", caption="cap", png=png)])
    assert document["blocks"] == [
        {"type": "image", "path": "figures/a.png", "alt": "a", "caption": [{"kind": "text", "text": "cap"}]}
    ]
    assert "base64" not in json.dumps(document)
    with pytest.raises(ValueError, match="arturo-diag-document/1"):
        from_json({"format": "something else", "blocks": []})
    with pytest.raises(ValueError, match="unknown block type"):
        from_json({"format": DOCUMENT_FORMAT, "blocks": [{"type": "video"}]})


def test_run_report_html_table_of_contents(shared_record_dir):
    result = render_report(shared_record_dir)
    page = result.html.read_text(encoding="utf-8")
    parsed = assert_toc_resolves(page)
    assert parsed.toc_links[:2] == ["#settings", "#findings"]
    markdown = result.markdown.read_text(encoding="utf-8")
    level2 = re.findall(r"^## (.+)$", markdown, flags=re.M)
    assert len([i for level, i in parsed.headings if level == 2]) == len(level2)
