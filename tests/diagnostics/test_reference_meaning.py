"""What h is the Hessian of, stated and chosen (issue 11, item 6).

The model's mode (eval: BatchNorm running statistics; train: batch statistics; dropout off in both),
the batch (the fixed probe batch or the step's minibatch) and the loss by name are chosen, stored in
record.json and said by the report. Every h is checked against a dense ``torch.autograd.functional
.hessian`` of a loss written out by hand here (BatchNorm's two modes spelled out), not the code under
test. Own-loop records also store the model class and every param group's lr (a warning when they
differ), and layers of a bare Sequential are named with their module type.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from arturo_diag.curvature.references import REFERENCE_BATCHES, REFERENCE_MODES, loss_name
from arturo_diag.diagnostics.monitor import Monitor
from arturo_diag.diagnostics.record import RecordWriter, RunRecord
from arturo_diag.errors import ConfigError, RecordError
from arturo_diag.optim import Arturo
from arturo_diag.quantities.analysis import analyze_record
from arturo_diag.report.render import render_report
from arturo_diag.training.config import RunConfig, config_from_mapping, config_to_toml
from arturo_diag.training.datasets import batches, load_dataset
from arturo_diag.training.loop import run
from arturo_diag.training.models import build_model
from arturo_diag.training.seeding import make_generator

EVAL_WORDS = "model in eval mode (BatchNorm running statistics, dropout off)"
TRAIN_WORDS = "model in train mode (BatchNorm batch statistics, dropout off)"


def _model():
    torch.manual_seed(0)
    # a bare Sequential, BatchNorm and a dropout that must be off while h is taken
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Dropout(0.3), nn.Linear(4, 2)).double()


def _data(seed, n=12):
    generator = torch.Generator().manual_seed(seed)
    x = 2.0 * torch.randn(n, 3, generator=generator, dtype=torch.float64) + 0.5
    return x, torch.randint(0, 2, (n,), generator=generator)


def _dense(weights, running, x, target, loss, train):
    """diag of the dense Hessian of ``loss`` at ``weights`` (the snapshot's), the network written out."""
    shapes = [w.shape for w in weights]
    flat = torch.cat([w.reshape(-1) for w in weights])
    mean, var = running if running is not None else (None, None)

    def of(vector):
        w, i = [], 0
        for shape in shapes:
            w.append(vector[i : i + int(np.prod(shape))].reshape(shape))
            i += int(np.prod(shape))
        z = x @ w[0].T + w[1]
        if train:  # batch statistics (biased variance), as BatchNorm normalises in training
            mu, sigma2 = z.mean(0), z.var(0, unbiased=False)
        else:
            mu, sigma2 = mean, var
        z = (z - mu) / torch.sqrt(sigma2 + 1e-5) * w[2] + w[3]
        return loss(torch.tanh(z) @ w[4].T + w[5], target)  # dropout off

    return torch.autograd.functional.hessian(of, flat).diagonal().numpy(), float(of(flat))


def _train(out, steps, every=1, probe=None, loss_fn=nn.functional.cross_entropy, groups=None, **options):
    model = _model()
    params = groups(model) if groups else model.parameters()
    optimizer = Arturo(params, lr=0.05)
    data = [_data(10 + t) for t in range(steps)]
    if loss_fn is not nn.functional.cross_entropy:
        data = [(x, torch.randn(x.shape[0], 2, dtype=torch.float64)) for x, _ in data]
    with Monitor(model, optimizer, loss_fn, probe, every=every, out=str(out), **options) as monitor:
        for x, y in data:
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            monitor.step(loss.item(), batch=(x, y))
        monitor.finish()
    return model, data


def _snapshot_h(out, step):
    record = RunRecord.load(out)
    snap = record.snapshot(step)
    names = list(record.parameters)
    weights = [torch.from_numpy(snap[n]["weight"]) for n in names]
    h = np.concatenate([snap[n]["h_exact"].reshape(-1) for n in names])
    loss = float(record.snapshots.set_index("step").loc[step, "probe_loss"])
    return weights, h, loss


def test_train_and_eval_mode_give_different_h_each_the_hessian_of_its_mode(tmp_path):
    probe = _data(1)
    results = {}
    for mode in ("eval", "train"):
        model, _ = _train(tmp_path / mode, steps=1, probe=probe, reference_mode=mode)
        # one step, snapshot after it: the model's running statistics are the snapshot's
        running = (model[1].running_mean.detach().clone(), model[1].running_var.detach().clone())
        weights, h, probe_loss = _snapshot_h(tmp_path / mode, 1)
        expected, expected_loss = _dense(weights, running, *probe, nn.functional.cross_entropy, mode == "train")
        np.testing.assert_allclose(h, expected, rtol=1e-8, atol=1e-12)
        assert probe_loss == pytest.approx(expected_loss, rel=1e-12)
        results[mode] = h
        manifest = json.loads((tmp_path / mode / "record.json").read_text())
        assert manifest["reference_mode"] == mode and manifest["reference_batch"] == "probe"
        assert manifest["loss"] == "cross_entropy"
    # the two modes are different functions of the weights: their h differ clearly
    difference = np.linalg.norm(results["train"] - results["eval"]) / np.linalg.norm(results["eval"])
    assert difference > 0.1


def test_minibatch_reference_is_the_hessian_on_the_steps_batch(tmp_path):
    model, data = _train(
        tmp_path / "run", steps=4, every=2, loss_fn=nn.HuberLoss(), reference_batch="minibatch", reference_mode="train"
    )
    for step in (2, 4):
        weights, h, loss = _snapshot_h(tmp_path / "run", step)
        x, y = data[step - 1]  # the batch of the snapshot's own step
        expected, expected_loss = _dense(weights, None, x, y, nn.functional.huber_loss, True)
        np.testing.assert_allclose(h, expected, rtol=1e-8, atol=1e-12)
        assert loss == pytest.approx(expected_loss, rel=1e-12)
        other, _ = _dense(weights, None, *data[step - 2], nn.functional.huber_loss, True)
        assert not np.allclose(h, other, rtol=1e-3)  # another batch's Hessian is not it
    manifest = json.loads((tmp_path / "run" / "record.json").read_text())
    assert (manifest["reference_mode"], manifest["reference_batch"], manifest["loss"]) == (
        "train",
        "minibatch",
        "huber",
    )
    report = render_report(tmp_path / "run")
    text = (tmp_path / "run" / "report.md").read_text()
    stated = f"h is the exact diagonal Hessian (hvp) of the huber loss on the step's minibatch, {TRAIN_WORDS}."
    assert stated in [f["text"] for f in report.findings]
    assert f"of the huber loss on the step's minibatch, {TRAIN_WORDS}" in text.split("## Settings")[0]  # the title


def test_minibatch_reference_needs_the_batch_at_a_snapshot_step(tmp_path):
    model = _model()
    optimizer = Arturo(model.parameters(), lr=0.05)
    x, y = _data(3)
    with Monitor(
        model,
        optimizer,
        nn.functional.cross_entropy,
        None,
        every=1,
        out=str(tmp_path / "r"),
        reference_batch="minibatch",
    ) as monitor:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        with pytest.raises(ValueError, match="batch=\\(inputs, targets\\)"):
            monitor.step(0.5)
    with pytest.raises(ValueError, match="probe_batch"):
        Monitor(model, optimizer, nn.functional.cross_entropy, None, out=str(tmp_path / "s"))
    with pytest.raises(ValueError, match="reference_mode"):
        Monitor(model, optimizer, nn.functional.cross_entropy, (x, y), out=str(tmp_path / "t"), reference_mode="test")


def test_default_report_states_eval_mode_probe_batch_and_the_loss(tmp_path):
    _train(tmp_path / "run", steps=2, every=2, probe=_data(1))
    report = render_report(tmp_path / "run")
    stated = f"h is the exact diagonal Hessian (hvp) of the cross_entropy loss on the fixed probe batch, {EVAL_WORDS}."
    assert stated in [f["text"] for f in report.findings]
    text = (tmp_path / "run" / "report.md").read_text()
    title = text.split("## Settings")[0]
    assert "Model **Sequential**" in title and "not recorded" not in title.split(" on ")[0]
    assert "| reference_mode | eval |" in text and "| reference_batch | probe |" in text
    assert "| loss | cross_entropy |" in text


def test_a_record_without_the_new_keys_reads_as_eval_probe_loss_unknown(tmp_path):
    names = {"w": (3,)}
    writer = RecordWriter(tmp_path / "old", "monitor", "[diagnostics]\nevery = 1\n", names, optimizer={"lr": 0.1})
    rng = np.random.default_rng(0)
    writer.add_step({"step": 1, "loss": 1.0, "kl_bound": 0.1})
    h = rng.uniform(0.5, 2.0, 3)
    arrays = {"w": {"curvature": h * 1.1, "filter_cov_aa": np.full(3, 0.01), "weight": np.ones(3), "h_exact": h}}
    writer.add_snapshot(1, {"kl_bound": 0.1, "reference": "exact", "exact_method": "hvp", "probe_loss": 1.0}, arrays)
    writer.finish()
    manifest = json.loads((tmp_path / "old" / "record.json").read_text())
    assert not {"reference_mode", "reference_batch", "loss", "model_class", "layer_types"} & set(manifest)
    metrics = analyze_record(tmp_path / "old")
    run_metrics = metrics["run"]
    assert (run_metrics["reference_mode"], run_metrics["reference_batch"], run_metrics["loss"]) == (
        "eval",
        "probe",
        None,
    )
    stated = (
        "h is the exact diagonal Hessian (hvp) of the training loss (its function not recorded) on the fixed probe "
        f"batch, {EVAL_WORDS}."
    )
    assert stated in [f["text"] for f in metrics["findings"]]
    assert not [f for f in metrics["findings"] if f["topic"] == "param_groups"]
    # a new key with a value outside its declaration is refused, naming it
    manifest["reference_mode"] = "sideways"
    (tmp_path / "old" / "record.json").write_text(json.dumps(manifest))
    with pytest.raises(RecordError, match="reference_mode"):
        RunRecord.load(tmp_path / "old")


def _two_groups(lr_second):
    def groups(model):
        head = list(model[4].parameters())
        rest = [p for p in model.parameters() if all(p is not q for q in head)]
        return [{"params": rest}, {"params": head, **({"lr": lr_second} if lr_second is not None else {})}]

    return groups


def test_own_loop_record_stores_model_class_loss_and_every_groups_lr_and_warns(tmp_path):
    _train(tmp_path / "two", steps=2, every=2, probe=_data(1), groups=_two_groups(0.01))
    manifest = json.loads((tmp_path / "two" / "record.json").read_text())
    assert manifest["kind"] == "monitor" and manifest["model_class"] == "Sequential"
    assert [g["lr"] for g in manifest["param_groups"]] == [0.05, 0.01]
    assert [g["n_tensors"] for g in manifest["param_groups"]] == [4, 2]
    metrics = analyze_record(tmp_path / "two")
    warnings = [f for f in metrics["findings"] if f["topic"] == "param_groups"]
    assert len(warnings) == 1 and warnings[0]["severity"] == "warning"
    assert "group 1: lr 0.01" in warnings[0]["text"] and "group 0's (0.05)" in warnings[0]["text"]
    # the same groups with one lr: nothing to warn about
    _train(tmp_path / "same", steps=2, every=2, probe=_data(1), groups=_two_groups(None))
    same = analyze_record(tmp_path / "same")
    assert [g["lr"] for g in same["run"]["param_groups"]] == [0.05, 0.05]
    assert not [f for f in same["findings"] if f["topic"] == "param_groups"]


def test_layers_of_a_bare_sequential_carry_their_module_type(tmp_path):
    _train(tmp_path / "run", steps=2, every=2, probe=_data(1))
    manifest = json.loads((tmp_path / "run" / "record.json").read_text())
    parameters = manifest["parameters"]
    # the parameter names are the model's own, unchanged
    assert list(parameters) == [n for n, _ in _model().named_parameters()]
    assert {n: p["layer"] for n, p in parameters.items()} == {
        "0.weight": "0 (Linear)",
        "0.bias": "0 (Linear)",
        "1.weight": "1 (BatchNorm1d)",
        "1.bias": "1 (BatchNorm1d)",
        "4.weight": "4 (Linear)",
        "4.bias": "4 (Linear)",
    }
    assert manifest["layer_types"] == {"0": "Linear", "1": "BatchNorm1d", "4": "Linear"}
    metrics = analyze_record(tmp_path / "run")
    assert metrics["run"]["layers"] == ["0 (Linear)", "1 (BatchNorm1d)", "4 (Linear)"]
    # a named path keeps its name: only a bare index gets the type
    model = build_model("mlp", in_channels=1, num_classes=3, image_size=4)
    x, y = torch.randn(8, 1, 4, 4), torch.randint(0, 3, (8,))
    Monitor(model, Arturo(model.parameters()), nn.functional.cross_entropy, (x, y), out=str(tmp_path / "mlp")).finish()
    named = json.loads((tmp_path / "mlp" / "record.json").read_text())
    assert {p["layer"] for p in named["parameters"].values()} == {"net.1", "net.3"}
    assert named["layer_types"] == {"net.1": "Linear", "net.3": "Linear"} and named["model_class"] == "MLP"


def test_loss_names():
    assert loss_name(nn.functional.cross_entropy) == loss_name(nn.CrossEntropyLoss()) == "cross_entropy"
    assert loss_name(nn.functional.mse_loss) == loss_name(nn.MSELoss()) == "mse"
    assert loss_name(nn.HuberLoss()) == loss_name(nn.functional.huber_loss) == "huber"

    def my_objective(outputs, targets):
        return outputs.sum()

    assert loss_name(my_objective) == "my_objective" and loss_name(lambda o, t: o.sum()) == "unknown"


def test_config_and_cli_options_come_from_the_declarations(tmp_path):
    from typer.testing import CliRunner

    from cli.app import app

    config = RunConfig(reference_mode="train", reference_batch="minibatch")
    text = config_to_toml(config)
    assert 'reference_mode = "train"' in text and 'reference_batch = "minibatch"' in text
    path = tmp_path / "c.toml"
    path.write_text(text)
    assert config_from_mapping({"diagnostics": {"reference_mode": "train"}}).reference_mode == "train"
    with pytest.raises(ConfigError, match="reference_mode"):
        RunConfig(reference_mode="test")
    with pytest.raises(ConfigError, match="reference_batch"):
        RunConfig(reference_batch="all")
    result = CliRunner().invoke(app, ["compare", "--help"], env={"COLUMNS": "400"}, terminal_width=400)
    help_text = " ".join(result.output.split())
    for declaration in (REFERENCE_MODES, REFERENCE_BATCHES):
        for name, choice in declaration.items():
            assert " ".join(choice.help.split()) in help_text, name
    assert "--reference-mode" in help_text and "--reference-batch" in help_text


def test_compare_loop_takes_h_on_the_steps_minibatch(tmp_path):
    """run() hands each step's batch to the Monitor: h at step 3 is the Hessian on the 3rd batch."""
    config = RunConfig(
        model="mlp",
        dataset="teacher",
        train_size=96,
        batch_size=32,
        epochs=1,
        every=3,
        lr_milestones=(2,),
        dtype="float64",
        reference_batch="minibatch",
        reference_mode="train",
        out=str(tmp_path / "run"),
    )
    record = RunRecord.load(run(config).run_dir)
    assert record.manifest["reference_batch"] == "minibatch" and record.manifest["loss"] == "cross_entropy"
    dataset = load_dataset("teacher", seed=0, train_size=96, dtype=torch.float64)
    x, y = list(batches(dataset.x_train, dataset.y_train, 32, make_generator(0)))[2]
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
        return nn.functional.cross_entropy(torch.func.functional_call(model, params, (x,)), y)

    diagonal = torch.autograd.functional.hessian(loss, flat).diagonal().numpy()
    recorded = np.concatenate([snap[n]["h_exact"].reshape(-1) for n in names])
    np.testing.assert_allclose(recorded, diagonal, rtol=1e-9, atol=1e-12)
