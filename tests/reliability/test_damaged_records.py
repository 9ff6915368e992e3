"""Damaged records given to `arturo-diag report` (issue 9, item 8): each case damages a copy of one
good tiny record (or study) and asserts exit 2, one `error:` line naming the file and the problem,
no traceback, and no report written or rewritten (an earlier report is left byte for byte).

The good record is made once per module by `compare` with harness.TINY (6 steps, snapshots at
steps 2, 4, 6). Incomplete records (a killed run, a diverged one) must stay readable: see the
tests after the table.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from arturo_diag.diagnostics.record import RunRecord
from arturo_diag.errors import RecordError

from .harness import TINY, assert_user_error, invoke

SNAPSHOT = "snapshots/step_0000004.npz"
PARAMETER = "net.1.bias"  # shape [64]


@pytest.fixture(scope="module")
def good_record(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("good") / "run"
    outcome = invoke("compare", *TINY, "--out", run_dir)
    assert outcome.exit_code == 0, outcome.stdout + outcome.stderr
    manifest = json.loads((run_dir / "record.json").read_text())
    assert manifest["status"] == "complete" and manifest["steps"] == 6 and manifest["snapshot_steps"] == [2, 4, 6]
    return run_dir


# -- damage ---------------------------------------------------------------------------------------


def edit_json(name: str, change):
    def damage(run_dir: Path) -> None:
        path = run_dir / name
        data = json.loads(path.read_text())
        result = change(data)
        path.write_text(json.dumps(data if result is None else result))

    return damage


def set_key(key, value):
    return edit_json("record.json", lambda m: m.__setitem__(key, value))


def edit_text(name: str, change):
    def damage(run_dir: Path) -> None:
        path = run_dir / name
        path.write_text(change(path.read_text()))

    return damage


def write(name: str, data: bytes):
    def damage(run_dir: Path) -> None:
        (run_dir / name).write_bytes(data)

    return damage


def remove(name: str):
    def damage(run_dir: Path) -> None:
        (run_dir / name).unlink()

    return damage


def keep_lines(name: str, lines: int):
    return edit_text(name, lambda text: "".join(text.splitlines(keepends=True)[:lines]))


def csv_cell(name: str, line: int, column: str, value: str):
    """Set the cell of ``column`` on ``line`` (1 = the header) of a CSV file."""

    def change(text: str) -> str:
        rows = [row.split(",") for row in text.splitlines()]
        rows[line - 1][rows[0].index(column)] = value
        return "\n".join(",".join(row) for row in rows) + "\n"

    return edit_text(name, change)


def drop_column(name: str, column: str):
    def change(text: str) -> str:
        rows = [row.split(",") for row in text.splitlines()]
        index = rows[0].index(column)
        return "\n".join(",".join(row[:index] + row[index + 1 :]) for row in rows) + "\n"

    return edit_text(name, change)


def edit_npz(change, name: str = SNAPSHOT):
    """Rewrite a snapshot with ``change(arrays)`` applied (arrays: key -> array)."""

    def damage(run_dir: Path) -> None:
        path = run_dir / name
        with np.load(path) as archive:
            arrays = {key: archive[key] for key in archive.files}
        change(arrays)
        with open(path, "wb") as handle:
            np.savez(handle, **arrays)

    return damage


def truncate(name: str, keep: float = 0.5):
    def damage(run_dir: Path) -> None:
        path = run_dir / name
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * keep)])

    return damage


def zip_without_arrays(run_dir: Path) -> None:
    with zipfile.ZipFile(run_dir / SNAPSHOT, "w") as archive:
        archive.writestr("notes.txt", "not an array")


class Payload:
    """Unpickling it would create the file ``marker`` (it must never be unpickled)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def object_array(run_dir: Path) -> None:
    marker = run_dir.parent / "unpickled"
    payload = np.empty(64, dtype=object)
    payload[:] = [Payload(marker)] * 64
    edit_npz(lambda arrays: arrays.__setitem__(f"{PARAMETER}/curvature", payload))(run_dir)


def many(*damages):
    def damage(run_dir: Path) -> None:
        for one in damages:
            one(run_dir)

    return damage


