"""The study's curvature columns are 'at the final snapshot': a run whose last snapshot could not be
compared (h all 0, e.g. a network whose ReLUs all died) is not assessed, rather than silently
measured at an earlier snapshot."""

from types import SimpleNamespace

import pandas as pd

from arturo_diag.study.aggregate import _quantity_columns

NO_STEPS = SimpleNamespace(steps=pd.DataFrame())  # a record without steps.csv rows: no eta columns


def _curvature_columns(metrics):
    return _quantity_columns(metrics, NO_STEPS)


def _metrics(final_step, snapshot_steps):
    entry = {
        "step": final_step,
        "overall": {
            "estimate": {"relative_error": 2.0, "spearman": 0.5},
            "constant": {"relative_error": 1.0},
            "beats_constant": {"relative_error": False},
            "coverage": 0.9,
            "sharpness": 0.1,
        },
    }
    return {"run": {"snapshot_steps": snapshot_steps}, "agreement": {"final": entry}, "calibration": {"final": entry}}


def test_columns_come_from_the_last_snapshot():
    out = _curvature_columns(_metrics(30, [10, 20, 30]))
    assert out["snapshot_step"] == 30
    assert out["agreement_relative_error"] == 2.0 and out["calibration_coverage"] == 0.9


def test_a_run_whose_last_snapshot_was_unusable_is_not_assessed():
    out = _curvature_columns(_metrics(20, [10, 20, 30]))  # the analysis fell back to step 20
    assert out["snapshot_step"] == 30
    for column in ("agreement_relative_error", "agreement_spearman", "beats_constant", "calibration_coverage"):
        assert column not in out


def test_the_beats_constant_column_is_the_runs_verdict_not_the_bare_comparison():
    metrics = _metrics(30, [10, 20, 30])  # point estimates: a's error 2.0 vs the constant's 1.0
    for outcome, expected in (("yes", 1.0), ("no", 0.0)):
        metrics["verdicts"] = [{"id": "agreement.beats_constant", "outcome": outcome}]
        assert _curvature_columns(metrics)["beats_constant"] == expected
    metrics["verdicts"] = [{"id": "agreement.beats_constant", "outcome": "inconclusive"}]
    assert _curvature_columns(metrics)["beats_constant"] != _curvature_columns(metrics)["beats_constant"]  # NaN
