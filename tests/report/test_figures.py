"""The figure functions: what they draw, when they skip, deterministic PNGs, subsampling."""

from __future__ import annotations

import copy
import struct

import numpy as np
import pytest
from matplotlib.figure import Figure

from arturo_diag import quantities
from arturo_diag.diagnostics.record import RunRecord
from arturo_diag.quantities.analysis import analyze_record
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
        "baseline: constant 0.1 (no ranks: 0)",
    ):
        assert label in labels
    err, rho = fig.axes[:2]
    steps = [e["step"] for e in metrics["agreement"]["snapshots"]]
    overall = next(line for line in err.get_lines() if line.get_label() == "all coordinates")
    assert list(overall.get_xdata()) == steps
    expected = [e["overall"]["estimate"]["relative_error"] for e in metrics["agreement"]["snapshots"]]
    np.testing.assert_allclose(overall.get_ydata(), expected)
    assert rho.get_ylim() == (-1.05, 1.05)
    assert "relative error" in err.get_ylabel() and "Spearman" in rho.get_ylabel()


def test_scatter_marks_signs_diagonal_and_prior(standard):
    record, metrics = standard
    fig = _draw(plot_scatter, record, metrics)
    ax = fig.axes[0]
    assert ax.get_xscale() == ax.get_yscale() == "log"
    labels = _labels(fig)
    assert {"same sign", "opposite sign", "y = x (a = h)", "0.1 = prior (initial a)"} <= set(labels)
    assert sum(len(c.get_offsets()) for c in ax.collections) == 26
    assert "step 60" in ax.get_title() and "opposite signs" in ax.get_title()
    assert any(np.allclose(line.get_ydata(), 0.1) for line in ax.get_lines())


def test_scatter_subsamples_large_records_deterministically(make_record):
    run_dir = make_record(parameters={"big.weight": (30_000,), "small.bias": (5,)}, every=30)
    record = RunRecord.load(run_dir)
    metrics = analyze_record(record)
    offsets = []
    for _ in range(2):
        ax = _draw(plot_scatter, record, metrics).axes[0]
        assert sum(len(c.get_offsets()) for c in ax.collections) == MAX_SCATTER_POINTS
        assert "random subsample" in ax.get_title()
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
    assert "lags h by about 2 snapshots (20 steps)" in _draw(plot_lag, record, lagged).get_suptitle()


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
