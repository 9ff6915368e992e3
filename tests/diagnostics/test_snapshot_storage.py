"""Snapshot size under control (issue 15): float32 storage, per-tensor subsampling, the estimate.

The same seeded float64 run is recorded three ways (float64 in full, float32, subsampled); the
float32 arrays must be the float64 ones rounded, the subsampled ones the full ones at the stored
indices (a and h aligned), and the estimated snapshot size the size numpy's npz files really have.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from arturo_diag.diagnostics import snapshot_cost
from arturo_diag.diagnostics.monitor import Monitor
from arturo_diag.diagnostics.record import RunRecord
from arturo_diag.diagnostics.snapshot_cost import (
    InsufficientSpace,
    check_free_space,
    estimate_run,
    snapshot_dtype,
    subsample_indices,
)
from arturo_diag.errors import ConfigError, RecordError
from arturo_diag.optim import Arturo
from arturo_diag.quantities.analysis import analyze_record

STEPS, EVERY, BATCH = 6, 2, 16


def _model(dtype=torch.float64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 12), nn.Tanh(), nn.Linear(12, 4)).to(dtype)


def _batches(dtype=torch.float64):
    g = torch.Generator().manual_seed(3)
    data = [(torch.randn(BATCH, 5, generator=g, dtype=dtype), torch.randint(0, 4, (BATCH,), generator=g))]
    data += [(torch.randn(BATCH, 5, generator=g, dtype=dtype), torch.randint(0, 4, (BATCH,), generator=g))]
    return data


def _run(tmp_path, name, **monitor_kwargs):
    model = _model()
    optimizer = Arturo(model.parameters(), lr=0.05)
    batches = _batches()
    probe = batches[-1]
    out = tmp_path / name
    monitor_kwargs.setdefault("instruments", ("noise", "innovation"))
    with Monitor(model, optimizer, F.cross_entropy, probe, every=EVERY, out=str(out), total_steps=STEPS,
                 **monitor_kwargs) as monitor:  # fmt: skip
        for t in range(STEPS):
            x, y = batches[t % len(batches)]
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            monitor.step(loss.item())
        monitor.finish()
    return out


def _npz_dtypes(path):
    with np.load(path) as archive:
        return {archive[key].dtype for key in archive.files}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("storage")
    return {
        "full": _run(tmp, "full", snapshot_dtype="float64"),
        "f32": _run(tmp, "f32", snapshot_dtype="float32"),
        "sub": _run(tmp, "sub", subsample=7),
    }


def test_float32_arrays_are_the_float64_ones_rounded(runs):
    full, f32 = RunRecord.load(runs["full"]), RunRecord.load(runs["f32"])
    assert json.loads((runs["f32"] / "record.json").read_text())["snapshot_dtype"] == "float32"
    for step in full.snapshot_steps:
        assert _npz_dtypes(f32.snapshot_path(step)) == {np.dtype(np.float32)}
        a, b = full.snapshot(step), f32.snapshot(step)
        assert a.keys() == b.keys()
        for name in a:
            assert a[name].keys() == b[name].keys()
            for field in a[name]:
                np.testing.assert_array_equal(a[name][field].astype(np.float32), b[name][field].astype(np.float32))
    assert _npz_dtypes(runs["f32"] / "initial_weights.npz") == {np.dtype(np.float32)}
    # the training itself is untouched by the storage dtype
    np.testing.assert_array_equal(full.steps["loss"], f32.steps["loss"])


def test_auto_keeps_float64_for_small_snapshots_and_float64_models(monkeypatch):
    assert snapshot_dtype("auto", torch.float32, 1000, 6)[0] == "float64"
    assert snapshot_dtype("auto", torch.float32, 11_181_642, 6)[0] == "float32"  # ResNet-18: 537 MB
    assert snapshot_dtype("auto", torch.float64, 11_181_642, 6)[0] == "float64"  # a verification run
    assert snapshot_dtype("float32", torch.float64, 10, 6) == ("float32", "chosen")
    with pytest.raises(ConfigError, match="snapshot_dtype"):
        snapshot_dtype("float16", torch.float32, 10, 6)
    # the threshold is 64 MiB of float64
    limit = snapshot_cost.FLOAT32_ABOVE_BYTES // 8
    assert snapshot_dtype("auto", torch.float32, limit, 1)[0] == "float64"
    assert snapshot_dtype("auto", torch.float32, limit + 1, 1)[0] == "float32"


def test_subsampled_snapshots_are_the_full_ones_at_their_indices(runs):
    full, sub = RunRecord.load(runs["full"]), RunRecord.load(runs["sub"])
    assert sub.subsampled and not full.subsampled
    index = sub.subsample_index()
    # tensors of more than 7 coordinates are subsampled: 5*12, 12, 12*4; the bias of 4 is kept whole
    assert set(index) == {"0.weight", "0.bias", "2.weight"}
    assert sub.stored_shapes["2.bias"] == (4,)
    expected = subsample_indices(full.parameters, 7, 0)  # the same seeded draw, recomputed
    for name, kept in index.items():
        np.testing.assert_array_equal(kept, expected[name])
        assert kept.shape == (7,) and np.all(np.diff(kept) > 0)
    for step in full.snapshot_steps:
        a, b = full.snapshot(step), sub.snapshot(step)
        for name in a:
            for field in a[name]:
                whole = a[name][field].reshape(-1)
                kept = whole[index[name]] if name in index else whole
                np.testing.assert_array_equal(b[name][field], kept)
    weights, kept_weights = full.initial_weights(), sub.initial_weights()
    np.testing.assert_array_equal(kept_weights["0.weight"], weights["0.weight"].reshape(-1)[index["0.weight"]])
    manifest = json.loads((runs["sub"] / "record.json").read_text())
    assert manifest["subsample"] == {"per_tensor": 7, "seed": 0, "tensors": 3}
    assert manifest["parameters"]["0.weight"] == {"shape": [12, 5], "layer": "0 (Linear)", "stored": [7]}


def test_subsampled_record_is_analysed_on_its_kept_coordinates(runs):
    sub = RunRecord.load(runs["sub"])
    metrics = analyze_record(sub)
    last = sub.snapshot(sub.snapshot_steps[-1])
    a = np.concatenate([last[n]["curvature"].reshape(-1) for n in last])
    h = np.concatenate([last[n]["h_exact"].reshape(-1) for n in last])
    relative = metrics["agreement"]["final"]["overall"]["estimate"]["relative_error"]
    assert metrics["agreement"]["final"]["overall"]["estimate"]["n"] == a.size
    assert relative == pytest.approx(np.linalg.norm(a - h) / np.linalg.norm(h), rel=1e-12)


def test_the_diagonal_share_is_not_claimed_from_a_subsampled_record(tmp_path):
    out = _run(tmp_path, "spectrum", subsample=7, instruments=("spectrum",))
    share = analyze_record(out)["spectrum"]["final"]
    assert share["diag_share"] is None and "--subsample" in share["share_problem"]
    full = analyze_record(_run(tmp_path, "spectrum_full", instruments=("spectrum",)))["spectrum"]["final"]
    assert full["diag_share"] > 0 and full["share_problem"] is None


def test_reader_refuses_an_array_that_is_not_the_stored_shape(runs, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(runs["sub"], bad)
    record = RunRecord.load(bad)
    step = record.snapshot_steps[0]
    arrays = dict(np.load(record.snapshot_path(step)))
    arrays["0.weight/curvature"] = np.zeros((12, 5))  # full-shaped in a subsampled record
    np.savez(record.snapshot_path(step), **arrays)
    with pytest.raises(RecordError, match="keep 7 coordinates"):
        RunRecord.load(bad).snapshot(step)


def test_estimated_size_is_the_size_on_disk(runs):
    for name, dtype, per_tensor in (("full", "float64", None), ("f32", "float32", None), ("sub", "auto", 7)):
        record = RunRecord.load(runs[name])
        cost = estimate_run(_model(), F.cross_entropy, _batches()[-1], snapshots=len(record.snapshot_steps),
                            reference="exact", instruments=("noise", "innovation"), dtype=dtype,
                            subsample=per_tensor)  # fmt: skip
        # the fields of the last snapshot (the first has no innovation yet: the filter had no state)
        last = record.snapshot(record.snapshot_steps[-1])
        assert set(cost.fields) == set(next(iter(last.values())))
        arrays = sum(len(fields) for fields in last.values())
        size = record.snapshot_path(record.snapshot_steps[-1]).stat().st_size
        header = 300  # per array: the zip entry and the .npy header (numpy's own overhead)
        assert cost.bytes_per_snapshot <= size <= cost.bytes_per_snapshot + header * arrays
        stored = sum(math.prod(s) for s in record.stored_shapes.values())
        assert cost.stored_coordinates == stored


def test_a_run_larger_than_the_free_disk_is_refused(tmp_path, monkeypatch):
    cost = estimate_run(_model(), F.cross_entropy, _batches()[-1], snapshots=10, reference="exact", out=tmp_path)
    assert cost.free_bytes is not None and cost.disk == str(tmp_path)
    check_free_space(cost)  # fits
    cost.free_bytes = cost.total_bytes - 1
    with pytest.raises(InsufficientSpace, match="--subsample"):
        check_free_space(cost)


def test_the_probe_draws_no_random_number_and_leaves_the_model_as_it_was():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 3))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    state = torch.get_rng_state()
    cost = estimate_run(model, F.cross_entropy, (x, y), snapshots=3, reference="both", samples=4, train=True,
                        instruments=("noise", "spectrum", "alpha"))  # fmt: skip
    assert torch.equal(torch.get_rng_state(), state)
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert cost.method == "exact (hvp) + hutchinson (4 probes)"  # BatchNorm in train mode: not ggn
    assert cost.reference_seconds > 0 and cost.probe["hvp"] > 0
    # noise cannot measure batch norm on batch statistics: left out, as the Monitor leaves it out
    assert set(cost.instrument_seconds) == {"spectrum", "alpha"}
    # the spectrum runs at the first of every 9 snapshots and at the last: 2 of 3
    assert cost.probe["spectrum_runs"] == 2 and cost.probe["alpha_runs"] == 3


def test_a_slow_hvp_fallback_is_warned(monkeypatch):
    monkeypatch.setattr(snapshot_cost, "SLOW_SNAPSHOT_SECONDS", 0.0)
    model = nn.Sequential(nn.Linear(5, 8), nn.GELU(), nn.Linear(8, 3))
    cost = estimate_run(model, F.cross_entropy, (torch.randn(8, 5), torch.randint(0, 3, (8,))), snapshots=3,
                        reference="exact")  # fmt: skip
    assert "exact (hvp)" in cost.method
    assert len(cost.warnings) == 1 and "--reference hutchinson" in cost.warnings[0]
    relu = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    cost = estimate_run(relu, F.cross_entropy, (torch.randn(8, 5), torch.randint(0, 3, (8,))), snapshots=3,
                        reference="exact")  # fmt: skip
    assert cost.method == "exact (ggn)" and not cost.warnings
