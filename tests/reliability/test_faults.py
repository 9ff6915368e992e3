"""Faults named, not hidden (issue 9, items 3-5).

- A NaN/inf loss, gradient, weight or optimizer state (arTuRO's P, a, b, pi, eta) ends the run at
  the step it appears: Monitor.step raises Diverged naming step, quantity, parameter and layer, the
  record says "diverged" with the same, and the report's first finding states it. Through the CLI
  `compare` exits 3; in a study a diverged run is a counted, named result.
- Valid hyperparameters that used to crash (lr 0, lr 1e-300, var_init 1e-45) train or are refused
  in one line.
- A fixed-eta run is described as fixed, never with the bisection's words.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from arturo_diag.diagnostics.monitor import Monitor
from arturo_diag.diagnostics.record import RunRecord
from arturo_diag.diagnostics.trust_region import classify_regimes, trust_region_summary
from arturo_diag.errors import Diverged
from arturo_diag.optim import Arturo
from arturo_diag.quantities.analysis import analyze_record
from arturo_diag.study import load_study, run_study

from .harness import assert_user_error, invoke, tiny

INJECT_AT = 3  # snapshots every 2 steps: the partial record holds one (step 2) before the fault
LAYER, PARAMETER = "2 (Linear)", "2.weight"  # the middle Linear of the model below (a bare index: named with its type)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))


def _data():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(32, 6, generator=generator), torch.randint(0, 3, (32,), generator=generator)


def _poison(tensor: torch.Tensor, kind: str) -> None:
    tensor.view(-1)[:2] = math.nan if kind == "nan" else math.inf


# How each quantity is made non-finite at step INJECT_AT: before the step ("pre", on the batch or
# the gradient) or after it, before Monitor.step ("post", on the weight or the optimizer's state).
def _inject(case: str, kind: str, model: nn.Module, optimizer: Arturo, phase: str, x: torch.Tensor) -> None:
    target = model[2].weight
    if case == "loss" and phase == "batch" and kind == "nan":
        x[0, 0] = math.nan  # a NaN pixel (an inf one only saturates tanh: its gradient is NaN, the loss not)
    elif case == "gradient" and phase == "pre":
        _poison(target.grad, kind)
    elif case == "weight" and phase == "post":
        with torch.no_grad():
            _poison(target, kind)
    elif case == "eta" and phase == "post":
        optimizer.last_step["eta"] = math.nan if kind == "nan" else math.inf
    elif case not in ("loss", "gradient", "weight", "eta") and phase == "post":
        _poison(optimizer.state[target][case], kind)


FAULTS = [  # (quantity, kind, words in the message)
    ("loss", "nan", "non-finite loss"),
    ("loss", "inf", "non-finite loss"),
    ("gradient", "nan", "non-finite gradient"),
    ("weight", "inf", "non-finite weight"),
    ("curvature", "nan", "non-finite curvature a"),
    ("intercept", "inf", "non-finite intercept b"),
    ("filter_cov_aa", "nan", "non-finite filter covariance P_aa"),
    ("filter_cov_bb", "inf", "non-finite filter covariance P_bb"),
    ("filter_cov_ba", "nan", "non-finite filter covariance P_ba"),
    ("precision", "inf", "non-finite precision pi"),
    ("eta", "nan", "non-finite eta"),
    ("eta", "inf", "non-finite eta"),
]


def _train(out, case: str | None = None, kind: str = "nan", steps: int = 6, **arturo) -> Monitor:
    model = _model()
    x, y = _data()
    optimizer = Arturo(model.parameters(), **arturo)
    loss_fn = nn.functional.cross_entropy
    monitor = Monitor(model, optimizer, loss_fn, (x[:8].clone(), y[:8]), every=2, out=str(out))
    with monitor:
        for step in range(1, steps + 1):
            batch = x.clone()
            if step == INJECT_AT and case:
                _inject(case, kind, model, optimizer, "batch", batch)
            optimizer.zero_grad()
            loss = loss_fn(model(batch), y)
            loss.backward()
            if step == INJECT_AT and case:
                _inject(case, kind, model, optimizer, "pre", batch)
            optimizer.step()
            if step == INJECT_AT and case:
                _inject(case, kind, model, optimizer, "post", batch)
            infinite_loss = step == INJECT_AT and case == "loss" and kind == "inf"
            monitor.step(math.inf if infinite_loss else loss.item())
        monitor.finish()
    return monitor


@pytest.mark.parametrize("quantity, kind, words", FAULTS, ids=[f"{q}-{k}" for q, k, _ in FAULTS])
def test_monitor_names_the_first_non_finite_quantity(tmp_path, quantity, kind, words):
    with pytest.raises(Diverged) as caught:
        _train(tmp_path / "run", quantity, kind)
    info = caught.value.info
    scalar = quantity in ("loss", "eta")
    assert info["step"] == INJECT_AT and info["quantity"] == quantity and info["kind"] == kind
    assert info["parameter"] == (None if scalar else PARAMETER)
    assert info["layer"] == (None if scalar else LAYER)
    message = str(caught.value)
    assert message.startswith(f"{words} at step {INJECT_AT}")
    if not scalar:
        assert f"in layer {LAYER} ({PARAMETER}: {info['count']} of 64 coordinates" in message

    manifest = json.loads((tmp_path / "run" / "record.json").read_text())
    assert manifest["status"] == "diverged"
    assert {k: manifest["divergence"][k] for k in ("step", "quantity", "parameter", "layer", "kind")} == {
        "step": INJECT_AT,
        "quantity": quantity,
        "parameter": info["parameter"],
        "layer": info["layer"],
        "kind": kind,
    }
    assert manifest["steps"] == INJECT_AT and manifest["snapshot_steps"] == [2]

    record = RunRecord.load(tmp_path / "run")  # finished: loads without allow_incomplete
    assert record.divergence["message"] == message and len(record.steps) == INJECT_AT
    first = analyze_record(record)["findings"][0]
    assert first["topic"] == "divergence" and first["severity"] == "warning"
    assert f"The run diverged: {message}." in first["text"]


def test_a_finite_run_is_unchanged_by_the_check(tmp_path):
    monitor = _train(tmp_path / "run")
    assert json.loads((tmp_path / "run" / "record.json").read_text())["status"] == "complete"
    assert monitor.steps == 6


def test_a_diverged_record_renders_its_report(tmp_path):
    from arturo_diag.report.render import render_report

    with pytest.raises(Diverged):
        _train(tmp_path / "run", "gradient", "nan")
    report = render_report(tmp_path / "run")
    assert report.findings[0]["text"].startswith("The run diverged: non-finite gradient at step 3 in layer 2")
    assert "non-finite gradient at step 3" in report.markdown.read_text()


# ------------------------------------------------------------------------------------- the CLI
DIVERGING = [  # (options, what diverges first)
    (["--start-filter-cov", "1e38"], "non-finite filter covariance"),
    (["--weight-decay", "1e6"], "non-finite loss"),
    (["--optimizer", "sgd", "--lr", "1e6"], "non-finite loss"),
]


@pytest.mark.parametrize("options, words", DIVERGING, ids=["start-filter-cov-1e38", "weight-decay-1e6", "sgd-lr-1e6"])
def test_compare_exits_3_with_the_divergence_first(tmp_path, options, words):
    outcome = invoke("compare", *tiny(*options), "--out", tmp_path / "run")
    text = outcome.stdout + outcome.stderr
    assert outcome.exception is None and "Traceback" not in text, text
    assert outcome.exit_code == 3, text
    diverged = [line for line in outcome.stderr.splitlines() if line.startswith("diverged:")]
    assert len(diverged) == 1 and words in diverged[0] and " at step " in diverged[0], outcome.stderr
    findings = [line for line in outcome.stdout.splitlines() if line.startswith((" - ", " ! "))]
    assert findings[0].startswith(" ! The run diverged: " + words), outcome.stdout
    manifest = json.loads((tmp_path / "run" / "record.json").read_text())
    assert manifest["status"] == "diverged" and manifest["divergence"]["message"] in " ".join(outcome.stdout.split())
    assert (tmp_path / "run" / "report.md").is_file()
    rerendered = invoke("report", tmp_path / "run")
    assert rerendered.exit_code == 0 and "The run diverged" in rerendered.stdout


def test_compare_help_documents_the_exit_codes():
    outcome = invoke("compare", "--help")
    words = " ".join(outcome.stdout.replace("│", " ").split())
    for phrase in ("Exit codes: 0 done", "1 internal error", "2 bad input", "3 diverged", "130 interrupted"):
        assert phrase in words, words


# ------------------------------------------------------------------------------------- a study
def test_a_diverged_run_in_a_study_is_a_named_result(tmp_path):
    config = tmp_path / "study.toml"
    config.write_text(
        '[study]\nname = "d"\nseeds = [0]\nvariants = ["faithful", "adam"]\n'
        '[setups.t]\nmodel = "mlp"\ndataset = "teacher"\nsteps = 4\nbatch_size = 16\n'
        "train_size = 64\nevery = 2\nprobe_size = 16\nstart_filter_cov = 1e38\n"
    )
    result = run_study(load_study(config), tmp_path / "s", workers=0)
    statuses = {o.spec.variant.name: o.status for o in result.outcomes}
    assert statuses == {"faithful": "diverged", "adam": "complete"} and not result.failed
    texts = [f["text"] for f in result.report.findings]
    named = [t for t in texts if "diverged" in t]
    assert named and "1 of 2 runs diverged" in named[0] and "t/faithful/seed0: non-finite" in named[0]
    assert "left out of the accuracy statistics" in named[0]
    again = run_study(load_study(config), tmp_path / "s", workers=0, render=False)
    assert [o.status for o in again.outcomes] == ["skipped", "skipped"]  # a result: not retried
    outcome = invoke("ablate", "--config", config, "--out", tmp_path / "s")
    assert outcome.exit_code == 0, outcome.stdout + outcome.stderr


# ------------------------------------------------------------------------------------- item 4
TRAINS = [  # arTuRO settings that used to raise ZeroDivisionError (lr 0: the snapshot's eta*; dual exact: step 1)
    {"lr": 0.0},
    {"lr": 1e-300},
    {"lr": 0.0, "dual": "exact"},
    {"lr": 1e-300, "dual": "exact"},
    {"lr": 0.0, "dual": "exact", "kl": "coupled"},
]
_TINY_CONFIG = dict(
    model="mlp", dataset="teacher", train_size=96, batch_size=32, epochs=2, every=2, probe_size=16, lr_milestones=(2,)
)


@pytest.mark.parametrize("settings", TRAINS, ids=lambda d: " ".join(f"{k}={v}" for k, v in d.items()))
def test_tiny_kl_bounds_train(tmp_path, settings):
    from arturo_diag.training.config import RunConfig
    from arturo_diag.training.loop import run

    run(RunConfig(**_TINY_CONFIG, **settings, out=str(tmp_path / "run")))
    record = RunRecord.load(tmp_path / "run")
    assert record.complete and len(record.steps) == 6 and len(record.snapshot_steps) == 3
    assert analyze_record(record)["findings"]


@pytest.mark.parametrize("options", [["--lr", "1e-300"], ["--lr", "0", "--dual", "exact"]], ids=" ".join)
def test_tiny_kl_bounds_report(tmp_path, options):
    """Through the CLI, figures included: K/eps of 1e289 (eps 1e-300) and eta = inf (eps 0) are drawn."""
    outcome = invoke("compare", *tiny(*options), "--out", tmp_path / "run")
    text = outcome.stdout + outcome.stderr
    assert outcome.exit_code == 0 and outcome.exception is None and "Traceback" not in text, text
    assert json.loads((tmp_path / "run" / "record.json").read_text())["status"] == "complete"
    drawn = (tmp_path / "run" / "figures" / "trust_region.png").is_file()
    assert (
        drawn
        if options[1] != "0"
        else "eta is inf at every step: the KL bound is 0" in (tmp_path / "run" / "report.md").read_text()
    )


@pytest.mark.parametrize("kl", ["decoupled", "coupled"])
def test_zero_bound_with_the_exact_dual_takes_no_mean_step(kl):
    """eps = 0 allows no move of the mean: eta = inf, mu' = mu exactly (ARTURO.md step 4)."""
    model = _model().double()
    x, y = _data()
    optimizer = Arturo(model.parameters(), lr=0.0, dual="exact", kl=kl)
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(3):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x.double()), y).backward()
        optimizer.step()
    assert optimizer.last_step["eta"] == math.inf and math.isnan(optimizer.last_step["kl_ratio"])
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert all(torch.isfinite(optimizer.state[p]["precision"]).all() for p in model.parameters())


