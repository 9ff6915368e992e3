"""`--executor ray` (issue 14): the same records and study.json as the local executor, resume across
executors, a worker that dies is retried (then reported failed, the others go on), Ctrl-C cancels the
remote tasks, a study directory a node does not see is refused in one line.

One local Ray instance for the module (2 CPUs, no dashboard, on the loopback address), shut down at
the end; the local executor's side runs in this process (``workers=0``, the same ``execute_run``
as its worker processes).
"""

import json
import os
import time
from pathlib import Path

import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # a local instance on 127.0.0.1 only
ray = pytest.importorskip("ray")

from typer.testing import CliRunner  # noqa: E402

from arturo_diag.errors import ConfigError, RecordError  # noqa: E402
from arturo_diag.study import (  # noqa: E402
    executors,  # noqa: E402
    expand_grid,
    run_status,
    run_study,
    study_from_mapping,
)
from arturo_diag.study.executors import RayExecutor, run_on_ray_worker  # noqa: E402
from arturo_diag.study.status import FAILURE_FILE  # noqa: E402
from cli.app import app  # noqa: E402

TINY = {
    "model": "mlp",
    "dataset": "teacher",
    "steps": 5,
    "batch_size": 16,
    "train_size": 64,
    "probe_size": 16,
    "every": 5,
    "reference": "exact",
}
# What two runs of the same seed may differ in, wherever they run: when and how long (record.json's
# created/finished/seconds/diagnostics_seconds and its per-instrument seconds, snapshots.csv's seconds). The estimate before the run (issue 15) holds timings and the free disk space too.
TIMING_KEYS = ("created", "finished", "seconds", "diagnostics_seconds", "instruments", "estimate")
REPORT_FILES = ("study.json", "runs.csv", "curves.csv", "eta.csv", "study.md")


def tiny_study(variants=("faithful", "adam"), seeds=(0, 1), **setup):
    return study_from_mapping(
        {"study": {"seeds": list(seeds), "variants": list(variants)}, "setups": {"t": {**TINY, **setup}}}
    )


@pytest.fixture(scope="module")
def cluster():
    assert not ray.is_initialized()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}

        # both workers import torch and the training loop while the local study runs here
        def warm_up():  # local: pickled by value (the workers cannot import this test module)
            import arturo_diag.training.loop  # noqa: F401

            time.sleep(0.5)  # hold the CPU so that the other warm-up goes to the other worker

        warm = ray.remote(num_cpus=1)(warm_up)
        refs = [warm.remote() for _ in range(2)]
        yield ray
        ray.get(refs)  # they did warm up
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def local_study(tmp_path_factory):
    """The tiny study straight through on the local executor, at the relative path ``study``."""
    root = tmp_path_factory.mktemp("local")
    with _cwd(root):
        result = run_study(tiny_study(), "study", workers=0)
    assert [o.status for o in result.outcomes] == ["complete"] * 4
    return root / "study"


class _cwd:
    def __init__(self, path):
        self.path, self.previous = Path(path), None

    def __enter__(self):
        self.previous = os.getcwd()
        os.chdir(self.path)

    def __exit__(self, *exc):
        os.chdir(self.previous)


def _without_timings(path: Path):
    if path.name == "record.json":
        return {k: v for k, v in json.loads(path.read_text()).items() if k not in TIMING_KEYS}
    if path.name == "snapshots.csv":
        rows = [line.split(",") for line in path.read_text().splitlines()]
        column = rows[0].index("seconds")
        return [row[:column] + row[column + 1 :] for row in rows]
    return path.read_bytes()


def assert_same_study(a: Path, b: Path):
    for name in REPORT_FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    files_a = sorted(p.relative_to(a) for p in (a / "runs").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in (b / "runs").rglob("*") if p.is_file())
    assert files_a == files_b
    assert any(p.suffix == ".npz" for p in files_a) and any(p.name == "metrics.json" for p in files_a)
    for relative in files_a:
        assert _without_timings(a / relative) == _without_timings(b / relative), relative


