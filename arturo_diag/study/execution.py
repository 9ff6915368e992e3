"""Running a study: every run of the grid in worker processes, resumable, one failure losing nothing else.

``run_study(study, study_dir)``:

1. writes ``STUDY_DIR/study.toml`` (the whole study spelled out; ``load_study`` reads it back);
2. checks each setup once in this process (data can be read, the model fits it), so bad input
   fails fast with a :class:`ConfigError`/:class:`DataError` before any run starts;
3. skips every run whose record is complete *and* was made with the config the study asks for now
   (``run_status``), and runs the others in ``workers`` spawned processes with one torch thread
   each; a run that was killed, failed or made with another config is redone from scratch;
4. a run that raises is recorded as failed (``STUDY_DIR/<run>/study_failure.json``, with the
   error) and the study goes on; a later ``run_study`` redoes it;
5. renders the aggregate report (:func:`arturo_diag.study.report.render_study`).

Each finished run also gets its ``metrics.json`` (:func:`arturo_diag.diagnostics.analyze_record`),
computed in the worker, so the aggregate report only reads files.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from arturo_diag.diagnostics.io import (
    STOPPING_ERRNOS,
    WriteError,
    atomic_write_json,
    atomic_write_text,
    make_directory,
    remove_file,
)
from arturo_diag.diagnostics.lock import DirectoryLock
from arturo_diag.errors import ConfigError, Diverged, RecordError
from arturo_diag.study.config import RunSpec, StudyConfig, expand_grid, study_to_toml
from arturo_diag.study.status import FAILURE_FILE, STUDY_FILE, run_status

__all__ = [
    "run_study",
    "run_status",
    "StudyRunResult",
    "RunOutcome",
    "StudyProgress",
    "FAILURE_FILE",
    "default_workers",
]


#: ``progress(event, info)``: "plan" {total, finished, pending, workers}, "run" {setup, variant, seed,
#: status ("complete" | "diverged" | "failed"), seconds, error, done, total}, "render" {}, "done" {seconds}.
StudyProgress = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class RunOutcome:
    spec: RunSpec
    status: str  # "complete" (this time), "diverged" (this time: NaN/inf), "skipped" (already done), "failed"
    seconds: float = 0.0
    error: str = ""


@dataclass(frozen=True)
class StudyRunResult:
    study_dir: Path
    outcomes: list[RunOutcome]
    seconds: float
    report: Any = None  # StudyReport

    @property
    def failed(self) -> list[RunOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    @property
    def ran(self) -> list[RunOutcome]:
        return [o for o in self.outcomes if o.status == "complete"]

    @property
    def diverged(self) -> list[RunOutcome]:
        return [o for o in self.outcomes if o.status == "diverged"]

    @property
    def skipped(self) -> list[RunOutcome]:
        return [o for o in self.outcomes if o.status == "skipped"]


def default_workers() -> int:
    """min(2, number of CPUs available to this process)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(2, cpus))


