"""ArturoDiagCallback (arturo_diag/integrations/lightning.py, docs/lightning.md): a real Trainer.fit of a tiny
LightningModule with arTuRO writes a run record whose numbers are the module's own (its losses, as it
recorded them in training_step; its validation losses) and torch's (the Hessian's diagonal, by
torch.autograd.functional.hessian at the final weights), and that the report renders."""

from __future__ import annotations

import importlib
import json
import math
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("pytorch_lightning")

from arturo_diag.errors import ConfigError, Diverged  # noqa: E402
from arturo_diag.integrations.lightning import ArturoDiagCallback  # noqa: E402
from arturo_diag.optim import Arturo  # noqa: E402
from arturo_diag.report.render import render_report  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*does not have many workers:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec"),
    pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`"),
]


@pytest.fixture(autouse=True)
def _torch_flags(monkeypatch):
    """Trainer(deterministic=True) switches torch's global flag on (and sets CUBLAS_WORKSPACE_CONFIG): the
    other tests get both back as they were."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    deterministic, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    yield
    torch.use_deterministic_algorithms(deterministic)
    torch.set_num_threads(threads)


def _points(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return x, (x[:, 0] + 0.5 * x[:, 1] > 0).long()


class TinyModule(pl.LightningModule):
    def __init__(self, *, fail_at: int | None = None, nan_at: int | None = None, with_loss: bool = True):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 2)).double()
        if with_loss:
            self.loss_fn = F.cross_entropy
        self.fail_at, self.nan_at = fail_at, nan_at
        self.losses: list[torch.Tensor] = []
        self.val_losses: list[float] = []

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        calls = len(self.losses) + 1
        if calls == self.fail_at:
            raise RuntimeError(f"boom at batch {calls}")
        loss = F.cross_entropy(self(x), y)
        if calls == self.nan_at:
            loss = loss * math.nan
        self.losses.append(loss.detach().clone())
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.val_losses.append(float(loss))
        self.log("val_loss", loss)

    def configure_optimizers(self):
        return Arturo(self.parameters())


def _fit(module, callback, *, max_steps=12, batch_size=16, val=None, **trainer_kwargs):
    trainer = pl.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        callbacks=[callback],
        **trainer_kwargs,
    )
    train = DataLoader(TensorDataset(*_points(64, 1)), batch_size=batch_size, shuffle=False)
    val_loader = DataLoader(TensorDataset(*val), batch_size=len(val[0])) if val is not None else None
    trainer.fit(module, train, val_loader)
    return trainer


def _hessian_diagonal(module, x, y) -> dict[str, np.ndarray]:
    """The diagonal of the loss's Hessian on (x, y) at the module's weights, by torch.autograd."""
    names = [name for name, _ in module.named_parameters()]
    shapes = [p.shape for _, p in module.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for _, p in module.named_parameters()])

    def loss(theta):
        parts, start = {}, 0
        for name, shape in zip(names, shapes):
            parts[name] = theta[start : start + shape.numel()].reshape(shape)
            start += shape.numel()
        return F.cross_entropy(torch.func.functional_call(module, parts, (x,)), y)

    diagonal = torch.autograd.functional.hessian(loss, flat).diagonal()
    out, start = {}, 0
    for name, shape in zip(names, shapes):
        out[name] = diagonal[start : start + shape.numel()].reshape(shape).numpy()
        start += shape.numel()
    return out


def _manifest(run_dir):
    return json.loads((run_dir / "record.json").read_text())


def test_a_trainer_fit_writes_a_complete_record_of_the_modules_own_numbers(tmp_path):
    run_dir = tmp_path / "run"
    probe = _points(32, 2)
    module = TinyModule()
    callback = ArturoDiagCallback(run_dir, probe, every=4)
    _fit(module, callback, val=_points(32, 3), check_val_every_n_epoch=2)

    manifest = _manifest(run_dir)
    assert manifest["status"] == "complete"
    assert manifest["kind"] == "monitor"
    assert manifest["integration"] == "lightning"
    assert manifest["model_class"] == "TinyModule"
    assert manifest["snapshot_steps"] == [4, 8, 12]
    steps = pd.read_csv(run_dir / "steps.csv")
    assert steps["step"].tolist() == list(range(1, 13))
    assert steps["loss"].tolist() == [float(loss) for loss in module.losses]  # exactly the module's
    assert steps["epoch"].tolist() == [1] * 4 + [2] * 4 + [3] * 4  # 64 points in batches of 16
    assert steps["eta"].notna().all()  # arTuRO's own step facts

    # epochs.csv: the epoch means of the module's losses; validation only after epoch 2 (the sanity
    # check's is val_losses[0]), NaN where none ran, not the stale value
    epochs = pd.read_csv(run_dir / "epochs.csv")
    assert epochs["epoch"].tolist() == [1, 2, 3]
    assert epochs["step"].tolist() == [4, 8, 12]
    means = [float(torch.stack(module.losses[4 * e : 4 * e + 4]).mean()) for e in range(3)]
    np.testing.assert_allclose(epochs["train_loss"], means, rtol=1e-12)
    assert len(module.val_losses) == 2
    assert math.isnan(epochs["test_loss"][0]) and math.isnan(epochs["test_loss"][2])
    assert epochs["test_loss"][1] == pytest.approx(module.val_losses[1], rel=1e-12)
    assert epochs["test_accuracy"].isna().all()  # the module logs no val_acc

    with np.load(run_dir / "snapshots" / "step_0000012.npz") as snapshot:
        expected = _hessian_diagonal(module, *probe)
        for name, p in module.named_parameters():
            np.testing.assert_array_equal(snapshot[f"{name}/weight"], p.detach().numpy())
            np.testing.assert_allclose(snapshot[f"{name}/h_exact"], expected[name], rtol=1e-10, atol=1e-10)
        assert float(np.abs(expected["net.0.weight"]).max()) > 1e-3  # a diagonal that is not ~0

    render_report(run_dir)
    assert (run_dir / "report.md").stat().st_size > 0


def test_without_a_probe_batch_h_is_taken_on_the_first_training_batch(tmp_path):
    run_dir = tmp_path / "run"
    module = TinyModule()
    _fit(module, ArturoDiagCallback(run_dir, every=4), max_steps=4)
    manifest = _manifest(run_dir)
    assert manifest["status"] == "complete"
    assert manifest["probe_batch_source"] == "first_training_batch"
    x, y = _points(64, 1)
    expected = _hessian_diagonal(module, x[:16], y[:16])  # shuffle=False: the first batch
    with np.load(run_dir / "snapshots" / "step_0000004.npz") as snapshot:
        for name in expected:
            np.testing.assert_allclose(snapshot[f"{name}/h_exact"], expected[name], rtol=1e-10, atol=1e-10)


def test_gradient_accumulation_records_optimizer_steps_and_their_mean_loss(tmp_path):
    run_dir = tmp_path / "run"
    module = TinyModule()
    # 4 batches an epoch, 2 per step: 2 steps an epoch
    trainer = _fit(module, ArturoDiagCallback(run_dir, _points(8, 2), every=2), max_steps=4, accumulate_grad_batches=2)
    assert trainer.global_step == 4
    steps = pd.read_csv(run_dir / "steps.csv")
    assert steps["step"].tolist() == [1, 2, 3, 4]
    assert steps["epoch"].tolist() == [1, 1, 2, 2]
    pairs = [(float(module.losses[2 * i]) + float(module.losses[2 * i + 1])) / 2 for i in range(4)]
    np.testing.assert_allclose(steps["loss"], pairs, rtol=1e-14)
    assert _manifest(run_dir)["snapshot_steps"] == [2, 4]


def test_an_exception_in_training_step_leaves_the_record_failed_and_released(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(RuntimeError, match="boom at batch 6"):
        _fit(TinyModule(fail_at=6), ArturoDiagCallback(run_dir, _points(8, 2), every=4))
    manifest = _manifest(run_dir)
    assert manifest["status"] == "failed"
    assert "boom at batch 6" in manifest["error"]
    assert len(pd.read_csv(run_dir / "steps.csv")) == 5
    assert (run_dir / ".arturo-diag.lock").read_text() == ""  # released (docs/record.md, "Locks")


def test_a_non_finite_loss_stops_the_fit_with_diverged_and_a_diverged_record(tmp_path):
    run_dir = tmp_path / "run"
    module = TinyModule(nan_at=3)
    with pytest.raises(Diverged, match="step 3"):
        _fit(module, ArturoDiagCallback(run_dir, _points(8, 2), every=4))
    assert len(module.losses) == 3  # no batch after the diverged step
    manifest = _manifest(run_dir)
    assert manifest["status"] == "diverged"
    assert manifest["divergence"]["step"] == 3 and manifest["divergence"]["quantity"] == "loss"


def test_a_module_without_a_loss_is_refused_before_anything_is_written(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError) as error:
        _fit(TinyModule(with_loss=False), ArturoDiagCallback(run_dir, _points(8, 2)))
    assert error.value.field == "loss_fn"
    assert not run_dir.exists()
    # given as an argument instead, the same module trains and is recorded
    module = TinyModule(with_loss=False)
    _fit(module, ArturoDiagCallback(run_dir, _points(8, 2), loss_fn=F.cross_entropy, every=2), max_steps=2)
    assert _manifest(run_dir)["status"] == "complete"


def test_a_module_without_forward_is_refused(tmp_path):
    class NoForward(TinyModule):
        forward = pl.LightningModule.forward

    with pytest.raises(ConfigError) as error:
        _fit(NoForward(), ArturoDiagCallback(tmp_path / "run", _points(8, 2)))
    assert error.value.field == "forward"
    assert not (tmp_path / "run").exists()


def test_more_than_one_process_is_refused(tmp_path):
    class Trainer:  # what setup reads of a DDP trainer
        world_size = 2

    with pytest.raises(ConfigError) as error:
        ArturoDiagCallback(tmp_path / "run", _points(8, 2)).setup(Trainer(), TinyModule(), "fit")
    assert error.value.field == "trainer.world_size" and error.value.value == 2


def test_monitor_arguments_are_checked_when_the_callback_is_made(tmp_path):
    with pytest.raises(TypeError, match="'sample'"):
        ArturoDiagCallback(tmp_path / "run", _points(8, 2), sample=3)
    with pytest.raises(TypeError, match="'model'"):
        ArturoDiagCallback(tmp_path / "run", _points(8, 2), model=nn.Linear(1, 1))
    with pytest.raises(ValueError, match="every"):
        ArturoDiagCallback(tmp_path / "run", _points(8, 2), every=0)


def test_without_lightning_the_import_names_the_extra(monkeypatch):
    monkeypatch.delitem(sys.modules, "arturo_diag.integrations.lightning")
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch"):
        monkeypatch.setitem(sys.modules, name, None)  # an import of it raises ImportError
    with pytest.raises(ImportError, match=r'pip install -e "\.\[lightning\]"'):
        importlib.import_module("arturo_diag.integrations.lightning")
