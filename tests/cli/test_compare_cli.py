"""`arturo-diag compare` and `arturo-diag report` through typer's CliRunner."""

import json

import pytest
from typer.testing import CliRunner

from cli.app import app
from tests.reliability.harness import TINY  # the small settings every CLI test trains with

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_compare_end_to_end_then_report_rerenders_identically(tmp_path):
    out = tmp_path / "run"
    result = invoke("compare", *TINY, "--out", out)
    assert result.exit_code == 0, result.output
    assert "report" in result.output
    manifest = json.loads((out / "record.json").read_text())
    assert manifest["status"] == "complete"
    first = {name: (out / name).read_bytes() for name in ("report.md", "report.html", "metrics.json")}
    result = invoke("report", out)
    assert result.exit_code == 0, result.output
    for name, content in first.items():
        assert (out / name).read_bytes() == content, name


@pytest.mark.parametrize(
    "args, field",
    [
        (["--model", "vgg"], "model"),
        (["--steps", "-3"], "steps"),
        (["--reference", "magic"], "reference"),
        (["--batch-size", "0"], "batch_size"),
        (["--dataset", "fashion_mnist"], "data-dir"),
        (["--lr", "-1"], "lr"),
        (["--dtype", "float16"], "dtype"),
    ],
)
def test_bad_input_exits_2_with_one_line_naming_the_field(tmp_path, args, field):
    out = tmp_path / "run"
    result = invoke("compare", *TINY, *args, "--out", out)
    assert result.exit_code == 2, result.output
    assert field in result.output
    assert "Traceback" not in result.output
    assert not (out / "record.json").exists()


def test_missing_data_file_names_the_file(tmp_path):
    (tmp_path / "data").mkdir()
    result = invoke(
        "compare",
        *TINY,
        "--dataset",
        "fashion_mnist",
        "--model",
        "small_cnn",
        "--data-dir",
        tmp_path / "data",
        "--out",
        tmp_path / "run",
    )
    assert result.exit_code == 2
    assert "train-images-idx3-ubyte" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run" / "record.json").exists()


def test_malformed_toml_and_misplaced_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[run\nmodel = 'mlp'\n")
    result = invoke("compare", "--config", bad, "--out", tmp_path / "run")
    assert result.exit_code == 2 and "bad.toml" in result.output and "valid TOML" in result.output
    misplaced = tmp_path / "misplaced.toml"
    misplaced.write_text("[run]\nlr = 0.1\n")
    result = invoke("compare", "--config", misplaced, "--out", tmp_path / "run")
    assert result.exit_code == 2 and "lr" in result.output and "[optimizer]" in result.output
    result = invoke("compare", "--config", tmp_path / "absent.toml", "--out", tmp_path / "run")
    assert result.exit_code == 2 and "absent.toml" in result.output


def test_config_file_sets_fields_and_options_win(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(
        '[run]\nmodel = "mlp"\ndataset = "teacher"\ntrain_size = 64\nbatch_size = 32\nepochs = 1\n'
        '[diagnostics]\nreference = "none"\n[optimizer]\nfixed_eta = 0.5\n'
    )
    out = tmp_path / "run"
    result = invoke("compare", "--config", config, "--fixed-eta", "2.0", "--out", out)
    assert result.exit_code == 0, result.output
    text = (out / "config.toml").read_text()
    assert 'model = "mlp"' in text and "fixed_eta = 2.0" in text


def test_output_dir_with_another_run_is_refused(tmp_path):
    out = tmp_path / "run"
    assert invoke("compare", *TINY, "--reference", "none", "--out", out).exit_code == 0
    before = (out / "steps.csv").read_bytes()
    result = invoke("compare", *TINY, "--seed", "3", "--out", out)
    assert result.exit_code == 2 and "already holds a run record" in result.output
    assert (out / "steps.csv").read_bytes() == before
    assert invoke("compare", *TINY, "--seed", "3", "--reference", "none", "--out", out, "--overwrite").exit_code == 0


def test_report_on_a_directory_without_a_record(tmp_path):
    result = invoke("report", tmp_path / "nothing")
    assert result.exit_code == 2 and "nothing" in result.output
