"""Wall time of the default ablation study, the speed-up of 2 workers over 1, and the cost of the paper setups.

Default mode: runs the embedded default study (`arturo-diag ablate` with no arguments) into fresh
temporary directories with --workers 1 and with --workers 2 and prints both wall times and their
ratio. Targets (issue 6, printed, not asserted): default study <= 5 min on 2 cores; speed-up of
2 workers over 1 >= 1.6x.

    python bench/ablate.py [--workers 1,2] [--rounds 2]

``--executor ray``: in one process, Ray's start-up (``ray.init`` of a local instance with
``--workers`` CPUs, default 2, loopback, no dashboard) and the default study's wall time on it
(one Ray task per run) against the local pool's with as many workers, interleaved over
``--rounds``; checks that both write the same study.json. Target (issue 14, printed): within 15 %
of the local pool after start-up.

    python bench/ablate.py --executor ray [--workers 2] [--rounds 1]

``--paper-setups``: the cost of the paper's study configs (experiments/studies/*.toml) on this CPU,
one torch thread (as in a study's workers), on synthetic inputs of the right shape (no real data
is needed; the cost of a step does not depend on the pixel values). For each setup it MEASURES a
training step per optimizer (faithful arTuRO, SGD, Adam), a snapshot (exact diagonal Hessian on
the probe batch), an oracle call (exact on one minibatch; Hutchinson with a few probes, scaled
linearly to the setup's `samples`) and the end-of-epoch evaluation (throughput on 1,024 examples,
scaled to train + test set), then EXTRAPOLATES a full run and a full study from those numbers.
For Fashion-MNIST it also runs the real pipeline for 30 steps on synthetic IDX files and prints
the measured wall time beside the model's prediction, as a check of the extrapolation.

    python bench/ablate.py --paper-setups [--only fmnist_cnn,cifar10_resnet34] [--curvature-examples 16]
"""

from __future__ import annotations

import argparse
import gzip
import math
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STUDIES = REPO / "experiments" / "studies"
# num_train, num_test, input shape, classes
SHAPES = {
    "fashion_mnist": (60000, 10000, (1, 28, 28), 10),
    "cifar10": (50000, 10000, (3, 32, 32), 10),
    "cifar100": (50000, 10000, (3, 32, 32), 100),
}


def default_study(workers_list: list[int], rounds: int) -> None:
    """Time the default study with each worker count, ``rounds`` times interleaved (1, 2, 1, 2, ...)
    so that a burst of load from other jobs on a shared machine hits both; prints the load average
    beside every measurement and the median of each."""
    import os

    from arturo_diag.study import default_study, run_study

    study = default_study()
    times: dict[int, list[float]] = {w: [] for w in workers_list}
    for round_ in range(1, rounds + 1):
        for workers in workers_list:
            load_before = os.getloadavg()[0]
            with tempfile.TemporaryDirectory(prefix=f"ablate-w{workers}-") as tmp:
                start = time.perf_counter()
                result = run_study(study, tmp, workers=workers)
                seconds = time.perf_counter() - start
            times[workers].append(seconds)
            print(
                f"round {round_}: default study, --workers {workers}: {seconds:7.1f} s wall ({len(result.outcomes)} runs, "
                f"{len(result.failed)} failed; 1-min load average {load_before:.1f} before, "
                f"{os.getloadavg()[0]:.1f} after, on {os.cpu_count()} CPUs)",
                flush=True,
            )
    median = {w: statistics.median(t) for w, t in times.items()}
    if 1 in median:
        for workers in workers_list:
            if workers != 1:
                print(
                    f"speed-up of --workers {workers} over --workers 1 (medians): {median[1] / median[workers]:.2f}x "
                    "(target >= 1.6x)"
                )
    if 2 in median:
        print(f"default study with --workers 2: median {median[2]:.1f} s (target <= 300 s on 2 cores)")


