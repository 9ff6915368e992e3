"""The figure functions: what they draw, when they skip, deterministic PNGs, subsampling."""

from __future__ import annotations

import copy
import json
import re
import struct

import numpy as np
import pytest
import records
from matplotlib.figure import Figure

from arturo_diag import quantities
from arturo_diag.diagnostics.record import RunRecord
from arturo_diag.quantities.analysis import analyze_record, write_metrics
from arturo_diag.report import figures
from arturo_diag.report.figures import (
    DPI,
    MAX_SCATTER_POINTS,
    FigureSkipped,
    draw_figure,
    plot_agreement,
    plot_calibration,
    plot_lag,
    plot_precision,
    plot_scatter,
    plot_training,
    plot_trust_region,
)

FIGURES = quantities.figures()
FINISH = {"model": "mlp", "dataset": "teacher", "optimizer_name": "arturo", "seconds": 1.0}
SPECS = {spec.name: spec for spec in FIGURES}


@pytest.fixture(scope="module")
def standard(shared_record_dir):
    record = RunRecord.load(shared_record_dir)
    return record, analyze_record(record)


def _draw(function, record, metrics) -> Figure:
    fig = Figure(figsize=(11, 7), dpi=DPI, layout="constrained")
    function(record, metrics, fig)
    return fig


def _labels(fig: Figure) -> list[str]:
    labels = []
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is not None:
            labels += [t.get_text() for t in legend.get_texts()]
    return labels


def test_every_figure_is_one_documented_function():
    assert [spec.name for spec in FIGURES] == [
        "agreement",
        "scatter",
        "calibration",
        "lag",
        "trust_region",
        "precision",
        "gauges",
        "noise",
        "spectrum",
        "spectrum_density",
        "training",
    ]
    for spec in FIGURES:
        assert spec.function.__name__ == f"plot_{spec.name}"
        doc = spec.function.__doc__ or ""
        assert "Needs" in doc and len(doc.split()) > 30, spec.name
        assert spec.caption


def test_draw_figure_gives_the_same_png_bytes_at_a_fixed_size(standard):
    record, metrics = standard
    first = draw_figure(SPECS["trust_region"], record, metrics)
    second = draw_figure(SPECS["trust_region"], record, metrics)
    assert first == second
    assert first.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = struct.unpack(">II", first[16:24])
    assert (width, height) == tuple(round(x * DPI) for x in SPECS["trust_region"].size)
    assert b"Software" not in first and b"Matplotlib" not in first


def test_agreement_draws_layers_overall_and_both_baselines(standard):
    record, metrics = standard
    fig = _draw(plot_agreement, record, metrics)
    labels = _labels(fig)
    for label in (
        "net.0",
        "net.2",
        "all coordinates",
        "baseline: constant 0.1",
        "baseline: previous snapshot's h",
        "baseline: zero vector (relative error 1)",
        "baseline: best constant (mean of h)",
        "baseline: constant 0.1 (no ranks: 0)",
        "a minus constant 0.1, all coordinates",
    ):
        assert label in labels
    err, diff, rho = fig.axes[:3]
    steps = [e["step"] for e in metrics["agreement"]["snapshots"]]
    overall = next(line for line in err.get_lines() if line.get_label() == "all coordinates")
    assert list(overall.get_xdata()) == steps
    expected = [e["overall"]["estimate"]["relative_error"] for e in metrics["agreement"]["snapshots"]]
    np.testing.assert_allclose(overall.get_ydata(), expected)
    zero = next(line for line in err.get_lines() if line.get_label().startswith("baseline: zero vector"))
    assert np.all(np.asarray(zero.get_ydata()) == 1.0)
    assert rho.get_ylim() == (-1.05, 1.05)
    assert "relative error" in err.get_ylabel() and "Spearman" in rho.get_ylabel()
    assert diff.get_title().startswith("difference of relative errors")


def _line(ax, label):
    return next(line for line in ax.get_lines() if line.get_label() == label)


def test_agreement_difference_panel_is_a_minus_the_constant_from_metrics_json(standard, tmp_path):
    record, metrics = standard
    write_metrics(tmp_path, metrics)
    loaded = json.loads((tmp_path / "metrics.json").read_text())
    fig = _draw(plot_agreement, record, loaded)
    diff = next(ax for ax in fig.axes if ax.get_title().startswith("difference"))
    line = _line(diff, "a minus constant 0.1, all coordinates")
    entries = loaded["agreement"]["snapshots"]
    expected = [
        e["overall"]["estimate"]["relative_error"] - e["overall"]["constant"]["relative_error"] for e in entries
    ]
    assert list(line.get_xdata()) == [e["step"] for e in entries]
    np.testing.assert_allclose(line.get_ydata(), expected, rtol=1e-12)
    zero = _line(diff, "0: a scores as the constant 0.1")
    assert np.all(np.asarray(zero.get_ydata()) == 0.0)


