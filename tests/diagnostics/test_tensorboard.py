"""The TensorBoard sink (issue 15, item 1): ``Monitor(tensorboard=True)`` writes event files whose
numbers are the record's and the report's.

The events are read back with TensorBoard's own ``EventAccumulator``; every number is checked against
``steps.csv``/``snapshots.csv`` or against numpy/scipy computations made here straight from the
snapshot files (``np.load`` of the npz), and against ``metrics.json``'s (``analyze_record``). A run
with the sink is compared bit for bit with the same run without it (the data are drawn from torch's
global random stream, so a sink that touched it would change the losses).
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

pytest.importorskip("tensorboard")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from arturo_diag.diagnostics.monitor import Monitor  # noqa: E402
from arturo_diag.diagnostics.tensorboard import TensorBoardSink  # noqa: E402
from arturo_diag.errors import ConfigError  # noqa: E402
from arturo_diag.optim import Arturo  # noqa: E402
from arturo_diag.quantities.analysis import analyze_record  # noqa: E402

STEPS, EVERY, BATCH, PROBE = 20, 5, 8, 16
# the layers of a bare nn.Sequential read "0 (Linear)", "2 (Linear)" (docs/record.md); their tags:
LAYER_TAGS = {"0 (Linear)": "0_Linear", "2 (Linear)": "2_Linear"}


def _train(out, make_optimizer, *, tensorboard):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)).double()
    optimizer = make_optimizer(model)
    probe = (torch.randn(PROBE, 4, dtype=torch.float64), torch.randint(0, 3, (PROBE,)))
    numpy_state = np.random.get_state()[1].copy()
    monitor = Monitor(model, optimizer, F.cross_entropy, probe, every=EVERY, reference="exact", out=str(out),
                      tensorboard=tensorboard, total_steps=STEPS)  # fmt: skip
    for _ in range(STEPS):
        x, y = torch.randn(BATCH, 4, dtype=torch.float64), torch.randint(0, 3, (BATCH,))  # torch's global stream
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        monitor.step(loss.item())
    monitor.finish()
    assert np.array_equal(np.random.get_state()[1], numpy_state)  # numpy's global stream untouched
    return torch.get_rng_state()


def _events(out):
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    return events


def _scalars(events, tag):
    return {e.step: e.value for e in events.Scalars(tag)}


def _snapshot(out, step, layers):
    """{group: (a, h, P_aa or None)} from the snapshot file, "all" and each layer."""
    data = np.load(out / "snapshots" / f"step_{step:07d}.npz")
    names = [key.rpartition("/")[0] for key in data.files if key.endswith("/curvature")]
    groups = {"all": names}
    for name in names:
        groups.setdefault(layers[name], []).append(name)

    def cat(names, field):
        if not all(f"{n}/{field}" in data.files for n in names):
            return None
        return np.concatenate([data[f"{n}/{field}"].ravel() for n in names])

    return {g: (cat(n, "curvature"), cat(n, "h_exact"), cat(n, "filter_cov_aa")) for g, n in groups.items()}


def _layers(out):
    import json

    manifest = json.loads((out / "record.json").read_text(encoding="utf-8"))
    return {name: p["layer"] for name, p in manifest["parameters"].items()}


def test_arturo_run_events_equal_the_record_numpy_and_the_report(tmp_path):
    out = tmp_path / "tb"
    state_with = _train(out, lambda m: Arturo(m.parameters(), lr=0.05), tensorboard=True)
    events = _events(out)
    steps = pd.read_csv(out / "steps.csv")

    # per step: the steps.csv columns, at the same steps
    for column, tag in [("loss", "train/loss"), ("eta", "trust_region/eta"), ("kl_ratio", "trust_region/kl_ratio"),
                        ("kl_bound", "trust_region/kl_bound"), ("iterations", "trust_region/iterations"),
                        ("precision_q50", "precision/q50")]:  # fmt: skip
        logged = _scalars(events, tag)
        expected = {int(s): v for s, v in zip(steps["step"], steps[column]) if math.isfinite(v)}
        assert len(expected) == STEPS and sorted(logged) == sorted(expected), tag
        np.testing.assert_allclose([logged[s] for s in expected], list(expected.values()), rtol=1e-6, err_msg=tag)

    # per snapshot: snapshots.csv's numbers, the agreement/calibration recomputed from the npz, metrics.json
    snapshots = pd.read_csv(out / "snapshots.csv")
    for column in ("eta", "probe_loss", "kl0_ratio"):
        logged = _scalars(events, f"snapshot/{column}")
        np.testing.assert_allclose([logged[s] for s in snapshots["step"]], snapshots[column], rtol=1e-6)
    layers = _layers(out)
    assert set(layers.values()) == set(LAYER_TAGS)
    metrics = analyze_record(out)
    agreement = {e["step"]: e for e in metrics["agreement"]["snapshots"]}
    calibration = {e["step"]: e for e in metrics["calibration"]["snapshots"]}
    snapshot_steps = list(range(EVERY, STEPS + 1, EVERY))
    assert sorted(agreement) == sorted(calibration) == snapshot_steps
    for step in snapshot_steps:
        for group, (a, h, p) in _snapshot(out, step, layers).items():
            tag = LAYER_TAGS.get(group, group)
            report = agreement[step]["overall" if group == "all" else "layers"]
            report = report if group == "all" else report[group]
            cal = calibration[step]["overall"] if group == "all" else calibration[step]["layers"][group]
            error, std = np.abs(a - h), np.sqrt(p)
            expected = {
                f"agreement/{tag}/relative_error": np.linalg.norm(a - h) / np.linalg.norm(h),
                f"agreement/{tag}/spearman": stats.spearmanr(a, h).statistic,
                f"scale/{tag}/c_star": a @ h / (a @ a),
                f"shape/{tag}/cosine": a @ h / np.sqrt((a @ a) * (h @ h)),
                f"calibration/{tag}/coverage_2se": np.mean(error <= 2 * std),
                f"calibration/{tag}/median_z": np.median(error / std),
            }
            from_report = {
                f"agreement/{tag}/relative_error": report["estimate"]["relative_error"],
                f"agreement/{tag}/spearman": report["estimate"]["spearman"],
                f"scale/{tag}/c_star": report["scale"]["rescaled"]["factor"],
                f"shape/{tag}/cosine": report["estimate"]["cosine"],
                f"calibration/{tag}/coverage_2se": cal["coverage"],
                f"calibration/{tag}/median_z": cal["sharpness"],
            }
            for name, value in expected.items():
                logged = _scalars(events, name)[step]
                assert logged == pytest.approx(value, rel=1e-6, abs=1e-7), (step, name)
                assert logged == pytest.approx(from_report[name], rel=1e-6, abs=1e-7), (step, name)
            # the histogram of log10(a/h) over the coordinates where both are > 0
            positive = (a > 0) & (h > 0)
            ratio = np.log10(a[positive] / h[positive])
            histogram = {e.step: e.histogram_value for e in events.Histograms(f"log_ratio/{tag}")}[step]
            assert histogram.num == positive.sum() > 0
            assert histogram.min == pytest.approx(ratio.min(), abs=1e-12)
            assert histogram.max == pytest.approx(ratio.max(), abs=1e-12)
            assert sum(histogram.bucket) == positive.sum()

    # the same run without the sink: identical losses and snapshots, and torch's random stream
    plain = tmp_path / "plain"
    state_without = _train(plain, lambda m: Arturo(m.parameters(), lr=0.05), tensorboard=False)
    assert not (plain / "tensorboard").exists()
    assert torch.equal(state_with, state_without)
    assert pd.read_csv(plain / "steps.csv")["loss"].tolist() == steps["loss"].tolist()
    with (
        np.load(out / "snapshots" / f"step_{STEPS:07d}.npz") as one,
        np.load(plain / "snapshots" / f"step_{STEPS:07d}.npz") as other,
    ):
        assert all(np.array_equal(one[k], other[k]) for k in one.files) and one.files == other.files


def test_adam_run_has_agreement_but_no_calibration_nor_trust_region_eta(tmp_path):
    out = tmp_path / "adam"
    _train(out, lambda m: torch.optim.Adam(m.parameters(), lr=0.01), tensorboard=True)
    events = _events(out)
    tags = events.Tags()["scalars"]
    assert not [t for t in tags if t.startswith("calibration/")]
    assert "trust_region/eta" not in tags and "precision/q50" not in tags
    steps = pd.read_csv(out / "steps.csv")
    logged = _scalars(events, "train/loss")
    np.testing.assert_allclose([logged[s] for s in steps["step"]], steps["loss"], rtol=1e-6)
    kl_bound = _scalars(events, "trust_region/kl_bound")  # Adam's lr
    assert sorted(kl_bound) == steps["step"].tolist() and all(v == pytest.approx(0.01) for v in kl_bound.values())
    layers = _layers(out)
    a, h, p = _snapshot(out, STEPS, layers)["all"]
    assert p is None
    logged = _scalars(events, "agreement/all/relative_error")[STEPS]
    assert logged == pytest.approx(np.linalg.norm(a - h) / np.linalg.norm(h), rel=1e-6)
    assert {f"log_ratio/{t}" for t in [*LAYER_TAGS.values(), "all"]} <= set(events.Tags()["histograms"])


def test_big_groups_are_subsampled_and_tags_sanitised(tmp_path):
    rng = np.random.default_rng(3)
    h = rng.lognormal(0, 1, size=30_000)
    a = h * rng.lognormal(0, 0.3, size=h.size)
    a[:100] = -1.0  # left out of the histogram
    p = rng.uniform(0.01, 0.2, size=h.size) ** 2
    arrays = {
        "w": {"curvature": a[:20_000].reshape(100, 200), "h_exact": h[:20_000], "filter_cov_aa": p[:20_000]},
        "v": {"curvature": a[20_000:].astype(np.float32), "h_exact": h[20_000:], "filter_cov_aa": p[20_000:]},
    }
    layers = {"w": "all", "v": "x (y)/z"}  # a layer called "all", one with a space, parentheses and a slash
    sink = TensorBoardSink(tmp_path / "events", layers=layers, spearman_sample=5_000, histogram_sample=4_000)
    sink.snapshot(7, {"eta": 0.25, "reference": "exact", "seconds": float("nan")}, arrays)
    sink.close()
    sink.close()  # idempotent
    events = EventAccumulator(str(tmp_path / "events"), size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"agreement/all/spearman", "agreement/all_2/spearman", "agreement/x_y_z/spearman"} <= tags
    assert "snapshot/eta" in tags and "snapshot/seconds" not in tags and "snapshot/reference" not in tags
    a64 = np.concatenate([a[:20_000], a[20_000:].astype(np.float32).astype(np.float64)])
    full = stats.spearmanr(a64, h).statistic
    sampled = _scalars(events, "agreement/all/spearman")[7]
    assert sampled != pytest.approx(full, abs=1e-9) and sampled == pytest.approx(full, abs=0.02)  # a 5000 draw
    np.testing.assert_allclose(  # not subsampled: the exact numbers, float32 input as float64
        _scalars(events, "agreement/all/relative_error")[7], np.linalg.norm(a64 - h) / np.linalg.norm(h), rtol=1e-6
    )
    median_z = np.median(np.abs(a64 - h) / np.sqrt(p))
    np.testing.assert_allclose(_scalars(events, "calibration/all/median_z")[7], median_z, rtol=1e-6)
    coverage = np.mean(np.abs(a64 - h) <= 2 * np.sqrt(p))
    assert 0.05 < coverage < 0.95  # a share that a wrong width would change
    np.testing.assert_allclose(_scalars(events, "calibration/all/coverage_2se")[7], coverage, rtol=1e-6)
    histogram = events.Histograms("log_ratio/all")[0].histogram_value
    assert 3_900 < histogram.num < 4_000  # 4000 drawn, the ~1/300 with a < 0 dropped
    assert events.Histograms("log_ratio/x_y_z")[0].histogram_value.num == 4_000


def test_missing_tensorboard_is_a_config_error_naming_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[tensorboard\]"'):
        TensorBoardSink(tmp_path / "events", layers={})
    assert not (tmp_path / "events").exists()