def ray_against_local(workers: int, rounds: int) -> None:
    """Ray's start-up, then the default study on the local pool and on Ray (``workers`` each),
    ``rounds`` times interleaved; the medians and their ratio; study.json compared byte for byte."""
    import os

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # the local instance on 127.0.0.1
    try:
        import ray
    except ImportError:
        sys.exit('bench/ablate.py --executor ray needs Ray: pip install -e ".[ray]"')
    from arturo_diag.study import default_study, run_study
    from arturo_diag.study.executors import RayExecutor

    study = default_study()
    start = time.perf_counter()
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    startup = time.perf_counter() - start
    print(f"Ray start-up (ray.init, a local instance with {workers} CPUs): {startup:.1f} s", flush=True)
    times: dict[str, list[float]] = {"local": [], "ray": []}
    try:
        for round_ in range(1, rounds + 1):
            documents = {}
            for name in ("local", "ray"):
                executor = RayExecutor(workers=workers) if name == "ray" else None
                load_before = os.getloadavg()[0]
                with tempfile.TemporaryDirectory(prefix=f"ablate-{name}-") as tmp:
                    start = time.perf_counter()
                    result = run_study(study, tmp, workers=workers, executor=executor)
                    seconds = time.perf_counter() - start
                    documents[name] = (Path(tmp) / "study.json").read_bytes()
                for failed in result.failed:
                    print(f"  failed: {'/'.join(map(str, failed.spec.key))}: {failed.error}", flush=True)
                times[name].append(seconds)
                print(
                    f"round {round_}: default study, {name} ({workers} {'CPUs' if name == 'ray' else 'workers'}): "
                    f"{seconds:7.1f} s wall ({len(result.outcomes)} runs, {len(result.failed)} failed; 1-min load "
                    f"average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after, on {os.cpu_count()} CPUs)",
                    flush=True,
                )
            same = documents["local"] == documents["ray"]
            print(f"round {round_}: study.json {'byte-identical' if same else 'DIFFERS'} between local and Ray")
    finally:
        ray.shutdown()
    local, on_ray = statistics.median(times["local"]), statistics.median(times["ray"])
    print(
        f"default study, medians: local pool {local:.1f} s, Ray {on_ray:.1f} s after a {startup:.1f} s start-up "
        f"(Ray / local = {on_ray / local:.2f}; target <= 1.15), {on_ray + startup:.1f} s with it"
    )


