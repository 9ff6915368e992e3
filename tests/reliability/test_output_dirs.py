"""Output directories that cannot be written: one line naming the path and the OS's reason.

`compare`, `ablate` and `report` given an ``--out`` (or run directory) that is a regular file, lies
below one, is ``/dev/null`` or in ``/proc``, is read-only, refuses permission, is immutable, or
sits on a full disk. We run as root, and chmod does not stop root from writing: read-only,
permission and immutable directories and the full disk are simulated by making the OS calls the
writers use (``os.mkdir``, ``tempfile.mkstemp``, ``os.replace``, ``os.unlink``) raise the OS error
for paths below the test's directory. Where ``mount`` is permitted, a real small tmpfs (full
disk) and a real read-only remount are used as well; those cases are skipped otherwise.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.reliability.harness import assert_nothing_complete, assert_user_error, invoke, run_process, tiny

STUDY = (
    '[study]\nname = "s"\nseeds = [0, 1]\nvariants = ["faithful", "adam"]\n\n[setups.t]\nmodel = "mlp"\n'
    'dataset = "teacher"\nsteps = 4\nbatch_size = 16\ntrain_size = 64\nprobe_size = 16\nevery = 2\n'
)


# ---------------------------------------------------------------------------------------- helpers
def fail_below(
    monkeypatch, root: Path, code: int, *, calls=("mkdir", "mkstemp", "replace", "unlink"), when=lambda path: True
) -> None:
    """Make the named OS calls raise ``OSError(code)`` for paths below ``root`` (and ``when(path)``)."""
    root = str(root)
    error = OSError(code, os.strerror(code))

    def below(path) -> bool:
        path = os.path.abspath(os.fspath(path))
        return path.startswith(root) and when(path)

    def wrap(module, name, path_of):
        original = getattr(module, name)

        def failing(*args, **kwargs):
            path = path_of(*args, **kwargs)
            if path is not None and below(path):
                raise OSError(code, os.strerror(code), os.fspath(path))
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, failing)

    assert error.strerror
    if "mkdir" in calls:
        wrap(os, "mkdir", lambda path, *a, **k: path)
    if "mkstemp" in calls:
        wrap(tempfile, "mkstemp", lambda *a, dir=None, **k: dir)
    if "replace" in calls:
        wrap(os, "replace", lambda src, dst, *a, **k: dst)
    if "unlink" in calls:
        wrap(os, "unlink", lambda path, *a, **k: path)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A complete run record with its report (compare TINY), copied by the report cases."""
    root = tmp_path_factory.mktemp("finished")
    outcome = invoke("compare", *tiny("--out", "run"), cwd=root)
    assert outcome.exit_code == 0, outcome.stderr
    return root / "run"


def copy_run(finished_run: Path, where: Path) -> Path:
    target = where / "run"
    shutil.copytree(finished_run, target)
    return target


def _mount(*args: str) -> bool:
    try:
        return subprocess.run(["mount", *args], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture
def small_disk(tmp_path):
    """A real tmpfs of ``size`` bytes at tmp_path/disk (skips where mount is not permitted)."""
    mounted = []

    def make(size: str) -> Path:
        point = tmp_path / f"disk{len(mounted)}"
        point.mkdir()
        if not _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)):
            pytest.skip("mount -t tmpfs is not permitted here")
        mounted.append(point)
        return point

    yield make
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def assert_not_quiet_error(outcome, *names):
    """The error came after the run started (a progress bar was drawn): still one line, exit 2."""
    return assert_user_error(outcome, *names, quiet=False)


# ---------------------------------------------------------------------------------------- compare
# (id, --out relative to tmp_path (or absolute), what to create first, names in the error line)
COMPARE_PATHS = [
    ("out-is-a-file", "afile", "file", ["afile", "a file of that name is in the way"]),
    ("out-below-a-file", "afile/run", "file", ["afile/run", "Not a directory"]),
    ("out-dev-null", "/dev/null", None, ["/dev/null"]),
    ("out-in-proc", "/proc/arturo-diag-run", None, ["/proc/arturo-diag-run"]),
]


