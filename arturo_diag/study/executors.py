"""Where a study's runs execute: the local worker pool or a Ray cluster, behind one interface.

An :class:`Executor` is handed the runs still to do (in run order) and calls
``record(spec, status, seconds, error)`` on the driver once per run as each one finishes; on any
exception (``record`` raising, Ctrl-C, SIGTERM) it stops its work before the exception
propagates, so nothing it started goes on writing and no unfinished run is left looking complete.
Every run is the same call, :func:`execute_run` (train, write ``metrics.json``; a failing run's
error in ``study_failure.json``), wherever it executes, so the records are the same bytes up to
their timings.

- :class:`LocalExecutor` (``--executor local``, the default): ``workers`` spawned processes with
  one torch thread each (``0``: in this process).
- :class:`RayExecutor` (``--executor ray``): each run is one Ray task with its resource request
  (``num_cpus``, ``num_gpus``, fractional allowed) and ``max_retries`` for a worker that dies;
  the task writes the record into the study directory itself, so the study directory must be on
  a path every node sees (checked on every node before the first run, and each finished record
  is checked from the driver). Ray is optional (``pip install -e ".[ray]"``).

Same bytes: ``study.json`` and the other study files are byte-identical between executors; each
run's files too, except what differs between any two runs of one seed (timings: record.json's
``created``, ``finished``, ``seconds``, ``diagnostics_seconds`` and per-instrument seconds in
``instruments``; snapshots.csv's ``seconds`` column) and config.toml's ``out`` when the study
directory is given by another path. A Ray task runs in the driver's working directory, so a
relative ``--out`` writes the same ``out``.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from arturo_diag.diagnostics.io import STOPPING_ERRNOS, WriteError, atomic_write_json, atomic_write_text, remove_file
from arturo_diag.diagnostics.lock import DirectoryLock
from arturo_diag.errors import ConfigError, Diverged, RecordError
from arturo_diag.study.config import RunSpec
from arturo_diag.study.status import FAILURE_FILE

__all__ = [
    "EXECUTORS",
    "Executor",
    "LocalExecutor",
    "RayExecutor",
    "Record",
    "default_workers",
    "execute_run",
    "run_on_ray_worker",
]

#: ``record(spec, status, seconds, error)``: one finished run, on the driver.
Record = Callable[[RunSpec, str, float, str], None]

#: ``--executor`` choices.
EXECUTORS = {
    "local": "worker processes on this machine (default)",
    "ray": 'one Ray task per run, on a local Ray instance or a cluster (--ray-address); pip install -e ".[ray]"',
}

RAY_EXTRA = 'pip install -e ".[ray]"'


def execute_run(spec: RunSpec) -> tuple[str, float, str]:
    """Run one cell (in a worker, a Ray task or in process); returns (status, seconds, error). Never
    raises for a failing run: the error is recorded in the run directory and returned."""
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


def _record_lost_run(spec: RunSpec, error: str) -> None:
    """The driver's note for a run whose worker died (its own writer cannot write one)."""
    Path(spec.config.out).mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(spec.config.out) / FAILURE_FILE, {"error": error})


def default_workers() -> int:
    """min(2, number of CPUs available to this process)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(2, cpus))


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


class Executor:
    """Runs a study's pending runs; see the module docstring for the contract."""

    name = "executor"

    def where(self) -> str:
        """Where the runs go, for the progress line (e.g. ``2 worker(s)``)."""
        raise NotImplementedError

    @property
    def workers(self) -> int:
        """How many runs at most run at once (known before the executor starts; 0: in process)."""
        raise NotImplementedError

    def run(
        self, study_dir: Path, pending: list[RunSpec], record: Record, notify: Callable[[str, dict[str, Any]], None]
    ) -> None:
        """Run ``pending`` (runs of ``study_dir``, in run order), ``record`` each as it finishes."""
        raise NotImplementedError


