"""The references of issue 16 through the Monitor, the CLI and a study: ``ggn``, ``cv`` and ``auto``.

Tiny float64 models, each with ground truth built here from torch alone (not from curvature/):

- a GELU MLP with LayerNorm (the GGN is not the Hessian),
- a BatchNorm CNN with the reference in train mode (batch statistics couple the rows; not the Hessian),
- a ReLU MLP (every output linear in each weight: GGN diagonal = Hessian diagonal).

``ggn`` is compared with a dense ``J^T H_out J`` (``torch.func.jacrev`` of the outputs, the loss's
dense output Hessian from ``torch.autograd.functional.hessian``), ``cv`` with the dense Hessian's
diagonal: its mean over 200 seeds must lie within 5 of its own predicted standard errors (the
per-probe variance sum_{j != i} (H - G)_ij^2 of the Rademacher estimator, from the dense matrices),
and its stored SE must be honest (its mean square against that variance; coverage of 2 SE).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from arturo_diag.curvature.references import REFERENCE_ESTIMATORS, ReferenceRequest
from arturo_diag.diagnostics.monitor import Monitor
from arturo_diag.diagnostics.record import RunRecord
from arturo_diag.diagnostics.snapshot_cost import estimate_run
from arturo_diag.errors import ConfigError
from arturo_diag.optim import Arturo
from arturo_diag.quantities.analysis import analyze_record
from arturo_diag.report.render import render_report
from arturo_diag.study.config import study_from_mapping
from arturo_diag.training.config import RunConfig, unused_fields
from cli.app import app
from tests.reliability.harness import TINY

STEPS, EVERY, SAMPLES, PROBE = 4, 2, 16, 8


def _gelu_ln() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 5), nn.LayerNorm(5), nn.GELU(), nn.Linear(5, 3))


def _bn_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3))


def _relu() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 3))


# name -> (model, input shape, reference mode)
MODELS = {
    "gelu_layernorm": (_gelu_ln, (3,), "eval"),
    "batchnorm_train": (_bn_cnn, (1, 4, 4), "train"),
    "relu": (_relu, (3,), "eval"),
}


def _data(shape):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, *shape, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (16,), generator=g)
    return x, y


def _train(out: Path, name: str, reference: str) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    make, shape, mode = MODELS[name]
    torch.manual_seed(0)
    model = make().double()
    x, y = _data(shape)
    probe = (x[:PROBE].clone(), y[:PROBE].clone())
    optimizer = Arturo(model.parameters(), lr=0.05)
    with Monitor(model, optimizer, F.cross_entropy, probe, every=EVERY, reference=reference, out=str(out),
                 samples=SAMPLES, reference_mode=mode, total_steps=STEPS) as monitor:  # fmt: skip
        for _ in range(STEPS):
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            monitor.step(loss.item())
        monitor.finish()
    return model, probe


def _stored(record: RunRecord, model: nn.Module, field: str) -> np.ndarray:
    last = record.snapshot(record.snapshot_steps[-1])
    return np.concatenate([last[name][field].ravel() for name, _ in model.named_parameters()])


# ---------------------------------------------------------------- dense ground truth (torch only)
def _dense(model: nn.Module, probe, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """(Hessian, GGN) of the probe loss as dense P x P matrices: the Hessian by
    torch.autograd.functional.hessian, the GGN as J^T H_out J with J from torch.func.jacrev."""
    net = copy.deepcopy(model)
    if mode == "train":  # batch statistics, running statistics neither read nor updated
        net.train()
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.track_running_stats, m.running_mean, m.running_var, m.num_batches_tracked = False, None, None, None
    else:
        net.eval()
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for _, p in net.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for _, p in net.named_parameters()])
    x, y = probe

    def outputs(vector):
        params, i = {}, 0
        for name, shape in zip(names, shapes):
            n = math.prod(shape)
            params[name] = vector[i : i + n].reshape(shape)
            i += n
        return torch.func.functional_call(net, params, (x,))

    hessian = torch.autograd.functional.hessian(lambda v: F.cross_entropy(outputs(v), y), flat)
    out = outputs(flat).detach()
    jacobian = torch.func.jacrev(lambda v: outputs(v).reshape(-1))(flat)
    h_out = torch.autograd.functional.hessian(lambda o: F.cross_entropy(o.reshape(out.shape), y), out.reshape(-1))
    ggn = jacobian.T @ h_out @ jacobian
    return hessian.numpy(), ggn.numpy()


def _request(model: nn.Module, probe, mode: str, seed: int, samples: int = SAMPLES) -> ReferenceRequest:
    names = tuple(n for n, _ in model.named_parameters())
    return ReferenceRequest(model, F.cross_entropy, probe[0], probe[1], names, samples=samples, seed=seed,
                            train=mode == "train")  # fmt: skip


def _flat(arrays, names) -> np.ndarray:
    return np.concatenate([arrays[n].detach().reshape(-1).numpy() for n in names])


# ---------------------------------------------------------------- ggn
@pytest.mark.parametrize("name", list(MODELS))
def test_ggn_reference_stores_the_dense_gauss_newton_diagonal(tmp_path, name):
    model, probe = _train(tmp_path / "run", name, "ggn")
    record = RunRecord.load(tmp_path / "run")
    hessian, ggn = _dense(model, probe, MODELS[name][2])
    stored = _stored(record, model, "h_ggn")
    np.testing.assert_allclose(stored, np.diag(ggn), rtol=1e-10, atol=1e-12 * np.abs(np.diag(ggn)).max())
    assert set(record.snapshots["reference"]) == {"ggn"}
    note = record.snapshots["reference_note"].iloc[-1]
    if name == "relu":  # proved: the Hessian diagonal, and it is
        np.testing.assert_allclose(stored, np.diag(hessian), rtol=1e-10, atol=1e-12 * np.abs(np.diag(hessian)).max())
        assert note.startswith("the Hessian diagonal: every output is linear in each weight")
    else:  # labelled as the GGN only, and it does differ from the Hessian's diagonal here
        assert note.startswith("the GGN diagonal, not the Hessian's")
        assert np.abs(stored - np.diag(hessian)).max() > 1e-4 * np.abs(np.diag(hessian)).max()
    metrics = analyze_record(record)
    assert metrics["run"]["reference"] == "ggn" and metrics["run"]["compared_against"] == "h_ggn"
    text = " ".join(f["text"] for f in metrics["findings"] if f["topic"] == "reference")
    assert "exact GGN diagonal" in text and note.split(" (")[0] in text


# ---------------------------------------------------------------- cv
@pytest.mark.parametrize("name", ["gelu_layernorm", "batchnorm_train"])
def test_cv_reference_is_unbiased_with_an_honest_standard_error(tmp_path, name):
    mode = MODELS[name][2]
    model, probe = _train(tmp_path / "run", name, "cv")
    record = RunRecord.load(tmp_path / "run")
    names = [n for n, _ in model.named_parameters()]
    cv = REFERENCE_ESTIMATORS["cv"]
    # the Monitor's h_cv is the registered estimator with the snapshot's seed (Monitor seed 0 + step)
    step = record.snapshot_steps[-1]
    arrays, scalars = cv.compute(_request(model, probe, mode, seed=step))
    assert np.array_equal(_stored(record, model, "h_cv"), _flat({n: arrays[n]["h_cv"] for n in names}, names))
    assert np.array_equal(_stored(record, model, "h_cv_se"), _flat({n: arrays[n]["h_cv_se"] for n in names}, names))
    assert scalars["hutchinson_samples"] == SAMPLES and record.snapshots["hutchinson_samples"].iloc[-1] == SAMPLES

    hessian, ggn = _dense(model, probe, mode)
    h = np.diag(hessian)
    residual = hessian - ggn
    variance = (residual**2).sum(1) - np.diag(residual) ** 2  # per probe: sum_{j != i} (H - G)_ij^2
    assert variance.max() > 0  # there is something to estimate
    seeds = 200
    estimates, errors = np.empty((seeds, h.size)), np.empty((seeds, h.size))
    for seed in range(seeds):
        arrays, _ = cv.compute(_request(model, probe, mode, seed=1000 + seed))
        estimates[seed] = _flat({n: arrays[n]["h_cv"] for n in names}, names)
        errors[seed] = _flat({n: arrays[n]["h_cv_se"] for n in names}, names)
    # unbiased: the mean of 200 x 16 probes within 5 of its standard errors (sd of the mean known exactly)
    sd_of_mean = np.sqrt(variance / (seeds * SAMPLES))
    scale = np.abs(h).max()
    assert np.all(np.abs(estimates.mean(0) - h) <= 5 * sd_of_mean + 1e-12 * scale)
    # honest SE: E[SE^2] = variance / S exactly (the unbiased sample variance of the S terms); pooled over
    # coordinates and seeds the ratio is 1 within a few per cent (each SE^2 has relative sd ~ sqrt(2/15))
    ratio = (errors**2).mean(0).sum() / (variance / SAMPLES).sum()
    assert 0.85 < ratio < 1.15
    # about 95 % of (seed, coordinate) within 2 SE (t with 15 dof: 93.6 %), coordinates with variance only
    live = variance > 1e-20 * scale**2
    inside = np.abs(estimates - h)[:, live] <= 2 * errors[:, live]
    assert 0.88 < inside.mean() < 0.99


def test_cv_reference_on_a_proved_model_is_exact_without_probes(tmp_path):
    model, probe = _train(tmp_path / "run", "relu", "cv")
    record = RunRecord.load(tmp_path / "run")
    hessian, _ = _dense(model, probe, "eval")
    np.testing.assert_allclose(_stored(record, model, "h_cv"), np.diag(hessian), rtol=1e-10, atol=1e-14)
    assert np.all(_stored(record, model, "h_cv_se") == 0)
    assert record.snapshots["hutchinson_samples"].iloc[-1] == 0
    assert "no probe drawn" in record.snapshots["reference_note"].iloc[-1]


# ---------------------------------------------------------------- auto
def test_auto_takes_the_exact_ggn_where_it_is_the_hessian_diagonal(tmp_path):
    model, probe = _train(tmp_path / "auto", "relu", "auto")
    _train(tmp_path / "exact", "relu", "exact")
    auto, exact = RunRecord.load(tmp_path / "auto"), RunRecord.load(tmp_path / "exact")
    for step in auto.snapshot_steps:
        a, e = auto.snapshot(step), exact.snapshot(step)
        for name, _ in model.named_parameters():
            assert set(a[name]) == set(e[name])
            assert np.array_equal(a[name]["h_exact"], e[name]["h_exact"])  # bit for bit --reference exact's
    assert list(auto.snapshots["reference"]) == list(exact.snapshots["reference"]) == ["exact"] * 2
    assert list(auto.snapshots["exact_method"]) == list(exact.snapshots["exact_method"]) == ["ggn"] * 2
    note = auto.snapshots["reference_note"].iloc[-1]
    assert note.startswith("auto: the exact GGN diagonal, which is the Hessian diagonal here (every output is linear")
    hessian, _ = _dense(model, probe, "eval")
    np.testing.assert_allclose(_stored(auto, model, "h_exact"), np.diag(hessian), rtol=1e-10, atol=1e-14)
    metrics, before = analyze_record(auto), analyze_record(exact)
    assert metrics["agreement"]["final"] == before["agreement"]["final"]  # the same numbers
    text = " ".join(f["text"] for f in metrics["findings"] if f["topic"] == "reference")
    assert "h is the exact diagonal Hessian (ggn)" in text and f"Chosen by --reference {note}." in text


@pytest.mark.parametrize("name", ["gelu_layernorm", "batchnorm_train"])
def test_auto_takes_the_control_variate_where_the_ggn_is_not_the_hessian(tmp_path, name):
    model, probe = _train(tmp_path / "auto", name, "auto")
    _train(tmp_path / "cv", name, "cv")
    auto, cv = RunRecord.load(tmp_path / "auto"), RunRecord.load(tmp_path / "cv")
    for field in ("h_cv", "h_cv_se"):
        assert np.array_equal(_stored(auto, model, field), _stored(cv, model, field))
    assert "h_exact" not in auto.snapshot(auto.snapshot_steps[-1])[next(iter(auto.parameters))]
    assert list(auto.snapshots["reference"]) == ["cv"] * 2
    note = auto.snapshots["reference_note"].iloc[-1]
    module = "1 (LayerNorm)" if name == "gelu_layernorm" else "batch norm 1 in train mode"
    assert note.startswith("auto: the control variate") and "the GGN is not the Hessian diagonal here" in note
    assert module in note and "allowed:" not in note
    metrics = analyze_record(auto)
    assert metrics["run"]["reference"] == "cv" and metrics["run"]["compared_against"] == "h_cv"
    markdown = render_report(tmp_path / "auto").markdown.read_text(encoding="utf-8")
    assert f"[{note}]" in markdown  # the title's reference line says which and why
    assert f"Chosen by --reference {note}." in markdown


# ---------------------------------------------------------------- CLI and study
@pytest.mark.parametrize(
    ("reference", "field", "said"),
    [
        ("ggn", "h_ggn", "the Hessian diagonal: every output is linear in each weight"),
        ("cv", "h_cv", "diag(H - G) = 0 proved"),
        ("auto", "h_exact", "auto: the exact GGN diagonal, which is the Hessian diagonal here"),
    ],
)
def test_compare_takes_the_reference_and_the_report_says_which_and_why(tmp_path, reference, field, said):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["compare", *TINY, "--reference", reference, "--out", str(out)])
    assert result.exit_code == 0, result.output
    record = RunRecord.load(out)
    last = record.snapshot(record.snapshot_steps[-1])
    assert all(field in fields for fields in last.values())
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert said in markdown and said in str(record.snapshots["reference_note"].iloc[-1])


def test_a_study_toml_takes_the_new_references_and_checks_their_settings():
    for reference in ("ggn", "cv", "auto"):
        data = {
            "study": {"seeds": [0], "variants": ["faithful"]},
            "setups": {"s": {"diagnostics": {"reference": reference, "samples": 8}}},
        }
        config = study_from_mapping(data, source="s.toml").setups[0].config
        assert config.reference == reference and config.samples == 8
        unused = [n for n, *_ in unused_fields(config)]
        assert unused == (["samples"] if reference == "ggn" else [])  # ggn draws no probe
    bad = {"study": {"seeds": [0], "variants": ["faithful"]}, "setups": {"s": {"diagnostics": {"reference": "gg"}}}}
    with pytest.raises(ConfigError, match="exact, hutchinson, both, none, ggn, cv, auto"):
        study_from_mapping(bad, source="s.toml")
    assert [n for n, *_ in unused_fields(RunConfig(reference="auto", exact_method="hvp"))] == ["exact_method"]
    assert [n for n, *_ in unused_fields(RunConfig(reference="hutchinson", samples=8))] == []  # as before


@pytest.mark.parametrize(
    ("name", "reference", "method"),
    [
        ("relu", "ggn", "ggn (general)"),
        ("relu", "cv", "cv (ggn; no probe: diag(H - G) = 0 proved)"),
        ("relu", "auto", "auto: exact (ggn)"),
        ("gelu_layernorm", "cv", f"cv (ggn + {SAMPLES} probes)"),
        ("gelu_layernorm", "auto", f"auto: cv (ggn + {SAMPLES} probes)"),
        ("batchnorm_train", "auto", f"auto: cv (ggn + {SAMPLES} probes)"),
    ],
)
def test_the_snapshot_estimate_times_the_reference_that_will_run(name, reference, method):
    make, shape, mode = MODELS[name]
    torch.manual_seed(0)
    model = make().double()
    x, y = _data(shape)
    cost = estimate_run(model, F.cross_entropy, (x[:PROBE], y[:PROBE]), snapshots=2, reference=reference,
                        samples=SAMPLES, train=mode == "train")  # fmt: skip
    assert cost.method == method and cost.reference_seconds > 0
    stored = {"ggn": ("h_ggn",), "cv": ("h_cv", "h_cv_se"), "auto": ("h_cv", "h_cv_se")}[reference]
    assert cost.fields[-len(stored) :] == stored  # sized for the most auto may store


def test_the_control_variates_standard_error_is_the_reference_noise(tmp_path):
    model, _ = _train(tmp_path / "run", "gelu_layernorm", "cv")
    record = RunRecord.load(tmp_path / "run")
    h, se = _stored(record, model, "h_cv"), _stored(record, model, "h_cv_se")
    metrics = analyze_record(record)
    noise = metrics["agreement"]["reference_noise"]["final"]  # read as Hutchinson's SE is
    assert noise["relative_se"] == pytest.approx(np.linalg.norm(se) / np.linalg.norm(h), rel=1e-12)
    assert noise["median_se_over_abs_h"] == pytest.approx(np.median(se[h != 0] / np.abs(h[h != 0])), rel=1e-12)
    assert noise["samples"] == SAMPLES
    text = " ".join(f["text"] for f in metrics["findings"] if f["topic"] == "reference")
    assert "not the exact diagonal Hessian, so it carries noise of its own: its standard error is" in text
