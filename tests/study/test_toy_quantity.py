"""A new diagnostic quantity is one module and one registry line (issue 10, item 2).

A toy quantity, written here as a contributor would write ``quantities/<topic>.py``, is added to
``quantities.QUANTITIES`` and nothing else is touched: it must then appear in ``metrics.json``
(its entry and its finding), in ``report.md`` and ``report.html`` (its section, its figure inside
that section, the table of contents), and in a study (``runs.csv``/``study.json`` columns, the
per-variant summary and the study's curvature table). The numbers it reports are known: the toy
counts the snapshots it saw and sums the estimate a over the last one, which the test computes
again from the record's arrays.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from records import write_record
from test_study_report import ACCURACY, SEEDS, make_study

from arturo_diag import quantities
from arturo_diag.diagnostics.record import RunRecord
from arturo_diag.quantities.analysis import analyze_record
from arturo_diag.quantities.base import Quantity, StudyColumn
from arturo_diag.report.document import Heading, Paragraph
from arturo_diag.report.figures.common import FigureSpec
from arturo_diag.report.render import render_report
from arturo_diag.study import render_study
from arturo_diag.training.config import RunConfig, config_to_toml


# ----------------------------------------------------------------------------- the toy module
class _Seen:
    def __init__(self, context):
        self.steps: list[int] = []
        self.a_sum = float("nan")

    def snapshot(self, view):
        self.steps.append(view.step)
        self.a_sum = float(sum(np.sum(x) for x in view.a.values()))


def _compute(context):
    seen = context.observers["toy"]
    return {"snapshots_seen": len(seen.steps), "last_step": seen.steps[-1] if seen.steps else None, "a_sum": seen.a_sum}


def _findings(out, metrics):
    toy = metrics["toy"]
    out.add("toy", "info", f"Toy quantity: {toy['snapshots_seen']} snapshots seen, sum of a {toy['a_sum']:.6f}.")


def _blocks(metrics):
    return [Heading(2, "Toy quantity"), Paragraph(f"The toy saw {metrics['toy']['snapshots_seen']} snapshots.")]


def _plot_toy(record, metrics, fig):
    ax = fig.add_subplot()
    ax.bar([0], [metrics["toy"]["snapshots_seen"]])


TOY = Quantity(
    name="toy",
    needs=("snapshots: a",),
    compute=_compute,
    observer=_Seen,
    findings=_findings,
    blocks=_blocks,
    figures=(FigureSpec("toy", _plot_toy, (3.0, 2.0), "Toy figure: snapshots seen."),),
    study_columns=lambda metrics, record: {"toy_a_sum": metrics["toy"]["a_sum"]},
    study_keys=("toy_a_sum",),
    study_table=(StudyColumn("toy_a_sum", "toy sum of a"),),
)


@pytest.fixture
def with_toy(monkeypatch):
    monkeypatch.setattr(quantities, "QUANTITIES", (*quantities.QUANTITIES, TOY))  # the one registry line


def _a_sum_at_last_snapshot(run_dir) -> float:
    record = RunRecord.load(run_dir)
    snapshot = record.snapshot(record.snapshot_steps[-1])
    return float(sum(np.sum(fields["curvature"]) for fields in snapshot.values() if "curvature" in fields))


def _write_run(run_dir):
    config = config_to_toml(RunConfig(out=str(run_dir)).resolved())
    return write_record(run_dir, arrays=_arrays, config=config, finish={})


def _arrays(rng, shape, t):
    h = rng.uniform(0.5, 2.0, size=shape)
    return h, {"curvature": 1.1 * h, "filter_cov_aa": np.full(shape, 1e-4), "precision": np.full(shape, 100.0)}


def test_a_registered_quantity_reaches_metrics_and_both_reports(tmp_path, with_toy):
    run_dir = _write_run(tmp_path / "toyrun")
    result = render_report(run_dir)
    expected = _a_sum_at_last_snapshot(run_dir)

    metrics = json.loads(result.metrics_json.read_text(encoding="utf-8"))
    assert metrics["toy"]["snapshots_seen"] == 6 and metrics["toy"]["last_step"] == 60
    assert metrics["toy"]["a_sum"] == pytest.approx(expected, rel=1e-12)
    assert list(metrics)[-3:] == ["toy", "verdicts", "findings"]  # after the built-in quantities
    toy_findings = [f for f in metrics["findings"] if f["topic"] == "toy"]
    assert [f["text"] for f in toy_findings] == [f"Toy quantity: 6 snapshots seen, sum of a {expected:.6f}."]

    markdown = result.markdown.read_text(encoding="utf-8")
    section = markdown[markdown.index("\n## Toy quantity\n") :]
    assert "The toy saw 6 snapshots." in section and "](figures/toy.png)" in section
    assert f"sum of a {expected:.6f}" in markdown  # in the findings section
    assert (run_dir / "figures" / "toy.png").read_bytes().startswith(b"\x89PNG")

    page = result.html.read_text(encoding="utf-8")
    anchor = re.search(r'<h2 id="([^"]+)">Toy quantity</h2>', page)
    assert anchor, "the toy's section has an anchor"
    assert f'href="#{anchor.group(1)}"' in page  # listed in the table of contents
    assert 'alt="toy figure"' in page[anchor.start() :]
    assert "toy" in result.figures


def test_without_registration_nothing_of_the_toy_appears(tmp_path):
    run_dir = _write_run(tmp_path / "plain")
    metrics = analyze_record(run_dir)
    assert "toy" not in metrics and not any(f["topic"] == "toy" for f in metrics["findings"])


def test_a_registered_quantity_is_aggregated_by_a_study(tmp_path, with_toy):
    root = tmp_path / "study"
    study = make_study(root)
    report = render_study(root)
    data = json.loads(report.json.read_text(encoding="utf-8"))

    runs = [r for r in data["runs"] if r["variant"] == "faithful"]
    assert len(runs) == len(SEEDS)
    for row in runs:  # every arTuRO run got the toy's column, with the number of its own record
        assert row["toy_a_sum"] == pytest.approx(_a_sum_at_last_snapshot(root / row["run_dir"]), rel=1e-12)
    baseline = [r for r in data["runs"] if r["variant"] == "adam"]
    assert all(r["toy_a_sum"] is None for r in baseline)  # not an arTuRO run: not assessed

    setup = study.setups[0].name
    summary = {e["variant"]: e for e in data["results"][setup]["summary"]}
    mean = float(np.mean([r["toy_a_sum"] for r in runs]))
    assert summary["faithful"]["curvature"]["toy_a_sum"] == pytest.approx(mean, rel=1e-12)
    assert "curvature" not in summary["adam"]

    markdown = report.markdown.read_text(encoding="utf-8")
    assert "toy sum of a" in markdown  # a column of the curvature table
    assert set(ACCURACY) >= {"faithful", "adam"}