@pytest.mark.parametrize("out, make, names", [c[1:] for c in COMPARE_PATHS], ids=[c[0] for c in COMPARE_PATHS])
def test_compare_refuses_an_output_path_it_cannot_create(tmp_path, out, make, names):
    if make == "file":
        (tmp_path / "afile").write_text("not a directory\n")
    outcome = invoke("compare", *tiny("--out", out), cwd=tmp_path)
    assert_user_error(outcome, *names)  # quiet: found before training, no progress bar
    if make == "file":
        assert (tmp_path / "afile").read_text() == "not a directory\n"


# (id, errno, OS calls that fail, names) - simulated, see the module docstring
COMPARE_FAULTS = [
    ("read-only", errno.EROFS, ("mkdir", "mkstemp", "replace", "unlink"), ["Read-only file system"]),
    ("permission-denied", errno.EACCES, ("mkdir", "mkstemp"), ["Permission denied"]),
    ("immutable", errno.EPERM, ("mkstemp", "replace", "unlink"), ["Operation not permitted"]),
    ("full-disk-at-start", errno.ENOSPC, ("mkstemp",), ["No space left on device"]),
]


@pytest.mark.parametrize("code, calls, names", [c[1:] for c in COMPARE_FAULTS], ids=[c[0] for c in COMPARE_FAULTS])
def test_compare_names_the_path_and_the_os_reason_before_training(tmp_path, monkeypatch, code, calls, names):
    fail_below(monkeypatch, tmp_path / "runs", code, calls=calls)
    outcome = invoke("compare", *tiny("--out", "runs/x"), cwd=tmp_path)
    line = assert_user_error(outcome, "runs/x", *names)  # quiet: no progress bar was drawn
    assert line.startswith("error: ") and "Traceback" not in outcome.stderr
    assert_nothing_complete(tmp_path / "runs" / "x")


def test_compare_into_a_directory_that_fills_up_during_the_run(tmp_path, monkeypatch):
    # the first snapshot's arrays cannot be written: the run has started, its bar is drawn
    fail_below(
        monkeypatch, tmp_path / "runs", errno.ENOSPC, calls=("replace",), when=lambda p: "/step_" in p
    )  # a snapshot's, not the initial weights' written at the start
    outcome = invoke("compare", *tiny("--out", "runs/x"), cwd=tmp_path)
    # the spectrum runs at the first snapshot: its arrays (instruments/) are written before the snapshot's
    assert_not_quiet_error(outcome, "runs/x/instruments/step_0000002.npz", "No space left on device")
    assert_nothing_complete(tmp_path / "runs" / "x")


def test_compare_overwrite_in_a_read_only_directory(tmp_path, monkeypatch, finished_run):
    run = copy_run(finished_run, tmp_path)
    fail_below(monkeypatch, run, errno.EROFS)
    outcome = invoke("compare", *tiny("--out", "run", "--overwrite"), cwd=tmp_path)
    assert_user_error(outcome, "run", "Read-only file system")


def test_compare_on_a_real_full_disk(small_disk):
    disk = small_disk("64k")
    outcome = invoke("compare", *tiny("--out", disk / "x"))
    assert_user_error(outcome, str(disk / "x"), "No space left on device", quiet=False)
    assert_nothing_complete(disk / "x")


def test_compare_on_a_real_read_only_file_system(small_disk):
    disk = small_disk("1m")
    if not _mount("-o", "remount,ro", str(disk)):
        pytest.skip("remount read-only is not permitted here")
    outcome = invoke("compare", *tiny("--out", disk / "x"))
    assert_user_error(outcome, str(disk / "x"), "Read-only file system")


# ----------------------------------------------------------------------------------------- ablate
@pytest.mark.parametrize(
    "out, names",
    [("afile", ["out", "afile"]), ("afile/st", ["afile/st", "Not a directory"]), ("/dev/null", ["/dev/null"])],
    ids=["out-is-a-file", "out-below-a-file", "out-dev-null"],
)
def test_ablate_refuses_an_output_path_it_cannot_create(tmp_path, out, names):
    (tmp_path / "afile").write_text("not a directory\n")
    (tmp_path / "s.toml").write_text(STUDY)
    outcome = invoke("ablate", "--config", "s.toml", "--out", out, cwd=tmp_path)
    assert_user_error(outcome, *names)


