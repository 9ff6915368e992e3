"""The training loop and the Monitor: determinism, the record they write, and a hand-written loop."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from arturo_diag.diagnostics.monitor import Monitor
from arturo_diag.diagnostics.record import RunRecord
from arturo_diag.errors import ConfigError, RecordError
from arturo_diag.optim import Arturo
from arturo_diag.training.config import RunConfig, config_to_toml
from arturo_diag.training.datasets import batches, load_dataset, probe_batch
from arturo_diag.training.loop import run
from arturo_diag.training.models import build_model
from arturo_diag.training.seeding import make_generator, seed_everything

TINY = dict(
    model="mlp", dataset="teacher", train_size=96, batch_size=32, epochs=2, every=2, probe_size=16, lr_milestones=(2,)
)


def _tiny(tmp_path, name="run", **changes):
    return RunConfig(out=str(tmp_path / name), **{**TINY, **changes})


def test_same_seed_same_numbers_bit_for_bit(tmp_path):
    run(_tiny(tmp_path, "a"))
    run(_tiny(tmp_path, "b"))
    a, b = RunRecord.load(tmp_path / "a"), RunRecord.load(tmp_path / "b")
    pd.testing.assert_frame_equal(a.steps, b.steps)
    pd.testing.assert_frame_equal(a.epochs, b.epochs)
    for step in a.snapshot_steps:
        sa, sb = a.snapshot(step), b.snapshot(step)
        for name in sa:
            for field in sa[name]:
                assert np.array_equal(sa[name][field], sb[name][field])
    run(_tiny(tmp_path, "c", seed=1))
    c = RunRecord.load(tmp_path / "c")
    assert not a.steps["loss"].equals(c.steps["loss"])  # the seed matters


def test_record_has_what_docs_record_md_promises(tmp_path):
    result = run(_tiny(tmp_path, reference="both", samples=4))
    record = RunRecord.load(result.run_dir)
    assert record.complete and record.kind == "compare"
    steps = record.steps
    assert list(steps["step"]) == list(range(1, result.steps + 1)) and result.steps == 6
    assert steps["eta"].notna().all() and (steps["iterations"] >= 0).all()
    assert math.isnan(steps["eta_prev"].iloc[0]) and steps["eta_prev"].iloc[1] == steps["eta"].iloc[0]
    # the milestone at epoch 2 would act after training: the KL bound is the preset's throughout
    assert (steps["kl_bound"] == 0.08567456).all()
    assert record.snapshot_steps == [2, 4, 6]
    snap = record.snapshot(2)
    fields = set(next(iter(snap.values())))
    assert {
        "curvature",
        "filter_cov_aa",
        "intercept",
        "precision",
        "weight",
        "h_exact",
        "h_hutchinson",
        "h_hutchinson_se",
    } <= fields
    rows = record.snapshots
    assert (rows["kl0_ratio"] > 0).all() and set(rows["exact_method"]) == {"ggn"}
    assert len(record.epochs) == 2 and record.epochs["test_accuracy"].between(0, 1).all()


def test_snapshot_reference_is_the_exact_hessian_diagonal_at_the_recorded_weights(tmp_path):
    """The recorded h equals the brute-force Hessian diagonal of the probe loss at the recorded weights."""
    config = _tiny(tmp_path, dtype="float64", epochs=1, every=3)
    record = RunRecord.load(run(config).run_dir)
    dataset = load_dataset("teacher", seed=0, train_size=96, dtype=torch.float64)
    x, y = probe_batch(dataset, 16, 0)
    model = build_model("mlp", in_channels=1, num_classes=dataset.num_classes, image_size=8).double()
    snap = record.snapshot(3)
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([torch.from_numpy(snap[n]["weight"]).reshape(-1) for n in names])

    def loss(vector):
        params, offset = {}, 0
        for n, s in zip(names, shapes):
            params[n] = vector[offset : offset + s.numel()].reshape(s)
            offset += s.numel()
        return torch.nn.functional.cross_entropy(torch.func.functional_call(model, params, (x,)), y)

    diagonal = torch.autograd.functional.hessian(loss, flat).diagonal()
    recorded = torch.cat([torch.from_numpy(snap[n]["h_exact"]).reshape(-1) for n in names])
    torch.testing.assert_close(recorded, diagonal, rtol=1e-9, atol=1e-12)


def test_monitor_in_a_hand_written_loop_writes_the_same_record_as_compare(tmp_path):
    config = _tiny(tmp_path, "compare").resolved()
    run(config)
    # the same training written by hand, with the Monitor attached
    seed_everything(config.seed)
    dataset = load_dataset("teacher", seed=0, train_size=96)
    model = build_model("mlp", in_channels=1, num_classes=dataset.num_classes, image_size=8)
    optimizer = Arturo(model.parameters(), **config.arturo_kwargs())
    probe = probe_batch(dataset, 16, 0)
    monitor = Monitor(
        model,
        optimizer,
        torch.nn.functional.cross_entropy,
        probe,
        every=2,
        out=str(tmp_path / "mine"),
        config_toml=config_to_toml(config),
    )
    generator = make_generator(0)
    for epoch in (1, 2):
        for x, y in batches(dataset.x_train, dataset.y_train, 32, generator):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            monitor.step(loss.item(), epoch=epoch)
    monitor.finish()
    ours, theirs = RunRecord.load(tmp_path / "mine"), RunRecord.load(tmp_path / "compare")
    assert ours.kind == "monitor"
    pd.testing.assert_frame_equal(ours.steps, theirs.steps)
    assert ours.snapshot_steps == theirs.snapshot_steps
    for step in ours.snapshot_steps:
        a, b = ours.snapshot(step), theirs.snapshot(step)
        for name in a:
            for field in a[name]:
                assert np.array_equal(a[name][field], b[name][field]), (step, name, field)
    cols = ["step", "kl_bound", "eta", "kl0_ratio", "eta_star", "probe_loss"]
    pd.testing.assert_frame_equal(ours.snapshots[cols], theirs.snapshots[cols])


def test_interrupted_run_leaves_no_complete_looking_record(tmp_path):
    config = _tiny(tmp_path)

    def explode(event, info):
        if event == "step" and info["step"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(config, progress=explode)
    manifest = json.loads((tmp_path / "run" / "record.json").read_text())
    assert manifest["status"] != "complete"
    with pytest.raises(RecordError):
        RunRecord.load(tmp_path / "run")
    # and the directory is refused as another run's until overwrite is asked for
    with pytest.raises(RecordError):
        run(config)
    assert RunRecord.load(run(config, overwrite=True).run_dir).complete


def test_bad_config_fails_before_anything_is_written(tmp_path):
    with pytest.raises(ConfigError, match="steps"):
        _tiny(tmp_path, steps=-1)
    with pytest.raises(ConfigError, match="model"):
        _tiny(tmp_path, model="vgg")
    assert not (tmp_path / "run").exists()


def test_oracle_variant_uses_the_reference_curvature(tmp_path, monkeypatch):
    """With oracle="exact", the optimizer's curvature after each step is the minibatch's exact diagonal."""
    import arturo_diag.training.loop as loop

    seen = []
    original = loop._oracle_curvature

    def spy(*args, **kwargs):
        h = original(*args, **kwargs)
        seen.append({p: t.clone() for p, t in h.items()})
        return h

    monkeypatch.setattr(loop, "_oracle_curvature", spy)
    captured = {}
    real_step = Arturo.step

    def step(self, closure=None):
        out = real_step(self, closure)
        captured["curvature"] = {p: self.state[p]["curvature"].clone() for p in self.state}
        return out

    monkeypatch.setattr(Arturo, "step", step)
    run(_tiny(tmp_path, oracle="exact", steps=1, reference="none"))
    assert len(seen) == 1
    for p, h in seen[0].items():
        assert torch.equal(captured["curvature"][p], h.to(captured["curvature"][p].dtype))
