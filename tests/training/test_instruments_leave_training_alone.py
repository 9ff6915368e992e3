"""Instruments measure, they do not act: a run with every instrument gives the same training, bit
for bit, as one with none (same steps.csv, epochs.csv, and the same optimizer state and weights in
every snapshot), including BatchNorm's running statistics (the CNN, reference_mode train)."""

import numpy as np
import pandas as pd
import pytest
from torch import nn

from arturo_diag.curvature.instruments import INSTRUMENTS
from arturo_diag.diagnostics.record import RunRecord
from arturo_diag.training.config import RunConfig
from arturo_diag.training.loop import run
from arturo_diag.training.models import MODELS


def _tiny_bn(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """Conv -> BatchNorm -> ReLU -> Linear: running statistics an instrument must not move."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
        nn.Linear(3 * image_size * image_size, num_classes),
    )  # fmt: skip


TINY = dict(train_size=96, batch_size=32, epochs=2, every=2, probe_size=16, lr_milestones=(2,))
SHARED = ("curvature", "filter_cov_aa", "intercept", "precision", "weight", "h_exact")


@pytest.mark.parametrize(
    "setup",
    [
        dict(model="mlp", dataset="teacher"),
        dict(model="tiny_bn", dataset="digits", reference_mode="train"),
        dict(model="tiny_bn", dataset="digits", reference_mode="eval"),
    ],
    ids=["mlp", "batchnorm-train-mode", "batchnorm-eval-mode"],
)
def test_every_instrument_leaves_the_run_unchanged(tmp_path, monkeypatch, setup):
    """epochs.csv's test loss is taken in eval mode, on BatchNorm's running statistics: it differs
    if an instrument's forward pass in train mode updated them."""
    monkeypatch.setitem(MODELS, "tiny_bn", _tiny_bn)
    every = tuple(INSTRUMENTS)
    run(RunConfig(out=str(tmp_path / "all"), instruments=every, **TINY, **setup))
    run(RunConfig(out=str(tmp_path / "none"), instruments=(), **TINY, **setup))
    a, b = RunRecord.load(tmp_path / "all"), RunRecord.load(tmp_path / "none")
    skipped = set(a.manifest.get("instruments_skipped", {}))  # noise, where batch norm couples the samples
    assert set(a.instruments) == set(every) - skipped and b.instruments == {}
    assert skipped == ({"noise"} if setup.get("reference_mode") == "train" and setup["model"] == "tiny_bn" else set())
    pd.testing.assert_frame_equal(a.steps, b.steps)
    pd.testing.assert_frame_equal(a.epochs, b.epochs)
    assert a.snapshot_steps == b.snapshot_steps
    for step in a.snapshot_steps:
        sa, sb = a.snapshot(step), b.snapshot(step)
        for name in sb:
            for field in SHARED:
                if field in sb[name]:
                    assert np.array_equal(sa[name][field], sb[name][field]), (step, name, field)


def test_noise_is_left_out_with_its_reason_where_batch_norm_couples_the_samples(tmp_path, monkeypatch):
    from arturo_diag.quantities.analysis import analyze_record

    monkeypatch.setitem(MODELS, "tiny_bn", _tiny_bn)
    config = RunConfig(out=str(tmp_path / "r"), model="tiny_bn", dataset="digits", reference_mode="train", **TINY)
    run(config)
    record = RunRecord.load(tmp_path / "r")
    assert "noise" not in record.instruments and "batch norm" in record.manifest["instruments_skipped"]["noise"]
    metrics = analyze_record(record)
    assert "batch norm" in metrics["noise"]["skipped"]
    assert any(f["topic"] == "noise" and "not measured" in f["text"] for f in metrics["findings"])
    verdict = next(v for v in metrics["verdicts"] if v["id"] == "noise.r_calibrated")
    assert verdict["outcome"] == "not_applicable"