# ------------------------------------------------------------------------------------------ workers
# A worker whose study process died (killed, crashed) must stop at once, not write on as an orphan:
# a worker that finishes its run takes the next one already queued in the pool's pipe, so polling
# the parent every 0.5 s alone let orphans start new runs. On Linux the kernel kills a worker
# when its parent dies (prctl PR_SET_PDEATHSIG; workers are spawned by the thread that calls
# run_study, which outlives the pool); the polling watchdog stays for other platforms.
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> bool:
    """Ask the kernel to SIGKILL this process when its parent exits (Linux); whether it could."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent: int) -> None:
    while True:
        if os.getppid() != parent:
            os._exit(3)
        time.sleep(0.1)


def _init_worker(parent: int) -> None:
    _die_with_parent()
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(3)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    import torch

    torch.set_num_threads(1)


def _execute(spec: RunSpec) -> tuple[str, float, str]:
    """Run one cell (in a worker or in process); returns (status, seconds, error). Never raises
    for a failing run: the error is recorded in the run directory and returned."""
    from arturo_diag.quantities.analysis import analyze_record, write_metrics
    from arturo_diag.training.loop import run

    run_dir = Path(spec.config.out)
    start = time.perf_counter()
    try:
        # the record, its metrics.json or the failure note: one writer from the first to the last
        with DirectoryLock(run_dir, allow_nested=True):
            remove_file(run_dir / FAILURE_FILE)
            try:
                run(spec.config, overwrite=True)
                write_metrics(run_dir, analyze_record(run_dir))
            except Diverged as error:  # a result, not a failure to retry: its record says where
                write_metrics(run_dir, analyze_record(run_dir))
                return "diverged", time.perf_counter() - start, str(error)
            except Exception as error:  # one failing run must not lose the others
                if _stops_study(error):
                    return "stopped", time.perf_counter() - start, str(error)
                message = f"{type(error).__name__}: {error}"
                atomic_write_json(
                    run_dir / FAILURE_FILE, {"error": message, "traceback": traceback.format_exc(limit=8)}
                )
                return "failed", time.perf_counter() - start, message
    except RecordError as error:  # the run directory is taken (another process) or cannot be written
        if _stops_study(error):
            return "stopped", time.perf_counter() - start, str(error)
        return "failed", time.perf_counter() - start, f"{type(error).__name__}: {error}"
    return "complete", time.perf_counter() - start, ""


def _stops_study(error: BaseException) -> bool:
    """A full disk, a read-only file system, no permission: no other run could be written either."""
    return isinstance(error, (WriteError, OSError)) and getattr(error, "errno", None) in STOPPING_ERRNOS


def _preflight(study: StudyConfig) -> None:
    """Read each setup's data and build its model once, so bad input fails before any run."""
    import torch

    from arturo_diag.training.datasets import load_dataset, probe_batch
    from arturo_diag.training.loop import check_against_data
    from arturo_diag.training.models import build_model

    for setup in study.setups:
        config = setup.config.resolved()
        dataset = load_dataset(
            config.dataset,
            config.data_dir,
            seed=study.seeds[0],
            train_size=config.train_size,
            dtype=getattr(torch, config.dtype),
        )
        build_model(
            config.model,
            in_channels=dataset.in_channels,
            num_classes=dataset.num_classes,
            image_size=dataset.image_size,
        )
        probe_batch(dataset, min(config.probe_size, dataset.num_train), study.seeds[0])
        for variant in study.variants:  # a batch or probe larger than the data, too many steps
            try:
                check_against_data(
                    setup.config.replace(**variant.changes(setup.baselines.values)).resolved(),
                    dataset.num_train,
                    config.dataset,
                )
            except ConfigError as error:
                raise ConfigError(f"[setups.{setup.name}] {error.field}", error.value, error.allowed) from None


def run_study(
    study: StudyConfig,
    study_dir: str | os.PathLike[str],
    *,
    workers: int | None = None,
    fresh: bool = False,
    progress: StudyProgress | None = None,
    render: bool = True,
    check_inputs: bool = True,
) -> StudyRunResult:
    """Run every unfinished run of ``study`` into ``study_dir`` and render the aggregate report.

    Args:
        workers: worker processes (default :func:`default_workers`); ``0`` runs everything in this
            process, one after the other (for debugging and tests).
        fresh: redo every run, finished or not.
        progress: receives the events of :data:`StudyProgress`.
        render: render ``study.md``/``study.html``/``study.json``/CSVs at the end.
        check_inputs: read each setup's data and build its model once first (bad input fails fast).

    Raises:
        ConfigError / DataError: bad study or data (before any run starts).
        RecordError: ``study_dir`` is a run record, not a study directory.
    """
    notify = progress or (lambda event, info: None)
    workers = default_workers() if workers is None else workers
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ConfigError("workers", workers, "a whole number >= 1 (0: in this process)")
    study_dir = Path(study_dir)
    if study_dir.exists() and not study_dir.is_dir():
        raise ConfigError("out", str(study_dir), "a directory (this is a file)")
    _refuse_run_dir(study_dir)
    specs = expand_grid(study, study_dir)
    if check_inputs:
        _preflight(study)
    # One study process per directory for the whole study (docs/record.md, "Locks"); each run
    # directory is locked by the worker writing it, the report by render_study (nested here).
    lock = DirectoryLock(study_dir, allow_nested=True)
    lock.acquire()
    try:
        _refuse_run_dir(study_dir)  # again, now that no one else can write it
        with _sigterm_as_interrupt():
            return _run_locked(study, study_dir, specs, workers, fresh, notify, render)
    finally:
        lock.release()


