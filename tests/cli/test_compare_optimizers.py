"""`arturo-diag compare --optimizer X` end to end (issue 13): for every optimizer with a curvature
estimate the command trains with snapshots, records whose estimate it is, and writes a report whose
verdicts are those that apply to it (no trust-region verdict but for arTuRO); the stored estimate is
the optimizer's own (checked against the adapter on the final weights' optimizer state elsewhere:
tests/diagnostics/test_monitor_estimators.py)."""

import json

import pytest
from typer.testing import CliRunner

from arturo_diag.diagnostics.record import RunRecord
from arturo_diag.training.optimizers import OPTIMIZERS
from cli.app import app
from tests.reliability.harness import TINY

TARGETS = {
    "arturo": "hessian_diagonal",
    "adam": "gradient_second_moment",
    "adamw": "gradient_second_moment",
    "ivon": "hessian_diagonal",
    "adahessian": "hessian_diagonal",
    "sophia-h": "hessian_diagonal",
    "sophia-g": "ggn_diagonal",
}


def test_every_registered_optimizer_but_sgd_is_audited():
    assert set(OPTIMIZERS) == set(TARGETS) | {"sgd"}


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_compare_audits_the_optimizers_own_estimate(tmp_path, name):
    out = tmp_path / name
    result = CliRunner().invoke(
        app, ["compare", *TINY, "--optimizer", name, "--instruments", "noise", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    record = RunRecord.load(out)
    assert record.manifest["estimator"]["target"] == TARGETS[name]
    assert record.snapshot_steps, "an optimizer with an estimate takes snapshots"
    last = record.snapshot(record.snapshot_steps[-1])
    assert all("curvature" in fields and "h_exact" in fields for fields in last.values())
    metrics = json.loads((out / "metrics.json").read_text())
    ids = {v["id"] for v in metrics["verdicts"]}
    assert {"agreement.beats_constant", "agreement.scale", "agreement.shape"} <= ids
    assert ("trust_region.binding" in ids) == (name == "arturo")
    report = (out / "report.md").read_text()
    assert name in report.split("\n", 1)[0] or name == "arturo"  # the title names another optimizer
    if TARGETS[name] == "gradient_second_moment":
        assert metrics["agreement"]["like_for_like"]["final"] is not None


def test_sgd_takes_no_snapshots_and_says_so(tmp_path):
    out = tmp_path / "sgd"
    result = CliRunner().invoke(app, ["compare", *TINY, "--optimizer", "sgd", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert RunRecord.load(out).snapshot_steps == []