class LocalExecutor(Executor):
    """``workers`` spawned processes, one torch thread each; ``0``: one run after the other in this process."""

    name = "local"

    def __init__(self, workers: int) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ConfigError("workers", workers, "a whole number >= 1 (0: in this process)")
        self._workers = workers

    @property
    def workers(self) -> int:
        return self._workers

    def where(self) -> str:
        return f"{self._workers} worker(s)" if self._workers else "this process"

    def run(
        self, study_dir: Path, pending: list[RunSpec], record: Record, notify: Callable[[str, dict[str, Any]], None]
    ) -> None:
        if not pending:
            return
        if self._workers == 0:
            for spec in pending:
                record(spec, *execute_run(spec))
        else:
            _run_in_pool(pending, self._workers, record)


# ------------------------------------------------------------------------------------------ workers
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
        futures = {pool.submit(execute_run, spec): spec for spec in pending}
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
                    _record_lost_run(spec, error)
                record(spec, status, seconds, error)
        except BaseException:
            _stop_pool(pool)
            raise


# ---------------------------------------------------------------------------------------------- Ray
_VISIBILITY_FILE = ".ray-visibility-check"
_PROBE_SECONDS = 120.0
_CANCEL_SECONDS = 30.0


def _import_ray(local: bool = False) -> Any:
    """``ray``, or the one-line refusal naming the extra. ``local``: Ray is imported for a local
    instance, which then stays on the loopback address (Ray otherwise binds the machine's outward
    address; read once, when Ray is first imported). Not for a cluster, whose workers must reach
    the driver at its outward address."""
    if local and "ray" not in sys.modules:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError:
        raise ConfigError("executor", "ray", f"local (Ray is not installed: {RAY_EXTRA})") from None
    return ray


def _resource(field: str, value: Any, minimum: float) -> float:
    """A Ray resource amount: a fraction in (0, 1] or a whole number (what Ray accepts)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value == value:
        raise ConfigError(field, value, f"a number >= {minimum:g}: a fraction up to 1 or a whole number")
    if value < minimum or (minimum > 0 and value == 0) or (value > 1 and value != int(value)):
        raise ConfigError(field, value, f"a number >= {minimum:g}: a fraction up to 1 or a whole number")
    return float(value)


def run_on_ray_worker(spec: RunSpec, cwd: str) -> tuple[str, float, str, str]:
    """What one Ray task does: :func:`execute_run` in the driver's working directory (so relative
    study paths mean the same, and the records the same bytes), on one torch thread like a local
    worker. Returns (status, seconds, error, host)."""
    import torch

    torch.set_num_threads(1)
    previous = os.getcwd()
    try:
        os.chdir(cwd)
    except OSError as error:
        message = f"the driver's working directory {cwd} does not exist on {socket.gethostname()} ({error.strerror})"
        return "unshared", 0.0, message, socket.gethostname()
    try:
        return (*execute_run(spec), socket.gethostname())
    finally:
        os.chdir(previous)


def _probe_node(cwd: str, marker: str, token: str) -> tuple[bool, str]:
    """On one node: whether the driver's marker file reads back (the study directory is shared)."""
    host = socket.gethostname()
    try:
        return Path(cwd, marker).read_text(encoding="utf-8") == token, host
    except OSError:
        return False, host


def _cancel(ray: Any, refs: list[Any]) -> None:
    """Stop ``refs`` and wait until they are gone, so that no run writes on after the study stopped:
    queued tasks are dropped, running ones have their worker process killed (like the local pool's
    terminate; the run's record stays incomplete). Not Ray's gentle cancel: its KeyboardInterrupt
    can land inside a lazy import (torch's of sympy, seen here) and leave a half-imported module in
    the worker, which Ray reuses, so later runs on it fail."""
    if not refs:
        return
    for ref in refs:
        ray.cancel(ref, force=True)
    ray.wait(refs, num_returns=len(refs), timeout=_CANCEL_SECONDS)


