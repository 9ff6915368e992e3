"""Run-record I/O: atomic writes, the writer/loader round trip, incomplete and foreign records."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pandas as pd
import pytest

from arturo_diag.diagnostics import io as record_io
from arturo_diag.diagnostics.io import (
    atomic_savez,
    atomic_write_bytes,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
)
from arturo_diag.diagnostics.record import RecordWriter, RunRecord, layer_of, snapshot_filename
from arturo_diag.errors import RecordError

CONFIG = 'name = "tiny"\n[optimizer]\nlr = 0.05\neta_tol = 0.5\nvar_init = 0.01\n'
PARAMETERS = {"net.0.weight": (2, 3), "net.0.bias": (2,), "head.weight": (1, 2)}


def _writer(run_dir, **kwargs):
    return RecordWriter(
        run_dir, "monitor", CONFIG, PARAMETERS, optimizer={"lr": 0.05, "eta_tol": 0.5}, var_init=0.01, **kwargs
    )


def _arrays(seed):
    rng = np.random.default_rng(seed)
    return {
        name: {"curvature": rng.normal(size=shape), "h_exact": rng.normal(size=shape)}
        for name, shape in PARAMETERS.items()
    }


# -- atomic writes ----------------------------------------------------------------------------


def test_atomic_writers_write_what_they_are_given(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "héllo\nworld")
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    atomic_write_json(
        tmp_path / "c.json", {"z": 1, "a": [float("nan"), 2.5, np.float64(np.inf)], "n": np.int64(3), "t": (1, 2)}
    )
    atomic_savez(tmp_path / "d.npz", **{"p.w/curvature": np.arange(3.0)})
    atomic_write_csv(tmp_path / "e.csv", pd.DataFrame({"x": [0.1, math.nan], "y": ["a", "b"]}))

    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "héllo\nworld"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    text = (tmp_path / "c.json").read_text()
    assert json.loads(text) == {"z": 1, "a": [None, 2.5, None], "n": 3, "t": [1, 2]}
    assert text.index('"z"') < text.index('"a"')  # insertion order kept
    assert '\n  "z": 1' in text  # indent 2
    with np.load(tmp_path / "d.npz") as archive:
        np.testing.assert_array_equal(archive["p.w/curvature"], [0.0, 1.0, 2.0])
    table = pd.read_csv(tmp_path / "e.csv")
    assert table["x"].iloc[0] == 0.1 and math.isnan(table["x"].iloc[1])
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "b.bin", "c.json", "d.npz", "e.csv"]


def test_atomic_write_leaves_no_partial_file_when_the_write_fails(tmp_path, monkeypatch):
    target = tmp_path / "record.json"
    atomic_write_text(target, "old content")

    def failing_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(record_io.os, "fsync", failing_fsync)
    # the OS error becomes a RecordError naming the file and the OS's reason
    with pytest.raises(RecordError, match="record.json.*disk full"):
        atomic_write_json(target, {"status": "complete"})
    with pytest.raises(RecordError, match="new.txt.*disk full"):
        atomic_write_text(tmp_path / "new.txt", "x" * 10_000)
    assert target.read_text() == "old content"
    assert sorted(os.listdir(tmp_path)) == ["record.json"]  # no temporary files left behind


def test_atomic_open_removes_the_temporary_file_when_the_body_raises(tmp_path):
    with pytest.raises(RuntimeError):
        with record_io.atomic_open(tmp_path / "x.csv") as handle:
            handle.write("half a ")
            raise RuntimeError("killed mid-way")
    assert os.listdir(tmp_path) == []


def test_json_writer_refuses_unknown_objects(tmp_path):
    with pytest.raises(TypeError, match="object"):
        atomic_write_json(tmp_path / "x.json", {"bad": object()})
    assert os.listdir(tmp_path) == []


# -- writer and loader ------------------------------------------------------------------------


def test_layer_of_is_the_module_path():
    assert layer_of("net.0.weight") == "net.0"
    assert layer_of("head.bias") == "head"
    assert layer_of("scale") == "scale"
    assert snapshot_filename(100) == "snapshots/step_0000100.npz"


def test_round_trip(tmp_path):
    run_dir = tmp_path / "run"
    writer = _writer(run_dir)
    assert json.loads((run_dir / "record.json").read_text())["status"] == "running"
    for step in (1, 2, 3, 4):
        writer.add_step(
            {
                "step": step,
                "epoch": 1,
                "loss": 1.0 / step,
                "eta": 0.1 * step,
                "iterations": np.int64(step % 2),
                "kl_ratio": float("nan") if step == 1 else 1.0,
            }
        )
    snap2, snap4 = _arrays(2), _arrays(4)
    writer.add_snapshot(2, {"kl0_ratio": 3.0, "reference": "exact", "exact_method": "hvp"}, snap2)
    writer.flush()
    writer.add_snapshot(4, {"kl0_ratio": 0.5, "reference": "exact", "exact_method": "hvp"}, snap4)
    writer.add_epoch(
        {"epoch": 1, "step": 4, "train_loss": 0.3, "train_accuracy": 0.9, "test_loss": 0.4, "test_accuracy": 0.85}
    )
    writer.finish({"seconds": 1.5})

    record = RunRecord.load(run_dir)
    assert record.status == "complete" and record.kind == "monitor"
    assert record.config == {"name": "tiny", "optimizer": {"lr": 0.05, "eta_tol": 0.5, "var_init": 0.01}}
    assert record.manifest["steps"] == 4
    assert record.manifest["seconds"] == 1.5
    assert record.manifest["var_init"] == 0.01
    assert record.manifest["optimizer"] == {"lr": 0.05, "eta_tol": 0.5}
    assert record.parameters == {"net.0.weight": (2, 3), "net.0.bias": (2,), "head.weight": (1, 2)}
    assert record.layers == {"net.0.weight": "net.0", "net.0.bias": "net.0", "head.weight": "head"}
    assert record.snapshot_steps == [2, 4]
    assert list(record.steps.columns[:4]) == ["step", "epoch", "loss", "kl_bound"]
    assert record.steps["step"].tolist() == [1, 2, 3, 4]
    assert record.steps["loss"].tolist() == [1.0, 0.5, 1.0 / 3, 0.25]  # floats round-trip exactly
    assert math.isnan(record.steps["kl_ratio"].iloc[0])
    assert record.steps["kl_bound"].isna().all()  # documented column, never given
    assert record.epochs["test_accuracy"].tolist() == [0.85]
    assert record.snapshots["kl0_ratio"].tolist() == [3.0, 0.5]
    assert record.snapshots["reference"].tolist() == ["exact", "exact"]

    loaded = record.snapshot(4)
    assert list(loaded) == list(PARAMETERS)
    for name in PARAMETERS:
        for field in ("curvature", "h_exact"):
            np.testing.assert_array_equal(loaded[name][field], snap4[name][field])
            assert loaded[name][field].dtype == np.float64
    only_a = record.snapshot(2, fields=["curvature"])
    assert set(only_a["head.weight"]) == {"curvature"}
    with pytest.raises(RecordError, match="no snapshot at step 3"):
        record.snapshot(3)


def test_killed_writer_leaves_an_incomplete_record(tmp_path):
    run_dir = tmp_path / "run"
    writer = _writer(run_dir)
    writer.add_step({"step": 1, "eta": 0.1})
    writer.add_snapshot(1, {"reference": "exact"}, _arrays(1))
    writer.flush()
    writer.add_step({"step": 2, "eta": 0.1})
    del writer  # killed: finish() never ran

    manifest = json.loads((run_dir / "record.json").read_text())
    assert manifest["status"] == "running"
    with pytest.raises(RecordError, match=r"is incomplete \(status running\): the run did not finish"):
        RunRecord.load(run_dir)
    partial = RunRecord.load(run_dir, allow_incomplete=True)
    assert partial.steps["step"].tolist() == [1]  # the last flush
    assert partial.snapshot_steps == [1]


def test_failed_run_is_incomplete(tmp_path):
    writer = _writer(tmp_path / "run")
    writer.fail("RuntimeError: loss is NaN")
    with pytest.raises(RecordError, match="status failed"):
        RunRecord.load(tmp_path / "run")
    with pytest.raises(RecordError, match="already finished"):
        writer.add_step({"step": 1})


def test_refuses_a_directory_holding_another_record(tmp_path):
    run_dir = tmp_path / "run"
    first = _writer(run_dir)
    first.add_snapshot(1, {}, _arrays(1))
    first.finish()
    with pytest.raises(RecordError, match=f"{run_dir}.*already holds a run record"):
        _writer(run_dir)
    assert RunRecord.load(run_dir).snapshot_steps == [1]  # untouched

    second = _writer(run_dir, overwrite=True)
    assert not (run_dir / snapshot_filename(1)).exists()  # nothing of the old run survives
    second.finish()
    assert RunRecord.load(run_dir).snapshot_steps == []


def test_load_errors_name_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(RecordError, match=f"{missing}: no such run directory"):
        RunRecord.load(missing)
    with pytest.raises(RecordError, match=f"{tmp_path} is not a run record"):
        RunRecord.load(tmp_path)
    (tmp_path / "record.json").write_text('{"format": "something-else"}')
    with pytest.raises(RecordError, match="format 'something-else'"):
        RunRecord.load(tmp_path)


def test_writer_validates_its_input(tmp_path):
    with pytest.raises(ValueError, match="kind"):
        RecordWriter(tmp_path / "a", "train", CONFIG, PARAMETERS)
    with pytest.raises(ValueError, match="TOML"):
        RecordWriter(tmp_path / "b", "monitor", "not = = toml", PARAMETERS)
    writer = _writer(tmp_path / "c")
    with pytest.raises(ValueError, match="shape"):
        writer.add_snapshot(1, {}, {"head.weight": {"curvature": np.zeros(3)}})
    with pytest.raises(ValueError, match="unknown parameter"):
        writer.add_snapshot(1, {}, {"other": {"curvature": np.zeros(3)}})
    writer.add_snapshot(1, {}, _arrays(0))
    with pytest.raises(ValueError, match="already has a snapshot"):
        writer.add_snapshot(1, {}, _arrays(0))


def test_writer_takes_torch_tensors(tmp_path):
    torch = pytest.importorskip("torch")
    writer = _writer(tmp_path / "run")
    writer.add_step({"step": 1, "eta": torch.tensor(0.25, dtype=torch.float32), "iterations": torch.tensor(3)})
    arrays = {
        name: {"curvature": torch.full(shape, 0.1, dtype=torch.float32, requires_grad=True)}
        for name, shape in PARAMETERS.items()
    }
    writer.add_snapshot(1, {"kl0_ratio": torch.tensor(2.0)}, arrays)
    writer.finish()
    record = RunRecord.load(tmp_path / "run")
    assert record.steps[["eta", "iterations"]].values.tolist() == [[0.25, 3]]
    assert record.snapshots["kl0_ratio"].tolist() == [2.0]
    curvature = record.snapshot(1)["head.weight"]["curvature"]
    assert curvature.dtype == np.float64 and curvature[0, 0] == np.float32(0.1)
