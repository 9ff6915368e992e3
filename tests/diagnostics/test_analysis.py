"""analyze_record on small synthetic records written with RecordWriter."""

from __future__ import annotations

import json

import numpy as np
import pytest
from records import PARAMETERS, step_rows, write_record

from arturo_diag.diagnostics.io import jsonable
from arturo_diag.diagnostics.record import RecordWriter, RunRecord
from arturo_diag.errors import RecordError
from arturo_diag.quantities.analysis import analyze_record, write_metrics

CONFIG = "[optimizer]\nlr = 0.1\neta_tol = 0.5\nvar_init = 0.01\n"
TOP_LEVEL = [
    "format",
    "run",
    "agreement",
    "movement",
    "calibration",
    "lag",
    "trust_region",
    "health",
    "gauges",
    "noise",
    "spectrum",
    "training",
    "verdicts",
    "findings",
]


def _write_record(run_dir, *, estimate, reference="both", seed=0):
    """A finished record with snapshots every 10 steps; ``estimate(h, t)`` gives a from h."""

    def arrays(rng, shape, t):
        h = rng.normal(size=shape) + 0.05 * t
        return h, {
            "curvature": estimate(h, t),
            "filter_cov_aa": np.full(shape, 4.0),
            "precision": np.where(rng.random(shape) < 0.25, 1e5, 100.0),
            "weight": rng.normal(size=shape),
        }

    steps = step_rows(loss=lambda step: 1.0 / step, late_eta=lambda step: 1.0, quantiles=False)
    write_record(
        run_dir,
        arrays=arrays,
        steps=steps,
        kind="monitor",
        config=CONFIG,
        parameters=PARAMETERS,
        optimizer={"lr": 0.1, "eta_tol": 0.5},
        reference=reference,
        hutchinson_noise=0.3,
        seed=seed,
        finish={"seconds": 1.0},
    )
    return RunRecord.load(run_dir)


def _texts(metrics, topic=None):
    return [f["text"] for f in metrics["findings"] if topic is None or f["topic"] == topic]


def test_constant_estimate_is_reported_against_the_constant_baseline(tmp_path):
    record = _write_record(tmp_path / "run", estimate=lambda h, t: np.full(h.shape, 0.1))
    metrics = analyze_record(record)
    assert list(metrics) == TOP_LEVEL
    assert all(
        set(f) == {"text", "severity", "topic"} and f["severity"] in ("info", "warning") for f in metrics["findings"]
    )

    final = metrics["agreement"]["final"]
    assert final["step"] == 60 and final["reference"] == "h_exact"
    assert list(final["layers"]) == ["net.0", "net.2"]
    overall = final["overall"]
    assert overall["estimate"]["relative_error"] == overall["constant"]["relative_error"]
    assert overall["beats_constant_summary"]["any"] is False
    agreement_text = " ".join(_texts(metrics, "agreement"))
    assert "are equal within the margin" in agreement_text  # agreement.beats_constant: no (issue 11 wording)
    assert "for the constant 0.1" in agreement_text
    assert metrics["movement"]["final"]["overall"]["never_left_share"] == 1.0
    assert any("never left the prior 0.1" in text for text in _texts(metrics, "movement"))
    assert "No identifiable lag" in " ".join(_texts(metrics, "lag")) or "undefined" in metrics["lag"]["reason"]


def test_analysis_is_deterministic_and_written_as_strict_json(tmp_path):
    record = _write_record(tmp_path / "run", estimate=lambda h, t: h + 0.1)
    first, second = analyze_record(record), analyze_record(tmp_path / "run")
    assert json.dumps(jsonable(first)) == json.dumps(jsonable(second))
    write_metrics(tmp_path / "run", first)
    text = (tmp_path / "run" / "metrics.json").read_text()
    assert "NaN" not in text
    assert json.loads(text) == jsonable(first)


