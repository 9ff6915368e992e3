"""Small synthetic run records for the report tests, written with RecordWriter."""
from __future__ import annotations

import math

import numpy as np
import pytest

from arturo_diag.diagnostics.record import RecordWriter

PARAMETERS = {"net.0.weight": (4, 3), "net.0.bias": (4,), "net.2.weight": (2, 4), "net.2.bias": (2,)}
OPTIMIZER = {"name": "Arturo", "lr": 0.1, "eta_tol": 0.5, "var_init": 0.01, "kl": "decoupled",
             "dual": "bisection", "fixed_eta": None, "guard": False, "dynamic_model_noise": 0.01}


def config_toml(**optimizer) -> str:
    """A config.toml in the shape the compare pipeline writes (only the fields the report reads)."""
    fields = {"optimizer": "arturo", "preset": "fmnist_cnn", "lr": 0.1, "var_init": 0.01, "eta_tol": 0.5,
              "dynamic_model_noise": 0.01, "kl": "decoupled", "dual": "bisection", "guard": False,
              "oracle": "none", **optimizer}
    lines = ['[run]', 'model = "mlp"', 'dataset = "teacher"', "batch_size = 8", "seed = 0", "", "[optimizer]"]
    for key, value in fields.items():
        if value is None:
            lines.append(f"# {key} = (unset)")
        elif isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, str):
            lines.append(f'{key} = "{value}"')
        else:
            lines.append(f"{key} = {value!r}")
    lines += ["", "[schedule]", "lr_milestones = [2]", "lr_gamma = 0.006", "", "[diagnostics]",
              'reference = "exact"', "collapse_fraction = 0.01", ""]
    return "\n".join(lines)


def step_rows(n_steps: int = 60, *, with_eta: bool = True) -> list[dict]:
    """60 steps: first, 5/3 growth (2-5), a jump, frozen at 0.254 (7-30), bisection, bound drop at 40."""
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
            row = dict(eta=1.0 + 0.01 * (step % 3), eta_prev=1.0 + 0.01 * ((step - 1) % 3) if step > 31 else 0.254,
                       iterations=3, kl_ratio={40: 78.0, 41: 30.0, 42: 9.0, 43: 2.0}.get(step, 1.0))
        row.update(step=step, epoch=1 + (step - 1) // 30, loss=2.0 / (1 + 0.1 * step), kl_bound=bound,
                   eta_lo=row["eta"] * 0.9, eta_hi=row["eta"] * 1.2,
                   precision_nonpos=1 if step == 45 else 0, denominator_nonpos=0, guard_acted=0,
                   precision_q01=100.0 + step, precision_q50=120.0 + 2 * step, precision_q99=200.0 + 50 * step,
                   numel=26)
        if not with_eta:
            row = {key: row[key] for key in ("step", "epoch", "loss")}
        rows.append(row)
    return rows


def write_record(run_dir, *, reference: str = "exact", finish: bool = True, every: int = 10,
                 parameters: dict | None = None, settings: dict | None = None, optimizer: dict | None = None,
                 with_eta: bool = True, drop_fields: tuple = (), seed: int = 0):
    """A run record of 60 steps with snapshots every ``every`` steps (none for reference "none")."""
    rng = np.random.default_rng(seed)
    parameters = parameters or PARAMETERS
    writer = RecordWriter(run_dir, "compare", config_toml(**(settings or {})), parameters,
                          optimizer=OPTIMIZER if optimizer is None else optimizer, var_init=0.01)
    for row in step_rows(with_eta=with_eta):
        writer.add_step(row)
        if reference == "none" or row["step"] % every:
            continue
        t = row["step"] // every
        arrays = {}
        for name, shape in parameters.items():
            h = np.abs(rng.normal(size=shape)) * 10.0 ** rng.uniform(-3, 0, size=shape)
            h[..., 0] *= -1  # some negative curvature
            a = 0.1 + 0.5 * t / 6 * (h - 0.1) + 0.01 * rng.normal(size=shape)
            fields = {"curvature": a, "filter_cov_aa": np.full(shape, 0.04), "intercept": rng.normal(size=shape),
                      "precision": np.full(shape, 100.0 + t), "weight": rng.normal(size=shape)}
            if reference in ("exact", "both"):
                fields["h_exact"] = h
            if reference in ("hutchinson", "both"):
                fields["h_hutchinson"] = h + 0.05 * rng.normal(size=shape)
                fields["h_hutchinson_se"] = np.full(shape, 0.05)
            arrays[name] = {key: value for key, value in fields.items() if key not in drop_fields}
        writer.add_snapshot(row["step"], {"kl_bound": row["kl_bound"], "eta": row["eta"],
                                          "kl0_ratio": 3.0 if t % 2 else 0.5,
                                          "eta_star": 0.5 if t % 2 else math.nan, "reference": reference,
                                          "exact_method": "hvp" if reference != "hutchinson" else "",
                                          "hutchinson_samples": 8, "probe_loss": 0.5, "seconds": 0.1}, arrays)
    writer.add_epoch(dict(epoch=1, step=30, train_loss=0.6, train_accuracy=0.8, test_loss=0.7, test_accuracy=0.75))
    writer.add_epoch(dict(epoch=2, step=60, train_loss=0.4, train_accuracy=0.9, test_loss=0.5, test_accuracy=0.85))
    if finish:
        writer.finish({"model": "mlp", "dataset": "teacher", "optimizer_name": "arturo", "seconds": 1.0})
    else:
        writer.flush()
    return run_dir


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
