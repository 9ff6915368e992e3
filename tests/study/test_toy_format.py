"""A new output format is one renderer and one registry line (issue 10, item 1).

A toy format registered in ``report.formats.FORMATS`` is written for a run report (``report.toy``)
and for a study report (``study.toy``) with nothing else touched, from the same blocks the
Markdown and HTML files are rendered from. The JSON document (``*.document.json``) reads back
to blocks whose Markdown is the report's ``report.md``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from records import write_record
from test_study_report import make_study

from arturo_diag.report import formats
from arturo_diag.report.blocks import Heading
from arturo_diag.report.document import from_json, to_markdown
from arturo_diag.report.render import render_report
from arturo_diag.study import render_study
from arturo_diag.training.config import RunConfig, config_to_toml


def _toy_render(blocks, title):
    """One line per heading: 'level title'."""
    lines = [f"{b.level} {''.join(v for _, v in b.content)}" for b in blocks if isinstance(b, Heading)]
    return title + "\n" + "\n".join(lines) + "\n"


@pytest.fixture
def with_toy_format(monkeypatch):
    monkeypatch.setattr(formats, "FORMATS", (formats.OutputFormat("toy", ".toy", _toy_render), *formats.FORMATS))


def _arrays(rng, shape, t):
    h = rng.uniform(0.5, 2.0, size=shape)
    return h, {"curvature": 1.1 * h, "filter_cov_aa": np.full(shape, 1e-4), "precision": np.full(shape, 100.0)}


def _run(run_dir):
    return write_record(
        run_dir, arrays=_arrays, config=config_to_toml(RunConfig(out=str(run_dir)).resolved()), finish={}
    )


def test_a_registered_format_is_written_for_run_and_study_reports(tmp_path, with_toy_format):
    result = render_report(_run(tmp_path / "run"))
    toy = (tmp_path / "run" / "report.toy").read_text(encoding="utf-8")
    assert toy.splitlines()[0] == "arTuRO diagnostics: run"
    assert "2 Agreement" in toy and "2 Training" in toy
    assert result.documents["toy"] == tmp_path / "run" / "report.toy"

    make_study(tmp_path / "study")
    render_study(tmp_path / "study")
    study_toy = (tmp_path / "study" / "study.toy").read_text(encoding="utf-8")
    assert study_toy.startswith("Ablation study: known\n1 Ablation study: known\n")


def test_the_json_document_reads_back_to_the_markdown_report(tmp_path):
    result = render_report(_run(tmp_path / "run"))
    document = json.loads(result.documents["json"].read_text(encoding="utf-8"))
    assert document["title"] == "arTuRO diagnostics: run"
    assert to_markdown(from_json(document)) == result.markdown.read_text(encoding="utf-8")
    assert set(result.documents) == {"json", "html", "markdown"}
