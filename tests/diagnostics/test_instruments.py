"""The instruments a snapshot runs beside h (issue 12, item 1): the registry, the Monitor storing
their arrays and seconds, the config field, ``--instruments`` and the record checks.

The stored gradient noise is checked against a plain loop over single examples (one
``torch.autograd.grad`` per sample, ``numpy.var(ddof=1) / B``), not against the code under test.
"""

from __future__ import annotations

import json
import typing

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from arturo_diag.curvature.instruments import INSTRUMENTS, Instrument, register_instrument
from arturo_diag.diagnostics.monitor import Monitor
from arturo_diag.diagnostics.record import RecordWriter, RunRecord
from arturo_diag.errors import ConfigError, RecordError
from arturo_diag.optim import Arturo
from arturo_diag.training.config import RunConfig, config_from_mapping, config_to_toml
from cli.app import app
from cli.compare import compare, instrument_names
from tests.reliability.harness import TINY


def _train(out, instruments, steps=3):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    optimizer = Arturo(model.parameters(), lr=0.05)
    generator = torch.Generator().manual_seed(1)
    probe = (
        torch.randn(9, 3, generator=generator, dtype=torch.float64),
        torch.randint(0, 2, (9,), generator=generator),
    )
    loss_fn = nn.functional.cross_entropy
    with Monitor(model, optimizer, loss_fn, probe, every=steps, out=str(out), instruments=instruments) as monitor:
        for t in range(steps):
            x = torch.randn(5, 3, generator=generator, dtype=torch.float64)
            y = torch.randint(0, 2, (5,), generator=generator)
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            monitor.step(loss.item())
        monitor.finish()
    return model, probe


def test_stored_noise_is_the_per_sample_variance_over_the_batch_size_of_a_plain_loop(tmp_path):
    model, (x, y) = _train(tmp_path / "run", ("noise",))
    record = RunRecord.load(tmp_path / "run")
    snap = record.snapshot(record.snapshot_steps[-1])
    names = [name for name, _ in model.named_parameters()]
    for name, p in model.named_parameters():  # the snapshot is at the final weights
        np.testing.assert_array_equal(snap[name]["weight"], p.detach().numpy())
    rows = []
    model.eval()
    for n in range(x.shape[0]):  # one sample at a time
        loss = nn.functional.cross_entropy(model(x[n : n + 1]), y[n : n + 1])
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(model.parameters()))]).numpy())
    rows = np.stack(rows)
    expected_var = rows.var(axis=0, ddof=1) / x.shape[0]
    expected_mean = rows.mean(axis=0)
    stored_var = np.concatenate([snap[n]["grad_var"].reshape(-1) for n in names])
    stored_mean = np.concatenate([snap[n]["grad_mean"].reshape(-1) for n in names])
    np.testing.assert_allclose(stored_var, expected_var, rtol=1e-10, atol=1e-300)
    np.testing.assert_allclose(stored_mean, expected_mean, rtol=1e-10, atol=1e-15)
    assert stored_var.max() > 0
    seconds = record.instruments
    assert list(seconds) == ["noise"] and seconds["noise"] > 0
    assert record.manifest["instruments"] == seconds


def test_no_instruments_store_nothing_and_record_none(tmp_path):
    model, _ = _train(tmp_path / "bare", ())
    record = RunRecord.load(tmp_path / "bare")
    snap = record.snapshot(record.snapshot_steps[-1])
    assert not {"grad_mean", "grad_var"} & {f for fields in snap.values() for f in fields}
    assert record.instruments == {}


def test_monitor_refuses_an_unknown_instrument(tmp_path):
    model = nn.Linear(2, 1)
    probe = (torch.zeros(2, 2), torch.zeros(2, 1))
    with pytest.raises(ValueError, match="instruments"):
        Monitor(
            model,
            Arturo(model.parameters()),
            nn.functional.mse_loss,
            probe,
            out=str(tmp_path / "m"),
            instruments=("magic",),
        )


def test_an_instrument_cannot_take_a_reference_field_or_a_taken_name():
    with pytest.raises(ValueError, match="already declared"):
        register_instrument(Instrument("other", "x", ("h_exact",), lambda r: ({}, {})))
    with pytest.raises(ValueError, match="already declared"):
        register_instrument(Instrument("noise", "x", ("fresh",), lambda r: ({}, {})))
    assert list(INSTRUMENTS) == ["noise", "spectrum", "innovation", "alpha"]


def _old_record(path):
    writer = RecordWriter(path, "monitor", "[diagnostics]\nevery = 1\n", {"w": (3,)}, optimizer={"lr": 0.1})
    writer.add_step({"step": 1, "loss": 1.0, "kl_bound": 0.1})
    h = np.array([0.5, 1.0, 2.0])
    arrays = {"w": {"curvature": h, "filter_cov_aa": np.full(3, 0.01), "weight": np.ones(3), "h_exact": h}}
    writer.add_snapshot(1, {"kl_bound": 0.1, "reference": "exact", "exact_method": "hvp", "probe_loss": 1.0}, arrays)
    writer.finish()


def test_an_old_record_without_the_key_reads_and_a_bad_value_is_refused(tmp_path):
    _old_record(tmp_path / "old")
    manifest_path = tmp_path / "old" / "record.json"
    manifest = json.loads(manifest_path.read_text())
    assert "instruments" not in manifest
    assert RunRecord.load(tmp_path / "old").instruments == {}
    for bad in ({"noise": -1.0}, {"noise": "fast"}, ["noise"]):
        manifest["instruments"] = bad
        manifest_path.write_text(json.dumps(manifest))
        with pytest.raises(RecordError, match="instruments"):
            RunRecord.load(tmp_path / "old")


def test_config_field_toml_and_validation():
    assert RunConfig().instruments == ("noise", "spectrum", "innovation", "alpha")
    assert config_from_mapping({"diagnostics": {"instruments": []}}).instruments == ()
    config = config_from_mapping({"diagnostics": {"instruments": ["noise"]}}, RunConfig(instruments=()))
    assert config.instruments == ("noise",)
    assert 'instruments = ["noise"]' in config_to_toml(config)
    for bad in (("magic",), ("noise", "noise"), "noise", ("noise", 3)):
        with pytest.raises(ConfigError, match="instruments"):
            RunConfig(instruments=bad)
    with pytest.raises(ConfigError, match="instruments"):
        config_from_mapping({"diagnostics": {"instruments": ["magic"]}})


def test_instruments_option_parsing_help_and_refusal(tmp_path):
    assert instrument_names("noise") == ("noise",)
    assert instrument_names(" noise , spectrum ") == ("noise", "spectrum")
    assert instrument_names("none") == () and instrument_names("") == ()
    runner = CliRunner()
    option = typing.get_type_hints(compare, include_extras=True)["instruments"].__metadata__[0]
    assert (
        "(default noise,spectrum,innovation,alpha): noise: gradient noise" in option.help
        and "none: no instrument" in option.help
    )
    out = tmp_path / "run"
    result = runner.invoke(app, ["compare", *TINY, "--instruments", "noise,magic", "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "instruments" in result.output and "magic" in result.output and "Traceback" not in result.output
    assert not (out / "record.json").exists()