def _refuse_run_dir(study_dir: Path) -> None:
    if (study_dir / "record.json").is_file():
        raise RecordError(f"{study_dir} holds a single run record, not a study; choose another --out")


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (``kill PID``) stops a study like Ctrl-C: pending runs cancelled, workers terminated,
    finished runs kept, no run left looking complete. Only the main thread can handle signals."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stop_pool(pool: cf.ProcessPoolExecutor) -> None:
    """Cancel what has not started and terminate the workers: concurrent.futures has no public way
    to stop running work, and a run already handed to a worker would otherwise still be run (and
    marked complete) after the study stopped."""
    processes = list((getattr(pool, "_processes", None) or {}).values())  # shutdown() forgets them
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(5)


def _run_locked(
    study: StudyConfig,
    study_dir: Path,
    specs: list[RunSpec],
    workers: int,
    fresh: bool,
    notify: StudyProgress,
    render: bool,
) -> StudyRunResult:
    started = time.perf_counter()
    make_directory(study_dir, "out")
    atomic_write_text(study_dir / STUDY_FILE, study_to_toml(study))

    outcomes, pending = _plan(study, specs, fresh)
    total = len(specs)
    notify("plan", {"total": total, "finished": total - len(pending), "pending": len(pending), "workers": workers})
    done = total - len(pending)

    def record(spec: RunSpec, status: str, seconds: float, error: str) -> None:
        nonlocal done
        if status == "stopped":  # every later write would fail the same way: stop (workers too), say why
            finished = sum(o.status in ("complete", "skipped") for o in outcomes.values())
            raise RecordError(
                f"out: {error}; the study stopped ({finished} of {total} runs finished, kept); "
                "fix that, then run the same command again to resume"
            )
        done += 1
        outcomes[spec.key] = RunOutcome(spec, status, seconds, error)
        notify(
            "run",
            {
                "setup": spec.setup,
                "variant": spec.variant.name,
                "seed": spec.seed,
                "status": status,
                "seconds": seconds,
                "error": error,
                "done": done,
                "total": total,
            },
        )

    if pending and workers == 0:
        for spec in pending:
            record(spec, *_execute(spec))
    elif pending:
        _run_in_pool(pending, workers, record)

    seconds = time.perf_counter() - started
    report = None
    if render:
        from arturo_diag.study.report import render_study

        notify("render", {})
        report = render_study(study_dir)
    notify("done", {"seconds": seconds})
    return StudyRunResult(study_dir, [outcomes[spec.key] for spec in specs], seconds, report)


def _plan(
    study: StudyConfig, specs: list[RunSpec], fresh: bool
) -> tuple[dict[tuple[str, str, int], RunOutcome], list[RunSpec]]:
    """The runs already done (outcome "skipped", unless ``fresh``) and the others, in run order."""
    outcomes: dict[tuple[str, str, int], RunOutcome] = {}
    pending: list[RunSpec] = []
    for spec in specs:
        if not fresh and run_status(spec)[0] in ("complete", "diverged"):
            outcomes[spec.key] = RunOutcome(spec, "skipped")
        else:
            pending.append(spec)
    # Seed-major order: an interrupted study has whole seeds rather than whole variants.
    order = {s.name: i for i, s in enumerate(study.setups)}
    vorder = {v.name: i for i, v in enumerate(study.variants)}
    pending.sort(key=lambda s: (order[s.setup], study.seeds.index(s.seed), vorder[s.variant.name]))
    return outcomes, pending


def _run_in_pool(pending: list[RunSpec], workers: int, record: Callable[[RunSpec, str, float, str], None]) -> None:
    """Run ``pending`` in spawned worker processes, ``record`` each result as it comes; on any
    exception (``record`` raising, Ctrl-C, SIGTERM) the pool is stopped before it propagates."""
    context = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(
        max_workers=min(workers, len(pending)),
        mp_context=context,
        initializer=_init_worker,
        initargs=(os.getpid(),),
    ) as pool:
        futures = {pool.submit(_execute, spec): spec for spec in pending}
        try:
            for future in cf.as_completed(futures):
                spec = futures[future]
                try:
                    status, seconds, error = future.result()
                except cf.process.BrokenProcessPool:
                    status, seconds, error = (
                        "failed",
                        0.0,
                        "the worker process died while running this or a concurrent run; run the study again to retry",
                    )
                    Path(spec.config.out).mkdir(parents=True, exist_ok=True)
                    atomic_write_json(Path(spec.config.out) / FAILURE_FILE, {"error": error})
                record(spec, status, seconds, error)
        except BaseException:
            _stop_pool(pool)
            raise
