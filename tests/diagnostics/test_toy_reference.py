"""A new reference-curvature method is one function and one registration (issue 10, item 3).

A toy reference ``h_toy = 2 diag(H)`` (the exact diagonal, doubled, so its values are known from
an independent dense autograd Hessian) is registered with ``register_reference`` and nothing else
is touched: the Monitor computes and stores it, the record checks require its field, the analysis
compares a with it, the findings and the report name it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from arturo_diag.curvature import references
from arturo_diag.curvature.exact import exact_diagonal
from arturo_diag.curvature.references import ReferenceEstimator, ReferenceMethod
from arturo_diag.diagnostics.monitor import Monitor
from arturo_diag.diagnostics.record import RunRecord
from arturo_diag.optim import Arturo
from arturo_diag.quantities.analysis import analyze_record
from arturo_diag.report.render import render_report


def _toy(request):
    exact = exact_diagonal(request.model, request.loss_fn, request.inputs, request.targets, method="hvp")
    return {name: {"h_toy": 2 * exact[name]} for name in request.names}, {}


TOY = ReferenceEstimator("toy", ("h_toy",), "doubled diagonal Hessian h", "doubled", {}, _toy)


@pytest.fixture
def with_toy(monkeypatch):
    # what register_reference(TOY, {...}) does, undone after the test
    monkeypatch.setitem(references._ESTIMATORS, "toy", TOY)
    monkeypatch.setitem(references._METHODS, "toy", ReferenceMethod("twice the exact diagonal", ("toy",)))


def _train(out, reference):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(16, 3, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 2, (16,), generator=generator)
    optimizer = Arturo(model.parameters(), lr=0.05)
    loss_fn = nn.functional.cross_entropy
    probe = (x[:8].clone(), y[:8].clone())
    with Monitor(model, optimizer, loss_fn, probe, every=2, reference=reference, out=str(out)) as monitor:
        for _ in range(4):
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            monitor.step(loss.item())
        monitor.finish()
    return model, loss_fn, probe


def _dense_diagonal(model, loss_fn, probe):
    """diag of the full autograd Hessian of the probe loss (independent of curvature/)."""
    params = list(model.parameters())
    shapes = [p.shape for p in params]
    flat = torch.cat([p.detach().reshape(-1) for p in params])

    def loss_of(vector):
        chunks, i = [], 0
        for shape in shapes:
            n = int(np.prod(shape))
            chunks.append(vector[i : i + n].reshape(shape))
            i += n
        out = probe[0]
        out = torch.tanh(out @ chunks[0].T + chunks[1]) @ chunks[2].T + chunks[3]
        return loss_fn(out, probe[1])

    return torch.autograd.functional.hessian(loss_of, flat).diagonal().numpy()


def test_a_registered_reference_is_computed_stored_compared_and_named(tmp_path, with_toy):
    model, loss_fn, probe = _train(tmp_path / "run", "toy")
    record = RunRecord.load(tmp_path / "run")
    last = record.snapshot(record.snapshot_steps[-1])
    h_toy = np.concatenate([last[name]["h_toy"].ravel() for name, _ in model.named_parameters()])
    assert np.allclose(h_toy, 2 * _dense_diagonal(model, loss_fn, probe), rtol=1e-10, atol=1e-12)
    assert set(record.snapshots["reference"]) == {"toy"}

    metrics = analyze_record(record)
    assert metrics["run"]["reference"] == "toy" and metrics["run"]["compared_against"] == "h_toy"
    a = np.concatenate([last[name]["curvature"].ravel() for name, _ in model.named_parameters()])
    relative_error = np.linalg.norm(a - h_toy) / np.linalg.norm(h_toy)
    final = metrics["agreement"]["final"]["overall"]["estimate"]["relative_error"]
    assert final == pytest.approx(relative_error, rel=1e-10)
    stated = (
        "h is the doubled diagonal Hessian h of the cross_entropy loss on the fixed probe batch, "
        "model in eval mode (BatchNorm running statistics, dropout off)."
    )  # issue 11: the loss, the batch and the mode by name
    assert stated in [f["text"] for f in metrics["findings"]]

    markdown = render_report(tmp_path / "run").markdown.read_text(encoding="utf-8")
    assert "the doubled diagonal Hessian h" in markdown


def test_the_record_checks_require_the_registered_field(tmp_path, with_toy):
    _train(tmp_path / "run", "toy")
    from arturo_diag.diagnostics.record_checks import reference_fields

    assert reference_fields("toy") == ("h_toy",)


def test_an_unregistered_reference_is_refused(tmp_path):
    with pytest.raises(ValueError, match="reference: got 'toy'"):
        _train(tmp_path / "run", "toy")


def test_register_reference_refuses_a_taken_name_or_field():
    with pytest.raises(ValueError, match="already declared"):
        references.register_reference(references.REFERENCE_ESTIMATORS["exact"], {})
    clash = ReferenceEstimator("other", ("h_exact",), "x", "x", {}, _toy)
    with pytest.raises(ValueError, match="already declared"):
        references.register_reference(clash, {"other": ReferenceMethod("x", ("other",))})
    assert "other" not in references.REFERENCE_METHODS
