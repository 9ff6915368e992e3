"""render_report on small synthetic records: files, content, byte-identical re-rendering, failures."""

from __future__ import annotations

import dataclasses
import html
import json
import re

import pytest

from arturo_diag import quantities
from arturo_diag.diagnostics.io import jsonable
from arturo_diag.diagnostics.record import RunRecord
from arturo_diag.errors import RecordError
from arturo_diag.quantities.agreement import agreement_section
from arturo_diag.quantities.analysis import analyze_record
from arturo_diag.report import sections
from arturo_diag.report.document import Bullets, Heading, Paragraph, Table, code, strong, text, to_html, to_markdown
from arturo_diag.report.figures import FigureSpec
from arturo_diag.report.format import count, distinguishing_digits, num, pct
from arturo_diag.report.render import ReportResult, render_report

FIGURE_NAMES = [spec.name for spec in quantities.figures()]
SECTIONS = [
    "Settings",
    "Findings",
    "Agreement",
    "Movement",
    "Calibration",
    "Lag",
    "Trust region",
    "Health",
    "Gauges",
    "Gradient noise",
    "Curvature spectrum",
    "Training",
]
# the section each figure illustrates (it is drawn inside it)
FIGURE_SECTIONS = {
    "agreement": "Agreement",
    "scatter": "Movement",
    "calibration": "Calibration",
    "lag": "Lag",
    "trust_region": "Trust region",
    "precision": "Health",
    "gauges": "Gauges",
    "noise": "Gradient noise",
    "spectrum": "Curvature spectrum",
    "spectrum_density": "Curvature spectrum",
    "training": "Training",
}


def _files(run_dir):
    names = ["report.md", "report.html", "metrics.json"] + [f"figures/{n}.png" for n in FIGURE_NAMES]
    return {name: (run_dir / name).read_bytes() for name in names if (run_dir / name).exists()}


@pytest.fixture(scope="module")
def rendered(shared_record_dir):
    """One render of the standard record (rendering is the slow part) and the bytes it wrote."""
    result = render_report(shared_record_dir)
    return result, _files(shared_record_dir)


def _section(markdown: str, title: str) -> str:
    start = markdown.index(f"\n## {title}\n")
    end = markdown.find("\n## ", start + 1)
    return markdown[start : end if end != -1 else None]


def test_render_writes_every_file_and_the_findings(rendered):
    result, _ = rendered
    record_dir = result.run_dir
    assert isinstance(result, ReportResult)
    assert result.markdown == record_dir / "report.md" and result.html == record_dir / "report.html"
    for path in (result.markdown, result.html, result.metrics_json):
        assert path.is_file()
    assert list(result.figures) == FIGURE_NAMES and result.skipped == {}
    for name, path in result.figures.items():
        assert path == record_dir / "figures" / f"{name}.png"
        assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

    assert result.findings == result.metrics["findings"] and result.findings
    assert json.loads(result.metrics_json.read_text()) == jsonable(result.metrics)

    markdown = result.markdown.read_text(encoding="utf-8")
    # the page is titled with the run's name, never an absolute path
    assert markdown.startswith(f"# arTuRO diagnostics: `{record_dir.name}`\n")
    page = result.html.read_text(encoding="utf-8")
    assert f"<title>arTuRO diagnostics: {record_dir.name}</title>" in page
    assert str(record_dir.resolve()) not in page and str(record_dir.resolve()) not in markdown
    # each figure sits in the section it illustrates, in Markdown and in HTML
    assert set(FIGURE_SECTIONS) == set(FIGURE_NAMES)
    for name, title in FIGURE_SECTIONS.items():
        assert f"](figures/{name}.png)" in _section(markdown, title), name
        html_start = page.index(f">{title}</h2>")
        html_end = page.find("<h2", html_start)
        assert f'alt="{name.replace("_", " ")} figure"' in page[html_start : html_end if html_end != -1 else None]
    headings = re.findall(r"^## (.+)$", markdown, flags=re.M)
    assert headings == SECTIONS
    findings = _section(markdown, "Findings")
    for finding in result.findings:
        assert finding["text"] in findings
    # warnings first
    severities = [
        ("warning" if line.startswith("- **Warning:**") else "info")
        for line in findings.splitlines()
        if line.startswith("- ")
    ]
    assert severities == sorted(severities, key=lambda s: s != "warning")
    assert severities.count("warning") == sum(f["severity"] == "warning" for f in result.findings) > 0
    for name in FIGURE_NAMES:
        assert f"](figures/{name}.png)" in markdown

    page = result.html.read_text(encoding="utf-8")
    assert 'src="http' not in page and "http://" not in page and "https://" not in page
    assert "<script" not in page and "<link" not in page
    assert page.count('src="data:image/png;base64,') == len(FIGURE_NAMES)
    for finding in result.findings:
        assert html.escape(finding["text"]) in page
    for title in SECTIONS:
        assert f">{title}</h2>" in page


