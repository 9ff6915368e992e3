"""The step instruments in the report: the innovations in the noise quantity and alpha in the gauges
quantity, on planted records (RecordWriter), against straight numpy over the planted arrays."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure

from arturo_diag.diagnostics.record import RecordWriter, RunRecord
from arturo_diag.quantities.analysis import analyze_record
from arturo_diag.quantities.noise import noise_section
from arturo_diag.report.document import Table
from arturo_diag.report.figures.gauges import plot_gauges
from arturo_diag.report.figures.noise import plot_noise

SHAPES = {"l1.weight": (40, 50), "l1.bias": (40,), "l2.weight": (30,)}
LAYERS = {"l1": ("l1.weight", "l1.bias"), "l2": ("l2.weight",)}
R = 2.5
ALPHAS = {1: -0.9, 2: None, 3: 0.4, 4: -15.0, 5: 1.2}  # None: that snapshot has no alpha columns


def _planted(path, *, noise=True, innovation=True, alpha=True):
    rng, own = np.random.default_rng(0), np.random.default_rng(1)  # own: the innovations' draws
    config = "[diagnostics]\nevery = 1\nprobe_size = 16\n"
    writer = RecordWriter(path, "monitor", config, SHAPES, optimizer={"lr": 0.1, "measurement_noise": R})
    planted = {}
    for step, value in ALPHAS.items():
        writer.add_step({"step": step, "loss": 1.0, "kl_bound": 0.1})
        arrays = {}
        for name, shape in SHAPES.items():
            h = rng.uniform(0.5, 2.0, shape)
            fields = {"curvature": h, "filter_cov_aa": np.full(shape, 0.01), "weight": rng.normal(size=shape),
                      "precision": np.full(shape, 100.0), "h_exact": h}  # fmt: skip
            if noise:
                fields |= {
                    "grad_var": 1e-5 * np.exp(rng.normal(0, 0.5, shape)),
                    "grad_mean": rng.normal(0, 1e-3, shape),
                }
            if innovation:
                s = R + own.uniform(0.0, 0.1, shape)
                scale = 1e-3 if name.startswith("l1") else 1.0  # l2's residuals as the filter expects
                fields |= {"innovation": scale * np.sqrt(s) * own.normal(size=shape), "innovation_var": s}
            arrays[name] = fields
        scalars = {"kl_bound": 0.1, "reference": "exact", "exact_method": "hvp", "probe_loss": 1.0}
        if alpha and value is not None:
            scalars |= {"alpha": value, "alpha_f0": 1.0 + step, "alpha_f1": 0.5 + step, "alpha_df0": -0.1 * step,
                        "alpha_df1": 0.01 * step}  # fmt: skip
        writer.add_snapshot(step, scalars, arrays)
        planted[step] = arrays
    writer.finish()
    return planted


def _flat(arrays, names, field):
    return np.concatenate([arrays[n][field].reshape(-1) for n in names])


def test_noise_carries_the_innovations_per_layer_and_snapshot(tmp_path):
    planted = _planted(tmp_path / "run")
    noise = analyze_record(tmp_path / "run")["noise"]
    assert [e["step"] for e in noise["snapshots"]] == list(ALPHAS)
    for entry in noise["snapshots"]:
        arrays = planted[entry["step"]]
        for layer, names in [("overall", tuple(SHAPES)), *LAYERS.items()]:
            got = entry["overall"] if layer == "overall" else entry["layers"][layer]
            d, s = _flat(arrays, names, "innovation"), _flat(arrays, names, "innovation_var")
            assert got["innovation_sq_median"] == pytest.approx(np.median(d**2), rel=1e-12)
            assert got["innovation_var_median"] == pytest.approx(np.median(s), rel=1e-12)
            assert got["normalised_innovation_median"] == pytest.approx(np.median(d**2 / s), rel=1e-12)
            assert got["normalised_innovation_mean"] == pytest.approx(np.mean(d**2 / s), rel=1e-12)
            assert got["variance_median"] == pytest.approx(np.median(_flat(arrays, names, "grad_var")), rel=1e-12)
    layers = noise["final"]["layers"]
    assert 0.3 < layers["l2"]["normalised_innovation_median"] < 0.65  # chi-squared(1): 0.455
    assert layers["l1"]["normalised_innovation_median"] < 1e-5
    assert noise["chi2_median"] == pytest.approx(0.4549364, abs=1e-6)


def test_the_verdict_is_the_same_with_and_without_the_innovations(tmp_path):
    _planted(tmp_path / "with")
    _planted(tmp_path / "without", innovation=False)
    with_, without = analyze_record(tmp_path / "with"), analyze_record(tmp_path / "without")
    assert with_["noise"]["verdict"] == without["noise"]["verdict"]
    pick = lambda m: next(v for v in m["verdicts"] if v["id"] == "noise.r_calibrated")  # noqa: E731
    assert pick(with_) == pick(without)
    assert all(
        without["noise"]["final"]["overall"][k] is None
        for k in ("innovation_sq_median", "innovation_var_median", "normalised_innovation_median")
    )
    (table,) = [b for b in noise_section(without) if isinstance(b, Table)]
    assert table.header == ("layer", "coordinates", "median variance", "r / median", "mean GSNR")
    assert not any(f["text"].startswith("Innovations") for f in without["findings"])


def test_the_table_and_the_finding_put_r_the_variance_and_the_innovations_side_by_side(tmp_path):
    planted = _planted(tmp_path / "run")
    metrics = analyze_record(tmp_path / "run")
    final = planted[max(ALPHAS)]
    names = tuple(SHAPES)
    d, s = _flat(final, names, "innovation"), _flat(final, names, "innovation_var")
    (table,) = [b for b in noise_section(metrics) if isinstance(b, Table)]
    assert table.header[-3:] == ("median d^2", "median s", "median d^2/s")
    row = next(r for r in table.rows if r[0] == "all coordinates")
    assert [float(v) for v in row[-3:]] == pytest.approx([np.median(d**2), np.median(s), np.median(d**2 / s)], rel=5e-3)
    (finding,) = [f for f in metrics["findings"] if f["text"].startswith("Innovations")]
    variance = np.median(_flat(final, names, "grad_var"))
    assert f"r = {R:g}" in finding["text"]
    assert f"variance median {variance:.3g}" in finding["text"]
    assert f"median d^2 {np.median(d**2):.3g}" in finding["text"]
    assert "median 0.455, mean 1" in finding["text"]
    fig = Figure()
    plot_noise(RunRecord.load(tmp_path / "run"), metrics, fig)
    (line,) = [ln for ln in fig.axes[0].get_lines() if ln.get_label().startswith("median d^2")]
    expected = [np.median(_flat(planted[t], names, "innovation") ** 2) for t in ALPHAS]
    np.testing.assert_allclose(line.get_ydata(), expected, rtol=1e-12)


def test_innovations_without_the_noise_instrument_leave_the_verdict_not_applicable(tmp_path):
    _planted(tmp_path / "run", noise=False)
    metrics = analyze_record(tmp_path / "run")
    (verdict,) = [v for v in metrics["verdicts"] if v["id"] == "noise.r_calibrated"]
    assert verdict["outcome"] == "not_applicable" and "No snapshot holds" in verdict["text"]
    overall = metrics["noise"]["final"]["overall"]
    assert overall["variance_median"] is None and overall["innovation_var_median"] > R
    assert overall["n"] == sum(int(np.prod(s)) for s in SHAPES.values())


def test_gauges_carry_alpha_per_snapshot_its_summary_finding_and_line(tmp_path):
    _planted(tmp_path / "run")
    metrics = analyze_record(tmp_path / "run")
    gauges = metrics["gauges"]
    for entry in gauges["snapshots"]:
        value = ALPHAS[entry["step"]]
        if value is None:
            assert entry["alpha"] is None
        else:
            t = entry["step"]
            assert entry["alpha"] == pytest.approx({"alpha": value, "f0": 1.0 + t, "f1": 0.5 + t, "df0": -0.1 * t,
                                                    "df1": 0.01 * t})  # fmt: skip
    values = np.array([v for v in ALPHAS.values() if v is not None])
    summary = gauges["alpha"]
    assert summary["n"] == 4
    assert summary["median"] == pytest.approx(np.median(values))  # (-0.9 + 0.4) / 2 = -0.25
    assert summary["share_overshoot"] == pytest.approx(0.5)
    assert [summary["q10"], summary["q90"]] == pytest.approx(np.quantile(values, (0.1, 0.9)).tolist())
    (finding,) = [f for f in metrics["findings"] if f["topic"] == "gauges" and "alpha" in f["text"]]
    assert "median -0.25 over 4 snapshots" in finding["text"] and "50% of them overshoot" in finding["text"]
    fig = Figure()
    plot_gauges(RunRecord.load(tmp_path / "run"), metrics, fig)
    assert len(fig.axes) == 3
    (line,) = [ln for ln in fig.axes[2].get_lines() if ln.get_label() == "alpha of the snapshot step"]
    assert list(line.get_xdata()) == [1, 3, 4, 5]
    np.testing.assert_allclose(line.get_ydata(), values)


def test_gauges_without_alpha_have_no_summary_and_no_finding(tmp_path):
    _planted(tmp_path / "run", alpha=False)
    metrics = analyze_record(tmp_path / "run")
    assert metrics["gauges"]["alpha"] is None
    assert all(e["alpha"] is None and "alpha" not in e["skipped"] for e in metrics["gauges"]["snapshots"])
    assert not any("Cockpit's alpha" in f["text"] for f in metrics["findings"])
