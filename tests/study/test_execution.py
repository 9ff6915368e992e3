"""Running a study: resume after a kill, skip finished runs, redo stale ones, keep going past failures."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from arturo_diag.diagnostics.record import RunRecord
from arturo_diag.errors import ConfigError, DataError, RecordError
from arturo_diag.study import (
    expand_grid,
    load_study,
    render_study,
    run_status,
    run_study,
    study_from_mapping,
    with_overrides,
)
from arturo_diag.study.execution import FAILURE_FILE

REPO = Path(__file__).resolve().parents[2]
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


def tiny_study(variants=("faithful", "adam"), seeds=(0, 1), **setup):
    return study_from_mapping(
        {"study": {"seeds": list(seeds), "variants": list(variants)}, "setups": {"t": {**TINY, **setup}}}
    )


def manifest_times(study_dir):
    return {p: p.stat().st_mtime_ns for p in sorted(Path(study_dir).glob("runs/**/record.json"))}


def test_rerun_skips_finished_runs_and_redoes_stale_ones(tmp_path):
    study = tiny_study()
    first = run_study(study, tmp_path, workers=0, render=False)
    assert [o.status for o in first.outcomes] == ["complete"] * 4
    before = manifest_times(tmp_path)
    again = run_study(study, tmp_path, workers=0, render=False)
    assert [o.status for o in again.outcomes] == ["skipped"] * 4
    assert manifest_times(tmp_path) == before  # nothing was rewritten

    moved = with_overrides(study, data_dir=str(tmp_path / "elsewhere"))  # where the data lives is not a change
    assert {run_status(spec)[0] for spec in expand_grid(moved, tmp_path)} == {"complete"}
    longer = with_overrides(study, max_steps=3)  # another config: the old records are stale
    assert {run_status(spec)[0] for spec in expand_grid(longer, tmp_path)} == {"stale"}
    redone = run_study(longer, tmp_path, workers=0, render=False)
    assert [o.status for o in redone.outcomes] == ["complete"] * 4
    assert all(RunRecord.load(o.spec.config.out).manifest["steps"] == 3 for o in redone.outcomes)

    fresh = run_study(longer, tmp_path, workers=0, render=False, fresh=True)
    assert [o.status for o in fresh.outcomes] == ["complete"] * 4


def test_an_unfinished_run_is_redone(tmp_path):
    study = tiny_study(variants=("faithful",), seeds=(0,))
    (outcome,) = run_study(study, tmp_path, workers=0, render=False).outcomes
    manifest = Path(outcome.spec.config.out) / "record.json"
    data = json.loads(manifest.read_text())
    data["status"] = "running"  # what a killed run leaves
    manifest.write_text(json.dumps(data))
    assert run_status(outcome.spec)[0] == "incomplete"
    (again,) = run_study(study, tmp_path, workers=0, render=False).outcomes
    assert again.status == "complete" and RunRecord.load(again.spec.config.out).complete


def test_a_failing_run_does_not_lose_the_others(tmp_path):
    study = study_from_mapping(
        {
            "study": {"seeds": [0, 1], "variants": ["faithful", "sgd"]},
            "setups": {
                "ok": dict(TINY),
                "broken": {
                    **TINY,
                    "model": "fashion_cnn",
                    "dataset": "fashion_mnist",
                    "data_dir": str(tmp_path / "no-such-dir"),
                },
            },
        }
    )
    with pytest.raises(DataError):  # by default bad data fails before any run starts
        run_study(study, tmp_path / "checked", workers=0, render=False)
    assert not (tmp_path / "checked" / "runs").exists()

    result = run_study(study, tmp_path / "s", workers=0, check_inputs=False)
    status = {o.spec.key: o.status for o in result.outcomes}
    assert {k: v for k, v in status.items() if k[0] == "ok"} == {
        ("ok", v, s): "complete" for v in ("faithful", "sgd") for s in (0, 1)
    }
    assert {v for k, v in status.items() if k[0] == "broken"} == {"failed"}
    assert all("DataError" in o.error for o in result.failed)
    for o in result.failed:
        assert (Path(o.spec.config.out) / FAILURE_FILE).is_file()
    data = json.loads((tmp_path / "s" / "study.json").read_text())
    assert data["counts"]["complete"] == 4 and data["counts"]["failed"] == 4
    assert {(f["setup"], f["variant"], f["seed"]) for f in data["failed"]} == {
        ("broken", v, s) for v in ("faithful", "sgd") for s in (0, 1)
    }
    assert any("4 of 8 runs failed" in f["text"] for f in data["findings"])
    assert data["results"]["ok"]["summary"][0]["test_accuracy"]["n"] == 2

    # a re-run retries the failed runs only
    again = run_study(study, tmp_path / "s", workers=0, check_inputs=False, render=False)
    assert {o.spec.key[0] for o in again.outcomes if o.status == "skipped"} == {"ok"}
    assert {o.status for o in again.outcomes if o.spec.setup == "broken"} == {"failed"}


def test_bad_arguments(tmp_path):
    study = tiny_study()
    with pytest.raises(ConfigError, match="workers"):
        run_study(study, tmp_path, workers=-1)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="out"):
        run_study(study, tmp_path / "file", workers=0)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "record.json").write_text("{}")
    with pytest.raises(RecordError, match="single run record"):
        run_study(study, tmp_path / "run", workers=0)


def _children(pid):
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to find the worker processes")
def test_a_killed_study_resumes_to_the_same_study_json(tmp_path):
    config = tmp_path / "study.toml"
    config.write_text(
        '[study]\nname = "resume"\nseeds = [0, 1]\nvariants = ["faithful", "fixed-eta:1.0", "adam"]\n'
        '[setups.t]\nmodel = "mlp"\ndataset = "teacher"\nsteps = 30\nbatch_size = 16\ntrain_size = 128\n'
        'probe_size = 32\nevery = 10\nreference = "exact"\n'
    )
    killed = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "cli.app", "ablate", "--config", str(config), "--out", str(killed), "--workers", "2"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            done = [p for p in killed.glob("runs/**/record.json") if '"complete"' in p.read_text()]
            if len(done) >= 2 or process.poll() is not None:
                break
            time.sleep(0.02)
        workers = _children(process.pid)
        process.send_signal(signal.SIGKILL)  # the study process only: its workers must notice and stop
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
    deadline = time.monotonic() + 10
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(w) for w in workers), "orphaned workers kept running"
    assert not (killed / "study.json").exists()
    study = load_study(killed / "study.toml")
    assert study == load_study(config)  # the study directory describes its study
    complete = [s for s in expand_grid(study, killed) if run_status(s)[0] == "complete"]
    assert 2 <= len(complete) < 6, "the kill did not land in the middle of the study"

    resumed = run_study(load_study(config), killed, workers=0, render=False)
    assert sorted(o.status for o in resumed.outcomes).count("skipped") == len(complete)
    run_study(load_study(config), tmp_path / "straight", workers=0, render=False)
    for directory in (killed, tmp_path / "straight"):
        render_study(directory, figures=False)  # the figures' determinism is tested with the report
    for name in ("study.json", "runs.csv", "curves.csv", "eta.csv", "study.md"):
        assert (killed / name).read_text() == (tmp_path / "straight" / name).read_text(), name