# ------------------------------------------------------------------------------------ paper setups
def _timed(fn, repeats: int, warmup: bool = True) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls, after one warm-up call if ``warmup``."""
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _measure(setup, repeats: int, curvature_examples: int | None = None) -> dict[str, float]:
    """Component times of one setup. ``curvature_examples``: time the exact diagonal Hessian once on
    that many examples (no warm-up) and scale it linearly to the probe batch and the minibatch, and
    Hutchinson's per-probe cost likewise (for networks where one full call takes many minutes)."""
    import torch
    from torch import nn

    from arturo_diag.curvature import exact_diagonal, hutchinson_diagonal
    from arturo_diag.training.loop import build_optimizer, evaluate
    from arturo_diag.training.models import build_model

    config = setup.config.resolved()
    num_train, num_test, shape, classes = SHAPES[config.dataset]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(config.batch_size, *shape, generator=generator)
    y = torch.randint(0, classes, (config.batch_size,), generator=generator)
    loss_fn = nn.functional.cross_entropy

    def model():
        torch.manual_seed(0)
        return build_model(config.model, in_channels=shape[0], num_classes=classes, image_size=shape[1])

    out: dict[str, float] = {}
    baselines = setup.baselines.values
    for name, changes in (
        ("faithful", {}),
        ("sgd", {"optimizer": "sgd", **baselines["sgd"]}),
        ("adam", {"optimizer": "adam", **baselines["adam"]}),
    ):
        net = model()
        optimizer = build_optimizer(config.replace(**changes).resolved(), net)

        def step():
            optimizer.zero_grad(set_to_none=True)
            loss_fn(net(x), y).backward()
            optimizer.step()

        out[f"step_{name}"] = _timed(step, repeats)
        print(f"  step {name}: {out[f'step_{name}']:.3f} s", flush=True)
    net = model()
    few = 2
    if curvature_examples is None:
        probe = (x[: config.probe_size], y[: config.probe_size])
        out["snapshot"] = _timed(
            lambda: exact_diagonal(net, loss_fn, *probe, method=config.exact_method), max(1, repeats // 2)
        )
        out["oracle_exact"] = _timed(lambda: exact_diagonal(net, loss_fn, x, y, method=config.exact_method), 1)
        per_probe = (
            _timed(lambda: hutchinson_diagonal(net, loss_fn, x, y, few, torch.Generator().manual_seed(1)), 1) / few
        )
        how = f"scaled from {few} probes"
    else:
        n = curvature_examples
        sub = (x[:n], y[:n])
        per_example = (
            _timed(lambda: exact_diagonal(net, loss_fn, *sub, method=config.exact_method), 1, warmup=False) / n
        )
        out["snapshot"] = per_example * config.probe_size
        out["oracle_exact"] = per_example * config.batch_size
        per_probe = (
            _timed(
                lambda: hutchinson_diagonal(net, loss_fn, *sub, few, torch.Generator().manual_seed(1)), 1, warmup=False
            )
            / few
            * config.batch_size
            / n
        )
        how = f"scaled from {few} probes on {n} examples"
        print(f"  (exact diagonal timed once on {n} examples, scaled linearly in the number of examples)", flush=True)
    print(f"  snapshot (exact h, probe {config.probe_size}): {out['snapshot']:.2f} s", flush=True)
    print(f"  oracle exact (minibatch {config.batch_size}): {out['oracle_exact']:.2f} s", flush=True)
    out["oracle_hutchinson"] = per_probe * config.samples
    print(
        f"  oracle Hutchinson: {per_probe:.2f} s per probe x {config.samples} = {out['oracle_hutchinson']:.1f} s "
        f"({how})",
        flush=True,
    )
    images = torch.randn(1024, *shape, generator=generator)
    labels = torch.randint(0, classes, (1024,), generator=generator)
    per_example = _timed(lambda: evaluate(net, images, labels), 1) / 1024
    out["eval_epoch"] = per_example * (num_train + num_test)
    print(f"  evaluation per epoch ({num_train} + {num_test} examples): {out['eval_epoch']:.1f} s", flush=True)
    return out


def _extrapolate(setup, m: dict[str, float], seeds: int) -> dict[str, float]:
    config = setup.config
    num_train = SHAPES[config.dataset][0]
    per_epoch = math.ceil(num_train / config.batch_size)
    steps = config.epochs * per_epoch
    snapshots = steps // config.every
    oracle_calls = math.ceil(steps / config.oracle_every)
    base = config.epochs * m["eval_epoch"]
    run = {
        "faithful": steps * m["step_faithful"] + snapshots * m["snapshot"] + base,
        "sgd": steps * m["step_sgd"] + base,
        "adam": steps * m["step_adam"] + base,
        "oracle-exact": steps * m["step_faithful"]
        + oracle_calls * m["oracle_exact"]
        + snapshots * m["snapshot"]
        + base,
        "oracle-hutchinson": (
            steps * m["step_faithful"] + oracle_calls * m["oracle_hutchinson"] + snapshots * m["snapshot"] + base
        ),
    }
    # 11 variants: 6 cost about a faithful run (fixed-eta, coupled, no-drift, exact-dual, guarded and
    # faithful itself), the two oracles, SGD, Adam and AdamW (as Adam).
    study = seeds * (
        6 * run["faithful"] + run["oracle-exact"] + run["oracle-hutchinson"] + run["sgd"] + 2 * run["adam"]
    )
    return {"steps": steps, **{f"run_{k}": v for k, v in run.items()}, "study_core_seconds": study}


def _write_idx(path: Path, array, magic_type: int) -> None:
    import numpy as np

    header = struct.pack(">HBB", 0, magic_type, array.ndim) + b"".join(struct.pack(">I", n) for n in array.shape)
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(header + np.ascontiguousarray(array).tobytes())


def _check_fmnist_pipeline(setup, m: dict[str, float]) -> None:
    """Run the real loop for 30 steps on synthetic Fashion-MNIST files; compare with the model."""
    import numpy as np

    from arturo_diag.training.loop import run

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="fmnist-synthetic-") as tmp:
        root = Path(tmp)
        _write_idx(root / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (60000, 28, 28), dtype=np.uint8), 0x08)
        _write_idx(root / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, 60000, dtype=np.uint8), 0x08)
        _write_idx(root / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (10000, 28, 28), dtype=np.uint8), 0x08)
        _write_idx(root / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, 10000, dtype=np.uint8), 0x08)
        steps, every = 30, 15
        config = setup.config.replace(data_dir=str(root), steps=steps, every=every, out=str(root / "run"))
        start = time.perf_counter()
        result = run(config, overwrite=True)
        wall = time.perf_counter() - start
    predicted = steps * m["step_faithful"] + (steps // every) * m["snapshot"] + m["eval_epoch"]
    print(
        f"  check: real pipeline, {result.steps} steps + {steps // every} snapshots + 1 evaluation on synthetic "
        f"IDX files: {wall:.1f} s measured (incl. reading the files) vs {predicted:.1f} s from the component times",
        flush=True,
    )


def paper_setups(only: list[str] | None, repeats: int, curvature_examples: int | None = None) -> None:
    import torch

    from arturo_diag.study import load_study

    torch.set_num_threads(1)
    names = only or ["fmnist_cnn", "cifar10_cnn", "cifar100_cnn", "cifar10_resnet34", "cifar100_resnet34"]
    rows = []
    for name in names:
        study = load_study(STUDIES / f"{name}.toml")
        (setup,) = study.setups
        print(f"{name}: {setup.config.model} on {setup.config.dataset}, batch {setup.config.batch_size}", flush=True)
        m = _measure(setup, repeats if setup.config.model != "resnet34" else 1, curvature_examples)
        if setup.config.dataset == "fashion_mnist":
            _check_fmnist_pipeline(setup, m)
        e = _extrapolate(setup, m, len(study.seeds))
        rows.append((name, setup, m, e, len(study.seeds)))
    print(
        "\n| setup | step: arTuRO / SGD / Adam (s) | snapshot (s) | oracle exact / Hutchinson (s) | eval per epoch (s) "
        "| steps per run | one faithful run, 1 core (extrapolated) | whole study, 2 workers (extrapolated) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, setup, m, e, seeds in rows:
        print(
            f"| {name} | {m['step_faithful']:.3f} / {m['step_sgd']:.3f} / {m['step_adam']:.3f} | {m['snapshot']:.2f} "
            f"| {m['oracle_exact']:.2f} / {m['oracle_hutchinson']:.1f} | {m['eval_epoch']:.1f} | {e['steps']} "
            f"| {_duration(e['run_faithful'])} | {_duration(e['study_core_seconds'] / 2)} |"
        )


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default=None, help="comma-separated worker counts to time (default 1,2; ray: 2)")
    parser.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="ray: Ray's start-up and the study on Ray vs local",
    )
    parser.add_argument("--rounds", type=int, default=1, help="interleaved repetitions of the default-study timing")
    parser.add_argument("--paper-setups", action="store_true", help="measure and extrapolate the paper setups instead")
    parser.add_argument("--only", default=None, help="comma-separated paper study names")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per step (ResNet-34: 1)")
    parser.add_argument(
        "--curvature-examples",
        type=int,
        default=None,
        help="time exact/Hutchinson Hessians once on this many examples and scale linearly",
    )
    args = parser.parse_args()
    if args.paper_setups:
        paper_setups(args.only.split(",") if args.only else None, args.repeats, args.curvature_examples)
    elif args.executor == "ray":
        ray_against_local(int(args.workers or 2), args.rounds)
    else:
        default_study([int(w) for w in (args.workers or "1,2").split(",")], args.rounds)


if __name__ == "__main__":
    sys.exit(main())