# -- the cases ------------------------------------------------------------------------------------
# (id, damage(run_dir), words the error line must hold: the file and the problem)
CASES = [
    # record.json
    ("manifest-parameters-text", set_key("parameters", "x"), ("record.json", "'parameters'", "got 'x'")),
    ("manifest-snapshot-steps-text", set_key("snapshot_steps", ["abc"]), ("record.json", "'snapshot_steps'", "abc")),
    ("manifest-steps-text", set_key("steps", "many"), ("record.json", "'steps'", "got 'many'")),
    ("manifest-steps-negative", set_key("steps", -6), ("record.json", "'steps'", "-6", ">= 0")),
    ("manifest-steps-fraction", set_key("steps", 6.5), ("record.json", "'steps'", "6.5", "whole number")),
    ("manifest-a-list", edit_json("record.json", lambda m: [m]), ("record.json", "list, not an object")),
    (
        "manifest-key-missing",
        edit_json("record.json", lambda m: m.pop("snapshot_steps") and None),
        ("record.json", "'snapshot_steps' is missing"),
    ),
    ("manifest-unknown-format", set_key("format", "arturo-diag-run/9"), ("record.json", "arturo-diag-run/9")),
    ("manifest-unknown-status", set_key("status", "done"), ("record.json", "'status'", "'done'")),
    ("manifest-unknown-kind", set_key("kind", 3), ("record.json", "'kind'", "got 3")),
    (
        "manifest-shape-negative",
        edit_json("record.json", lambda m: m["parameters"][PARAMETER].__setitem__("shape", [-64])),
        ("record.json", PARAMETER, "shape", "-64"),
    ),
    (
        "manifest-shape-not-int",
        edit_json("record.json", lambda m: m["parameters"][PARAMETER].__setitem__("shape", ["64"])),
        ("record.json", PARAMETER, "shape", "'64'"),
    ),
    (
        "manifest-parameter-not-object",
        edit_json("record.json", lambda m: m["parameters"].__setitem__(PARAMETER, 64)),
        ("record.json", PARAMETER, "got 64"),
    ),
    (
        "manifest-optimizer-var-init-text",
        edit_json("record.json", lambda m: m["optimizer"].__setitem__("var_init", "small")),
        ("record.json", "var_init", "small"),
    ),
    ("manifest-not-json", truncate("record.json", 0.5), ("record.json", "unreadable manifest")),
    ("manifest-invalid-utf8", write("record.json", b'{"format": "\xff\xfe"}'), ("record.json", "unreadable manifest")),
    # config.toml
    ("config-garbage", write("config.toml", b"\x00\x01 = = [[[ garbage"), ("config.toml", "unreadable config")),
    ("config-invalid-utf8", write("config.toml", b'[run]\nmodel = "\xff\xfe"\n'), ("config.toml", "not utf-8")),
    (
        "config-number-as-text",
        edit_text("config.toml", lambda t: t.replace("eta_tol = 0.5", 'eta_tol = "half"')),
        ("config.toml", "[optimizer] 'eta_tol'", "half"),
    ),
    (
        "config-flag-as-number",
        edit_text("config.toml", lambda t: t.replace("guard = false", "guard = 2")),
        ("config.toml", "'guard'", "true or false"),
    ),
    (
        "config-section-not-table",
        edit_text("config.toml", lambda t: "diagnostics = 5\n" + t.replace("[diagnostics]", "[diagnostics_old]")),
        ("config.toml", "[diagnostics] is 5, not a table"),
    ),
    (
        "config-nan",
        edit_text("config.toml", lambda t: t.replace("collapse_fraction = 0.01", "collapse_fraction = nan")),
        ("config.toml", "collapse_fraction", "finite"),
    ),
    ("config-missing", remove("config.toml"), ("config.toml is missing",)),
    ("config-empty", write("config.toml", b""), ("config.toml", "[run] missing")),
    (
        "config-section-missing",
        edit_text("config.toml", lambda t: t.split("[optimizer]")[0]),
        ("config.toml", "[optimizer] missing"),
    ),
    # snapshots/*.npz
    ("npz-truncated", truncate(SNAPSHOT, 0.5), ("step_0000004.npz", "unreadable snapshot")),
    (
        "npz-wrong-shape",
        edit_npz(lambda a: a.__setitem__(f"{PARAMETER}/curvature", np.zeros(3))),
        ("step_0000004.npz", f"{PARAMETER}/curvature", "shape [3]", "[64]"),
    ),
    (
        "npz-field-missing",
        edit_npz(lambda a: a.pop(f"{PARAMETER}/h_exact")),
        ("step_0000004.npz", f"{PARAMETER}/h_exact missing", "reference 'exact'"),
    ),
    (
        "npz-parameter-missing",
        edit_npz(lambda a: [a.pop(k) for k in list(a) if k.startswith(f"{PARAMETER}/")]),
        ("step_0000004.npz", f"no arrays of parameter {PARAMETER}"),
    ),
    (
        "npz-unknown-parameter",
        edit_npz(lambda a: a.__setitem__("ghost/curvature", np.zeros(3))),
        ("step_0000004.npz", "'ghost/curvature'", "no parameter"),
    ),
    (
        "npz-text-array",
        edit_npz(lambda a: a.__setitem__(f"{PARAMETER}/weight", np.array(["abc"] * 64))),
        ("step_0000004.npz", f"{PARAMETER}/weight", "float64"),
    ),
    ("npz-object-array", object_array, ("step_0000004.npz", f"{PARAMETER}/curvature", "Python objects")),
    (
        "npz-all-nan-h",
        edit_npz(lambda a: a[f"{PARAMETER}/h_exact"].fill(np.nan)),
        ("step_0000004.npz", f"{PARAMETER}/h_exact is all NaN"),
    ),
    (
        "npz-all-inf-precision",
        edit_npz(lambda a: a[f"{PARAMETER}/precision"].fill(np.inf)),
        ("step_0000004.npz", f"{PARAMETER}/precision holds no finite number"),
    ),
    ("npz-zip-without-arrays", zip_without_arrays, ("step_0000004.npz", "'notes.txt' is not a .npy array")),
    ("npz-not-a-zip", write(SNAPSHOT, b"just text\n"), ("step_0000004.npz", "not an npz archive")),
    ("npz-missing", remove(SNAPSHOT), ("step_0000004.npz", "snapshot file missing")),
    # steps.csv
    ("steps-missing", remove("steps.csv"), ("steps.csv", "missing")),
    ("steps-truncated", keep_lines("steps.csv", 4), ("steps.csv", "3 rows", "6 steps")),
    ("steps-empty-file", write("steps.csv", b""), ("steps.csv", "empty")),
    ("steps-column-missing", drop_column("steps.csv", "eta"), ("steps.csv", "column eta missing")),
    ("steps-text-in-number", csv_cell("steps.csv", 3, "loss", "abc"), ("steps.csv", "line 3", "loss", "'abc'")),
    ("steps-step-skipped", csv_cell("steps.csv", 5, "step", "7"), ("steps.csv", "line 5 is step 7", "expected step 4")),
    ("steps-step-fraction", csv_cell("steps.csv", 2, "step", "1.5"), ("steps.csv", "line 2", "step", "whole number")),
    ("steps-step-empty", csv_cell("steps.csv", 2, "step", ""), ("steps.csv", "line 2", "step", "whole number")),
    # epochs.csv
    ("epochs-missing", remove("epochs.csv"), ("epochs.csv", "missing")),
    ("epochs-no-rows", keep_lines("epochs.csv", 1), ("epochs.csv", "no evaluation rows")),
    ("epochs-last-row-missing", keep_lines("epochs.csv", 2), ("epochs.csv", "last evaluation is at step 3", "6 steps")),
    (
        "epochs-text-in-number",
        csv_cell("epochs.csv", 2, "test_accuracy", "high"),
        ("epochs.csv", "line 2", "test_accuracy", "'high'"),
    ),
    # snapshots.csv
    ("snapshots-csv-missing", remove("snapshots.csv"), ("snapshots.csv", "missing")),
    ("snapshots-csv-row-missing", keep_lines("snapshots.csv", 3), ("snapshots.csv", "[2, 4]", "[2, 4, 6]")),
    ("snapshots-csv-extra-row", many(set_key("snapshot_steps", [2, 4])), ("snapshots.csv", "[2, 4, 6]", "[2, 4]")),
    (
        "snapshots-csv-unknown-reference",
        csv_cell("snapshots.csv", 3, "reference", "guess"),
        ("snapshots.csv", "line 3", "reference", "'guess'", "exact, hutchinson, both, none"),
    ),
    (
        "snapshots-csv-text-in-number",
        csv_cell("snapshots.csv", 2, "kl0_ratio", "big"),
        ("snapshots.csv", "line 2", "kl0_ratio", "'big'"),
    ),
]

