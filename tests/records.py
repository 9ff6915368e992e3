"""The one builder of synthetic run records for the tests, written with RecordWriter.

``write_record(run_dir, steps=..., arrays=...)`` writes a record of the given step rows with a
snapshot every ``every`` steps: ``arrays(rng, shape, t)`` returns the reference h and the
optimizer's fields (a, P_aa, pi, theta, ...) of one parameter at snapshot ``t``; the references are
added from h as ``reference`` asks ("exact", "hutchinson", "both"; "none" writes no snapshot).
``step_rows()`` is the 60-step trust-region story most tests read (5/3 growth, a frozen eta, a
bound drop with overshoot). Importable from any test directory (``from records import ...``:
tests/conftest.py puts ``tests/`` on the path).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np

from arturo_diag.diagnostics.record import RecordWriter

PARAMETERS = {"net.0.weight": (4, 3), "net.0.bias": (4,), "net.2.weight": (2, 4), "net.2.bias": (2,)}
EPOCHS = (
    dict(epoch=1, step=30, train_loss=0.6, train_accuracy=0.8, test_loss=0.7, test_accuracy=0.75),
    dict(epoch=2, step=60, train_loss=0.4, train_accuracy=0.9, test_loss=0.5, test_accuracy=0.85),
)


def step_rows(
    n_steps: int = 60,
    *,
    with_eta: bool = True,
    loss: Callable[[int], float] | None = None,
    late_eta: Callable[[int], float] | None = None,
    quantiles: bool = True,
) -> list[dict]:
    """60 steps: first, 5/3 growth (2-5), a jump, frozen at 0.254 (7-30), bisection, bound drop at 40.

    ``loss(step)`` (default 2 / (1 + 0.1 step)), ``late_eta(step)`` the eta of steps 31.. (default
    1 + 0.01 (step mod 3)); ``quantiles=False`` leaves out the precision quantile columns.
    """
    loss = loss or (lambda step: 2.0 / (1 + 0.1 * step))
    late_eta = late_eta or (lambda step: 1.0 + 0.01 * (step % 3))
    rows = []
    eta = 0.02
    for step in range(1, n_steps + 1):
        bound = 0.1 if step < 40 else 0.0006
        if step == 1:
            row = dict(eta=eta, eta_prev=math.nan, iterations=14, kl_ratio=1.0)
        elif step <= 5:
            row = dict(eta=eta * 5 / 3, eta_prev=eta, iterations=0, kl_ratio=0.5)
            eta *= 5 / 3
        elif step == 6:
            row = dict(eta=0.254, eta_prev=eta, iterations=2, kl_ratio=1.0)
        elif step <= 30:
            row = dict(eta=0.254, eta_prev=0.254, iterations=1, kl_ratio=0.9 * 0.9 ** (step - 7))
        else:
            row = dict(
                eta=late_eta(step),
                eta_prev=late_eta(step - 1) if step > 31 else 0.254,
                iterations=3,
                kl_ratio={40: 78.0, 41: 30.0, 42: 9.0, 43: 2.0}.get(step, 1.0),
            )
        row.update(
            step=step,
            epoch=1 + (step - 1) // 30,
            loss=loss(step),
            kl_bound=bound,
            eta_lo=row["eta"] * 0.9,
            eta_hi=row["eta"] * 1.2,
            precision_nonpos=1 if step == 45 else 0,
            denominator_nonpos=0,
            guard_acted=0,
        )
        if quantiles:
            row.update(precision_q01=100.0 + step, precision_q50=120.0 + 2 * step, precision_q99=200.0 + 50 * step)
        row["numel"] = 26
        if not with_eta:
            row = {key: row[key] for key in ("step", "epoch", "loss")}
        rows.append(row)
    return rows


def write_record(
    run_dir,
    *,
    arrays: Callable,
    steps: list[dict] | None = None,
    kind: str = "compare",
    config: str = "",
    parameters: Mapping[str, tuple] | None = None,
    optimizer: Mapping | None = None,
    var_init: float | None = 0.01,
    reference: str = "exact",
    every: int = 10,
    hutchinson_noise: float = 0.05,
    drop_fields: tuple = (),
    seed: int = 0,
    epochs=EPOCHS,
    finish: Mapping | None = None,
    scalars: Callable[[dict, int], Mapping] | None = None,
    extras: Callable[[int], Mapping] | None = None,
):
    """Write the record and return ``run_dir``; ``finish=None`` leaves it incomplete (flushed only).

    ``scalars(row, t)`` gives the ``snapshots.csv`` row of the snapshot at step row ``row`` (the
    ``t``-th snapshot); by default the row's bound and eta with fixed probe and dual values.
    ``extras(t)``: the instruments' arrays of any shape of that snapshot (``INSTRUMENT/FIELD``).

    Per snapshot and parameter, in this order of draws from ``numpy.random.default_rng(seed)``:
    ``h, fields = arrays(rng, shape, t)``, then ``h_hutchinson = h + hutchinson_noise * normal``
    (standard error ``hutchinson_noise``) where the reference includes Hutchinson.
    """
    rng = np.random.default_rng(seed)
    parameters = parameters or PARAMETERS
    writer = RecordWriter(run_dir, kind, config, parameters, optimizer=optimizer, var_init=var_init)
    for row in steps if steps is not None else step_rows():
        writer.add_step(row)
        if reference == "none" or row["step"] % every:
            continue
        t = row["step"] // every
        snapshot = {}
        for name, shape in parameters.items():
            h, fields = arrays(rng, shape, t)
            if reference in ("exact", "both"):
                fields["h_exact"] = h
            if reference in ("hutchinson", "both"):
                fields["h_hutchinson"] = h + hutchinson_noise * rng.normal(size=shape)
                fields["h_hutchinson_se"] = np.full(shape, hutchinson_noise)
            snapshot[name] = {key: value for key, value in fields.items() if key not in drop_fields}
        writer.add_snapshot(
            row["step"], (scalars or _default_scalars(reference))(row, t), snapshot, extras(t) if extras else None
        )
    for epoch in epochs:
        writer.add_epoch(dict(epoch))
    if finish is not None:
        writer.finish(dict(finish))
    else:
        writer.flush()
    return run_dir


def _default_scalars(reference: str) -> Callable[[dict, int], dict]:
    def scalars(row: dict, t: int) -> dict:
        return {
            "kl_bound": row["kl_bound"],
            "eta": row["eta"],
            "kl0_ratio": 3.0 if t % 2 else 0.5,
            "eta_star": 0.5 if t % 2 else math.nan,
            "reference": reference,
            "exact_method": "hvp" if reference != "hutchinson" else "",
            "hutchinson_samples": 8,
            "probe_loss": 0.5,
            "seconds": 0.1,
        }

    return scalars
