"""The Monitor and the report accept any optimizer's curvature estimate (issue 13).

Hand-written loops (small float64 MLP, reference "exact") with torch Adam, IVON (``ivon``
package), the project's AdaHessian, a user's own adapter and an optimizer no adapter reads. The
stored ``curvature`` is checked against what the optimizer itself keeps, read straight from its
state in the test (not through the adapter), Adam's like-for-like comparison against a numpy
computation from the stored arrays, and calibration on a user adapter's claimed variance against
numpy; the analysis and the report run, without arTuRO's trust-region and prior verdicts.
"""

from __future__ import annotations

import json

import ivon
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torch.optim import Optimizer

from arturo_diag.diagnostics.monitor import Monitor
from arturo_diag.diagnostics.record import RunRecord
from arturo_diag.errors import RecordError
from arturo_diag.estimators import AdaHessian, CurvatureEstimate, register_adapter, unregister_adapter
from arturo_diag.quantities.analysis import analyze_record
from arturo_diag.report.render import render_report

EVERY, STEPS, BATCH, PROBE = 2, 6, 8, 16
ARTURO_ONLY = {"trust_region.binding", "movement.left_prior"}
CONFIG = f'[run]\nbatch_size = {BATCH}\n[diagnostics]\nevery = {EVERY}\nreference = "exact"\nprobe_size = {PROBE}\n'


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)).double()


def _data():
    g = torch.Generator().manual_seed(1)
    batches = [
        (torch.randn(BATCH, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (BATCH,), generator=g))
        for _ in range(STEPS)
    ]
    probe = (torch.randn(PROBE, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (PROBE,), generator=g))
    return batches, probe


def _train(tmp_path, make_optimizer, *, backward=None, read=None, instruments=()):
    """Train STEPS steps with a Monitor; ``read(optimizer, model)`` at each snapshot step gives the
    expected ``{name: array}`` straight from the optimizer's state. Returns (record, expected, dir)."""
    model = _mlp()
    optimizer = make_optimizer(model)
    batches, probe = _data()
    out = tmp_path / "run"
    monitor = Monitor(model, optimizer, F.cross_entropy, probe, every=EVERY, reference="exact", out=str(out),
                      config_toml=CONFIG, instruments=instruments, total_steps=STEPS)  # fmt: skip
    expected = {}
    for t, (x, y) in enumerate(batches, 1):
        if backward is not None:
            loss = backward(optimizer, model, x, y)
        else:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
        optimizer.step()
        monitor.step(loss.item())
        if t % EVERY == 0 and read is not None:
            expected[t] = {n: np.asarray(v, dtype=np.float64) for n, v in read(optimizer, model).items()}
    monitor.finish()
    return RunRecord.load(out), expected, out


def _check_report(out, metrics):
    ids = {v["id"] for v in metrics["verdicts"]}
    assert {"agreement.beats_constant", "agreement.scale", "agreement.shape", "lag.identified"} <= ids
    assert not ids & ARTURO_ONLY
    result = render_report(out)
    text = result.markdown.read_text(encoding="utf-8")
    assert "trust_region.binding" not in text and "movement.left_prior" not in text
    assert "only arTuRO has" in text  # the trust region's and health's sections say why
    assert "arTuRO's curvature estimate a" not in text
    return text


def _stored(record, step, field="curvature"):
    snapshot = record.snapshot(step)
    return {n: f[field] for n, f in snapshot.items() if field in f}


