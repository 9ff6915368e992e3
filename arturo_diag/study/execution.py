"""Running a study: every run of the grid in worker processes, resumable, one failure losing nothing else.

``run_study(study, study_dir)``:

1. writes ``STUDY_DIR/study.toml`` (the whole study spelled out; ``load_study`` reads it back);
2. checks each setup once in this process (data can be read, the model fits it), so bad input
   fails fast with a :class:`ConfigError`/:class:`DataError` before any run starts;
3. skips every run whose record is complete *and* was made with the config the study asks for now
   (``run_status``), and runs the others with its executor (:mod:`arturo_diag.study.executors`):
   by default ``workers`` spawned processes with one torch thread each, or one Ray task per run;
   a run that was killed, failed or made with another config is redone from scratch;
4. a run that raises is recorded as failed (``STUDY_DIR/<run>/study_failure.json``, with the
   error) and the study goes on; a later ``run_study`` redoes it;
5. renders the aggregate report (:func:`arturo_diag.study.report.render_study`).

Each finished run also gets its ``metrics.json`` (:func:`arturo_diag.diagnostics.analyze_record`),
computed in the worker, so the aggregate report only reads files.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import arturo_diag.study.executors as _executors
from arturo_diag.diagnostics.io import atomic_write_text, make_directory
from arturo_diag.diagnostics.lock import DirectoryLock
from arturo_diag.errors import ConfigError, RecordError
from arturo_diag.study.config import RunSpec, StudyConfig, expand_grid, study_to_toml
from arturo_diag.study.executors import (  # the worker-side names stay importable from here
    Executor,
    LocalExecutor,
    RayExecutor,
    _init_worker,  # noqa: F401
    _run_in_pool,  # noqa: F401
    _stop_pool,  # noqa: F401
    _stops_study,  # noqa: F401
)
from arturo_diag.study.executors import execute_run as _execute  # noqa: F401
from arturo_diag.study.status import FAILURE_FILE, STUDY_FILE, run_status

__all__ = [
    "run_study",
    "run_status",
    "StudyRunResult",
    "RunOutcome",
    "StudyProgress",
    "FAILURE_FILE",
    "default_workers",
    "Executor",
    "LocalExecutor",
    "RayExecutor",
]


#: ``progress(event, info)``: "plan" {total, finished, pending, workers, executor, where}, "executor"
#: {executor, seconds (start-up), cpus, gpus, nodes} (Ray, once connected), "run" {setup, variant, seed,
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
    """min(2, number of CPUs available to this process): :func:`arturo_diag.study.executors.default_workers`,
    looked up when called (so either module's name can be patched)."""
    return _executors.default_workers()


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
    executor: Executor | None = None,
) -> StudyRunResult:
    """Run every unfinished run of ``study`` into ``study_dir`` and render the aggregate report.

    Args:
        workers: worker processes (default :func:`default_workers`); ``0`` runs everything in this
            process, one after the other (for debugging and tests).
        fresh: redo every run, finished or not.
        progress: receives the events of :data:`StudyProgress`.
        render: render ``study.md``/``study.html``/``study.json``/CSVs at the end.
        check_inputs: read each setup's data and build its model once first (bad input fails fast).
        executor: where the runs execute (:mod:`arturo_diag.study.executors`); default a
            :class:`LocalExecutor` with ``workers``. A :class:`RayExecutor` writes the same records.

    Raises:
        ConfigError / DataError: bad study or data (before any run starts).
        RecordError: ``study_dir`` is a run record, not a study directory.
    """
    notify = progress or (lambda event, info: None)
    if executor is None:
        executor = LocalExecutor(default_workers() if workers is None else workers)
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
            return _run_locked(study, study_dir, specs, executor, fresh, notify, render)
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


def _run_locked(
    study: StudyConfig,
    study_dir: Path,
    specs: list[RunSpec],
    executor: Executor,
    fresh: bool,
    notify: StudyProgress,
    render: bool,
) -> StudyRunResult:
    started = time.perf_counter()
    make_directory(study_dir, "out")
    atomic_write_text(study_dir / STUDY_FILE, study_to_toml(study))

    outcomes, pending = _plan(study, specs, fresh)
    total = len(specs)
    notify(
        "plan",
        {
            "total": total,
            "finished": total - len(pending),
            "pending": len(pending),
            "workers": executor.workers,
            "executor": executor.name,
            "where": executor.where(),
        },
    )
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

    executor.run(study_dir, pending, record, notify)

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
