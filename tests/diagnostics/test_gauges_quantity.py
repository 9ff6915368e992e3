"""The gauges quantity (issue 12, item 3) on planted records: radius, precision drift, distance moved.

Expected numbers come from the plant (pi chosen so that 1/pi = 58 var_init; eps from the step rows)
or from straight numpy over the planted arrays, never from the code under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from matplotlib.figure import Figure
from records import step_rows, write_record

from arturo_diag.diagnostics.record import RunRecord
from arturo_diag.quantities.analysis import analyze_record
from arturo_diag.quantities.gauges import DRIFT_RATIO, gauges_section
from arturo_diag.report.document import Table, to_markdown
from arturo_diag.report.figures.common import FigureSkipped
from arturo_diag.report.figures.gauges import plot_gauges
from arturo_diag.training.config import RunConfig, config_to_toml

PARAMETERS = {"net.0.weight": (6, 5), "net.0.bias": (6,), "net.2.weight": (3, 6)}  # 54 coordinates
LAYERS = {"net.0": ("net.0.weight", "net.0.bias"), "net.2": ("net.2.weight",)}
VAR_INIT = 0.01
EPS = {row["step"]: row["kl_bound"] for row in step_rows()}  # 0.1 before step 40, 0.0006 from it


def _planted(tmp_path, precision, *, drop_fields=(), var_init=VAR_INIT):
    """A finished record; ``precision(rng, shape, t)`` is pi; the weights are drawn and logged per (t, name)."""
    planted: dict[tuple[int, str], dict[str, np.ndarray]] = {}
    order = iter([])

    def arrays(rng, shape, t):
        nonlocal order
        if shape == PARAMETERS["net.0.weight"]:
            order = iter(PARAMETERS)
        name = next(order)
        h = rng.uniform(0.5, 2.0, size=shape)
        fields = {"curvature": h.copy(), "filter_cov_aa": np.full(shape, 1e-4),
                  "precision": precision(rng, shape, t), "weight": rng.normal(size=shape) + 0.1 * t}  # fmt: skip
        planted[(t, name)] = fields
        return h, fields

    run_dir = tmp_path / "run"
    config = config_to_toml(RunConfig(out=str(run_dir)).resolved())
    write_record(run_dir, arrays=arrays, parameters=PARAMETERS, var_init=var_init, config=config,
                 drop_fields=drop_fields, finish={})  # fmt: skip
    return analyze_record(run_dir), planted, run_dir


def _flat(planted, t, field, names=tuple(PARAMETERS)):
    return np.concatenate([planted[(t, n)][field].reshape(-1) for n in names])


def _verdict(metrics, vid="gauges.precision_drift"):
    (found,) = [v for v in metrics["verdicts"] if v["id"] == vid]
    return found


def test_radius_is_sqrt_2eps_over_pi_at_every_snapshot_and_layer(tmp_path):
    metrics, planted, _ = _planted(tmp_path, lambda rng, shape, t: rng.uniform(50.0, 500.0, size=shape))
    entries = metrics["gauges"]["snapshots"]
    assert [e["step"] for e in entries] == [10, 20, 30, 40, 50, 60]
    for entry in entries:
        t, eps = entry["step"] // 10, EPS[entry["step"]]
        assert entry["kl_bound"] == eps
        for layer, names in [("overall", tuple(PARAMETERS)), *LAYERS.items()]:
            pi = _flat(planted, t, "precision", names)
            radius = np.sqrt(2 * eps / pi)
            got = entry["radius"]["overall"] if layer == "overall" else entry["radius"]["layers"][layer]
            assert got["radius_median"] == pytest.approx(np.median(radius), rel=1e-12)
            assert got["radius_min"] == pytest.approx(math.sqrt(2 * eps / pi.max()), rel=1e-12)
            assert got["radius_max"] == pytest.approx(math.sqrt(2 * eps / pi.min()), rel=1e-12)
            assert got["radius_q95"] == pytest.approx(np.quantile(radius, 0.95), rel=1e-12)
    final = metrics["gauges"]["final"]["radius"]["overall"]
    (text,) = [f["text"] for f in metrics["findings"] if f["topic"] == "gauges" and "radius" in f["text"]]
    assert f"{final['radius_median']:.3g}" in text and "step 60" in text


def test_constant_precision_gives_the_radius_exactly(tmp_path):
    metrics, _, _ = _planted(tmp_path, lambda rng, shape, t: np.full(shape, 200.0))
    for entry in metrics["gauges"]["snapshots"]:
        expected = math.sqrt(2 * EPS[entry["step"]] / 200.0)
        for key in ("radius_median", "radius_min", "radius_max", "radius_q05"):
            assert entry["radius"]["overall"][key] == pytest.approx(expected, rel=1e-14)


def test_variance_58x_var_init_is_drift_yes_with_estimate_58(tmp_path):
    metrics, _, _ = _planted(tmp_path, lambda rng, shape, t: np.full(shape, 1.0 / (58 * VAR_INIT)))
    verdict = _verdict(metrics)
    assert verdict["outcome"] == "yes"
    assert verdict["estimate"] == pytest.approx(58.0, rel=1e-12)
    assert verdict["ci_low"] == pytest.approx(58.0, rel=1e-12) and verdict["ci_high"] == pytest.approx(58.0, rel=1e-12)
    drift = metrics["gauges"]["final"]["drift"]
    assert drift["overall"]["ratio_median"] == pytest.approx(58.0, rel=1e-12)
    assert drift["layers"]["net.2"]["share_drifted"] == 1.0 and drift["overall"]["drifted"] is True
    warnings = [f["text"] for f in metrics["findings"] if f["topic"] == "gauges" and f["severity"] == "warning"]
    assert any("grew 58x above var_init" in w for w in warnings)


def test_spread_variance_around_the_threshold_is_inconclusive_and_at_var_init_is_no(tmp_path):
    # ratios log-uniform over [10/3, 30]: median 10 exactly on the threshold, the interval straddles it
    def around(rng, shape, t):
        return 1.0 / (VAR_INIT * 10.0 * np.exp(rng.uniform(-math.log(3), math.log(3), size=shape)))

    metrics, planted, _ = _planted(tmp_path / "a", around)
    verdict = _verdict(metrics)
    ratios = 1.0 / (_flat(planted, 6, "precision") * VAR_INIT)
    assert verdict["estimate"] == pytest.approx(np.median(ratios), rel=1e-12)
    assert verdict["ci_low"] < DRIFT_RATIO < verdict["ci_high"]
    assert verdict["outcome"] == "inconclusive" and "inconclusive" in verdict["text"]
    metrics, _, _ = _planted(tmp_path / "b", lambda rng, shape, t: np.full(shape, 1.0 / VAR_INIT))
    assert _verdict(metrics)["outcome"] == "no" and _verdict(metrics)["estimate"] == pytest.approx(1.0)
    assert not [f for f in metrics["findings"] if f["topic"] == "gauges" and f["severity"] == "warning"]


def test_distance_from_the_first_snapshot_is_a_straight_norm(tmp_path):
    metrics, planted, _ = _planted(tmp_path, lambda rng, shape, t: np.full(shape, 100.0))
    gauges = metrics["gauges"]
    assert gauges["first_snapshot_step"] == 10 and "no step-0 weights" in gauges["distance_reference"]
    for entry in gauges["snapshots"]:
        t = entry["step"] // 10
        assert entry["reference_step"] == 10
        delta = _flat(planted, t, "weight") - _flat(planted, 1, "weight")
        assert entry["distance"]["overall"]["distance"] == pytest.approx(np.linalg.norm(delta), rel=1e-12, abs=0)
        assert entry["distance"]["overall"]["relative"] == pytest.approx(
            np.linalg.norm(delta) / np.linalg.norm(_flat(planted, 1, "weight")), rel=1e-12, abs=0
        )
        for layer, names in LAYERS.items():
            layer_delta = _flat(planted, t, "weight", names) - _flat(planted, 1, "weight", names)
            got = entry["distance"]["layers"][layer]
            assert got["distance"] == pytest.approx(np.linalg.norm(layer_delta), rel=1e-12, abs=0)
            assert got["max_abs"] == pytest.approx(np.abs(layer_delta).max(), rel=1e-12)
    texts = [f["text"] for f in metrics["findings"] if f["topic"] == "gauges"]
    assert any("from the first snapshot (step 10)" in t and "not from initialisation" in t for t in texts)


def test_missing_weights_or_precision_are_skipped_with_a_reason(tmp_path):
    metrics, _, _ = _planted(tmp_path / "w", lambda rng, shape, t: np.full(shape, 100.0), drop_fields=("weight",))
    final = metrics["gauges"]["final"]
    assert final["distance"] is None and final["skipped"]["distance"] == "the snapshot holds no weights"
    assert final["radius"] is not None and _verdict(metrics)["outcome"] == "no"
    metrics, _, run_dir = _planted(
        tmp_path / "p", lambda rng, shape, t: np.full(shape, 100.0), drop_fields=("precision",)
    )
    final = metrics["gauges"]["final"]
    assert final["radius"] is None and final["drift"] is None and "no precision" in final["skipped"]["radius"]
    assert final["distance"] is not None
    assert _verdict(metrics)["outcome"] == "not_applicable"
    assert math.isnan(_verdict(metrics)["estimate"])
    with pytest.raises(FigureSkipped, match="no precision"):
        plot_gauges(RunRecord.load(run_dir), metrics, Figure())


def test_section_has_a_per_layer_table_and_the_figure_draws(tmp_path):
    metrics, _, run_dir = _planted(tmp_path, lambda rng, shape, t: np.full(shape, 1.0 / (58 * VAR_INIT)))
    blocks = gauges_section(metrics)
    (table,) = [b for b in blocks if isinstance(b, Table)]
    assert [row[0] for row in table.rows] == ["all coordinates", "net.0", "net.2"]
    assert table.rows[0][3] == "58"
    markdown = to_markdown(blocks)
    assert "## Gauges" in markdown and "drifted far above var_init" in markdown
    fig = Figure()
    plot_gauges(RunRecord.load(run_dir), metrics, fig)
    assert len(fig.axes) == 2


def test_distance_is_from_initialisation_when_the_monitor_wrote_the_initial_weights(tmp_path):
    """A Monitor writes the weights it starts from (initial_weights.npz); the distance at each
    snapshot is ||theta - theta_0|| from them, by numpy from the record's own arrays."""
    import torch
    from torch import nn

    from arturo_diag.diagnostics.monitor import Monitor
    from arturo_diag.diagnostics.record import RunRecord
    from arturo_diag.optim import Arturo
    from arturo_diag.quantities.analysis import analyze_record

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    start = {n: p.detach().clone().numpy() for n, p in model.named_parameters()}
    optimizer = Arturo(model.parameters(), lr=0.05)
    x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    monitor = Monitor(model, optimizer, nn.functional.cross_entropy, (x, y), every=3, out=str(tmp_path / "m"))
    for _ in range(6):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        monitor.step(loss)
    monitor.finish()
    record = RunRecord.load(tmp_path / "m")
    initial = record.initial_weights()
    assert set(initial) == set(start) and all(np.array_equal(initial[n], start[n]) for n in start)
    gauges = analyze_record(record)["gauges"]
    assert gauges["first_snapshot_step"] == 0 and "initialisation" in gauges["distance_reference"]
    for entry in gauges["snapshots"]:
        weights = record.snapshot(entry["step"])
        truth = np.sqrt(sum(np.sum((weights[n]["weight"] - start[n]) ** 2) for n in start))
        assert entry["reference_step"] == 0
        assert entry["distance"]["overall"]["distance"] == pytest.approx(truth, rel=1e-12)