def test_agreement_difference_panel_tells_nearly_equal_errors_apart(standard):
    """ "15.385 vs 15.355" are one line in the top panel; the middle panel shows 0.03 and the digits."""
    record, metrics = standard
    planted = copy.deepcopy(metrics)
    for entry in planted["agreement"]["snapshots"]:
        entry["overall"]["estimate"]["relative_error"] = 15.385
        entry["overall"]["constant"]["relative_error"] = 15.355
    diff = next(ax for ax in _draw(plot_agreement, record, planted).axes if ax.get_title().startswith("difference"))
    np.testing.assert_allclose(_line(diff, "a minus constant 0.1, all coordinates").get_ydata(), 0.03, atol=1e-12)
    shown = re.search(r"\(step 60: ([0-9.]+) - ([0-9.]+) = 0\.03\)$", diff.get_title())
    assert shown, diff.get_title()
    mine, theirs = float(shown[1]), float(shown[2])
    assert mine != theirs and abs(mine - 15.385) < 0.006 and abs(theirs - 15.355) < 0.006
    assert diff.get_ylim()[0] < 0.03 < diff.get_ylim()[1]


def test_agreement_best_constant_is_the_mean_of_h(standard):
    """The best constant's line is ||mean(h) - h|| / ||h|| of each snapshot's h (straight from the
    record's arrays), never above the constant 0.1's; a best_constant entry in the metrics wins."""
    record, metrics = standard
    from_record = copy.deepcopy(metrics)
    for entry in from_record["agreement"]["snapshots"]:
        entry["overall"].pop("scale", None)
        entry["overall"].pop("best_constant", None)
    err = _draw(plot_agreement, record, from_record).axes[0]
    best = _line(err, "baseline: best constant (mean of h)")
    expected = []
    for entry in metrics["agreement"]["snapshots"]:
        h = np.concatenate([arrays["h_exact"].ravel() for arrays in record.snapshot(entry["step"]).values()])
        expected.append(np.linalg.norm(h - h.mean()) / np.linalg.norm(h))
    np.testing.assert_allclose(best.get_ydata(), expected, rtol=1e-10)
    constant = [e["overall"]["constant"]["relative_error"] for e in metrics["agreement"]["snapshots"]]
    assert np.all(np.asarray(best.get_ydata()) <= np.asarray(constant) + 1e-12)

    for path, value in ((("scale", "best_constant"), 0.123), (("best_constant",), 0.456)):
        given = copy.deepcopy(from_record)
        for entry in given["agreement"]["snapshots"]:
            *parents, key = path
            node = entry["overall"]
            for parent in parents:
                node = node.setdefault(parent, {})
            node[key] = {"relative_error": value}
        best = _line(_draw(plot_agreement, record, given).axes[0], "baseline: best constant (mean of h)")
        np.testing.assert_allclose(best.get_ydata(), value)


def _final_metrics(step: int = 60) -> dict:
    return {"run": {"n_snapshots": 6}, "agreement": {"final": {"step": step, "reference": "h_exact"}}}


