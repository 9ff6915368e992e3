"""Findings read from hand-built metrics: the sentences the report must contain."""

from __future__ import annotations

import math

from arturo_diag.quantities.analysis import findings

NAN = math.nan


def _agreement(rel_a, rel_c, beats):
    estimate = {
        "relative_error": rel_a,
        "cosine": 0.2,
        "spearman": 0.1,
        "sign_agreement": 0.6,
        "log_ratio_abs_median": 1.0,
    }
    constant = {
        "relative_error": rel_c,
        "cosine": 0.25,
        "spearman": NAN,
        "sign_agreement": 0.7,
        "log_ratio_abs_median": 0.9,
    }
    verdict = {
        "relative_error": beats,
        "cosine": False,
        "spearman": True,
        "sign_agreement": False,
        "log_ratio_abs_median": False,
    }
    return {
        "step": 800,
        "overall": {
            "estimate": estimate,
            "constant": constant,
            "previous_h": None,
            "constant_value": 0.1,
            "beats_constant": verdict,
            "beats_constant_summary": {
                "all": False,
                "any": True,
                "lost_on": [k for k, v in verdict.items() if v is False],
            },
            "beats_previous_h": None,
        },
        "layers": {},
    }


def _bootstrap(rel_a, rel_c, ci_low, ci_high):
    """The final snapshot's bootstrap entry of the agreement verdicts (difference = rel_c - rel_a)."""
    return {
        "step": 800,
        "overall": {
            "constant": 0.1,
            "relative_error": rel_a,
            "constant_relative_error": rel_c,
            "difference": {"estimate": rel_c - rel_a, "ci_low": ci_low, "ci_high": ci_high},
            "margin": 0.01 * rel_c,
        },
        "layers": {},
    }


def _trust_region():
    run = {
        "start_step": 300,
        "end_step": 419,
        "length": 120,
        "eta_start": 0.254,
        "eta_end": 0.254,
        "eta_median": 0.254,
        "kl_ratio_start": 0.9,
        "kl_ratio_end": 0.03,
        "kl_ratio_min": 0.03,
        "kl_ratio_max": 0.9,
    }
    late = {"first": 0.0, "bisection": 0.07, "growth_5_3": 0.5, "frozen": 0.43, "fixed": 0.0, "other": 0.0}
    return {
        "available": True,
        "burn_in": 40,
        "regime_share_after_burn_in": late,
        "inactive_share_after_burn_in": 0.93,
        "overshoot_share": 0.01,
        "overshoot_share_after_burn_in": 0.01,
        "undershoot_share": 0.5,
        "growth_runs": {"count": 0, "total_steps": 0, "longest": None, "runs": []},
        "frozen_runs": {"count": 1, "total_steps": 120, "longest": run, "runs": [run]},
        "bound_drops": [
            {"step": 600, "factor": 0.006, "peak_kl_ratio": 78.0, "recovered": True, "steps_to_recover": 5}
        ],
        "snapshots": {"n": 0, "binding_share": NAN},
    }


def test_the_sentences_of_the_brief():
    metrics = {
        "run": {"reference": "exact", "exact_method": "ggn"},
        "agreement": {"final": _agreement(0.98, 0.97, False), "bootstrap": _bootstrap(0.98, 0.97, -0.02, -0.005)},
        "lag": {
            "identifiable": False,
            "max_lag": 5,
            "best_k": None,
            "reason": "no identifiable lag: the lag curve is flat within snapshot noise (Spearman range "
            "0.01 over k = 0..5 vs snapshot noise 0.03)",
        },
        "trust_region": _trust_region(),
    }
    result = findings(metrics)
    texts = [f["text"] for f in result]
    # issue 11: the sentence follows agreement.beats_constant (interval below the 1 % margin: "no")
    assert (
        "The estimate a does not beat the constant 0.1 by the margin: relative error 0.98 vs 0.97 for the constant 0.1"
    ) in texts[1]
    assert result[1]["severity"] == "warning" and result[1]["topic"] == "agreement"
    assert any(t.startswith("No identifiable lag: the lag curve is flat within snapshot noise") for t in texts)
    assert any(
        t.startswith("The trust-region bisection was inactive in 93% of steps after step 40: eta grew by 5/3 per step")
        and "regardless of the bound" in t
        for t in texts
    )
    assert any(
        "eta was frozen at the floor 0.254 for 120 steps (steps 300-419) while K/eps fell to 0.03" in t for t in texts
    )
    assert any(
        "After the KL bound dropped at step 600 (x0.006), K/eps overshot to 78 and took 5 steps to "
        "return below 1.1" in t
        for t in texts
    )


def test_a_win_on_relative_error_alone_is_not_called_agreement():
    metrics = {"agreement": {"final": _agreement(0.5, 0.97, True), "bootstrap": _bootstrap(0.5, 0.97, 0.4, 0.55)}}
    (text,) = [f["text"] for f in findings(metrics) if f["topic"] == "agreement"]
    assert "The estimate a beats the constant 0.1: relative error 0.5 vs 0.97" in text
    assert "worse than the constant's on: cosine 0.2 vs 0.25" in text


def test_without_an_interval_no_beats_statement_is_made():
    """Hand-built metrics without the bootstrap entry: agreement.beats_constant is not applicable."""
    result = findings({"agreement": {"final": _agreement(0.5, 0.97, True)}})
    assert not any("beat" in f["text"] for f in result if f["topic"] == "agreement")


def test_missing_parts_are_skipped():
    assert findings({}) == [
        {
            "text": "No snapshot carries a reference diagonal Hessian h: agreement, movement, "
            "calibration and lag could not be computed.",
            "severity": "warning",
            "topic": "reference",
        },
        {"text": "No trust-region data (eta) was recorded per step.", "severity": "info", "topic": "trust_region"},
    ]
