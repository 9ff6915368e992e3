"""The gradient-noise quantity (issue 12, item 1) on planted records: the variances, GSNR and the
verdict ``noise.r_calibrated`` against straight-line numpy computations of the planted arrays."""

from __future__ import annotations

import numpy as np
import pytest

from arturo_diag.diagnostics.record import RecordWriter
from arturo_diag.quantities.analysis import analyze_record
from arturo_diag.report.render import render_report

VARIANCE = 5.4e-6  # the planted median minibatch-gradient variance
PROBE = 16


def _planted(path, r, snapshots=3, seed=0, train_batch=None):
    rng = np.random.default_rng(seed)
    shapes = {"l1.weight": (40, 50), "l2.weight": (30,)}
    config = f"[diagnostics]\nevery = 1\nprobe_size = {PROBE}\n"
    if train_batch is not None:
        config = f"[run]\nbatch_size = {train_batch}\n" + config
    writer = RecordWriter(path, "monitor", config, shapes, optimizer={"lr": 0.1, "measurement_noise": r})
    planted = []
    for step in range(1, snapshots + 1):
        writer.add_step({"step": step, "loss": 1.0, "kl_bound": 0.1})
        arrays = {}
        for name, shape in shapes.items():
            h = rng.uniform(0.5, 2.0, shape)
            var = VARIANCE * np.exp(rng.normal(0.0, 0.3, shape))
            mean = rng.normal(0.0, 1e-3, shape)
            arrays[name] = {"curvature": h, "filter_cov_aa": np.full(shape, 0.01), "weight": np.ones(shape),
                            "h_exact": h, "grad_var": var, "grad_mean": mean}  # fmt: skip
        planted.append(arrays)
        scalars = {"kl_bound": 0.1, "reference": "exact", "exact_method": "hvp", "probe_loss": 1.0}
        writer.add_snapshot(step, scalars, arrays)
    writer.finish()
    return planted


def _verdict(metrics):
    return next(v for v in metrics["verdicts"] if v["id"] == "noise.r_calibrated")


def test_r_equal_to_the_planted_variance_is_calibrated(tmp_path):
    planted = _planted(tmp_path / "run", VARIANCE)
    metrics = analyze_record(tmp_path / "run")
    final = planted[-1]
    variance = np.concatenate([final[n]["grad_var"].reshape(-1) for n in final])
    verdict = _verdict(metrics)
    assert verdict["outcome"] == "yes"
    assert verdict["estimate"] == pytest.approx(VARIANCE / np.median(variance), rel=1e-12)
    assert 1 / 3 < verdict["ci_low"] <= verdict["estimate"] <= verdict["ci_high"] < 3
    layers = metrics["noise"]["final"]["layers"]
    for layer, name in (("l1", "l1.weight"), ("l2", "l2.weight")):
        var, mean = final[name]["grad_var"].reshape(-1), final[name]["grad_mean"].reshape(-1)
        assert layers[layer]["variance_median"] == pytest.approx(np.median(var), rel=1e-12)
        # Cockpit: gbar^2 / (ddof-0 per-sample variance + 1e-5); ddof-0 = grad_var * B * (B - 1) / B
        gsnr = np.mean(mean**2 / (var * (PROBE - 1) + 1e-5))
        assert layers[layer]["mean_gsnr"] == pytest.approx(gsnr, rel=1e-12)
        assert layers[layer]["r_over_median"] == pytest.approx(VARIANCE / np.median(var), rel=1e-12)
    assert [e["step"] for e in metrics["noise"]["snapshots"]] == [1, 2, 3]
    finding = next(f for f in metrics["findings"] if f["topic"] == "noise")
    assert finding["severity"] == "info" and "within" in finding["text"]