def test_ablate_into_a_read_only_directory(tmp_path, monkeypatch):
    (tmp_path / "s.toml").write_text(STUDY)
    fail_below(monkeypatch, tmp_path / "st", errno.EROFS)
    outcome = invoke("ablate", "--config", "s.toml", "--out", "st", cwd=tmp_path)
    assert_user_error(outcome, "st", "Read-only file system")  # quiet: before any run
    assert_nothing_complete(tmp_path / "st")


def test_a_study_stops_cleanly_when_the_disk_fills_up(tmp_path, monkeypatch):
    """The first run whose files cannot be written stops the study with one line; no run is marked
    failed (a later call resumes them); in this process (workers=0) so the fault reaches it."""
    import arturo_diag.study.executors as executors  # the local pool's home (issue 14)

    monkeypatch.setattr(executors, "default_workers", lambda: 0)
    (tmp_path / "s.toml").write_text(STUDY)
    fail_below(
        monkeypatch, tmp_path / "st" / "runs", errno.ENOSPC, calls=("replace",), when=lambda p: "/adam/seed0/" in p
    )  # faithful/seed0 finishes first
    outcome = invoke("ablate", "--config", "s.toml", "--out", "st", cwd=tmp_path)
    line = assert_not_quiet_error(
        outcome,
        "No space left on device",
        "the study stopped",
        "adam/seed0",
        "1 of 4 runs finished",
        "run the same command again",
    )
    assert "failed" not in line
    assert not list((tmp_path / "st").rglob("study_failure.json")), "a run was marked failed for a full disk"
    assert_nothing_complete(tmp_path / "st")
    monkeypatch.undo()  # space again: the same command resumes, keeping the finished run
    monkeypatch.setattr(executors, "default_workers", lambda: 0)
    again = invoke("ablate", "--config", "s.toml", "--out", "st", cwd=tmp_path)
    assert again.exit_code == 0, again.stderr
    assert "(3 run, 1 already done, 0 failed" in again.stdout


def test_a_study_with_worker_processes_stops_on_a_real_full_disk(small_disk, tmp_path):
    disk = small_disk("40k")
    (tmp_path / "s.toml").write_text(STUDY)
    outcome = run_process(
        "ablate", "--config", tmp_path / "s.toml", "--out", disk / "st", "--workers", "1", timeout=240
    )
    assert_user_error(
        outcome, "No space left on device", "the study stopped", "run the same command again", quiet=False
    )
    assert not list(disk.rglob("study_failure.json"))
    assert_nothing_complete(disk / "st")


# ----------------------------------------------------------------------------------------- report
REPORT_FAULTS = [
    ("read-only", errno.EROFS, ("mkstemp", "replace", "unlink"), lambda p: True, ["Read-only file system"]),
    (
        "full-disk-at-metrics",
        errno.ENOSPC,
        ("replace",),
        lambda p: p.endswith("metrics.json"),
        ["metrics.json", "No space left on device"],
    ),
    (
        "full-disk-at-html",
        errno.ENOSPC,
        ("replace",),
        lambda p: p.endswith("report.html"),
        ["report.html", "No space left on device"],
    ),
    (
        "permission-denied-figures",
        errno.EACCES,
        ("mkstemp",),
        lambda p: p.endswith("figures"),
        ["figures", "Permission denied"],
    ),
]


@pytest.mark.parametrize("code, calls, when, names", [c[1:] for c in REPORT_FAULTS], ids=[c[0] for c in REPORT_FAULTS])
def test_report_names_the_path_and_the_os_reason(tmp_path, monkeypatch, finished_run, code, calls, when, names):
    run = copy_run(finished_run, tmp_path)
    fail_below(monkeypatch, run, code, calls=calls, when=when)
    outcome = invoke("report", run)
    assert_user_error(outcome, str(run), *names)
    if code != errno.EROFS:  # a report that cannot be finished is not left looking finished
        assert not (run / "report.md").exists() and not (run / "report.html").exists()


def test_report_when_figures_is_a_file(tmp_path, finished_run):
    run = copy_run(finished_run, tmp_path)
    shutil.rmtree(run / "figures")
    (run / "figures").write_text("in the way\n")
    outcome = invoke("report", run)
    assert_user_error(outcome, str(run / "figures"))
    assert not (run / "report.md").exists() and not (run / "report.html").exists()