def test_sections_carry_the_numbers_of_the_metrics(rendered):
    result, _ = rendered
    markdown = result.markdown.read_text(encoding="utf-8")
    metrics = result.metrics
    overall = metrics["agreement"]["final"]["overall"]
    agreement = _section(markdown, "Agreement")
    row = next(line for line in agreement.splitlines() if line.startswith("| all coordinates"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2:5] == [
        num(overall["estimate"]["relative_error"]),
        num(overall["constant"]["relative_error"]),
        num(overall["previous_h"]["relative_error"]),
    ]
    for layer in metrics["run"]["layers"]:
        assert f"| {layer} (" in agreement
    assert "constant 0.1" in agreement and "previous h" in agreement

    calibration = _section(markdown, "Calibration")
    final = metrics["calibration"]["final"]["overall"]
    assert f"coverage {pct(final['coverage'])}, sharpness {num(final['sharpness'])}" in calibration
    assert final["interpretation"] in calibration

    tr = metrics["trust_region"]
    trust = _section(markdown, "Trust region")
    for words, key in (
        ("bisection active", "bisection"),
        ("5/3 growth (no K evaluated)", "growth_5_3"),
        ("frozen at the floor", "frozen"),
    ):
        assert f"| {words} | {count(tr['regime_counts'][key])} | {pct(tr['regime_share'][key])} |" in trust
    drop = tr["bound_drops"][0]
    assert drop["step"] == 40 and f"| 40 | {num(drop['kl_bound_before'])} -> {num(drop['kl_bound_after'])} |" in trust
    assert f"{num(drop['peak_kl_ratio'])} (step 40)" in trust
    assert "binds" in trust and "eta* (exact)" in trust

    lag = _section(markdown, "Lag")
    assert ("No identifiable lag" in lag) != bool(metrics["lag"]["identifiable"])
    training = _section(markdown, "Training")
    assert "| end of run | 2 | 60 | 0.4 | 90% | 0.5 | 85% |" in training
    health = _section(markdown, "Health")
    assert "| new precision pi' <= 0 | 1 | 45 |" in health

    settings = _section(markdown, "Settings")
    assert "**Faithful to the published rule**" in settings
    for option in ("kl", "dual", "fixed_eta", "guard", "oracle", "dynamic_model_noise"):
        assert f"\n| {option} |" in settings


def test_settings_name_the_ablations_that_were_on(make_record):
    run_dir = make_record(settings={"kl": "coupled", "guard": True, "fixed_eta": 0.5, "dynamic_model_noise": 0.0})
    record = RunRecord.load(run_dir)
    settings = to_markdown(sections.settings_section(record, {}))
    assert "**Not the published rule.**" in settings
    for words in ("kl = coupled", "guard = on", "fixed_eta = 0.5", "dynamic_model_noise = q = 0 (no drift)"):
        assert words in settings


def test_rerender_is_byte_identical(rendered, monkeypatch):
    result, first = rendered
    record_dir = result.run_dir
    # the CLI re-renders from another spelling of the same directory
    monkeypatch.chdir(record_dir.parent)
    render_report(record_dir.name)
    second = _files(record_dir)
    assert len(first) == 3 + len(FIGURE_NAMES) and first.keys() == second.keys()
    for name in first:
        assert first[name] == second[name], name
    assert b"Matplotlib" not in first["figures/agreement.png"]  # no version stamp in the PNG
    assert not list(record_dir.glob(".*.tmp")) and not list((record_dir / "figures").glob(".*.tmp"))


def test_record_without_snapshots_renders_with_figures_skipped(make_record):
    run_dir = make_record(reference="none")
    (run_dir / "figures").mkdir()
    (run_dir / "figures" / "scatter.png").write_bytes(b"stale")  # from an earlier report of this directory
    result = render_report(run_dir)
    assert set(result.skipped) == {
        "agreement", "scatter", "calibration", "lag", "gauges", "noise", "spectrum", "spectrum_density"
    }  # fmt: skip
    assert all("no snapshots" in reason for reason in result.skipped.values())
    assert set(result.figures) == {"trust_region", "precision", "training"}
    assert not (run_dir / "figures" / "scatter.png").exists()
    markdown = result.markdown.read_text(encoding="utf-8")
    for name, reason in result.skipped.items():
        assert f"`figures/{name}.png`: skipped: {reason}" in _section(markdown, FIGURE_SECTIONS[name])
    for title in ("Agreement", "Movement", "Calibration", "Lag"):
        assert "**Not computed:**" in _section(markdown, title)
    page = result.html.read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == 3


def test_baseline_run_without_eta_renders(make_record):
    run_dir = make_record(reference="none", with_eta=False, optimizer={"name": "SGD", "lr": 0.01})
    result = render_report(run_dir)
    assert "trust_region" in result.skipped and "eta" in result.skipped["trust_region"]
    assert "precision" in result.skipped and list(result.figures) == ["training"]
    markdown = result.markdown.read_text(encoding="utf-8")
    assert "**Not computed:**" in _section(markdown, "Trust region")


def test_incomplete_record_raises_record_error_and_writes_nothing(make_record):
    run_dir = make_record(finish=False)
    with pytest.raises(RecordError, match="incomplete"):
        render_report(run_dir)
    for name in ("report.md", "report.html", "metrics.json", "figures"):
        assert not (run_dir / name).exists()
    with pytest.raises(RecordError):
        render_report(run_dir / "missing")


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_killed_render_leaves_no_report_that_looks_complete(record_dir, monkeypatch, error):
    # an earlier report of the same directory
    (record_dir / "report.md").write_text("# old report\n")
    (record_dir / "report.html").write_text("<p>old report</p>\n")

    def killed(record, metrics, fig):
        raise error("killed while drawing")

    def kill_scatter(q):
        specs = tuple(FigureSpec(s.name, killed, s.size, s.caption) if s.name == "scatter" else s for s in q.figures)
        return dataclasses.replace(q, figures=specs)

    monkeypatch.setattr(quantities, "QUANTITIES", tuple(kill_scatter(q) for q in quantities.QUANTITIES))
    with pytest.raises(error):
        render_report(record_dir)
    assert (record_dir / "figures" / "agreement.png").exists()  # it died mid-way, after the first figure
    assert not (record_dir / "report.md").exists()
    assert not (record_dir / "report.html").exists()
    assert not list(record_dir.glob(".report*.tmp"))


def test_hutchinson_reference_is_reported_with_its_noise(make_record):
    metrics = analyze_record(make_record(reference="both"))
    agreement = to_markdown(agreement_section(metrics))
    final = metrics["agreement"]["hutchinson_vs_exact"]["final"]["overall"]
    assert f"| all coordinates | {num(final['relative_error'])} |" in agreement

    run_dir = make_record("hutchinson", reference="hutchinson")
    metrics = analyze_record(run_dir)
    agreement = to_markdown(agreement_section(metrics))
    assert "Noise of the Hutchinson reference" in agreement
    title = to_markdown(sections.title_section(RunRecord.load(run_dir), metrics, run_dir.name))
    # issue 11: what h is the Hessian of (a record without the loss's name: "not recorded")
    assert "Reference h: a Hutchinson estimate (8 samples) of the training loss (its function not recorded)" in title


def test_many_layers_get_one_compact_agreement_row_each(make_record):
    parameters = {f"layers.{i}.weight": (3,) for i in range(12)}
    metrics = analyze_record(make_record(parameters=parameters))
    agreement = to_markdown(agreement_section(metrics))
    assert agreement.count("| all coordinates (36) |") == 1
    for i in range(12):
        assert agreement.count(f"| layers.{i} (3) |") == 1
    assert "12 layers, one row each" in agreement


# ---------------------------------------------------------------------------- format/document
def test_numbers_have_three_significant_digits_and_shares_are_percentages():
    assert [num(x) for x in (6030.85, 0.08871, 7.0, 1.5e-6, 9.996, -7.584, 0.0)] == [
        "6030",
        "0.0887",
        "7",
        "1.5e-06",
        "10",
        "-7.58",
        "0",
    ]
    assert num(float("nan")) == num(None) == "n/a"
    assert [pct(x) for x in (0, 1, 0.0004, 0.9996, 0.629, 0.05432)] == [
        "0%",
        "100%",
        "<0.1%",
        ">99.9%",
        "62.9%",
        "5.43%",
    ]
    assert count(3658) == "3,658" and count(float("nan")) == "n/a"
    assert distinguishing_digits([7.22141, 7.22139, 0.5]) == 6 and distinguishing_digits([7.58, 7.22]) == 3
    assert distinguishing_digits([0.17401, 0.17412], pct) == 4


def test_markdown_and_html_render_the_same_blocks_safely():
    blocks = [
        Heading(1, (text("Run "), code("/tmp/a_b"))),
        Paragraph("median |a-h|/sqrt(P_aa) at h_(t-k); eta* and <b>not a tag</b>"),
        Paragraph("eta*pi and eta* again, and _maybe emphasis_"),
        Bullets([(strong("Warning:"), text(" * not a list")), "- not a list either"], ("warning", "")),
        Table(("Layer", "value"), (("net|0", "1.5"),)),
    ]
    markdown = to_markdown(blocks)
    assert "# Run `/tmp/a_b`" in markdown
    assert "median |a-h|/sqrt(P_aa) at h_(t-k); eta* and \\<b>not a tag\\</b>" in markdown
    assert "eta\\*pi and eta\\* again, and \\_maybe emphasis\\_" in markdown
    assert "- **Warning:** * not a list" in markdown and "- \\- not a list either" in markdown
    assert "| net\\|0 | 1.5 |" in markdown
    page = to_html(blocks, title="t <x>")
    assert "<title>t &lt;x&gt;</title>" in page
    assert "&lt;b&gt;not a tag&lt;/b&gt;" in page and "<b>" not in page
    assert '<li class="warning"><strong>Warning:</strong> * not a list</li>' in page
    assert '<td class="l">net|0</td><td class="r">1.5</td>' in page