def test_r_1e5_times_the_variance_is_not_calibrated_and_the_finding_says_by_how_much(tmp_path):
    planted = _planted(tmp_path / "run", 1e5 * VARIANCE)
    metrics = analyze_record(tmp_path / "run")
    final = planted[-1]
    median = np.median(np.concatenate([final[n]["grad_var"].reshape(-1) for n in final]))
    verdict = _verdict(metrics)
    assert verdict["outcome"] == "no"
    assert verdict["estimate"] == pytest.approx(1e5 * VARIANCE / median, rel=1e-12)
    assert verdict["estimate"] == pytest.approx(1e5, rel=0.05)
    assert verdict["ci_low"] > 3
    finding = next(f for f in metrics["findings"] if f["topic"] == "noise")
    assert finding["severity"] == "warning"
    assert finding["text"].startswith("r = 0.54 is ~1e5x the measured minibatch-gradient variance (median 5.")
    assert "trusts each gradient far less than its noise warrants" in finding["text"]
    assert f"suggests r ~ {median:.2g}" in finding["text"]


def test_a_record_without_the_instrument_is_not_applicable_and_renders(tmp_path):
    writer = RecordWriter(tmp_path / "old", "monitor", "[diagnostics]\nevery = 1\n", {"w": (3,)}, optimizer={"lr": 0.1})
    writer.add_step({"step": 1, "loss": 1.0, "kl_bound": 0.1})
    h = np.array([0.5, 1.0, 2.0])
    arrays = {"w": {"curvature": h, "filter_cov_aa": np.full(3, 0.01), "weight": np.ones(3), "h_exact": h}}
    writer.add_snapshot(1, {"kl_bound": 0.1, "reference": "exact", "exact_method": "hvp", "probe_loss": 1.0}, arrays)
    writer.finish()
    metrics = analyze_record(tmp_path / "old")
    assert _verdict(metrics)["outcome"] == "not_applicable"
    assert metrics["noise"]["snapshots"] == [] and metrics["noise"]["verdict"] is None
    result = render_report(tmp_path / "old")
    assert "noise" in result.skipped
    assert "Gradient noise" in (tmp_path / "old" / "report.md").read_text()


def test_the_probe_variance_is_rescaled_to_the_training_minibatch_r_stands_for(tmp_path):
    # grad_var is per-sample variance / PROBE; r is the noise of one training minibatch of 4 examples,
    # whose gradient variance is per-sample variance / 4 = grad_var * PROBE / 4
    planted = _planted(tmp_path / "run", VARIANCE, train_batch=4)
    metrics = analyze_record(tmp_path / "run")
    final = planted[-1]
    median = np.median(np.concatenate([final[n]["grad_var"].reshape(-1) for n in final])) * PROBE / 4
    verdict = _verdict(metrics)
    assert verdict["estimate"] == pytest.approx(VARIANCE / median, rel=1e-12)
    assert metrics["noise"]["final"]["overall"]["variance_median"] == pytest.approx(median, rel=1e-12)
    assert metrics["noise"]["train_batch_size"] == 4
    assert verdict["outcome"] == "no"  # r is 4x too small for a batch of 4 (outside [1/3, 3])


def test_a_median_variance_of_zero_in_some_resamples_leaves_the_interval_unbounded_not_a_crash():
    """Half the coordinates without gradient noise (dead units): the median is positive, but some
    bootstrap resamples' median is 0, so r / median has no upper bound: the verdict says so, and is
    "no" only when even the lower end is outside the band (it was a ZeroDivisionError)."""
    from arturo_diag.quantities.noise import _interval, noise_verdicts

    variance = np.r_[np.zeros(490), np.full(510, 1e-6)]
    found = _interval(2.0, variance, 5)
    assert found["unbounded"] and found["estimate"] == pytest.approx(2e6) and np.isnan(found["ci_high"])
    metrics = {"noise": {"snapshots": [{"overall": {"variance_median": 1e-6}}], "verdict": found,
                         "measurement_noise": 2.0}, "run": {}}  # fmt: skip
    (verdict,) = noise_verdicts(metrics)
    assert verdict.outcome == "no" and "unbounded" in verdict.text
    small = _interval(2e-6, variance, 5)  # r near the noise: the unbounded interval straddles the band
    metrics["noise"]["verdict"], metrics["noise"]["measurement_noise"] = small, 2e-6
    assert noise_verdicts(metrics)[0].outcome == "inconclusive"
