"""`ablate --executor`: without Ray installed, `--executor ray` exits 2 naming the extra; Ray's options
without `--executor ray` are refused; the local executor is the default (no Ray needed for any of these)."""

import sys

import pytest
from typer.testing import CliRunner

from arturo_diag.errors import ConfigError
from arturo_diag.study.executors import LocalExecutor, RayExecutor
from cli.app import app


def invoke(*args):
    return CliRunner().invoke(app, list(map(str, args)))


def test_executor_ray_without_ray_exits_2_naming_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(ConfigError, match="Ray is not installed"):
        RayExecutor()
    out = tmp_path / "out"
    result = invoke("ablate", "--executor", "ray", "--seeds", "0", "--out", out)
    assert result.exit_code == 2, result.output
    assert 'pip install -e ".[ray]"' in result.output.replace("\n", "")
    assert result.output.count("\n") <= 2  # one line, no traceback
    assert not out.exists()


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--executor", "dask"], "executor: got 'dask'; allowed: local, ray"),
        (["--ray-address", "auto"], "ray_address: got 'auto'; allowed: only with --executor ray"),
        (["--cpus-per-run", "2"], "cpus_per_run: got 2.0; allowed: only with --executor ray"),
        (["--gpus-per-run", "0.5"], "gpus_per_run: got 0.5"),
        (["--retries", "3"], "retries: got 3"),
    ],
)
def test_ray_options_need_the_ray_executor(tmp_path, args, fragment):
    out = tmp_path / "out"
    result = invoke("ablate", *args, "--out", out)
    assert result.exit_code == 2, result.output
    assert fragment in result.output
    assert not out.exists()


def test_local_executor():
    assert LocalExecutor(2).where() == "2 worker(s)" and LocalExecutor(0).where() == "this process"
    with pytest.raises(ConfigError, match="workers: got -1"):
        LocalExecutor(-1)


def test_help_names_the_executor_options():
    result = invoke("ablate", "--help")
    for option in ("--executor", "--ray-address", "--cpus-per-run", "--gpus-per-run", "--retries"):
        assert option in result.output


@pytest.mark.parametrize("module", ["arturo_diag.study.execution", "arturo_diag.study.executors"])
def test_the_default_worker_count_is_looked_up_when_used(monkeypatch, module):
    # tests (and users) patch default_workers in either module: the CLI and run_study both see it
    from arturo_diag.study import execution
    from cli.ablate import _executor

    monkeypatch.setattr(f"{module}.default_workers", lambda: 7)
    assert _executor("local", None, None, None, None, None).workers == 7
    assert execution.default_workers() == 7
