"""The analysis hands big snapshots to its observers in parallel threads (issue 15, item 5): the
numbers are those of the one-thread pass, the shared ranks are sorted once, errors surface."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from records import PARAMETERS, step_rows, write_record

import arturo_diag.quantities._ranks as ranks_module
from arturo_diag.diagnostics.io import jsonable
from arturo_diag.diagnostics.record import RunRecord
from arturo_diag.quantities import analysis
from arturo_diag.quantities._ranks import SnapshotRanks
from arturo_diag.quantities.analysis import analyze_record


def _record(run_dir):
    def arrays(rng, shape, t):
        h = rng.normal(size=shape) + 0.05 * t
        return h, {
            "curvature": h + 0.3 * rng.normal(size=shape),
            "filter_cov_aa": np.full(shape, 4.0),
            "precision": np.where(rng.random(shape) < 0.25, 1e5, 100.0),
            "weight": rng.normal(size=shape),
        }

    write_record(
        run_dir,
        arrays=arrays,
        steps=step_rows(loss=lambda step: 1.0 / step, late_eta=lambda step: 1.0, quantiles=False),
        kind="monitor",
        parameters=PARAMETERS,
        optimizer={"lr": 0.1, "eta_tol": 0.5},
        reference="both",
        hutchinson_noise=0.3,
        finish={"seconds": 1.0},
    )
    return RunRecord.load(run_dir)


def _text(metrics) -> str:
    return json.dumps(jsonable(metrics), sort_keys=True)


def test_parallel_observers_give_the_one_thread_numbers(tmp_path, monkeypatch):
    record = _record(tmp_path / "run")
    monkeypatch.setattr(analysis, "PARALLEL_COORDINATES", 1 << 62)  # every snapshot in this thread
    alone = _text(analyze_record(record))
    threads = set()
    original = analysis._observe

    def watched(pool, observers, view):
        assert pool is not None  # this machine has two cores: the pool is there
        original(pool, [_Spy(o, threads) for o in observers], view)

    monkeypatch.setattr(analysis, "PARALLEL_COORDINATES", 0)  # every snapshot in the pool
    monkeypatch.setattr(analysis, "_observe", watched)
    if (analysis.os.cpu_count() or 1) < 2:
        pytest.skip("one core: the analysis runs its observers in turn")
    parallel = _text(analyze_record(record))
    assert threads and threading.main_thread().name not in threads  # the observers ran in the pool
    assert parallel == alone


class _Spy:
    def __init__(self, observer, threads):
        self.observer, self.threads = observer, threads

    def snapshot(self, view):
        self.threads.add(threading.current_thread().name)
        self.observer.snapshot(view)


def test_an_observers_error_is_raised_after_the_others_finished(tmp_path, monkeypatch):
    record = _record(tmp_path / "run")
    done = []

    class Failing:
        def snapshot(self, view):
            raise ValueError("observer failed")

    class Slow:
        def snapshot(self, view):
            time.sleep(0.05)
            done.append(view.step)

    monkeypatch.setattr(analysis, "PARALLEL_COORDINATES", 0)
    view = next(analysis.snapshot_views(record))
    with analysis.ThreadPoolExecutor(max_workers=2) as pool:
        with pytest.raises(ValueError, match="observer failed"):
            analysis._observe(pool, [Failing(), Slow(), Slow()], view)
    assert done == [view.step, view.step]  # both slow observers finished before the error was raised


def test_ranks_asked_from_two_threads_are_sorted_once(monkeypatch):
    calls = []
    original = ranks_module.sort_order

    def counted(values):
        calls.append(1)
        time.sleep(0.05)  # the other thread asks while this one sorts
        return original(values)

    monkeypatch.setattr(ranks_module, "sort_order", counted)
    rng = np.random.default_rng(0)
    arrays = {"l1.weight": rng.normal(size=(30, 20)), "l2.weight": rng.normal(size=(40,))}
    ranked = SnapshotRanks(arrays, list(arrays), {"l1.weight": "l1", "l2.weight": "l2"})
    results = [None, None]

    def ask(i):
        results[i] = ranked.overall

    workers = [threading.Thread(target=ask, args=(i,)) for i in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert len(calls) == 1 and results[0] is results[1]
    whole = np.concatenate([arrays["l1.weight"].ravel(), arrays["l2.weight"]])
    np.testing.assert_array_equal(results[0], np.argsort(np.argsort(whole)) + 1.0)  # distinct values
