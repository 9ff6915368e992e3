"""Issue 11: scale apart from shape and the agreement verdicts, on planted-answer records.

Each record plants a known relation between a and h (a = 10 h, a = h + small noise, a constant, a
whose relative error sits at the constant's plus the practical margin, a > 0 everywhere); the
verdicts must be the planted ones and every number is recomputed here with straight-line numpy
(the estimates, and the percentile bootstrap with the documented seed and resample count).
"""

from __future__ import annotations

import numpy as np
import pytest
from records import write_record
from scipy import stats

from arturo_diag.diagnostics.record import RunRecord
from arturo_diag.quantities.analysis import analyze_record

PARAMETERS = {"net.0.weight": (20, 10), "net.0.bias": (20,), "net.2.weight": (5, 20), "net.2.bias": (5,)}
CONFIG = "[optimizer]\nlr = 0.1\neta_tol = 0.5\nvar_init = 0.01\n"


def _analyze(tmp_path, estimate, reference="exact"):
    """A record whose a is ``estimate(h, rng)``; returns the metrics and the final snapshot's (a, h) flat."""
    calls = []

    def arrays(rng, shape, t):
        h = np.abs(rng.normal(size=shape)) * 10.0 ** rng.uniform(-2, 0, size=shape)
        h.reshape(-1)[::7] *= -1  # some negative curvature
        a = estimate(h, rng)
        calls.append((a, h))
        return h, {
            "curvature": a,
            "filter_cov_aa": np.full(shape, 0.04),
            "intercept": rng.normal(size=shape),
            "precision": np.full(shape, 100.0),
            "weight": rng.normal(size=shape),
        }

    run = write_record(
        tmp_path / "run",
        arrays=arrays,
        parameters=PARAMETERS,
        kind="monitor",
        config=CONFIG,
        optimizer={"lr": 0.1, "eta_tol": 0.5},
        reference=reference,
        hutchinson_noise=0.05,
        finish={"seconds": 1.0},
    )
    final = calls[-len(PARAMETERS) :]
    a = np.concatenate([x.reshape(-1) for x, _ in final])
    h = np.concatenate([y.reshape(-1) for _, y in final])
    if reference == "both":
        return analyze_record(run), a, h, RunRecord.load(run)
    return analyze_record(run), a, h


def _verdicts(metrics):
    return {v["id"]: v for v in metrics["verdicts"] if v["id"].startswith("agreement.")}


def _relerr(x, h):
    return np.linalg.norm(x - h) / np.linalg.norm(h)


def _bootstrap(statistic, n, samples=200, seed=0):
    """The documented interval, written out: 200 resamples of n coordinates, seed 0, 2.5/97.5 % quantiles."""
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, n, size=n)) for _ in range(samples)])
    return np.quantile(values[np.isfinite(values)], [0.025, 0.975])


def _agreement_findings(metrics):
    return [f["text"] for f in metrics["findings"] if f["topic"] == "agreement"]


def test_scaled_copy_has_the_right_shape_and_a_factor_of_ten_wrong_scale(tmp_path):
    metrics, a, h = _analyze(tmp_path, lambda h, rng: 10.0 * h)
    v = _verdicts(metrics)
    assert v["agreement.shape"]["outcome"] == "yes"
    assert v["agreement.shape"]["estimate"] == pytest.approx(1.0)
    assert v["agreement.scale"]["outcome"] == "no"
    assert v["agreement.scale"]["estimate"] == pytest.approx(0.1, rel=1e-12)
    assert v["agreement.scale"]["ci_low"] == pytest.approx(0.1) and v["agreement.scale"]["ci_high"] == pytest.approx(
        0.1
    )
    assert v["agreement.scale"]["text"].startswith("The estimate a is ~10x too large: c* = 0.1")
    scale = metrics["agreement"]["final"]["overall"]["scale"]
    assert scale["rescaled"]["factor"] == pytest.approx(np.dot(a, h) / np.dot(a, a), rel=1e-12)
    assert scale["rescaled"]["relative_error"] < 1e-12
    # the baselines, straight from h
    assert scale["zero"]["relative_error"] == 1.0
    assert scale["best_constant"]["value"] == pytest.approx(h.mean(), rel=1e-12)
    assert scale["best_constant"]["relative_error"] == pytest.approx(_relerr(np.full_like(h, h.mean()), h), rel=1e-12)
    med = np.median(np.abs(h))
    assert scale["median_constant"]["value"] == pytest.approx(med, rel=1e-12)
    assert scale["median_constant"]["relative_error"] == pytest.approx(_relerr(np.full_like(h, med), h), rel=1e-12)
    # a = 10 h is 9 ||h|| away from h: far worse than the constant 0.1
    assert v["agreement.beats_constant"]["outcome"] == "no"
    assert v["agreement.beats_constant"]["estimate"] == pytest.approx(_relerr(np.full_like(h, 0.1), h) - 9.0)
    assert not any("beats the constant" in t for t in _agreement_findings(metrics))
    # every snapshot entry and layer carries the scale entry; existing keys keep their values
    for entry in metrics["agreement"]["snapshots"]:
        assert entry["overall"]["scale"]["rescaled"]["factor"] == pytest.approx(0.1)
        assert all("scale" in layer for layer in entry["layers"].values())
    assert metrics["agreement"]["final"]["overall"]["estimate"]["relative_error"] == pytest.approx(_relerr(a, h))