def test_scatter_places_log_ratio_against_log_h_for_a_planted_ten_times_h(tmp_path):
    """a = 10 h at every coordinate: every placed point has y = log10(a/h) = 1 and x = log10|h|;
    the coordinates with h = 0 (there a = 0) and those whose sign is flipped (a/h < 0) are counted."""
    shape = (7, 5)
    zero = np.zeros(shape, dtype=bool)
    zero[0, :2] = True  # 2 zeros per parameter
    flipped = np.zeros(shape, dtype=bool)
    flipped[1, :3] = True  # 3 opposite signs per parameter
    planted = {}

    def arrays(rng, shape, t):
        h = rng.choice([-1.0, 1.0], size=shape) * 10.0 ** rng.uniform(-12, 2, size=shape)
        h[zero] = 0.0
        a = 10.0 * h
        a[flipped] = -a[flipped]
        planted.setdefault(t, []).append(h)
        return h, {"curvature": a, "filter_cov_aa": np.full(shape, 0.04), "precision": np.full(shape, 100.0)}

    parameters = {"net.0.weight": shape, "net.2.weight": shape}
    record = RunRecord.load(
        records.write_record(tmp_path / "run", arrays=arrays, parameters=parameters, kind="monitor", finish=FINISH)
    )
    fig = _draw(plot_scatter, record, _final_metrics())
    ax = fig.axes[0]
    points = np.concatenate([np.asarray(c.get_offsets()) for c in ax.collections])
    h = np.concatenate([x.ravel() for x in planted[6]])
    placed = ~np.concatenate([zero.ravel(), zero.ravel()]) & ~np.concatenate([flipped.ravel(), flipped.ravel()])
    assert len(points) == placed.sum() == 2 * (35 - 5)
    np.testing.assert_allclose(points[:, 1], 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.sort(points[:, 0]), np.sort(np.log10(np.abs(h[placed]))), rtol=1e-12)
    assert points[:, 0].max() - points[:, 0].min() > 10  # the planted 14 decades of |h|
    hidden = "10 coordinates with a/h <= 0 or h = 0 not shown"
    assert hidden in _labels(fig) and hidden in ax.get_title() and "step 60" in ax.get_title()
    assert "median log10(a/h) of those placed 1" in ax.get_title()
    assert ax.get_xscale() == ax.get_yscale() == "linear"
    lines = {line.get_linestyle(): line for line in ax.get_lines()}
    assert np.all(np.asarray(lines["-"].get_ydata()) == 0.0)  # y = 0: a = h
    x, y = (np.asarray(v, dtype=float) for v in lines["--"].get_data())
    np.testing.assert_allclose(y, np.log10(0.1 / 10.0**x))  # the prior a = 0.1
    assert ax.get_ylim()[0] < 0 and ax.get_ylim()[1] > 1


def test_scatter_counts_non_finite_coordinates_and_skips_when_none_can_be_placed(tmp_path):
    def arrays(rng, shape, t):
        h = np.abs(rng.normal(size=shape)) + 0.1
        a = h.copy()
        a[0] = np.nan
        if t == 6:
            a = -h  # nothing can be placed at the final snapshot
        return h, {"curvature": a, "filter_cov_aa": np.full(shape, 0.04)}

    parameters = {"net.0.weight": (6,)}
    record = RunRecord.load(
        records.write_record(tmp_path / "run", arrays=arrays, parameters=parameters, kind="monitor", finish=FINISH)
    )
    with pytest.raises(FigureSkipped, match="a/h > 0"):
        _draw(plot_scatter, record, _final_metrics(60))
    ax = _draw(plot_scatter, record, _final_metrics(50)).axes[0]
    assert sum(len(c.get_offsets()) for c in ax.collections) == 5
    assert "1 coordinate with a/h <= 0 or h = 0 not shown (1 of them not finite)" in ax.get_title()


def test_scatter_subsamples_large_records_deterministically(make_record):
    run_dir = make_record(parameters={"big.weight": (30_000,), "small.bias": (5,)}, every=30)
    record = RunRecord.load(run_dir)
    metrics = analyze_record(record)
    offsets = []
    for _ in range(2):
        ax = _draw(plot_scatter, record, metrics).axes[0]
        assert sum(len(c.get_offsets()) for c in ax.collections) == MAX_SCATTER_POINTS
        assert "random subsample" in ax.get_title() and "placeable coordinates" in ax.get_title()
        offsets.append(np.concatenate([np.asarray(c.get_offsets()) for c in ax.collections]))
    np.testing.assert_array_equal(offsets[0], offsets[1])


def test_many_layers_are_coloured_by_depth(make_record):
    parameters = {f"layers.{i}.weight": (3,) for i in range(12)}
    record = RunRecord.load(make_record(parameters=parameters))
    metrics = analyze_record(record)
    labels = _labels(_draw(plot_agreement, record, metrics))
    assert any(label.startswith("first layer (layers.0)") for label in labels)
    assert "last layer (layers.11)" in labels and "layers.5" not in labels
    fig = _draw(plot_scatter, record, metrics)
    assert len(fig.axes) == 2 and "layer index" in fig.axes[1].get_ylabel()  # the colour bar


def test_calibration_marks_the_calibrated_references(standard):
    record, metrics = standard
    fig = _draw(plot_calibration, record, metrics)
    by_title = {ax.get_title(): ax for ax in fig.axes}
    coverage = next(ax for title, ax in by_title.items() if title.startswith("coverage"))
    sharpness = next(ax for title, ax in by_title.items() if title.startswith("sharpness"))
    hist = next(ax for title, ax in by_title.items() if title.startswith("distribution"))
    assert any(np.allclose(line.get_ydata(), 0.9545, atol=1e-3) for line in coverage.get_lines())
    assert any(np.allclose(line.get_ydata(), 0.6745, atol=1e-3) for line in sharpness.get_lines())
    assert sharpness.get_yscale() == "log" and hist.get_xscale() == "log"
    assert "if calibrated: |N(0,1)|" in _labels(fig)
    assert metrics["calibration"]["final"]["overall"]["interpretation"] in fig.get_suptitle()