def test_ray_writes_the_same_records_and_study_json_as_local(cluster, local_study, tmp_path):
    with _cwd(tmp_path):  # the same relative --out: config.toml's out = "study/runs/..." on both sides
        result = run_study(tiny_study(), "study", executor=RayExecutor())
    assert [o.status for o in result.outcomes] == ["complete"] * 4
    assert_same_study(local_study, tmp_path / "study")
    record = json.loads((tmp_path / "study/runs/t/faithful/seed0/record.json").read_text())
    assert record["seconds"] > 0 and record["status"] == "complete"
    assert not list((tmp_path / "study").glob(".ray-visibility*"))  # the check's marker is gone


def _mtimes(study_dir: Path, seed: int):
    return {p: p.stat().st_mtime_ns for p in study_dir.glob(f"runs/**/seed{seed}/record.json")}


def test_resume_across_executors(cluster, local_study, tmp_path):
    # started locally (seed 0), finished on Ray
    (tmp_path / "a").mkdir()
    with _cwd(tmp_path / "a"):
        run_study(tiny_study(seeds=(0,)), "study", workers=0, render=False)
        before = _mtimes(Path("study"), 0)
        result = run_study(tiny_study(), "study", executor=RayExecutor())
        assert {o.spec.key: o.status for o in result.outcomes} == {
            ("t", v, s): ("skipped" if s == 0 else "complete") for v in ("faithful", "adam") for s in (0, 1)
        }
        assert _mtimes(Path("study"), 0) == before and len(before) == 2  # nothing rewritten
    assert_same_study(local_study, tmp_path / "a" / "study")

    # started on Ray (through the CLI: progress bar, exit 0), finished locally
    (tmp_path / "b").mkdir()
    config = tmp_path / "s.toml"
    config.write_text(
        '[study]\nseeds = [0, 1]\nvariants = ["faithful", "adam"]\n[setups.t]\n'
        + "".join(f"{k} = {json.dumps(v)}\n" for k, v in TINY.items())
    )
    with _cwd(tmp_path / "b"):
        cli = CliRunner().invoke(
            app, ["ablate", "--config", str(config), "--variants", "faithful", "--out", "study", "--executor", "ray"]
        )
        assert cli.exit_code == 0, cli.output
        assert "(2 run, 0 already done, 0 failed" in cli.output
        result = run_study(tiny_study(), "study", workers=0)
        assert sorted(o.status for o in result.outcomes) == ["complete", "complete", "skipped", "skipped"]
        assert {o.spec.variant.name for o in result.outcomes if o.status == "skipped"} == {"faithful"}
    assert_same_study(local_study, tmp_path / "b" / "study")


def test_a_run_whose_worker_dies_once_is_retried(cluster, local_study, tmp_path):
    markers = str(tmp_path / "attempts")
    os.mkdir(markers)

    def dies_on_first_attempt(spec, cwd):  # pickled by value into the Ray worker
        marker = os.path.join(markers, spec.config.out.replace("/", "_"))
        if spec.key == ("t", "adam", 1) and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)  # the worker process dies, as a killed or OOM-killed one would
        return run_on_ray_worker(spec, cwd)

    with _cwd(tmp_path):
        result = run_study(tiny_study(), "study", executor=RayExecutor(retries=1, task=dies_on_first_attempt))
    assert [o.status for o in result.outcomes] == ["complete"] * 4
    assert len(os.listdir(markers)) == 1  # adam/seed1 died once
    assert_same_study(local_study, tmp_path / "study")


def test_a_run_that_keeps_dying_is_failed_after_its_retries_and_the_others_go_on(cluster, tmp_path):
    attempts = tmp_path / "attempts"
    attempts.mkdir()
    folder = str(attempts)

    def adam_seed1_always_dies(spec, cwd):
        if spec.seed == 1 and spec.variant.name == "adam":
            open(os.path.join(folder, f"{time.monotonic_ns()}"), "w").close()
            os._exit(1)
        return run_on_ray_worker(spec, cwd)

    result = run_study(
        tiny_study(variants=("adam",)),
        tmp_path / "study",
        executor=RayExecutor(retries=1, task=adam_seed1_always_dies),
        render=False,
    )
    status = {o.spec.key: o.status for o in result.outcomes}
    assert status.pop(("t", "adam", 1)) == "failed"
    assert set(status.values()) == {"complete"}
    (failed,) = result.failed
    assert "Ray worker running this run died" in failed.error and "2 time(s)" in failed.error
    assert len(list(attempts.iterdir())) == 2  # the first attempt and 1 retry
    assert run_status(failed.spec)[0] == "failed" and (Path(failed.spec.config.out) / FAILURE_FILE).is_file()


