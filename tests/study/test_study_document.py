"""A study's report is one document of the report engine's blocks, written by its renderers."""

import ast
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from arturo_diag.diagnostics.io import atomic_write_text
from arturo_diag.diagnostics.record import RecordWriter
from arturo_diag.report.document import Bullets, Heading, Image, from_json, to_html, to_json, to_markdown
from arturo_diag.study import expand_grid, render_study, study_from_mapping, study_to_toml
from arturo_diag.study import report as study_report
from arturo_diag.study.aggregate import collect, summarize
from arturo_diag.study.estimate_findings import report_findings
from arturo_diag.study.sections import study_document
from arturo_diag.training.config import config_to_toml

SEEDS = [0, 1, 2]
ACCURACY = {"faithful": [0.93, 0.92, 0.94], "fixed-eta:1.0": [0.90, 0.91, 0.90], "sgd": [0.91, 0.90, 0.92]}


def _write_run(spec, accuracy):
    """A complete two-epoch record ending at ``accuracy``; arTuRO runs get one snapshot (a = 1.1 h)."""
    writer = RecordWriter(
        spec.config.out, "compare", config_to_toml(spec.config.resolved()), {"fc.weight": (4, 3)}, overwrite=True
    )
    arturo = spec.variant.family == "arturo"
    eta = spec.config.fixed_eta if spec.config.fixed_eta is not None else 0.25
    for step in (1, 2, 3, 4):
        row = {"step": step, "epoch": 1 + (step > 2), "loss": 2.0 / step}
        if arturo:
            row.update(eta=eta, iterations=0 if spec.config.fixed_eta is not None else 1, kl_ratio=0.5, kl_bound=0.08)
        writer.add_step(row)
    for epoch, acc in ((1, accuracy - 0.1), (2, accuracy)):
        writer.add_epoch(
            {
                "epoch": epoch,
                "step": 2 * epoch,
                "train_loss": 1.0 / epoch,
                "train_accuracy": acc,
                "test_loss": 1.5 - acc,
                "test_accuracy": acc,
            }
        )
    if arturo:
        h = np.random.default_rng(spec.seed).uniform(0.5, 2.0, size=(4, 3))
        arrays = {"curvature": 1.1 * h, "filter_cov_aa": np.full(h.shape, 1e-4), "h_exact": h}
        writer.add_snapshot(4, {"kl_bound": 0.08, "eta": eta, "reference": "exact"}, {"fc.weight": arrays})
    writer.finish()


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    """Two setups (the same headings twice), a description with markup characters, one run missing."""
    root = tmp_path_factory.mktemp("doc") / "study"
    setup = {"model": "fashion_cnn", "dataset": "fashion_mnist", "epochs": 2}
    study = study_from_mapping(
        {
            "study": {"name": "doc", "seeds": SEEDS, "variants": list(ACCURACY), "description": "a *b* <c> d_e_"},
            "setups": {"one": setup, "two_b": setup},
        }
    )
    root.mkdir(parents=True)
    atomic_write_text(root / "study.toml", study_to_toml(study))
    for spec in expand_grid(study, root):
        if not (spec.setup == "two_b" and spec.variant.name == "sgd" and spec.seed == 2):
            _write_run(spec, ACCURACY[spec.variant.name][SEEDS.index(spec.seed)])
    render_study(root, figures=False)
    return root


def _blocks(study_dir):
    data = collect(study_dir)
    summary = summarize(data)
    return study_document(data, summary, report_findings(data, summary), {})


def test_study_files_are_the_report_engines_renderings(study_dir):
    blocks = _blocks(study_dir)
    assert (study_dir / "study.md").read_text(encoding="utf-8") == to_markdown(blocks)
    assert (study_dir / "study.html").read_text(encoding="utf-8") == to_html(blocks, title="Ablation study: doc")
    # the blocks are plain report blocks: the JSON renderer takes them as they are
    assert to_markdown(from_json(to_json(blocks))) == to_markdown(blocks)


def test_no_second_engine_in_the_study_report():
    source = Path(study_report.__file__).read_text(encoding="utf-8")
    tree = ast.parse(source)
    defined = {node.name for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    assigned = {
        t.id for node in ast.walk(tree) if isinstance(node, ast.Assign) for t in node.targets if hasattr(t, "id")
    }
    assert not defined & {"_markdown", "_html", "_md_cell", "_blocks"} and "_CSS" not in assigned
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not imported & {"html", "base64"}


def test_findings_keep_their_order_and_warnings_are_marked(study_dir):
    data = collect(study_dir)
    findings = report_findings(data, summarize(data))
    bullets = next(b for b in _blocks(study_dir) if isinstance(b, Bullets))
    assert [("".join(v for _, v in item)) for item in bullets.items] == [
        ("Warning: " if f["severity"] == "warning" else "") + f["text"] for f in findings
    ]
    assert bullets.css_classes == tuple("warning" if f["severity"] == "warning" else "" for f in findings)
    assert any(f["severity"] == "warning" for f in findings)  # the missing run, the baselines' source
    markdown = (study_dir / "study.md").read_text(encoding="utf-8")
    assert "- **Warning:** 1 of 18 runs are not finished" in markdown
    assert "\na \\*b\\* \\<c> d_e_\n" in markdown  # the description is text, not markup
    page = (study_dir / "study.html").read_text(encoding="utf-8")
    assert '<li class="warning"><strong>Warning:</strong> 1 of 18 runs are not finished' in page


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.links, self.headings, self._nav = [], [], [], False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.append(attrs["id"])
        if re.fullmatch(r"h[23]", tag):
            self.headings.append(attrs.get("id"))
        self._nav = self._nav or (tag == "nav" and attrs.get("class") == "toc")
        if tag == "a" and self._nav:
            self.links.append(attrs["href"])

    def handle_endtag(self, tag):
        self._nav = self._nav and tag != "nav"


def test_study_html_table_of_contents_links_resolve(study_dir):
    page = (study_dir / "study.html").read_text(encoding="utf-8")
    parsed = _Page()
    parsed.feed(page)
    assert len(parsed.ids) == len(set(parsed.ids))
    assert [link.removeprefix("#") for link in parsed.links] == parsed.headings  # every h2/h3, in order
    assert all(link.startswith("#") and link[1:] in parsed.ids for link in parsed.links)
    for setup in ("one", "two-b"):
        for part in ("paper-table", "final-numbers", "paired", "curvature"):
            assert f"#{setup}-{part}" in parsed.links
    assert {"#findings", "#variants", "#setup-one", "#setup-two-b", "#runs-not-in-the-statistics", "#files"} <= set(
        parsed.links
    )
    assert page.index("</nav>") < page.index('<h2 id="findings">')
    assert "<script" not in page and not re.search(r'(src|href)="(?!data:|#)', page)
    assert "<title>Ablation study: doc</title>" in page


def test_figures_sit_in_the_setup_they_show(tmp_path, study_dir):
    data = collect(study_dir)
    summary = summarize(data)
    figures = {"one": {"curves": b"png-1", "accuracy": b"png-2"}, "two_b": {"eta": b"png-3"}}
    blocks = study_document(data, summary, report_findings(data, summary), figures)
    setup, placed = None, []
    for block in blocks:
        if isinstance(block, Heading) and block.level == 2:
            setup = block.anchor
        if isinstance(block, Image):
            placed.append((setup, block.path, block.png))
    assert placed == [
        ("setup-one", "figures/one_curves.png", b"png-1"),
        ("setup-one", "figures/one_accuracy.png", b"png-2"),
        ("setup-two-b", "figures/two_b_eta.png", b"png-3"),
    ]
