"""Verdicts of lag, movement, calibration and the trust region (issue 11) on planted-answer records.

Each record plants the answer its verdict must give: a lag of two snapshots (a_t = h_(t-2) on an h
that is new at every snapshot), no lag (a constant plus tiny noise), calibrated noise
(a = h + N(0, P_aa)), a constant a, too few snapshots, and the trust region on, binding or not,
and off. Expected numbers come from the plant (the lag, the Gaussian 0.954 and 0.674), or from a
straight count over the stored arrays and step rows, never from the code under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from matplotlib.figure import Figure
from records import step_rows, write_record
from scipy import stats

from arturo_diag.diagnostics.intervals import block_bootstrap_indices, wilson_interval
from arturo_diag.diagnostics.record import RunRecord
from arturo_diag.quantities.analysis import analyze_record
from arturo_diag.report.figures.lag import plot_lag

PARAMETERS = {"net.0.weight": (16, 8), "net.0.bias": (16,), "net.2.weight": (4, 16)}  # 208 coordinates
WIDE = {"net.0.weight": (50, 40), "net.0.bias": (1000,)}  # 3000 coordinates
CONFIG = "[optimizer]\nlr = 0.1\neta_tol = 0.5\nvar_init = 0.01\n"


def _h(shape, t):
    """A reference that is new at every snapshot (log-normal around 0.1, so a = h leaves the prior)."""
    rng = np.random.default_rng([1000 + t, int(np.prod(shape))])
    return 0.1 * np.exp(2.0 * rng.normal(size=shape))


def _record(tmp_path, curvature, *, n_steps=200, parameters=PARAMETERS, p_aa=None, optimizer=None, steps=None):
    """A finished record with a snapshot every 10 steps; ``curvature(rng, shape, t)`` is a at snapshot t."""

    def arrays(rng, shape, t):
        h = _h(shape, t)
        p = p_aa(shape) if p_aa else np.full(shape, 1.0)
        return h, {"curvature": curvature(rng, shape, t, h, p), "filter_cov_aa": p, "weight": np.zeros(shape)}

    run_dir = tmp_path / "run"
    write_record(
        run_dir,
        arrays=arrays,
        steps=steps if steps is not None else step_rows(n_steps, quantiles=False),
        kind="monitor",
        config=CONFIG,
        parameters=parameters,
        optimizer={"lr": 0.1, "eta_tol": 0.5, **(optimizer or {})},
        finish={"seconds": 1.0},
    )
    return RunRecord.load(run_dir)


def _verdict(metrics, verdict_id):
    (verdict,) = [v for v in metrics["verdicts"] if v["id"] == verdict_id]
    assert set(verdict) == {"id", "outcome", "estimate", "ci_low", "ci_high", "rule", "text"}
    return verdict


def _texts(metrics, topic):
    return [f["text"] for f in metrics["findings"] if f["topic"] == topic]


def _suptitle(record, metrics):
    fig = Figure()
    plot_lag(record, metrics, fig)
    return fig.get_suptitle()


def test_a_planted_lag_of_two_snapshots_is_identified_with_an_interval_excluding_zero(tmp_path):
    record = _record(tmp_path, lambda rng, shape, t, h, p: _h(shape, t - 2))
    metrics = analyze_record(record, max_lag=5)
    verdict = _verdict(metrics, "lag.identified")
    assert verdict["outcome"] == "yes" and verdict["estimate"] == 2
    assert verdict["ci_low"] == verdict["ci_high"] == 2  # the best k of every resample is the planted 2
    test = metrics["lag"]["test"]
    # 20 snapshots (t = 1..20), lags k = 0..5 compared on t >= 5 (the sixth snapshot on): 15 snapshots
    assert test["n_window"] == 15 and test["best_k"] == 2
    # the gain, recomputed straight from the plant: Spearman(h_(t-2), h_t) = 1 against Spearman(h_(t-2), h_t)
    gains = []
    for t in range(6, 21):
        a = np.concatenate([_h(shape, t - 2).ravel() for shape in PARAMETERS.values()])
        h = np.concatenate([_h(shape, t).ravel() for shape in PARAMETERS.values()])
        gains.append(1.0 - stats.spearmanr(a, h).statistic)
    assert test["estimate"] == pytest.approx(np.mean(gains), rel=1e-9)
    assert 0 < test["margin"] < test["ci_low"] <= test["estimate"] <= test["ci_high"]
    assert metrics["lag"]["best_k"] == 2 and metrics["lag"]["best_lag_steps"] == 20.0
    assert any(text.startswith("a lags h by 2 snapshots, 20 steps") for text in _texts(metrics, "lag"))
    title = _suptitle(record, metrics)
    assert "a lags h by 2 snapshots (20 steps)" in title and "95 % CI" in title


def test_a_constant_plus_tiny_noise_has_no_identified_lag(tmp_path):
    record = _record(tmp_path, lambda rng, shape, t, h, p: 0.1 + 1e-6 * rng.normal(size=shape))
    metrics = analyze_record(record, max_lag=5)
    verdict = _verdict(metrics, "lag.identified")
    assert verdict["outcome"] in ("no", "inconclusive")  # not identified
    assert verdict["estimate"] == metrics["lag"]["test"]["best_k"]  # the candidate, not claimed as a lag
    test = metrics["lag"]["test"]
    assert test["ci_low"] <= test["margin"]  # the gain's interval reaches the margin: no lag is claimed
    assert metrics["lag"]["best_k"] is None and not metrics["lag"]["identifiable"]
    (text,) = _texts(metrics, "lag")
    assert text.startswith("No identifiable lag") and "95 % CI [" in text
    assert _suptitle(record, metrics).startswith("Lag of the curvature estimate behind h: no identifiable lag")
    # and such an a never left its prior
    left = _verdict(metrics, "movement.left_prior")
    assert left["outcome"] == "no" and left["estimate"] == 0


def test_too_few_snapshots_leave_the_lag_not_applicable(tmp_path):
    record = _record(tmp_path, lambda rng, shape, t, h, p: _h(shape, t - 1), n_steps=60)
    metrics = analyze_record(record, max_lag=5)
    verdict = _verdict(metrics, "lag.identified")
    # 6 snapshots: lags up to 6 // 2 = 3, compared on the 3 snapshots t >= 3
    assert verdict["outcome"] == "not_applicable" and math.isnan(verdict["estimate"])
    assert verdict["text"].startswith("not enough snapshots: 3 of 8 needed")
    assert metrics["lag"]["best_k"] is None
    assert any(text.startswith("No identifiable lag: not enough snapshots: 3 of 8") for text in _texts(metrics, "lag"))
    assert "not enough snapshots" in _suptitle(record, metrics)


def test_calibrated_noise_is_calibrated_at_the_gaussian_coverage_and_sharpness(tmp_path):
    def p_aa(shape):
        return np.exp(np.linspace(-4.0, 2.0, int(np.prod(shape)))).reshape(shape)

    record = _record(
        tmp_path, lambda rng, shape, t, h, p: h + np.sqrt(p) * rng.normal(size=shape), parameters=WIDE, p_aa=p_aa
    )
    metrics = analyze_record(record)
    verdict = _verdict(metrics, "calibration.calibrated")
    assert verdict["outcome"] == "yes"
    # ground truth: P(|z| <= 2) = 0.9545 and median |z| = 0.6745 for z ~ N(0, 1); 3000 coordinates
    assert verdict["estimate"] == pytest.approx(0.9545, abs=0.015)
    assert verdict["ci_low"] < 0.9545 < verdict["ci_high"] and 0.90 <= verdict["ci_low"] < verdict["ci_high"] <= 0.99
    intervals = metrics["calibration"]["intervals"]
    assert intervals["sharpness"] == pytest.approx(0.6745, abs=0.05)
    assert intervals["sharpness_low"] < 0.6745 < intervals["sharpness_high"]
    # the coverage is the straight count of the stored final snapshot
    final = record.snapshot(record.snapshot_steps[-1])
    covered = sum(
        int(np.count_nonzero(np.abs(f["curvature"] - f["h_exact"]) <= 2 * np.sqrt(f["filter_cov_aa"])))
        for f in final.values()
    )
    assert intervals["n_covered"] == covered and intervals["n"] == 3000
    assert any(text.startswith("P_aa is calibrated at step 200") for text in _texts(metrics, "calibration"))


@pytest.mark.parametrize("scale", [3.0, 0.01])
def test_overconfident_and_vacuous_variances_are_not_calibrated(tmp_path, scale):
    # the error is 3x (coverage P(|z| <= 2/3) = 0.50) or 1/100 of what P_aa claims (coverage 1)
    record = _record(tmp_path, lambda rng, shape, t, h, p: h + scale * rng.normal(size=shape), parameters=WIDE)
    verdict = _verdict(analyze_record(record), "calibration.calibrated")
    assert verdict["outcome"] == "no"
    assert verdict["ci_high"] < 0.90 or verdict["ci_low"] > 0.99


def test_a_constant_a_did_not_leave_its_prior_and_a_that_follows_h_did(tmp_path):
    metrics = analyze_record(_record(tmp_path, lambda rng, shape, t, h, p: np.full(shape, 0.1)))
    verdict = _verdict(metrics, "movement.left_prior")
    assert verdict["outcome"] == "no" and verdict["estimate"] == 0.0 and verdict["ci_low"] == 0.0
    assert verdict["ci_high"] < 0.05  # Wilson's upper bound for 0 of 208, z^2 / (208 + z^2) = 0.018
    assert any(text.startswith("a did not leave its prior 0.1") for text in _texts(metrics, "movement"))

    metrics = analyze_record(_record(tmp_path / "follows", lambda rng, shape, t, h, p: h.copy()))
    verdict = _verdict(metrics, "movement.left_prior")
    # a = h = 0.1 exp(2 z): |log10(a/0.1)| > log10 2 when |z| > ln 2 / 2, about 73 % of coordinates
    a = np.concatenate([_h(shape, 20).ravel() for shape in PARAMETERS.values()])
    assert verdict["estimate"] == pytest.approx(np.mean(np.abs(np.log10(a / 0.1)) > np.log10(2)), abs=1e-12)
    assert verdict["outcome"] == "yes" and verdict["ci_low"] > 0.5


def _binding_steps(kl_ratio):
    rows = step_rows(200, quantiles=False)
    for row in rows:
        if row["step"] > 30:
            row["kl_ratio"] = kl_ratio(row["step"])
    return rows


@pytest.mark.parametrize(
    ("kl_ratio", "outcome"), [(lambda step: 1.0, "yes"), (lambda step: 0.3 if step % 10 else 1.0, "no")]
)
def test_the_trust_region_binds_when_k_reaches_the_bound(tmp_path, kl_ratio, outcome):
    steps = _binding_steps(kl_ratio)
    metrics = analyze_record(_record(tmp_path, lambda rng, shape, t, h, p: h.copy(), steps=steps))
    verdict = _verdict(metrics, "trust_region.binding")
    # straight count over the step rows after the burn-in (a tenth of the run: step 20)
    late = [row["kl_ratio"] for row in steps if row["step"] > 20]
    share = np.mean(np.asarray(late) >= 0.9)
    assert verdict["estimate"] == pytest.approx(share) and verdict["outcome"] == outcome
    assert verdict["ci_low"] < share < verdict["ci_high"]
    assert any("steps after step 20" in text for text in _texts(metrics, "trust_region"))


def test_a_fixed_eta_run_has_the_trust_region_off(tmp_path):
    record = _record(tmp_path, lambda rng, shape, t, h, p: h.copy(), optimizer={"fixed_eta": 0.5})
    verdict = _verdict(analyze_record(record), "trust_region.binding")
    assert verdict["outcome"] == "not_applicable" and verdict["text"].startswith("trust region off")


def test_wilson_interval_and_block_bootstrap_by_hand():
    # Wilson (1927) for 8 of 10: centre (0.8 + 1.92/10) / 1.384, half 1.96 sqrt(0.016 + 0.0096) / 1.384
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    assert wilson_interval(0, 5)[0] == 0.0 and math.isnan(wilson_interval(0, 0)[0])
    rows = block_bootstrap_indices(10, 50, seed=1)  # blocks of ceil(10^(1/3)) = 3, wrapping
    assert rows.shape == (50, 10) and rows.min() >= 0 and rows.max() <= 9
    assert all(((row[1:3] - row[0:2]) % 10 == 1).all() for row in rows)