def test_zero_bound_through_the_monitor_trains(tmp_path):
    monitor = _train(tmp_path / "run", lr=0.0)  # snapshots ask for K(0)/eps and eta*: both divided by eps
    assert monitor.steps == 6
    assert json.loads((tmp_path / "run" / "record.json").read_text())["status"] == "complete"
    _train(tmp_path / "exact", lr=0.0, dual="exact")  # eta = inf is the root here, not a divergence


REFUSED = [  # (options, names in the one error line)
    (["--var-init", "1e-45"], ("var_init", "1e-45", "float32")),
    (["--var-init", "1e-320", "--dtype", "float64"], ("var_init", "float64")),
]


@pytest.mark.parametrize("options, names", REFUSED, ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_overflowing_var_init_is_refused(tmp_path, options, names):
    line = assert_user_error(invoke("compare", *tiny(*options), "--out", tmp_path / "run"), *names)
    assert "1/var_init must be finite" in line
    assert not (tmp_path / "run").exists()


def test_overflowing_var_init_is_refused_by_the_optimizer():
    with pytest.raises(ValueError, match=r"var_init: got 1e-45; allowed: a number >= 2\.94e-39 for float32"):
        Arturo(_model().parameters(), var_init=1e-45)
    Arturo(_model().double().parameters(), var_init=1e-45)  # finite in float64


# ------------------------------------------------------------------------------------- item 5
_BISECTION_WORDS = ("5/3", "grew", "frozen", "bisection was", "bisection active")


def test_fixed_eta_0_is_described_as_fixed(tmp_path):
    outcome = invoke("compare", *tiny("--fixed-eta", "0"), "--out", tmp_path / "run")
    assert outcome.exit_code == 0, outcome.stdout + outcome.stderr
    words = " ".join(outcome.stdout.split())
    assert "eta fixed at 0 by --fixed-eta: no trust region" in words
    assert not [w for w in _BISECTION_WORDS if w in words], words
    report = (tmp_path / "run" / "report.md").read_text()
    assert "no bisection regimes to report" in report


@pytest.mark.parametrize("value", [0.25, 1.0])
def test_fixed_eta_is_described_as_fixed(tmp_path, value):
    """0.25 is in the bisection's floor window and 1 repeats itself: neither is 'frozen' nor 'fixed %'."""
    monitor = _train(tmp_path / "run", fixed_eta=value)
    assert monitor.steps == 6
    texts = [f["text"] for f in analyze_record(tmp_path / "run")["findings"]]
    assert any(t.startswith(f"eta fixed at {value:g} by fixed_eta: no trust region") for t in texts), texts
    assert not [w for t in texts for w in _BISECTION_WORDS if w in t], texts


def test_fixed_eta_regimes_are_fixed_only():
    import pandas as pd

    steps = pd.DataFrame(
        {
            "step": [1, 2, 3],
            "eta": [0.0, 0.0, 0.0],
            "eta_prev": [math.nan, 0.0, 0.0],
            "iterations": [0, 0, 0],
            "kl_ratio": [5.0, 5.0, 5.0],
        }
    )
    assert list(classify_regimes(steps)["regime"]) == ["first", "growth_5_3", "growth_5_3"]  # without the setting
    assert list(classify_regimes(steps, fixed_eta=0.0)["regime"]) == ["fixed"] * 3
    summary = trust_region_summary(steps, fixed_eta=0.0)
    assert summary["fixed_eta"] == 0.0 and summary["growth_runs"]["count"] == 0