def test_structure_and_numbers_of_a_full_record(tmp_path):
    metrics = analyze_record(_write_record(tmp_path / "run", estimate=lambda h, t: h + 0.1))
    run = metrics["run"]
    assert run["reference"] == "both" and run["compared_against"] == "h_exact"
    assert run["n_snapshots"] == 6 and run["snapshot_steps"] == [10, 20, 30, 40, 50, 60]
    assert run["n_parameters"] == 26 and run["layers"] == ["net.0", "net.2"]
    assert (run["var_init"], run["var_init_source"]) == (0.01, "record.json")
    assert (run["eta_tol"], run["eta_tol_source"]) == (0.5, "record.json optimizer")
    assert run["exact_method"] == "hvp" and run["hutchinson_samples"] == 8

    # a = h + 0.1: relative error 0.1 sqrt(n) / ||h||, and it beats the constant everywhere
    overall = metrics["agreement"]["final"]["overall"]
    assert overall["estimate"]["spearman"] == pytest.approx(1.0)
    assert overall["beats_constant_summary"]["all"] is True
    assert overall["previous_h"] is not None
    assert metrics["agreement"]["snapshots"][0]["overall"]["previous_h"] is None
    assert metrics["agreement"]["hutchinson_vs_exact"]["final"]["step"] == 60
    assert metrics["agreement"]["reference_noise"]["final"]["samples"] == 8
    # calibration: |a-h| = 0.1, sqrt(P_aa) = 2 -> sharpness 0.05: vacuous
    calibration = metrics["calibration"]["final"]["overall"]
    assert calibration["sharpness"] == pytest.approx(0.05) and calibration["interpretation"] == "vacuous"
    assert any("vacuous" in text for text in _texts(metrics, "calibration"))

    tr = metrics["trust_region"]
    assert tr["regime_counts"] == {"first": 1, "bisection": 31, "growth_5_3": 4, "frozen": 24, "fixed": 0, "other": 0}
    assert tr["frozen_runs"]["longest"]["eta_median"] == 0.254
    assert tr["bound_drops"][0]["step"] == 40 and tr["bound_drops"][0]["steps_to_recover"] == 4
    assert tr["snapshots"]["binding_share"] == 0.5
    trust_text = " ".join(_texts(metrics, "trust_region"))
    assert "eta was frozen at the floor 0.254 for 24 steps (steps 7-30) while K/eps fell to" in trust_text
    assert "After the KL bound dropped at step 40 (x0.006), K/eps overshot to 78 and took 4 steps" in trust_text

    health = metrics["health"]
    assert health["final"]["step"] == 60
    assert health["nonpositive"]["precision_nonpos"]["first_step"] == 45
    assert 0 < health["final"]["variance_collapse"]["share_collapsed"] < 1  # pi = 1e5 -> variance 1e-5 < 1e-4
    health_text = " ".join(_texts(metrics, "health"))
    assert "Variance collapse" in health_text and "pi' <= 0 at 1 step (first at step 45" in health_text
    assert metrics["training"]["final"]["test_accuracy"] == 0.85
    assert metrics["training"]["best_test_accuracy_epoch"] == 2


def test_hutchinson_only_reference_says_h_is_noisy(tmp_path):
    metrics = analyze_record(_write_record(tmp_path / "run", estimate=lambda h, t: h, reference="hutchinson"))
    assert metrics["run"]["reference"] == "hutchinson"
    assert metrics["agreement"]["final"]["reference"] == "h_hutchinson"
    assert metrics["agreement"]["hutchinson_vs_exact"] is None
    (text,) = _texts(metrics, "reference")
    assert "Hutchinson estimate with 8 samples" in text and "carries noise" in text and "standard error" in text


def test_lag_is_found_in_a_record(tmp_path):
    # every snapshot's h is new noise; a is the previous snapshot's h (kept across calls)
    memory = {}

    def previous_h(h, t):
        key = h.shape
        a = memory.get(key, np.full(h.shape, 0.1)).copy()
        memory[key] = h.copy()
        return a

    metrics = analyze_record(_write_record(tmp_path / "run", estimate=previous_h, reference="exact"), max_lag=2)
    # issue 11: 6 snapshots leave 4 in the window t >= 2, fewer than the lag test needs (8): no lag is
    # claimed, however clear the curve (tests/diagnostics/test_topic_verdicts.py finds it with 20)
    assert metrics["lag"]["curves"]["spearman"]["argbest"] == 1
    assert metrics["lag"]["best_k"] is None and metrics["lag"]["best_lag_steps"] is None
    (verdict,) = [v for v in metrics["verdicts"] if v["id"] == "lag.identified"]
    assert verdict["outcome"] == "not_applicable" and verdict["text"].startswith("not enough snapshots: 4 of 8 needed")
    assert any(text.startswith("No identifiable lag: not enough snapshots: 4 of 8") for text in _texts(metrics, "lag"))


def test_incomplete_record_is_refused(tmp_path):
    writer = RecordWriter(tmp_path / "run", "monitor", CONFIG, PARAMETERS)
    writer.flush()
    with pytest.raises(RecordError, match="incomplete"):
        analyze_record(tmp_path / "run")