#: Files a report writes; a refused report must leave them as they were (absent or byte for byte).
REPORT_FILES = ("report.md", "report.html", "metrics.json")


def report_files(run_dir: Path) -> dict[str, bytes]:
    paths = [run_dir / name for name in REPORT_FILES] + sorted((run_dir / "figures").glob("*"))
    paths += sorted(run_dir.glob(".*.tmp")) + sorted((run_dir / "figures").glob(".*.tmp"))
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in paths if p.is_file()}


@pytest.mark.parametrize("damage, names", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_damaged_record_is_refused_in_one_line(good_record, tmp_path, damage, names):
    # one copy keeps the report of the good record (it must stay byte for byte), one has none
    with_report, without = tmp_path / "with_report" / "run", tmp_path / "without_report" / "run"
    for run_dir in (with_report, without):
        shutil.copytree(good_record, run_dir)
        damage(run_dir)
    for name in REPORT_FILES:
        (without / name).unlink()
    shutil.rmtree(without / "figures")
    before = report_files(with_report)
    assert set(REPORT_FILES) <= set(before)

    lines = set()
    for run_dir, expected in ((with_report, before), (without, {})):
        outcome = invoke("report", run_dir)
        lines.add(assert_user_error(outcome, *names))
        assert report_files(run_dir) == expected, "a refused report wrote or removed report files"
    assert len(lines) == 2  # each names its own directory
    assert not (tmp_path / "with_report" / "unpickled").exists()  # np.load never unpickles
    assert not (tmp_path / "without_report" / "unpickled").exists()


@pytest.mark.parametrize(
    "target, names",
    [
        ("missing", ("missing", "no such run directory")),
        ("empty", ("empty", "not a run record", "no record.json")),
        ("file", ("file", "not a directory")),
        ("running", ("running", "incomplete (status running)")),
    ],
    ids=["nonexistent", "empty-dir", "a-file", "incomplete"],
)
def test_a_directory_that_is_not_a_record_is_refused_in_one_line(good_record, tmp_path, target, names):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("not a run\n")
    shutil.copytree(good_record, tmp_path / "running")
    set_key("status", "running")(tmp_path / "running")
    before = report_files(tmp_path / "running")
    assert_user_error(invoke("report", tmp_path / target), *names)
    assert report_files(tmp_path / "running") == before
    assert not any(name in (p.name for p in (tmp_path / "empty").iterdir()) for name in REPORT_FILES)


def test_the_undamaged_copy_renders(good_record, tmp_path):
    """The control of the table: the same copy without damage renders (exit 0, report rewritten)."""
    run_dir = tmp_path / "run"
    shutil.copytree(good_record, run_dir)
    (run_dir / "report.md").write_text("old\n")
    outcome = invoke("report", run_dir)
    assert outcome.exit_code == 0, outcome.stdout + outcome.stderr
    assert (run_dir / "report.md").read_text() != "old\n"


# -- incomplete records stay readable -------------------------------------------------------------


def test_a_killed_run_stays_readable_with_lagging_tables(good_record, tmp_path):
    """A killed run's manifest, tables and snapshot files lag each other; none of that is damage."""
    run_dir = tmp_path / "run"
    shutil.copytree(good_record, run_dir)
    set_key("status", "running")(run_dir)
    set_key("snapshot_steps", [2])(run_dir)
    keep_lines("steps.csv", 4)(run_dir)  # 3 of 6 steps flushed
    keep_lines("snapshots.csv", 2)(run_dir)  # one row, three snapshot files on disk
    remove("epochs.csv")(run_dir)
    record = RunRecord.load(run_dir, allow_incomplete=True)
    assert record.status == "running" and len(record.steps) == 3 and len(record.epochs) == 0
    assert record.snapshot_steps == [2, 4, 6]
    assert set(record.snapshot(6)[PARAMETER]) >= {"curvature", "h_exact"}
    remove("snapshots.csv")(run_dir)
    remove("steps.csv")(run_dir)
    assert RunRecord.load(run_dir, allow_incomplete=True).steps.empty
    # but a damaged file is damage in an incomplete record too
    write("steps.csv", b"step,loss\n1,abc\n")(run_dir)
    with pytest.raises(RecordError, match="steps.csv: column"):
        RunRecord.load(run_dir, allow_incomplete=True)


def test_a_diverged_run_stays_readable(good_record, tmp_path):
    """A diverged record ends at its divergence step (no final evaluation) and may hold NaN."""
    run_dir = tmp_path / "run"
    shutil.copytree(good_record, run_dir)
    edit_json(
        "record.json",
        lambda m: m.update(
            status="diverged", steps=5, snapshot_steps=[2, 4], divergence={"step": 5, "quantity": "loss"}
        ),
    )(run_dir)
    keep_lines("steps.csv", 6)(run_dir)
    keep_lines("epochs.csv", 2)(run_dir)
    keep_lines("snapshots.csv", 3)(run_dir)
    remove("snapshots/step_0000006.npz")(run_dir)
    edit_npz(lambda a: a[f"{PARAMETER}/h_exact"].fill(np.nan))(run_dir)
    record = RunRecord.load(run_dir, allow_incomplete=True)
    assert record.status == "diverged" and len(record.steps) == 5 and record.snapshot_steps == [2, 4]
    assert np.isnan(record.snapshot(4)[PARAMETER]["h_exact"]).all()


# -- studies --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_study(tmp_path_factory) -> Path:
    from arturo_diag.study import run_study, study_from_mapping

    setup = {
        "model": "mlp",
        "dataset": "teacher",
        "steps": 4,
        "batch_size": 16,
        "train_size": 64,
        "probe_size": 16,
        "every": 2,
        "reference": "exact",
    }
    study = study_from_mapping(
        {"study": {"name": "tiny", "seeds": [0, 1], "variants": ["faithful", "sgd"]}, "setups": {"t": setup}}
    )
    study_dir = tmp_path_factory.mktemp("study") / "tiny"
    result = run_study(study, study_dir, workers=0, check_inputs=False)
    assert [o.status for o in result.outcomes] == ["complete"] * 4
    return study_dir


STUDY_RUN = "runs/t/faithful/seed1"


@pytest.mark.parametrize(
    "content, names",
    [
        (b"\x00\x9f\xff garbage [[[", ("study.toml",)),
        (b"[study\n", ("study.toml",)),
        (b'[study]\nseeds = "zero"\nvariants = ["faithful"]\n[setups.t]\nmodel = "mlp"\n', ("study.toml", "seeds")),
    ],
    ids=["random-bytes", "bad-toml", "wrong-type"],
)
def test_a_damaged_study_file_is_refused_in_one_line(good_study, tmp_path, content, names):
    study_dir = tmp_path / "tiny"
    shutil.copytree(good_study, study_dir)
    (study_dir / "study.toml").write_bytes(content)
    before = {name: (study_dir / name).read_bytes() for name in ("study.md", "study.html", "study.json")}
    assert_user_error(invoke("report", study_dir), *names)
    assert {name: (study_dir / name).read_bytes() for name in before} == before


@pytest.mark.parametrize(
    "damage, names",
    [
        (keep_lines("steps.csv", 3), ("steps.csv", "2 rows", "4 steps")),
        (set_key("parameters", "x"), ("record.json", "'parameters'")),
        (
            many(
                remove("metrics.json"),
                edit_npz(lambda a: a["net.1.bias/h_exact"].fill(np.nan), "snapshots/step_0000004.npz"),
            ),
            ("step_0000004.npz", "all NaN"),
        ),
    ],
    ids=["steps-truncated", "manifest-wrong-type", "snapshot-all-nan"],
)
def test_a_damaged_run_is_left_out_of_the_study_with_a_finding(good_study, tmp_path, damage, names):
    """The careful researcher's choice: the other runs' report is still rendered, the damaged run
    is left out of every number, and the first warning says which run, which file and why (also in
    study.json's counts and runs); `ablate` on the directory redoes it (it is not complete)."""
    study_dir = tmp_path / "tiny"
    shutil.copytree(good_study, study_dir)
    damage(study_dir / STUDY_RUN)
    outcome = invoke("report", study_dir)
    assert outcome.exit_code == 0 and outcome.exception is None, outcome.stdout + outcome.stderr
    content = json.loads((study_dir / "study.json").read_text())
    assert content["counts"]["damaged"] == 1 and content["counts"]["complete"] == 3
    (run,) = [r for r in content["runs"] if r["status"] == "damaged"]
    assert (run["variant"], run["seed"], run["test_accuracy"]) == ("faithful", 1, None)
    for name in names:
        assert name in run["error"]
    (finding,) = [f for f in content["findings"] if "damaged record" in f["text"]]
    assert finding["severity"] == "warning" and "t/faithful/seed1" in finding["text"] and names[0] in finding["text"]
    printed = " ".join(outcome.stdout.split())
    assert "damaged record" in printed and "t/faithful/seed1" in printed
    faithful = next(e for e in content["results"]["t"]["summary"] if e["variant"] == "faithful")
    assert (faithful["n_runs"], faithful["n_complete"], faithful["test_accuracy"]["n"]) == (2, 1, 1)