def test_ctrl_c_cancels_the_remote_tasks_and_leaves_nothing_looking_complete(cluster, tmp_path):
    study = tiny_study(steps=60, every=30)
    seen = []

    def interrupt_after_the_first_run(event, info):
        if event == "run":
            seen.append((info["setup"], info["variant"], info["seed"]))
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_study(study, tmp_path, executor=RayExecutor(), progress=interrupt_after_the_first_run, render=False)
    deadline = time.monotonic() + 20  # the cancelled tasks' CPUs come back: nothing runs any more
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ray.available_resources().get("CPU", 0) == 2
    status = {spec.key: run_status(spec)[0] for spec in expand_grid(study, tmp_path)}
    files = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    time.sleep(1.0)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == files  # nobody writes on
    # the run reported, and any that finished its record while the study stopped; the rest not complete
    assert set(seen) <= {k for k, v in status.items() if v == "complete"}
    assert set(status.values()) <= {"complete", "incomplete", "missing"}
    assert "missing" in status.values()  # the queued ones never started


def test_a_study_directory_a_node_does_not_see_is_refused_in_one_line(cluster, tmp_path, monkeypatch):
    monkeypatch.setattr(executors, "_probe_node", lambda cwd, marker, token: (False, "elsewhere"))
    with pytest.raises(RecordError, match="is not visible from Ray node 127.0.0.1 \\(elsewhere\\)") as error:
        run_study(tiny_study(), tmp_path / "study", executor=RayExecutor(), render=False)
    assert "\n" not in str(error.value) and "every node" in str(error.value)
    assert not list((tmp_path / "study").rglob("record.json"))  # refused before any run
    assert not list((tmp_path / "study").glob(".ray-visibility*"))


def test_a_record_the_driver_cannot_see_stops_the_study(cluster, tmp_path):
    def writes_elsewhere(spec, cwd):  # a node whose disk is not the driver's
        return "complete", 0.1, "", "elsewhere"

    with pytest.raises(RecordError, match="written on elsewhere is not visible here") as error:
        run_study(tiny_study(), tmp_path / "study", executor=RayExecutor(task=writes_elsewhere), render=False)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "options, fragment",
    [
        ({"cpus_per_run": 1.5}, "cpus_per_run: got 1.5"),
        ({"cpus_per_run": 0}, "cpus_per_run: got 0"),
        ({"gpus_per_run": -0.5}, "gpus_per_run: got -0.5"),
        ({"retries": -1}, "retries: got -1"),
        ({"workers": 0}, "workers: got 0"),
    ],
)
def test_bad_ray_options(options, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", "\\(")):
        RayExecutor(**options)


def test_a_request_no_node_can_hold_is_refused_before_any_run(cluster, tmp_path):
    with pytest.raises(ConfigError, match="gpus_per_run: got 0.5; allowed: at most what one Ray node has"):
        run_study(tiny_study(), tmp_path / "study", executor=RayExecutor(gpus_per_run=0.5), render=False)
    with pytest.raises(ConfigError, match="cpus_per_run: got 3.0"):
        run_study(tiny_study(), tmp_path / "study", executor=RayExecutor(cpus_per_run=3), render=False)
    assert not list((tmp_path / "study").rglob("record.json"))


def test_fractional_cpus_share_the_instance(cluster, tmp_path):
    result = run_study(
        tiny_study(variants=("sgd",)), tmp_path / "study", executor=RayExecutor(cpus_per_run=0.5), render=False
    )
    assert [o.status for o in result.outcomes] == ["complete"] * 2
