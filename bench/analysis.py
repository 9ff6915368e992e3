"""Time of ``analyze_record`` on a ResNet-18-sized run record, against just reading its snapshots.

Builds, in a temporary directory, a synthetic run record of ResNet-18's parameter shapes
(``arturo_diag.training.models.resnet18(num_classes=10)``: 11,181,642 parameters; the model is
built only for its names and shapes) with the RecordWriter: ``--steps`` rows of steps.csv with
arTuRO's columns, one epochs.csv row per ``--steps / 3``, ``--snapshots`` snapshots (reference
"hutchinson") of float32 arrays per parameter (``curvature``, ``filter_cov_aa``, ``intercept``,
``precision``, ``weight``, ``h_hutchinson``, ``h_hutchinson_se``, ``grad_mean``, ``grad_var``;
seeded, plausible: h > 0 with noise, a correlated with h, precision > 0) and initial_weights.
Where the RecordWriter has no float32 option (``snapshot_dtype``) yet, the snapshot files are
rewritten in float32 with numpy directly (keys ``"{param}/{field}"``; the reader converts to
float64 on load). Then, in this process, alternating over ``--repeats``:

- read: ``RunRecord.snapshot(step)`` for every snapshot (the baseline: pure read time);
- analysis: ``analyze_record(run_dir)``;
- with ``--render``, also ``render_report(run_dir)`` (figures included) once at the end.

Prints the medians, the record's size on disk, and analysis / read.

Target (issue 15, item 5): analysis <= 15 s on 2 cores. ``--snapshots 2 --steps 20`` is the record
of the issue's ResNet-18 compare (``--steps 20 --every 10``); the default, 10 snapshots, a longer run.

    python bench/analysis.py [--snapshots 10] [--steps 3000] [--repeats 3] [--render] [--profile FILE]
"""

from __future__ import annotations

import argparse
import inspect
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from arturo_diag.diagnostics.record import RecordWriter, RunRecord
from arturo_diag.diagnostics.record_format import snapshot_filename
from arturo_diag.quantities.analysis import analyze_record
from arturo_diag.training.models import build_model, resnet18

LR = 0.08567456  # the default preset's KL bound (the config's lr)


def config_text(n_steps: int, every: int, model: str = "resnet18") -> str:
    """The resolved config.toml of a compare run of ResNet-18 with Hutchinson's reference."""
    from arturo_diag.training._config_toml import config_to_toml
    from arturo_diag.training.config import RunConfig

    config = RunConfig(model=model, steps=n_steps, reference="hutchinson", instruments=("noise",), every=every)
    return config_to_toml(config.resolved())


def step_row(step: int, steps_per_epoch: int, numel: int, rng: np.random.Generator) -> dict:
    """One plausible steps.csv row of arTuRO: eta around 1 with a bracket, quantiles of pi."""
    eta = float(np.exp(rng.normal(0.0, 0.3)))
    return {
        "step": step,
        "epoch": 1 + (step - 1) // steps_per_epoch,
        "loss": 2.3 / (1 + step / 500) + 0.05 * rng.random(),
        "kl_bound": LR,
        "eta": eta,
        "eta_lo": 0.8 * eta,
        "eta_hi": 1.25 * eta,
        "iterations": int(rng.integers(0, 16)),
        "kl_ratio": float(min(1.0, rng.uniform(0.3, 1.2))),
        "eta_prev": math.nan if step == 1 else eta * 0.98,
        "precision_nonpos": 0,
        "denominator_nonpos": 0,
        "guard_acted": 0,
        "precision_q01": 100.0 + 0.01 * step,
        "precision_q50": 200.0 + 0.02 * step,
        "precision_q99": 400.0 + 0.1 * step,
        "numel": numel,
    }


def snapshot_arrays(
    rng: np.random.Generator, shapes: dict[str, tuple[int, ...]], weights: dict[str, np.ndarray], t: int
) -> dict[str, dict[str, np.ndarray]]:
    """Float32 fields of every parameter at the ``t``-th snapshot (1-based)."""
    out = {}
    for name, shape in shapes.items():
        f32 = np.float32
        h = (np.abs(rng.standard_normal(shape, dtype=f32)) * f32(1e-3) * f32(1 + 0.1 * t)).astype(f32)
        h_hutch = h + f32(3e-4) * rng.standard_normal(shape, dtype=f32)
        a = h * np.exp(f32(0.5) * rng.standard_normal(shape, dtype=f32)) + f32(1e-5)
        p_aa = f32(1e-4) * np.exp(rng.standard_normal(shape, dtype=f32))
        precision = f32(200.0) * np.exp(f32(0.3) * rng.standard_normal(shape, dtype=f32))
        weights[name] = weights[name] + f32(1e-3) * rng.standard_normal(shape, dtype=f32)
        grad_var = f32(1e-6) * np.exp(rng.standard_normal(shape, dtype=f32))
        out[name] = {
            "curvature": a.astype(f32),
            "filter_cov_aa": p_aa.astype(f32),
            "intercept": (f32(1e-3) * rng.standard_normal(shape, dtype=f32)),
            "precision": precision.astype(f32),
            "weight": weights[name].astype(f32),
            "h_hutchinson": h_hutch.astype(f32),
            "h_hutchinson_se": np.full(shape, 3e-4, dtype=f32),
            "grad_mean": (f32(1e-3) * rng.standard_normal(shape, dtype=f32)),
            "grad_var": grad_var.astype(f32),
        }
    return out


