"""`arturo-diag ablate`: bad input exits 2 naming the field, failed runs exit 1 after the report, report re-renders."""

import json

import pytest
from typer.testing import CliRunner

from cli.app import app

TINY_SETUP = (
    '[setups.t]\nmodel = "mlp"\ndataset = "teacher"\nsteps = 4\nbatch_size = 16\ntrain_size = 64\n'
    'probe_size = 16\nevery = 2\nreference = "exact"\n'
)


def invoke(*args):
    return CliRunner().invoke(app, list(map(str, args)))


def write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--variants", "faithful,bogus"], "variants: got 'bogus'"),
        (["--variants", "fixed-eta"], "fixed-eta with a value"),
        (["--seeds", "0,x"], "seeds: got '0,x'"),
        (["--seeds", "1,1"], "distinct seeds"),
        (["--workers", "0"], "workers: got 0"),
        (["--epochs", "0"], "epochs: got 0"),
        (["--max-steps", "0"], "max_steps: got 0"),
        (["--config", "{tmp}/missing.toml"], "an existing study TOML file"),
        (["--config", "{tmp}/bad.toml"], "valid TOML"),
        (["--config", "{tmp}/wrong.toml"], "[setups.t] optimizer"),
        (["--config", "{tmp}/fmnist.toml", "--data-dir", "{tmp}/nowhere"], "nowhere"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(tmp_path, args, fragment):
    write(tmp_path / "bad.toml", "[study\n")
    write(tmp_path / "wrong.toml", '[study]\nseeds = [0]\nvariants = ["faithful"]\n[setups.t]\noptimizer = "adam"\n')
    write(
        tmp_path / "fmnist.toml",
        '[study]\nseeds = [0]\nvariants = ["faithful"]\n[setups.f]\nmodel = "fashion_cnn"\ndataset = "fashion_mnist"\n',
    )
    out = tmp_path / "out"
    result = invoke("ablate", *[a.format(tmp=tmp_path) for a in args], "--out", out)
    assert result.exit_code == 2, result.output
    assert fragment in result.output
    assert result.output.count("\n") <= 2  # one line, no traceback
    assert not out.exists()


def test_a_failed_run_exits_1_after_the_report_and_report_rerenders(tmp_path, monkeypatch):
    # A setup whose data is missing fails in the workers (the up-front check is switched off here);
    # the runs of the other setup complete and the report is written.
    monkeypatch.setattr("arturo_diag.study.execution._preflight", lambda study: None)
    config = write(
        tmp_path / "s.toml",
        '[study]\nname = "mixed"\nseeds = [0, 1]\nvariants = ["faithful", "sgd"]\n'
        + TINY_SETUP
        + f'[setups.broken]\nmodel = "fashion_cnn"\ndataset = "fashion_mnist"\n'
        f'data_dir = "{tmp_path / "nowhere"}"\n',
    )
    out = tmp_path / "study"
    result = invoke("ablate", "--config", config, "--out", out, "--workers", "1")
    assert result.exit_code == 1, result.output
    assert "4 of 8 runs failed" in result.output and "run the same command again" in result.output
    data = json.loads((out / "study.json").read_text())
    assert data["counts"]["complete"] == 4 and data["counts"]["failed"] == 4
    assert all("DataError" in f["error"] for f in data["failed"])
    assert "Runs not in the statistics" in (out / "study.md").read_text()

    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    again = invoke("report", out)
    assert again.exit_code == 0, again.output
    assert "study.md" in again.output.replace("\n", "")  # rich wraps long paths
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_report_on_something_else_exits_2(tmp_path):
    result = invoke("report", tmp_path / "nothing")
    assert result.exit_code == 2


def test_help_names_every_option():
    result = invoke("ablate", "--help")
    assert result.exit_code == 0
    for option in (
        "--config",
        "--variants",
        "--seeds",
        "--workers",
        "--epochs",
        "--max-steps",
        "--data-dir",
        "--out",
        "--fresh",
    ):
        assert option in result.output