def test_adam_stores_v_hat_and_is_compared_like_with_like(tmp_path):
    def read(optimizer, model):  # v_hat = exp_avg_sq / (1 - beta2^t), from the state itself
        beta2 = optimizer.param_groups[0]["betas"][1]
        out = {}
        for n, p in model.named_parameters():
            s = optimizer.state[p]
            out[n] = s["exp_avg_sq"].numpy() / (1 - beta2 ** float(s["step"]))
        return out

    record, expected, out = _train(
        tmp_path, lambda m: torch.optim.Adam(m.parameters(), lr=1e-2), read=read, instruments=("noise",)
    )
    manifest = json.loads((out / "record.json").read_text())
    assert manifest["estimator"]["name"] == "adam"
    assert manifest["estimator"]["target"] == "gradient_second_moment"
    for step in record.snapshot_steps:
        stored = _stored(record, step)
        assert set(stored) == set(expected[step])
        for name, value in expected[step].items():
            np.testing.assert_allclose(stored[name], value, rtol=1e-15, atol=0)
        assert not _stored(record, step, "curvature_var")  # Adam claims no variance

    metrics = analyze_record(record)
    assert metrics["run"]["estimator"]["target"] == "gradient_second_moment"
    like = metrics["agreement"]["like_for_like"]
    assert like["rescale"] == PROBE / BATCH and like["rescale_known"]
    step = record.snapshot_steps[-1]
    snapshot = record.snapshot(step)
    names = list(record.parameters)
    v = np.concatenate([snapshot[n]["curvature"].ravel() for n in names])
    m = np.concatenate(
        [(snapshot[n]["grad_mean"] ** 2 + snapshot[n]["grad_var"] * PROBE / BATCH).ravel() for n in names]
    )
    overall = like["final"]["overall"]
    assert like["final"]["step"] == step
    assert overall["scale"]["rescaled"]["factor"] == pytest.approx(v @ m / (v @ v), rel=1e-12)
    assert overall["spearman"] == pytest.approx(stats.spearmanr(v, m).statistic, rel=1e-12)
    assert overall["relative_error"] == pytest.approx(np.linalg.norm(v - m) / np.linalg.norm(m), rel=1e-12)
    # and against h, the same stored v (the other comparison)
    h = np.concatenate([snapshot[n]["h_exact"].ravel() for n in names])
    against_h = metrics["agreement"]["final"]["overall"]
    assert against_h["scale"]["rescaled"]["factor"] == pytest.approx(v @ h / (v @ v), rel=1e-12)
    assert against_h["estimate"]["spearman"] == pytest.approx(stats.spearmanr(v, h).statistic, rel=1e-12)
    assert metrics["calibration"]["final"] is None
    assert "claims no variance" in metrics["calibration"]["reason"]
    text = _check_report(out, metrics)
    assert "Like with like" in text and "E[g_B^2]" in text
    assert "gradient_second_moment" in text  # the title section says what v estimates


def test_ivon_stores_exactly_the_package_hess_buffer(tmp_path):
    def make(model):
        return ivon.IVON(model.parameters(), lr=0.05, ess=100, beta2=0.9, hess_init=0.5)

    def backward(optimizer, model, x, y):
        with optimizer.sampled_params(train=True):
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
        return loss

    def read(optimizer, model):  # the package's flat buffer, sliced in the group's parameter order
        hess = optimizer.param_groups[0]["hess"].clone()
        out, offset = {}, 0
        for n, p in model.named_parameters():
            out[n] = hess[offset : offset + p.numel()].view(p.shape).numpy()
            offset += p.numel()
        assert offset == hess.numel()
        return out

    record, expected, out = _train(tmp_path, make, backward=backward, read=read)
    manifest = json.loads((out / "record.json").read_text())
    assert manifest["estimator"]["name"] == "ivon" and manifest["estimator"]["target"] == "hessian_diagonal"
    assert "hess" not in manifest["optimizer"] and manifest["optimizer"]["ess"] == 100
    for step in record.snapshot_steps:
        stored = _stored(record, step)
        for name, value in expected[step].items():
            assert np.array_equal(stored[name], value), (step, name)
    assert not np.allclose(expected[STEPS]["0.weight"], 0.5)  # hess moved off hess_init
    metrics = analyze_record(record)
    assert metrics["agreement"]["like_for_like"] is None  # target hessian_diagonal: h is like with like
    assert metrics["movement"]["final"] is None and metrics["movement"]["not_applicable"]
    _check_report(out, metrics)


@pytest.mark.filterwarnings("ignore:Using backward.. with create_graph=True")
def test_adahessian_stores_its_rms_of_hutchinson_samples(tmp_path):
    def backward(optimizer, model, x, y):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward(create_graph=True)
        return loss

    def read(optimizer, model):  # sqrt(v / (1 - beta2^t)) from the state
        beta2 = optimizer.param_groups[0]["betas"][1]
        out = {}
        for n, p in model.named_parameters():
            s = optimizer.state[p]
            out[n] = np.sqrt(s["exp_hessian_diag_sq"].numpy() / (1 - beta2 ** s["step"]))
        return out

    make = lambda m: AdaHessian(m.parameters(), lr=0.05, generator=torch.Generator().manual_seed(3))  # noqa: E731
    record, expected, out = _train(tmp_path, make, backward=backward, read=read)
    manifest = json.loads((out / "record.json").read_text())
    assert manifest["estimator"]["name"] == "adahessian" and manifest["estimator"]["target"] == "hessian_diagonal"
    for step in record.snapshot_steps:
        stored = _stored(record, step)
        for name, value in expected[step].items():
            np.testing.assert_allclose(stored[name], value, rtol=1e-14, atol=0)
    metrics = analyze_record(record)
    step = record.snapshot_steps[-1]
    snapshot = record.snapshot(step)
    a = np.concatenate([snapshot[n]["curvature"].ravel() for n in record.parameters])
    h = np.concatenate([snapshot[n]["h_exact"].ravel() for n in record.parameters])
    overall = metrics["agreement"]["final"]["overall"]
    assert overall["estimate"]["relative_error"] == pytest.approx(np.linalg.norm(a - h) / np.linalg.norm(h))
    _check_report(out, metrics)


