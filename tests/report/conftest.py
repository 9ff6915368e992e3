"""Small synthetic run records for the report tests: tests/records.py with the report's arrays and config."""

from __future__ import annotations

import numpy as np
import pytest
import records
from records import PARAMETERS, step_rows

__all__ = ["PARAMETERS", "config_toml", "step_rows", "write_record"]
OPTIMIZER = {
    "name": "Arturo",
    "lr": 0.1,
    "eta_tol": 0.5,
    "var_init": 0.01,
    "kl": "decoupled",
    "dual": "bisection",
    "fixed_eta": None,
    "guard": False,
    "dynamic_model_noise": 0.01,
}


def config_toml(**optimizer) -> str:
    """A config.toml in the shape the compare pipeline writes (only the fields the report reads)."""
    fields = {
        "optimizer": "arturo",
        "preset": "fmnist_cnn",
        "lr": 0.1,
        "var_init": 0.01,
        "eta_tol": 0.5,
        "dynamic_model_noise": 0.01,
        "kl": "decoupled",
        "dual": "bisection",
        "guard": False,
        "oracle": "none",
        **optimizer,
    }
    lines = ["[run]", 'model = "mlp"', 'dataset = "teacher"', "batch_size = 8", "seed = 0", "", "[optimizer]"]
    for key, value in fields.items():
        if value is None:
            lines.append(f"# {key} = (unset)")
        elif isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, str):
            lines.append(f'{key} = "{value}"')
        else:
            lines.append(f"{key} = {value!r}")
    lines += [
        "",
        "[schedule]",
        "lr_milestones = [2]",
        "lr_gamma = 0.006",
        "",
        "[diagnostics]",
        'reference = "exact"',
        "collapse_fraction = 0.01",
        "",
    ]
    return "\n".join(lines)


def _arrays(rng, shape, t):
    h = np.abs(rng.normal(size=shape)) * 10.0 ** rng.uniform(-3, 0, size=shape)
    h[..., 0] *= -1  # some negative curvature
    a = 0.1 + 0.5 * t / 6 * (h - 0.1) + 0.01 * rng.normal(size=shape)
    return h, {
        "curvature": a,
        "filter_cov_aa": np.full(shape, 0.04),
        "intercept": rng.normal(size=shape),
        "precision": np.full(shape, 100.0 + t),
        "weight": rng.normal(size=shape),
        # the noise instrument's arrays, deterministic (no draw from rng: the other arrays stay as they were)
        "grad_mean": 1e-3 * np.cos(np.arange(np.prod(shape)).reshape(shape) + t),
        "grad_var": 5e-6 * (1.0 + (np.arange(np.prod(shape)).reshape(shape) % 7) / 7.0) * (1.0 + 0.1 * t),
    }


def spectrum_scalars(t: int) -> dict:
    """The spectrum instrument's snapshots.csv values at the t-th snapshot (deterministic)."""
    return {
        "spectrum_trace": 3.0 + t,
        "spectrum_trace_se": 0.2,
        "spectrum_trace_hutchpp": 3.1 + t,
        "spectrum_trace_hutchpp_se": 0.05,
        "spectrum_frobenius_sq": 4.0,
        "spectrum_frobenius_sq_se": 0.1,
        "spectrum_top_1": 2.0 + 0.1 * t,
        "spectrum_top_2": 1.0,
        "spectrum_top_3": 0.5,
        "spectrum_min": -0.2,
        "spectrum_converged": True,
        "spectrum_probes": 4,
        "spectrum_hvps": 50,
    }


def spectrum_extras(t: int, parameters=None) -> dict:
    """Its per-probe arrays: 4 probes, ||(Hz)_tensor||^2 = 2 per tensor (F2 = 2 x tensors), two SLQ probes."""
    count = len(parameters or PARAMETERS)
    rows = np.full((4, count), 2.0) + np.array([[-0.1], [0.1], [-0.2], [0.2]])
    nodes = np.array([[-0.2, 0.001, 1.0, 2.0 + 0.1 * t], [-0.1, 0.0, 0.5, np.nan]])
    weights = np.array([[0.1, 0.6, 0.2, 0.1], [0.2, 0.5, 0.3, np.nan]])
    return {"spectrum/row_sq": rows, "spectrum/quad": np.full(4, 3.0 + t), "spectrum/ritz_nodes": nodes,
            "spectrum/ritz_weights": weights}  # fmt: skip


def write_record(
    run_dir,
    *,
    reference: str = "exact",
    finish: bool = True,
    every: int = 10,
    parameters: dict | None = None,
    settings: dict | None = None,
    optimizer: dict | None = None,
    with_eta: bool = True,
    drop_fields: tuple = (),
    seed: int = 0,
):
    """A run record of 60 steps with snapshots every ``every`` steps (none for reference "none"), the
    spectrum instrument's values at each."""
    default = records._default_scalars(reference)
    return records.write_record(
        run_dir,
        arrays=_arrays,
        steps=step_rows(with_eta=with_eta),
        kind="compare",
        config=config_toml(**(settings or {})),
        parameters=parameters,
        optimizer=OPTIMIZER if optimizer is None else optimizer,
        reference=reference,
        every=every,
        drop_fields=drop_fields,
        seed=seed,
        scalars=lambda row, t: {**default(row, t), **spectrum_scalars(t)},
        extras=lambda t: spectrum_extras(t, parameters),
        finish={"model": "mlp", "dataset": "teacher", "optimizer_name": "arturo", "seconds": 1.0} if finish else None,
    )


@pytest.fixture
def record_dir(tmp_path):
    """A complete record: exact reference, 6 snapshots, 60 steps with 5/3 growth, frozen steps and a bound drop."""
    return write_record(tmp_path / "run")


@pytest.fixture
def make_record(tmp_path):
    """``make_record(name, **options)``: :func:`write_record` into ``tmp_path / name``."""

    def make(name: str = "run", **options):
        return write_record(tmp_path / name, **options)

    return make


@pytest.fixture(scope="module")
def shared_record_dir(tmp_path_factory):
    """The standard record, written once per test module (for tests that only read or re-render it)."""
    return write_record(tmp_path_factory.mktemp("report") / "run")