class RayExecutor(Executor):
    """Each run one Ray task (``num_cpus=cpus_per_run``, ``num_gpus=gpus_per_run``,
    ``max_retries=retries`` for a worker that dies); the task writes its record into the study
    directory, which every node must see at the same path.

    Args:
        address: ``None``: start a local instance (``workers`` CPUs, default min(2, CPUs)) on the
            loopback address, shut down at the end; ``"auto"`` or ``"HOST:PORT"``: connect to a
            running cluster (``ray start --head``; ``workers`` is not used). If this process is already connected
            (``ray.is_initialized()``), that connection is used and left open.
        cpus_per_run, gpus_per_run: each task's resource request (fractions share a CPU/GPU). A run
            trains on one torch thread whatever it reserves (the study's protocol: same numbers as
            locally); its device is the setup's ``device``.
        retries: how often a run whose worker died (killed process, lost node) is started again
            before it is reported failed. A run that raises is not retried (it is a result).
        task: the function each task calls (:func:`run_on_ray_worker`; tests wrap it).
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        *,
        workers: int | None = None,
        cpus_per_run: float = 1.0,
        gpus_per_run: float = 0.0,
        retries: int = 1,
        task: Callable[[RunSpec, str], tuple[str, float, str, str]] = run_on_ray_worker,
    ) -> None:
        _import_ray(local=address is None)
        if address is not None and (not isinstance(address, str) or not address.strip()):
            raise ConfigError("ray_address", address, "auto or HOST:PORT of a running Ray cluster")
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise ConfigError("workers", workers, "a whole number >= 1 (the local Ray instance's CPUs)")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ConfigError("retries", retries, "a whole number >= 0")
        self.address = address
        self.local_cpus = workers
        self.cpus_per_run = _resource("cpus_per_run", cpus_per_run, 0.0001)
        self.gpus_per_run = _resource("gpus_per_run", gpus_per_run, 0.0)
        self.retries = retries
        self.task = task
        self.startup_seconds: float | None = None  # connecting / starting the instance, once run

    @property
    def workers(self) -> int:
        if self.address is None:
            return int((self.local_cpus or default_workers()) // self.cpus_per_run)
        return 0  # a cluster's size is known once connected

    def where(self) -> str:
        if self.address is None:
            return f"Ray (a local instance, {self.local_cpus or default_workers()} CPUs)"
        return f"Ray at {self.address}"

    # -------------------------------------------------------------------------------- lifetime
    def _connect(self, ray: Any) -> bool:
        """Connect or start; whether this executor started (and must shut down) the instance."""
        if ray.is_initialized():
            return False
        import logging

        previous = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
        try:
            if self.address is None:
                ray.init(
                    num_cpus=self.local_cpus or default_workers(),
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level=logging.WARNING,
                )
            else:
                ray.init(address=self.address, log_to_driver=False, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError) as error:
            detail = " ".join(str(error).split())[:200]
            raise ConfigError(
                "ray_address",
                self.address,
                f"auto or HOST:PORT of a running Ray cluster (ray start --head), or none for a local instance ({detail})",
            ) from None
        finally:
            if previous is not None:  # ray.init installs its own SIGTERM handler: keep the study's
                signal.signal(signal.SIGTERM, previous)
        return True

    def _check_cluster(self, ray: Any, cwd: str, study_dir: Path) -> None:
        """Refuse, in one line, what cannot work: no node large enough for one run, or a study
        directory that some node does not see (written here, read back there)."""
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        fits = [
            n
            for n in nodes
            if n.get("Resources", {}).get("CPU", 0) >= self.cpus_per_run
            and n.get("Resources", {}).get("GPU", 0) >= self.gpus_per_run
        ]
        if not fits:
            largest = max((n.get("Resources", {}) for n in nodes), key=lambda r: r.get("CPU", 0), default={})
            raise ConfigError(
                "cpus_per_run" if largest.get("CPU", 0) < self.cpus_per_run else "gpus_per_run",
                self.cpus_per_run if largest.get("CPU", 0) < self.cpus_per_run else self.gpus_per_run,
                f"at most what one Ray node has (the largest: {largest.get('CPU', 0):g} CPUs, "
                f"{largest.get('GPU', 0):g} GPUs)",
            )
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        token = uuid.uuid4().hex
        marker = study_dir / _VISIBILITY_FILE
        atomic_write_text(marker, token)
        try:
            probe = ray.remote(num_cpus=0, max_retries=0)(_probe_node)
            refs = {
                probe.options(
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=n["NodeID"], soft=False)
                ).remote(cwd, str(marker), token): n
                for n in fits
            }
            ready, waiting = ray.wait(list(refs), num_returns=len(refs), timeout=_PROBE_SECONDS)
            for ref in waiting:
                ray.cancel(ref, force=True)
            for ref in [*ready, *waiting]:
                node = refs[ref]
                try:
                    seen, host = ray.get(ref, timeout=0) if ref in ready else (None, "")
                except ray.exceptions.RayError as error:
                    raise RecordError(
                        f"Ray node {node.get('NodeManagerAddress')} cannot run the study's code "
                        f"({type(error).__name__}; arturo-diag must be installed on every node)"
                    ) from None
                if seen is None:
                    raise RecordError(
                        f"Ray node {node.get('NodeManagerAddress')} did not answer within {_PROBE_SECONDS:.0f} s"
                    )
                if not seen:
                    raise RecordError(
                        f"out: {study_dir} is not visible from Ray node {node.get('NodeManagerAddress')} ({host}): "
                        "the study directory must be on a file system every node mounts at the same path "
                        "(or start the driver where the cluster's nodes see --out)"
                    )
        finally:
            remove_file(marker)

    # --------------------------------------------------------------------------------------- run
    def run(
        self, study_dir: Path, pending: list[RunSpec], record: Record, notify: Callable[[str, dict[str, Any]], None]
    ) -> None:
        if not pending:
            return
        ray = _import_ray(local=self.address is None)
        start = time.perf_counter()
        started = self._connect(ray)
        try:
            self.startup_seconds = time.perf_counter() - start
            cwd = os.getcwd()
            self._check_cluster(ray, cwd, Path(study_dir))
            resources = ray.cluster_resources()
            notify(
                "executor",
                {
                    "executor": "ray",
                    "seconds": self.startup_seconds,
                    "cpus": resources.get("CPU", 0),
                    "gpus": resources.get("GPU", 0),
                    "nodes": sum(bool(n.get("Alive")) for n in ray.nodes()),
                },
            )
            self._run_tasks(ray, pending, record, cwd)
        finally:
            if started:
                ray.shutdown()

    def _run_tasks(self, ray: Any, pending: list[RunSpec], record: Record, cwd: str) -> None:
        remote = ray.remote(
            num_cpus=self.cpus_per_run, num_gpus=self.gpus_per_run, max_retries=self.retries, retry_exceptions=False
        )(self.task)
        refs = {remote.remote(spec, cwd): spec for spec in pending}  # submitted in run order
        unfinished = list(refs)
        try:
            while unfinished:
                ready, unfinished = ray.wait(unfinished, num_returns=1, timeout=0.5)  # Ctrl-C gets through
                for ref in ready:
                    spec = refs[ref]
                    status, seconds, error = self._result(ray, ref, spec)
                    record(spec, status, seconds, error)
        except BaseException:
            _cancel(ray, unfinished)
            raise

    def _result(self, ray: Any, ref: Any, spec: RunSpec) -> tuple[str, float, str]:
        try:
            status, seconds, error, host = ray.get(ref)
        except ray.exceptions.RayTaskError as failure:  # the task itself raised (not a run's error)
            cause = failure.cause if getattr(failure, "cause", None) is not None else failure
            message = f"{type(cause).__name__}: {' '.join(str(cause).split())[:300]}"
            _record_lost_run(spec, message)
            return "failed", 0.0, message
        except ray.exceptions.RayError as failure:  # the worker or its node died, after every retry
            message = (
                f"the Ray worker running this run died ({type(failure).__name__}; started "
                f"{self.retries + 1} time(s)); run the study again to retry"
            )
            _record_lost_run(spec, message)
            return "failed", 0.0, message
        if status == "unshared":
            raise RecordError(f"out: {error}: a Ray cluster needs the study directory on a path every node sees")
        if status == "complete" and not (Path(spec.config.out) / "record.json").is_file():
            raise RecordError(
                f"out: the record of {spec.config.out} written on {host} is not visible here: the study directory "
                "must be on a file system every Ray node mounts at the same path"
            )
        return status, seconds, error