def build_record(run_dir: Path, n_snapshots: int, n_steps: int, seed: int = 0, model_name: str = "resnet18") -> int:
    """Write the synthetic record; returns the number of parameters."""
    rng = np.random.default_rng(seed)
    if model_name == "resnet18":
        model = resnet18(num_classes=10)
    else:  # a smaller model of the registry, e.g. for checking that results do not change
        model = build_model(model_name, in_channels=3, num_classes=10, image_size=32)
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    numel = sum(int(np.prod(s)) for s in shapes.values())
    model_class = type(model).__name__
    del model
    float32_option = "snapshot_dtype" in inspect.signature(RecordWriter).parameters
    options = {"snapshot_dtype": "float32"} if float32_option else {}
    every = max(1, n_steps // n_snapshots)
    writer = RecordWriter(
        run_dir,
        "compare",
        config_text(n_steps, every, model_name),
        shapes,
        optimizer={"name": "Arturo", "lr": LR, "var_init": 0.01, "eta_tol": 0.5},
        var_init=0.01,
        manifest={"model_class": model_class, "loss": "cross_entropy"},
        **options,
    )
    weights = {name: (0.05 * rng.standard_normal(shape)).astype(np.float32) for name, shape in shapes.items()}
    writer.write_initial_weights(weights)
    steps_per_epoch = max(1, n_steps // 3)
    t = 0
    for step in range(1, n_steps + 1):
        writer.add_step(step_row(step, steps_per_epoch, numel, rng))
        if step % every or t >= n_snapshots:
            continue
        t += 1
        arrays = snapshot_arrays(rng, shapes, weights, t)
        scalars = {
            "kl_bound": LR,
            "eta": 1.0,
            "kl0_ratio": 2.0 if t % 2 else 0.5,
            "eta_star": 0.7 if t % 2 else math.nan,
            "reference": "hutchinson",
            "exact_method": "",
            "hutchinson_samples": 8,
            "probe_loss": 2.0 / t,
            "seconds": 1.0,
        }
        if float32_option:
            writer.add_snapshot(step, scalars, arrays)
        else:  # the writer stores float64: queue the row, then write the arrays in float32 ourselves
            writer.add_snapshot(step, scalars, {})
            np.savez(
                run_dir / snapshot_filename(step),
                **{f"{name}/{field}": x for name, fields in arrays.items() for field, x in fields.items()},
            )
    for epoch in range(1, 4):
        writer.add_epoch(
            {
                "epoch": epoch,
                "step": epoch * steps_per_epoch if epoch < 3 else n_steps,
                "train_loss": 2.0 / epoch,
                "train_accuracy": 0.3 * epoch,
                "test_loss": 2.1 / epoch,
                "test_accuracy": 0.28 * epoch,
            }
        )
    writer.finish({"seconds": 1.0})
    return numel


def read_all(run_dir: Path) -> None:
    record = RunRecord.load(run_dir)
    for step in record.snapshot_steps:
        record.snapshot(step)


def size_on_disk(run_dir: Path) -> int:
    return sum(p.stat().st_size for p in run_dir.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--snapshots", type=int, default=10)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default="resnet18", help="the model whose parameter shapes the record has")
    parser.add_argument("--render", action="store_true", help="also time render_report (figures included) once")
    parser.add_argument("--profile", help="write a cProfile of one analyze_record to this file")
    parser.add_argument("--keep", help="build the record in this directory (kept) instead of a temporary one")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(args.keep) if args.keep else Path(tmp) / "run"
        start = time.perf_counter()
        if not (run_dir / "record.json").is_file():
            numel = build_record(run_dir, args.snapshots, args.steps, model_name=args.model)
        else:
            numel = sum(math.prod(s) for s in RunRecord.load(run_dir).parameters.values())
        print(
            f"record: {numel:,} parameters, {args.snapshots} snapshots, {args.steps} steps, "
            f"{size_on_disk(run_dir) / 2**30:.2f} GiB on disk (built in {time.perf_counter() - start:.0f} s)"
        )
        reads, analyses, read_cpu, analysis_cpu = [], [], [], []
        for _ in range(max(1, args.repeats)):
            start, cpu = time.perf_counter(), time.process_time()
            read_all(run_dir)
            reads.append(time.perf_counter() - start)
            read_cpu.append(time.process_time() - cpu)
            start, cpu = time.perf_counter(), time.process_time()
            analyze_record(run_dir)
            analyses.append(time.perf_counter() - start)
            analysis_cpu.append(time.process_time() - cpu)
        read, analysis = statistics.median(reads), statistics.median(analyses)
        repeats = max(1, args.repeats)
        # CPU seconds of this process (all its threads) beside the wall time: on a shared machine the
        # wall time also measures the other processes
        print(
            f"read every snapshot (RunRecord.snapshot): {read:.1f} s wall, "
            f"{statistics.median(read_cpu):.1f} s CPU   (medians of {repeats})"
        )
        print(
            f"analyze_record: {analysis:.1f} s wall, {statistics.median(analysis_cpu):.1f} s CPU   "
            f"(medians of {repeats})   target <= 15 s"
        )
        print(f"analysis / read = {analysis / read:.2f}x (wall)")
        n_snapshots = len(RunRecord.load(run_dir).snapshot_steps)
        print(
            f"per snapshot: analysis {analysis / n_snapshots:.1f} s wall, "
            f"{statistics.median(analysis_cpu) / n_snapshots:.1f} s CPU; read {read / n_snapshots:.1f} s"
        )
        if args.profile:
            import cProfile

            cProfile.runctx("analyze_record(run_dir)", globals(), {"run_dir": run_dir}, args.profile)
            print(f"profile of one analyze_record: {args.profile}")
        if args.render:
            from arturo_diag.report.render import render_report

            start = time.perf_counter()
            render_report(run_dir)
            render = time.perf_counter() - start
            print(
                f"render_report (analysis and figures included): {render:.1f} s   ({render / analysis:.2f}x analysis)"
            )


if __name__ == "__main__":
    main()