def test_small_noise_has_the_right_scale_and_shape_and_its_intervals_are_the_documented_bootstrap(tmp_path):
    metrics, a, h = _analyze(tmp_path, lambda h, rng: h + 0.01 * rng.normal(size=h.shape))
    v = _verdicts(metrics)
    assert v["agreement.scale"]["outcome"] == "yes"
    assert v["agreement.shape"]["outcome"] == "yes"
    assert v["agreement.beats_constant"]["outcome"] == "yes"
    n = h.size
    lo, hi = _bootstrap(lambda i: np.dot(a[i], h[i]) / np.dot(a[i], a[i]), n)
    assert (v["agreement.scale"]["ci_low"], v["agreement.scale"]["ci_high"]) == pytest.approx((lo, hi), rel=1e-10)
    assert v["agreement.scale"]["estimate"] == pytest.approx(np.dot(a, h) / np.dot(a, a), rel=1e-12)
    lo, hi = _bootstrap(lambda i: stats.spearmanr(a[i], h[i]).statistic, n)
    assert (v["agreement.shape"]["ci_low"], v["agreement.shape"]["ci_high"]) == pytest.approx((lo, hi), rel=1e-10)
    assert v["agreement.shape"]["estimate"] == pytest.approx(stats.spearmanr(a, h).statistic, rel=1e-12)
    c = 0.1
    lo, hi = _bootstrap(lambda i: _relerr(np.full(len(i), c), h[i]) - _relerr(a[i], h[i]), n)
    beats = v["agreement.beats_constant"]
    assert (beats["ci_low"], beats["ci_high"]) == pytest.approx((lo, hi), rel=1e-10)
    assert beats["estimate"] == pytest.approx(_relerr(np.full_like(h, c), h) - _relerr(a, h), rel=1e-12)
    assert beats["ci_low"] > 0.01 * _relerr(np.full_like(h, c), h)
    assert all(set(x) == {"id", "outcome", "estimate", "ci_low", "ci_high", "rule", "text"} for x in v.values())


def test_a_constant_has_no_shape(tmp_path):
    metrics, a, h = _analyze(tmp_path, lambda h, rng: np.full(h.shape, 0.1))
    v = _verdicts(metrics)
    assert v["agreement.shape"]["outcome"] in ("no", "not_applicable")
    # a is the constant itself: equal within the margin, never "beats"
    assert v["agreement.beats_constant"]["outcome"] == "no"
    assert "equal within the margin" in v["agreement.beats_constant"]["text"]
    assert not any(" beats the constant" in t for t in _agreement_findings(metrics))