def test_lag_title_says_no_identifiable_lag_when_flat(standard):
    record, metrics = standard
    flat = copy.deepcopy(metrics)
    flat["lag"].update(identifiable=False, best_k=None)
    for curve in flat["lag"]["curves"].values():
        curve.update(identifiable=False, best_k=None, noise=1.0)
    fig = _draw(plot_lag, record, flat)
    assert "no identifiable lag" in fig.get_suptitle()
    assert "within snapshot noise (1) of the best" in _labels(fig)

    lagged = copy.deepcopy(metrics)
    lagged["lag"].update(identifiable=True, best_k=2, best_lag_steps=20.0)
    assert "a lags h by 2 snapshots (20 steps)" in _draw(plot_lag, record, lagged).get_suptitle()


def test_trust_region_marks_inactive_steps_bound_drops_and_thresholds(standard):
    record, metrics = standard
    fig = _draw(plot_trust_region, record, metrics)
    eta_ax, kl_ax = fig.axes[:2]
    labels = _labels(fig)
    assert "5/3 growth, K not evaluated (4 steps)" in labels
    assert "frozen at the floor (24 steps)" in labels
    assert "KL bound drop (x0.006)" in labels
    assert "eta* (exact root of K = eps) at snapshots" in labels
    assert eta_ax.get_yscale() == kl_ax.get_yscale() == "log"
    horizontal = {round(float(line.get_ydata()[0]), 6) for line in kl_ax.get_lines() if len(set(line.get_ydata())) == 1}
    assert {1.0, 1.1} <= horizontal
    assert any(line.get_xdata()[0] == 40 for line in kl_ax.get_lines() if line.get_linestyle() == "-.")
    assert any("peak 78" in t.get_text() for t in kl_ax.texts)


def test_precision_draws_quantiles_and_the_collapse_threshold(standard):
    record, metrics = standard
    fig = _draw(plot_precision, record, metrics)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    assert any(np.allclose(line.get_ydata(), 1.0 / (0.01 * 0.01)) for line in ax.get_lines())
    assert {"median", "1% quantile", "99% quantile"} <= set(_labels(fig))


def test_training_draws_loss_and_accuracy(standard):
    record, metrics = standard
    fig = _draw(plot_training, record, metrics)
    loss, accuracy = fig.axes[:2]
    assert {"minibatch loss", "train loss (evaluation)", "test loss (evaluation)"} <= set(_labels(fig))
    assert [line.get_label() for line in accuracy.get_lines()][:2] == ["train accuracy", "test accuracy"]
    assert "85%" in fig.get_suptitle()


def test_figures_skip_with_a_reason_when_their_data_is_missing(make_record):
    record = RunRecord.load(make_record("none", reference="none"))
    metrics = analyze_record(record)
    for function in (plot_agreement, plot_scatter, plot_calibration, plot_lag):
        with pytest.raises(FigureSkipped, match="no snapshots"):
            _draw(function, record, metrics)
    for function in (plot_trust_region, plot_precision, plot_training):
        _draw(function, record, metrics)  # drawn from steps.csv and epochs.csv

    record = RunRecord.load(make_record("no_p_aa", drop_fields=("filter_cov_aa",)))
    with pytest.raises(FigureSkipped, match="P_aa"):
        _draw(plot_calibration, record, analyze_record(record))

    record = RunRecord.load(make_record("sgd", reference="none", with_eta=False, optimizer={"name": "SGD"}))
    metrics = analyze_record(record)
    with pytest.raises(FigureSkipped, match="no eta"):
        _draw(plot_trust_region, record, metrics)
    with pytest.raises(FigureSkipped, match="no precision quantiles"):
        _draw(plot_precision, record, metrics)
    _draw(plot_training, record, metrics)


def test_precision_falls_back_to_snapshot_quantiles(make_record):
    record = RunRecord.load(make_record())
    for column in ("precision_q01", "precision_q50", "precision_q99"):
        record.steps[column] = np.nan
    metrics = analyze_record(record)
    ax = _draw(plot_precision, record, metrics).axes[0]
    assert "at snapshots" in ax.get_title()
    median = next(line for line in ax.get_lines() if line.get_label() == "median")
    assert list(median.get_xdata()) == [10, 20, 30, 40, 50, 60]


def test_report_style_does_not_leak_into_global_matplotlib_settings(standard):
    import matplotlib

    before = dict(matplotlib.rcParams)
    draw_figure(SPECS["training"], *standard)
    assert dict(matplotlib.rcParams) == before
    assert figures.matplotlib.get_backend().lower() == "agg"
