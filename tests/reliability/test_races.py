"""Races: one writer per run or study directory (issue 9, items 12-14).

- Two processes on one directory: while one `compare` (or `ablate`) writes it, every second writer
  (`--overwrite` included, `report` too) is refused in one line naming the directory and the
  holder's pid, and the first finishes unharmed with a consistent record.
- `compare` refuses a study directory and `ablate` a run directory (CLI and Python API).
- The lock is released after a failure (a rerun works) and when its holder is killed -9 (the
  stale pid left in the lock file blocks nobody).
- A killed `ablate` (SIGKILL or SIGTERM of the driver) leaves no worker running and no run started
  after it.
- Whoever takes a directory's lock removes the temporaries of a dead writer.

Processes are real (harness.start_process / run_process): the lock is between processes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from arturo_diag.diagnostics.lock import LOCK_FILE, DirectoryLock, keep_locked
from arturo_diag.diagnostics.record import STUDY_MARKERS, RecordWriter, RunRecord
from arturo_diag.errors import RecordError
from arturo_diag.study import run_study, study_from_mapping
from arturo_diag.study.execution import STUDY_FILE

from .harness import (
    Outcome,
    assert_nothing_complete,
    assert_user_error,
    finish_process,
    invoke,
    run_process,
    start_process,
    tiny,
)

# A compare that holds its directory for a while (the lock is kept from the record to its report):
# 900 steps, 3 snapshots (a few seconds of training on a quiet machine, then the report); the
# second writers need to start Python and torch meanwhile. (900, not 300: on one torch thread, as
# a run now trains, the tiny MLP's 300 steps ended before the second writers had started.)
LONG_COMPARE = ("compare", *tiny("--epochs", 300, "--every", 300))
LONG_STEPS, LONG_EPOCHS, LONG_SNAPSHOTS = 900, 300, [300, 600, 900]

TINY_SETUP = {
    "model": "mlp",
    "dataset": "teacher",
    "steps": 4,
    "batch_size": 16,
    "train_size": 64,
    "probe_size": 16,
    "every": 2,
    "reference": "exact",
}


def study_toml(path: Path, *, seeds: int, variants: tuple[str, ...], **setup) -> Path:
    fields = {**TINY_SETUP, **setup}
    lines = [
        "[study]",
        'name = "race"',
        f"seeds = {list(range(seeds))}",
        "variants = [" + ", ".join(f'"{v}"' for v in variants) + "]",
        "[setups.t]",
    ]
    lines += [f"{key} = {json.dumps(value)}" for key, value in fields.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def wait_for(condition, process, what: str, timeout: float = 240) -> None:
    """Poll ``condition()`` until true; fail if ``process`` ended first or ``timeout`` passed."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            outcome = finish_process(process)
            pytest.fail(f"the first process ended (exit {outcome.exit_code}) before {what}:\n{outcome.stderr}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def in_threads(commands: dict[str, list[object]], cwd: Path) -> dict[str, Outcome]:
    """Run every command at once, each as its own process (run_process), and collect the outcomes."""
    outcomes: dict[str, Outcome] = {}

    def one(key: str, args: list[object]) -> None:
        outcomes[key] = run_process(*args, cwd=cwd, timeout=240)

    threads = [threading.Thread(target=one, args=item) for item in commands.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


# A dead writer's temporary that a refused second writer must leave alone (it is not its to remove).
PLANTED = ".planted.json.ab12cd34.tmp"


# ------------------------------------------------------------------ two processes on one directory
@dataclass(frozen=True)
class Second:
    id: str
    args: tuple[object, ...]  # "{dir}" is the first process's directory, "{toml}" a tiny study file
    names: tuple[str, ...]  # what the error line names besides the directory ("{pid}": the first's pid)


COMPARE_SECONDS = [
    Second(
        "compare --overwrite",
        ("compare", *tiny("--seed", 1), "--out", "{dir}", "--overwrite"),
        ("being written", "pid {pid}"),
    ),
    Second("report", ("report", "{dir}"), ("being written", "pid {pid}")),
    Second(
        "ablate --out run dir",
        ("ablate", "--config", "{toml}", "--out", "{dir}", "--workers", 1),
        ("single run record",),
    ),
]
ABLATE_SECONDS = [
    Second(
        "ablate", ("ablate", "--config", "{toml}", "--out", "{dir}", "--workers", 1), ("being written", "pid {pid}")
    ),
    Second(
        "compare --overwrite into the study", ("compare", *tiny(), "--out", "{dir}", "--overwrite"), ("study.toml",)
    ),
    Second("report", ("report", "{dir}"), ("being written", "pid {pid}")),
]


def _fill(args, directory: Path, toml: Path) -> list[str]:
    return [str(a).replace("{dir}", str(directory)).replace("{toml}", str(toml)) for a in args]


def _refusals(seconds: list[Second], first, directory: Path, toml: Path, cwd: Path) -> None:
    outcomes = in_threads({s.id: _fill(s.args, directory, toml) for s in seconds}, cwd)
    assert first.poll() is None, "the first process ended before the second ones: the race was not exercised"
    for second in seconds:
        names = [str(directory)] + [n.replace("{pid}", str(first.pid)) for n in second.names]
        try:
            assert_user_error(outcomes[second.id], *names)
        except AssertionError as error:
            raise AssertionError(f"second writer {second.id!r}: {error}") from None
    assert (directory / PLANTED).is_file(), "a refused writer removed a file of the directory"


def test_a_second_writer_of_a_run_being_written_is_refused_and_the_first_finishes_unharmed(tmp_path):
    out = tmp_path / "compare"
    toml = study_toml(tmp_path / "s.toml", seeds=1, variants=("adam",))
    first = start_process(*LONG_COMPARE, "--out", out, cwd=tmp_path)
    try:
        wait_for(lambda: (out / "record.json").is_file(), first, "its record.json")
        (out / PLANTED).write_text("not the second writers' to remove")
        _refusals(COMPARE_SECONDS, first, out, toml, tmp_path)
    finally:
        outcome = finish_process(first)
    assert outcome.exit_code == 0, outcome.stderr
    # its own run, as it printed it: seed 0's config, its step count in every table
    printed = " ".join(outcome.stdout.split())  # rich wraps long lines
    assert f"run {out} ({LONG_STEPS} steps" in printed
    record = RunRecord.load(out)
    assert record.complete and record.config["run"]["seed"] == 0
    assert record.manifest["steps"] == LONG_STEPS == len(record.steps) == int(record.steps["step"].max())
    assert len(record.epochs) == LONG_EPOCHS and record.snapshot_steps == LONG_SNAPSHOTS
    assert (out / "report.md").is_file() and (out / "metrics.json").is_file()
    assert (out / LOCK_FILE).read_text() == ""  # released: no holder named any more


def test_a_second_study_process_on_a_study_being_run_is_refused_and_the_first_finishes_unharmed(tmp_path):
    study_dir = tmp_path / "study"
    toml = study_toml(tmp_path / "s.toml", seeds=4, variants=("faithful", "adam"), steps=30, every=10)
    first = start_process("ablate", "--config", toml, "--out", study_dir, "--workers", 1, cwd=tmp_path)
    try:
        wait_for(lambda: (study_dir / STUDY_FILE).is_file(), first, "its study.toml")
        (study_dir / PLANTED).write_text("not the second writers' to remove")
        _refusals(ABLATE_SECONDS, first, study_dir, toml, tmp_path)
    finally:
        outcome = finish_process(first)
    assert outcome.exit_code == 0, outcome.stderr
    data = json.loads((study_dir / "study.json").read_text())
    assert data["counts"]["complete"] == 8 and data["counts"]["failed"] == 0, data["counts"]
    runs = sorted(study_dir.glob("runs/**/record.json"))
    assert len(runs) == 8 and all(RunRecord.load(p.parent).complete for p in runs)
    assert not (study_dir / "record.json").exists()  # the compare into it wrote nothing


# ------------------------------------------------------------------ run directory vs study directory
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "compare"
    outcome = invoke("compare", *tiny("--out", out))
    assert outcome.exit_code == 0, outcome.stderr
    return out


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory) -> Path:
    study_dir = tmp_path_factory.mktemp("study") / "study"
    study = study_from_mapping(
        {"study": {"name": "s", "seeds": [0], "variants": ["faithful"]}, "setups": {"t": dict(TINY_SETUP)}}
    )
    run_study(study, study_dir, workers=0)
    return study_dir


def _study_dir(tmp_path: Path, marker: str, finished_study: Path) -> Path:
    directory = tmp_path / "study"
    directory.mkdir()
    shutil.copy(finished_study / marker, directory / marker)
    return directory


@pytest.mark.parametrize("marker", STUDY_MARKERS)
@pytest.mark.parametrize("overwrite", [(), ("--overwrite",)], ids=["plain", "overwrite"])
def test_compare_refuses_a_study_directory(tmp_path, finished_study, marker, overwrite):
    directory = _study_dir(tmp_path, marker, finished_study)
    outcome = invoke("compare", *tiny("--out", directory, *overwrite))
    assert_user_error(outcome, str(directory), marker, "study")
    assert sorted(p.name for p in directory.iterdir()) == [marker]  # nothing written into it


def test_ablate_refuses_a_run_directory(tmp_path, finished_run):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    before = sorted(p.name for p in run_dir.iterdir())
    toml = study_toml(tmp_path / "s.toml", seeds=1, variants=("adam",))
    outcome = invoke("ablate", "--config", toml, "--out", run_dir, "--workers", 1)
    assert_user_error(outcome, str(run_dir), "single run record")
    assert sorted(p.name for p in run_dir.iterdir()) == before and not (run_dir / STUDY_FILE).exists()


API_REFUSALS = [
    pytest.param(
        lambda study_dir, run_dir: RecordWriter(study_dir, "monitor", "", {"w": (1,)}),
        "study",
        id="RecordWriter into a study",
    ),
    pytest.param(
        lambda study_dir, run_dir: RecordWriter(study_dir, "compare", "", {"w": (1,)}, overwrite=True),
        "study",
        id="RecordWriter overwrite into a study",
    ),
    pytest.param(
        lambda study_dir, run_dir: run_study(
            study_from_mapping({"study": {"seeds": [0], "variants": ["adam"]}, "setups": {"t": dict(TINY_SETUP)}}),
            run_dir,
            workers=0,
        ),
        "single run record",
        id="run_study into a run",
    ),
]


@pytest.mark.parametrize("make, fragment", API_REFUSALS)
def test_the_python_api_refuses_the_other_kind_of_directory(tmp_path, finished_run, finished_study, make, fragment):
    study_dir = _study_dir(tmp_path, STUDY_FILE, finished_study)
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    with pytest.raises(RecordError, match=fragment):
        make(study_dir, run_dir)
    assert not (study_dir / "record.json").exists() and not (run_dir / STUDY_FILE).exists()


# ------------------------------------------------------------------ the lock is released
def _writer(directory: Path, **options) -> RecordWriter:
    return RecordWriter(directory, "monitor", "", {"w": (2,)}, **options)


def _drop(writer: RecordWriter) -> None:
    del writer  # no finish: the writer is garbage; its lock goes with it


def _fail_inside_with(writer: RecordWriter) -> None:
    try:
        with writer:
            raise RuntimeError("the loop crashed")
    except RuntimeError:
        pass


ENDINGS = [
    pytest.param(lambda w: w.finish(), "complete", id="finish"),
    pytest.param(lambda w: w.fail("a step raised"), "failed", id="fail"),
    pytest.param(lambda w: w.close(), "running", id="close"),
    pytest.param(_fail_inside_with, "failed", id="exception in with"),
    pytest.param(_drop, "running", id="dropped"),
]


@pytest.mark.parametrize("end, status", ENDINGS)
def test_every_ending_of_a_writer_releases_its_directory(tmp_path, end, status):
    writer = _writer(tmp_path / "run")
    with pytest.raises(RecordError, match="another writer in this process"):
        _writer(tmp_path / "run", overwrite=True)  # held while it writes
    end(writer)
    del writer
    assert json.loads((tmp_path / "run" / "record.json").read_text())["status"] == status
    _writer(tmp_path / "run", overwrite=True).finish()  # a rerun takes the directory


def _locked_by_someone(directory: Path) -> bool:
    """Whether the OS lock of ``directory`` is held (asked with a descriptor of our own)."""
    import fcntl

    fd = os.open(directory / LOCK_FILE, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


@pytest.mark.skipif(os.name != "posix", reason="asks flock directly")
def test_compare_keeps_its_directory_from_the_record_to_its_report(tmp_path):
    run_dir = tmp_path / "run"
    with keep_locked(run_dir):  # what compare does around its run and its report
        assert not run_dir.exists()  # nothing is created before a writer starts
        _writer(run_dir).finish()
        assert _locked_by_someone(run_dir), "released between the record and the report"
        with DirectoryLock(run_dir, advice="wait"):  # the report's lock nests in it
            with pytest.raises(RecordError, match="another writer in this process"):
                _writer(run_dir, overwrite=True)  # but not a second writer beside the report
        assert _locked_by_someone(run_dir)
    assert not _locked_by_someone(run_dir)


def test_a_refused_writer_holds_nothing(tmp_path):
    _writer(tmp_path / "run").finish()
    with pytest.raises(RecordError, match="already holds a run record") as refused:
        _writer(tmp_path / "run")
    assert refused.value  # the refused writer is still referenced by the traceback
    _writer(tmp_path / "run", overwrite=True).finish()


def test_a_compare_that_crashed_mid_run_leaves_its_directory_free(tmp_path, monkeypatch):
    import arturo_diag.training.loop as loop

    def crash(*args, **kwargs):
        raise RuntimeError("evaluation crashed")

    out = tmp_path / "compare"
    with monkeypatch.context() as patch:
        patch.setattr(loop, "evaluate", crash)
        crashed = invoke("compare", *tiny("--out", out))
    assert isinstance(crashed.exception, RuntimeError)
    assert json.loads((out / "record.json").read_text())["status"] == "failed"
    assert_nothing_complete(out)
    rerun = invoke("compare", *tiny("--out", out, "--overwrite"))
    assert rerun.exit_code == 0, rerun.stderr
    assert RunRecord.load(out).complete


def test_a_writer_killed_9_leaves_a_stale_pid_that_blocks_nobody(tmp_path):
    out = tmp_path / "compare"
    first = start_process(*LONG_COMPARE, "--out", out, cwd=tmp_path)
    try:
        wait_for(lambda: (out / "record.json").is_file(), first, "its record.json")
    finally:
        first.kill()
        finish_process(first)
    assert (out / LOCK_FILE).read_text().split()[0] == str(first.pid)  # the dead holder is still named
    assert_nothing_complete(out)
    rerun = invoke("compare", *tiny("--out", out, "--overwrite"))  # the dead process held the OS lock
    assert rerun.exit_code == 0, rerun.stderr
    assert RunRecord.load(out).complete and (out / LOCK_FILE).read_text() == ""


def test_the_lock_file_without_flock_names_a_live_holder_and_takes_over_a_dead_one(tmp_path, monkeypatch):
    # Platforms without fcntl/msvcrt (or file systems without flock) use an O_EXCL lock file.
    import arturo_diag.diagnostics.lock as lock

    monkeypatch.setattr(lock, "fcntl", None)
    monkeypatch.setattr(lock, "msvcrt", None)
    directory = tmp_path / "run"
    directory.mkdir()
    (directory / LOCK_FILE).write_text(f"{os.getppid()} {lock.socket.gethostname()}\n")  # alive: the test's parent
    with pytest.raises(RecordError, match=f"pid {os.getppid()}"):
        DirectoryLock(directory).acquire()
    dead = start_process("--help")
    finish_process(dead)
    (directory / LOCK_FILE).write_text(f"{dead.pid} {lock.socket.gethostname()}\n")  # that pid has exited
    with DirectoryLock(directory):
        assert (directory / LOCK_FILE).read_text().split()[0] == str(os.getpid())
    assert not (directory / LOCK_FILE).exists()


# ------------------------------------------------------------------ a killed study stops its workers
def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


KILLS = [
    pytest.param(signal.SIGKILL, -signal.SIGKILL, id="SIGKILL"),
    pytest.param(signal.SIGTERM, 130, id="SIGTERM"),
    pytest.param(signal.SIGINT, 130, id="SIGINT"),  # Ctrl-C, to the driver alone
]


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs /proc to find the worker processes")
@pytest.mark.parametrize("sig, exit_code", KILLS)
def test_a_killed_study_leaves_no_worker_and_starts_no_run(tmp_path, sig, exit_code):
    # Many very short runs: a worker that outlived its driver would pick the next queued one at once.
    toml = study_toml(tmp_path / "s.toml", seeds=20, variants=("adam", "sgd"), steps=2, reference="none")
    study_dir = tmp_path / "study"
    driver = start_process("ablate", "--config", toml, "--out", study_dir, "--workers", 2, cwd=tmp_path)
    try:
        # right when a run is done (metrics.json is a worker's last write) its worker takes the next
        wait_for(lambda: any(study_dir.glob("runs/*/*/*/metrics.json")), driver, "a run finished", timeout=300)
        workers = _children(driver.pid)
        driver.send_signal(sig)
        outcome = finish_process(driver, timeout=60)
        # The driver is gone only now: its exit (and so the workers' death signal) can lag the signal
        # by tens of ms under load, while a 2-step run takes about as long.
        stopped = time.time()
    finally:
        if driver.poll() is None:
            driver.kill()
    started = set(study_dir.glob("runs/*/*/*"))  # every run directory a worker had begun when it stopped
    assert outcome.exit_code == exit_code, outcome.stderr
    assert workers, "no worker process was found"
    deadline = time.monotonic() + 5
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [w for w in workers if _alive(w)], "worker processes outlived the study process"
    time.sleep(1.0)
    assert set(study_dir.glob("runs/*/*/*")) == started, "a run was started after the study process stopped"
    assert not (study_dir / "study.json").exists()
    for manifest in study_dir.glob("runs/**/record.json"):
        if json.loads(manifest.read_text()).get("status") == "complete":  # only whole runs look complete,
            assert RunRecord.load(manifest.parent).complete
            begun = (manifest.parent / "config.toml").stat().st_mtime  # and none begun after the signal
            assert begun < stopped, f"{manifest.parent} was begun after the study process stopped"
    if sig != signal.SIGKILL:
        assert "interrupted" in outcome.stderr


# ------------------------------------------------------------------ a dead writer's temporaries
STRAY_RUN = (
    ".metrics.json.ab12cd34.tmp",
    ".report.html.k_9x2m4p.tmp",
    "figures/.agreement.png.zz99aa11.tmp",
    "snapshots/.step_0000002.npz.q1w2e3r4.tmp",
)
STRAY_STUDY = (".study.json.ab12cd34.tmp", "figures/.t_curves.png.zz99aa11.tmp")
# not temporaries of io.atomic_open (no 8-character random part, or another shape): left alone
BYSTANDERS = (
    "notes.tmp",
    ".metrics.json.tmp",
    "keep.ab12cd34.tmp",
    ".metrics.json.ab12cd34.tmp.bak",
    "figures/.hidden",
)

CLEANUPS = [
    pytest.param("run", ("report", "{dir}"), STRAY_RUN, id="report of a run"),
    pytest.param("run", ("compare", *tiny(), "--out", "{dir}", "--overwrite"), STRAY_RUN, id="compare --overwrite"),
    pytest.param("study", ("report", "{dir}"), STRAY_STUDY, id="report of a study"),
]


@pytest.mark.parametrize("kind, args, stray", CLEANUPS)
def test_taking_the_lock_removes_a_dead_writers_temporaries(tmp_path, finished_run, finished_study, kind, args, stray):
    directory = tmp_path / kind
    shutil.copytree(finished_run if kind == "run" else finished_study, directory)
    for name in (*stray, *BYSTANDERS):
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text("left by a killed writer")
    outcome = invoke(*_fill(args, directory, tmp_path))
    assert outcome.exit_code == 0, outcome.stderr
    assert [name for name in stray if (directory / name).exists()] == []
    assert [name for name in BYSTANDERS if not (directory / name).exists()] == []
