"""`arturo-diag compare` before and after the run (issue 15): the printed size and time estimate,
the refusal of a run its disk cannot hold, float32 / subsampled snapshots, TensorBoard events, and a
wall time whose parts add up."""

from __future__ import annotations

import json
import re
from collections import namedtuple

import numpy as np
import pytest
from typer.testing import CliRunner

from arturo_diag.diagnostics import snapshot_cost
from arturo_diag.diagnostics.record import RunRecord
from cli.app import app
from tests.reliability.harness import TINY

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_estimate_is_printed_stored_and_matches_the_record(tmp_path):
    out = tmp_path / "run"
    result = invoke("compare", *TINY, "--out", out)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert re.search(r"estimate snapshots: \d+ x [\d.]+ [kMG]?B = [\d.]+ [kMG]?B \(float64", text), text
    assert re.search(r"estimate time: about [\d.]+ m?s per snapshot", text), text
    assert text.index("estimate snapshots") < text.index("training")  # before training
    manifest = json.loads((out / "record.json").read_text())
    estimate = manifest["estimate"]
    record = RunRecord.load(out)
    assert estimate["snapshots"] == len(record.snapshot_steps)
    files = sum(record.snapshot_path(s).stat().st_size for s in record.snapshot_steps)
    # numpy's npz adds a zip entry and a .npy header per array: a few hundred bytes each
    arrays = sum(len(fields) for fields in record.snapshot(record.snapshot_steps[-1]).values())
    assert estimate["snapshots"] * estimate["bytes_per_snapshot"] <= files
    assert files <= estimate["snapshots"] * (estimate["bytes_per_snapshot"] + 300 * arrays)
    assert manifest["snapshot_bytes"] >= files  # snapshots and the instruments' arrays


def test_a_run_its_disk_cannot_hold_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(snapshot_cost.shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
    out = tmp_path / "run"
    result = invoke("compare", *TINY, "--out", out)
    assert result.exit_code == 2, result.output
    line = " ".join(result.output.split())
    assert (
        "No space left on device" in line
        and "the run's snapshots need about" in line
        and "1 kB free" in line
        and "--subsample" in line
    )
    assert "Traceback" not in result.output
    assert not out.exists()


def test_float32_subsampled_snapshots_and_tensorboard_from_the_command_line(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    result = invoke("compare", *TINY, "--out", out, "--snapshot-dtype", "float32", "--subsample", "50", "--tensorboard")
    assert result.exit_code == 0, result.output
    record = RunRecord.load(out)
    manifest = record.manifest
    assert manifest["snapshot_dtype"] == "float32" and manifest["subsample"]["per_tensor"] == 50
    with np.load(record.snapshot_path(record.snapshot_steps[-1])) as archive:
        assert {archive[k].dtype for k in archive.files} == {np.dtype(np.float32)}
        assert max(archive[k].size for k in archive.files) == 50
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    losses = [e.value for e in events.Scalars("train/loss")]
    np.testing.assert_allclose(losses, record.steps["loss"].to_numpy(), rtol=1e-6)
    assert "agreement/all/relative_error" in events.Tags()["scalars"]
    # an overwrite starts the events afresh: no second run's events beside the first's
    assert invoke("compare", *TINY, "--out", out, "--overwrite", "--tensorboard").exit_code == 0
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1


def test_the_wall_time_and_its_parts_add_up(tmp_path):
    result = invoke("compare", *TINY, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    match = re.search(
        r"time wall ([\d.]+) s = start-up ([\d.]+) s \+ training ([\d.]+) s \+ diagnostics ([\d.]+) s "
        r"\+ report ([\d.]+) s",
        text,
    )
    assert match, text
    wall, *parts = map(float, match.groups())
    assert sum(parts) == pytest.approx(wall, abs=0.25)  # each part rounded to 0.1 s
    manifest = json.loads((tmp_path / "run" / "record.json").read_text())
    assert parts[1] + parts[2] == pytest.approx(manifest["seconds"], abs=0.15)
    assert parts[2] == pytest.approx(manifest["diagnostics_seconds"], abs=0.06)
