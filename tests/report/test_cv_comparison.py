"""The control variate against plain Hutchinson through ``arturo-diag compare``: snapshots.csv's
columns (cv_se_rms, plain_se_rms, cv_variance_reduction and its bounds) and the report's line.

The stored numbers are checked against each other and against the report's own formatting; the
verdict (better / worse / inconclusive) against the interval's bounds as written in the CSV, by
re-rendering the record with bounds set here. The numbers themselves are checked against numpy and
a dense Hessian in tests/curvature/test_cv_vs_plain.py.
"""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from typer.testing import CliRunner

from arturo_diag.curvature.references import CV_COMPARISON_COLUMNS
from arturo_diag.report.format import num
from arturo_diag.report.render import render_report
from cli.app import app
from tests.reliability.harness import TINY

LEAD = "Control variate vs plain Hutchinson at equal HVP cost (the same S probes):"
COST = "the control variate additionally pays the exact GGN diagonal and one GGN-vector product per probe"
# BatchNorm in train mode: the GGN is not the Hessian, so the control variate probes the residual
PROBED = ("--model", "resnet_block", "--reference-mode", "train", "--steps", "4", "--every", "2",
          "--train-size", "128", "--batch-size", "32", "--probe-size", "8", "--instruments", "none")  # fmt: skip


@pytest.fixture(scope="module")
def probed_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cv") / "run"
    result = CliRunner().invoke(app, ["compare", *PROBED, "--reference", "cv", "--samples", "16", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def _line(markdown: str) -> str:
    lines = [line for line in markdown.splitlines() if LEAD in line]
    assert len(lines) == 1, markdown
    return lines[0]


def test_compare_writes_the_columns_and_the_report_line(probed_run):
    table = pd.read_csv(probed_run / "snapshots.csv")
    assert list(table["reference"]) == ["cv", "cv"] and list(table["hutchinson_samples"]) == [16, 16]
    for column in CV_COMPARISON_COLUMNS:
        assert table[column].notna().all() and (table[column] > 0).all(), column
    # the ratio of the summed variances is the squared ratio of the RMS standard errors
    ratio = (table["plain_se_rms"] / table["cv_se_rms"]) ** 2
    pd.testing.assert_series_equal(table["cv_variance_reduction"], ratio, check_names=False, rtol=1e-9)
    assert (table["cv_variance_reduction_lo"] < table["cv_variance_reduction"]).all()
    assert (table["cv_variance_reduction"] < table["cv_variance_reduction_hi"]).all()
    last = table.iloc[-1]
    line = _line((probed_run / "report.md").read_text(encoding="utf-8"))
    lo, hi = last["cv_variance_reduction_lo"], last["cv_variance_reduction_hi"]
    expected = (
        f"at step 4 (16 probes): RMS SE {num(last['cv_se_rms'])} vs {num(last['plain_se_rms'])}, variance reduction "
        f"{num(last['cv_variance_reduction'])}x (95 % CI {num(lo)}-{num(hi)}): "
    )
    assert expected in line and COST in line
    verdict = "better" if lo > 1 else "worse" if hi < 1 else "inconclusive (the interval contains 1)"
    assert verdict in line
    assert "Over the 2 snapshots with probes" in line
    # metrics.json carries the same numbers (every number of the report is in it), per cv snapshot
    noise = json.loads((probed_run / "metrics.json").read_text(encoding="utf-8"))["agreement"]["reference_noise"]
    for entry, (_, row) in zip(noise["snapshots"], table.iterrows(), strict=True):
        assert entry["step"] == row["step"]
        for column in CV_COMPARISON_COLUMNS:
            assert entry[column] == pytest.approx(row[column], rel=1e-12), column


@pytest.mark.parametrize(
    ("lo", "hi", "said", "not_said"),
    [
        (0.8, 1.3, "inconclusive (the interval contains 1)", ("is better", "is worse")),
        (1.1, 1.4, "the control variate is better", ("inconclusive", "is worse")),
        (0.6, 0.9, "the control variate is worse", ("inconclusive", "is better")),
        (math.nan, math.nan, "inconclusive (no interval: fewer than 6 probes)", ("is better", "is worse", "CI")),
    ],
)
def test_the_verdict_follows_the_interval(probed_run, tmp_path, lo, hi, said, not_said):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(probed_run, out)
    table = pd.read_csv(out / "snapshots.csv")
    table["cv_variance_reduction"] = 1.05
    table["cv_variance_reduction_lo"], table["cv_variance_reduction_hi"] = lo, hi
    table.to_csv(out / "snapshots.csv", index=False)
    line = _line(render_report(out).markdown.read_text(encoding="utf-8"))
    assert said in line and "variance reduction 1.05x" in line
    assert not any(words in line.split("Over the")[0] for words in not_said)
    if math.isfinite(lo):
        assert f"(95 % CI {num(lo)}-{num(hi)})" in line


def test_a_proved_model_says_there_is_no_comparison(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["compare", *TINY, "--reference", "cv", "--samples", "8", "--out", str(out)])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "snapshots.csv")
    assert (table["hutchinson_samples"] == 0).all()
    assert all(table[column].isna().all() for column in CV_COMPARISON_COLUMNS)
    line = _line((out / "report.md").read_text(encoding="utf-8"))
    assert "no comparison: the control variate drew no probe (diag(H - G) = 0 proved" in line


def test_a_run_without_cv_has_no_comparison_line(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["compare", *TINY, "--reference", "auto", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert LEAD not in (out / "report.md").read_text(encoding="utf-8")  # auto took the exact GGN diagonal