class _Squares(Optimizer):
    """SGD that keeps a running mean of g^2 per coordinate and its spread; the last bias only from step 3."""

    def __init__(self, params, lr=0.05):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                state["t"] = state.get("t", 0) + 1
                if p.dim() == 1 and p.numel() == 3 and state["t"] < 3:
                    pass  # no estimate yet: the adapter lists it as missing
                else:
                    n = state["n"] = state.get("n", 0) + 1
                    g2 = p.grad * p.grad
                    mean = state.get("h", torch.zeros_like(p))
                    state["h"] = mean + (g2 - mean) / n
                    state["h_var"] = torch.full_like(p, 0.01) + (g2 - state["h"]) ** 2
                p.add_(p.grad, alpha=-group["lr"])


class _SquaresAdapter:
    name = "squares"

    def matches(self, optimizer):
        return isinstance(optimizer, _Squares)

    def estimate(self, optimizer, named_parameters):
        named = list(named_parameters)
        held = {n: optimizer.state[p] for n, p in named if "h" in optimizer.state.get(p, {})}
        return CurvatureEstimate(
            estimate={n: s["h"].clone() for n, s in held.items()},
            variance={n: s["h_var"].clone() for n, s in held.items()},
            target="hessian_diagonal",
            scale="running mean of g*g (a test's)",
            optimizer=self.name,
            missing=tuple(n for n, _ in named if n not in held),
        )


def test_a_user_adapter_with_a_variance_is_accepted_and_calibrated(tmp_path):
    register_adapter(_SquaresAdapter())
    try:

        def read(optimizer, model):
            return {
                n: optimizer.state[p]["h"].numpy() for n, p in model.named_parameters() if "h" in optimizer.state[p]
            }

        record, expected, out = _train(tmp_path, lambda m: _Squares(m.parameters()), read=read)
    finally:
        unregister_adapter("squares")
    manifest = json.loads((out / "record.json").read_text())
    assert manifest["estimator"] == {
        "name": "squares",
        "target": "hessian_diagonal",
        "scale": "running mean of g*g (a test's)",
    }
    first = record.snapshot_steps[0]
    assert "2.bias" not in _stored(record, first) and "2.bias" not in _stored(record, first, "curvature_var")
    for step in record.snapshot_steps:
        stored = _stored(record, step)
        assert set(stored) == set(expected[step])
        for name, value in expected[step].items():
            assert np.array_equal(stored[name], value)
    metrics = analyze_record(record)
    cal = metrics["calibration"]
    assert cal["variance_field"] == "curvature_var" and cal["final"]["variance"] == "curvature_var"
    step = record.snapshot_steps[-1]
    snapshot = record.snapshot(step)
    a, h, var = (
        np.concatenate([snapshot[n][f].ravel() for n in record.parameters])
        for f in ("curvature", "h_exact", "curvature_var")
    )
    coverage = np.mean(np.abs(a - h) <= 2 * np.sqrt(var))
    assert cal["final"]["overall"]["coverage"] == pytest.approx(coverage)
    assert cal["final"]["overall"]["sharpness"] == pytest.approx(np.median(np.abs(a - h) / np.sqrt(var)))
    (verdict,) = [v for v in metrics["verdicts"] if v["id"] == "calibration.calibrated"]
    assert verdict["outcome"] != "not_applicable" and "P_aa" not in verdict["text"] and "V" in verdict["text"]
    text = _check_report(out, metrics)
    assert "The optimizer claims Var(a) = V" in text


def test_an_optimizer_without_an_adapter_stores_no_estimate_and_the_report_says_so(tmp_path):
    record, _, out = _train(tmp_path, lambda m: torch.optim.SGD(m.parameters(), lr=0.05))
    assert json.loads((out / "record.json").read_text())["estimator"] is None
    assert all("curvature" not in f for f in record.snapshot(record.snapshot_steps[-1]).values())
    metrics = analyze_record(record)
    assert metrics["run"]["estimator"] is None and metrics["agreement"]["final"] is None
    text = render_report(out).markdown.read_text(encoding="utf-8")
    assert "No curvature adapter reads" in text or "no curvature adapter reads" in text


def test_record_json_estimator_is_checked(tmp_path):
    record, _, out = _train(tmp_path, lambda m: torch.optim.Adam(m.parameters(), lr=1e-2))
    path = out / "record.json"
    manifest = json.loads(path.read_text())
    manifest["estimator"] = {**manifest["estimator"], "target": "the hessian"}
    path.write_text(json.dumps(manifest))
    with pytest.raises(RecordError, match="estimator"):
        RunRecord.load(out)