def test_an_estimate_at_the_margin_is_inconclusive_and_never_said_to_beat(tmp_path):
    # ||a - h|| is 0.99 ||0.1 - h|| plus noise: the gain over the constant is the 1 % margin itself
    metrics, a, h = _analyze(tmp_path, lambda h, rng: 0.1 + 0.01 * (h - 0.1) + 0.01 * rng.normal(size=h.shape))
    beats = _verdicts(metrics)["agreement.beats_constant"]
    margin = 0.01 * _relerr(np.full_like(h, 0.1), h)
    assert beats["ci_low"] < margin < beats["ci_high"]
    assert beats["outcome"] == "inconclusive"
    assert beats["text"].startswith("Inconclusive whether the estimate a beats the constant 0.1")
    assert "95 % CI [" in beats["text"]
    texts = _agreement_findings(metrics)
    assert any(t.startswith("Inconclusive whether the estimate a beats") for t in texts)
    assert not any(t.startswith("The estimate a beats") for t in texts)
    # the two relative errors are printed with enough digits to tell them apart
    shown = beats["text"].split("relative error ")[1].split(" for the constant")[0]
    first, second = shown.split(" vs ")
    assert first != second


def test_a_positive_everywhere_is_not_said_to_lose_on_sign_agreement(tmp_path):
    # a > 0 everywhere: its sign agreement equals the constant's by construction (a tie, not a loss)
    metrics, a, h = _analyze(tmp_path, lambda h, rng: 0.1 + 0.5 * (np.abs(h) - 0.1).clip(0) + 1e-3)
    overall = metrics["agreement"]["final"]["overall"]
    assert overall["scale"]["a_all_positive"] is True
    assert overall["estimate"]["sign_agreement"] == overall["constant"]["sign_agreement"] == np.mean(h > 0)
    assert "sign_agreement" in overall["beats_constant_summary"]["lost_on"]  # the old strict comparison
    assert not any("sign agreement" in t and "worse" in t for t in _agreement_findings(metrics))


def test_above_the_cap_the_interval_comes_from_a_fixed_subset_and_the_estimate_from_every_coordinate(monkeypatch):
    from arturo_diag.quantities import _agreement_bootstrap as boot

    monkeypatch.setattr(boot, "MAX_RESAMPLED", 50)
    rng = np.random.default_rng(1)
    h = rng.normal(size=300)
    a = 2.0 * h + 0.1 * rng.normal(size=300)
    entry = boot.final_bootstrap(7, {"w": (a, h)}, {"w": "w"}, 0.1)["overall"]
    assert entry["n"] == 300 and entry["n_resampled"] == 50
    assert entry["factor"]["estimate"] == pytest.approx(np.dot(a, h) / np.dot(a, a), rel=1e-12)
    keep = np.sort(np.random.default_rng(0).choice(300, 50, replace=False))
    sa, sh = a[keep], h[keep]
    lo, hi = _bootstrap(lambda i: np.dot(sa[i], sh[i]) / np.dot(sa[i], sa[i]), 50)
    assert (entry["factor"]["ci_low"], entry["factor"]["ci_high"]) == pytest.approx((lo, hi), rel=1e-10)


def test_with_two_estimates_their_shapes_are_compared_side_by_side(tmp_path):
    metrics, a, h, record = _analyze(tmp_path, lambda h, rng: 3.0 * h + 0.05 * rng.normal(size=h.shape), "both")
    snapshot = record.snapshot(metrics["agreement"]["final"]["step"])
    hut = np.concatenate([snapshot[name]["h_hutchinson"].reshape(-1) for name in PARAMETERS])
    exact = np.concatenate([snapshot[name]["h_exact"].reshape(-1) for name in PARAMETERS])
    np.testing.assert_array_equal(exact, h)
    hv = metrics["agreement"]["hutchinson_vs_exact"]["final"]["overall"]
    factor = np.dot(hut, h) / np.dot(hut, hut)
    assert hv["scale"]["rescaled"]["factor"] == pytest.approx(factor, rel=1e-12)
    assert hv["scale"]["rescaled"]["relative_error"] == pytest.approx(_relerr(factor * hut, h), rel=1e-12)
    assert hv["spearman"] == pytest.approx(stats.spearmanr(hut, h).statistic, rel=1e-12)
    (text,) = [t for t in _agreement_findings(metrics) if t.startswith("Shape of the two estimates")]
    assert f"c* = {np.dot(a, h) / np.dot(a, a):.3g} for a" in text  # a = 3 h: c* ~ 1/3
    assert "Spearman " in text and "relative error after rescaling" in text
