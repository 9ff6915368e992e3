"""Cost of the reference curvature, in gradients, against BackPACK's DiagHessian, in one process.

CPU, 2 threads. Two models and probe batches of 128:
  (i)  the paper's Fashion-MNIST CNN (390,410 parameters), inputs 1x28x28 (seeded random images
       and labels: the cost does not depend on the pixel values);
  (ii) the ``compare`` command's default SmallCNN (3,658 parameters) on the 8x8 digits.
Every cost is printed as (median time of the method) / (median time of one gradient, i.e.
forward + backward of the same loss on the same batch and model), the methods interleaved within
each repeat so that a busy machine slows them alike, each timed on the second of two
back-to-back calls. "hvp" on the Fashion-MNIST CNN would take
hours: its cost is estimated as (number of chunks) x (median time of one chunk). BackPACK is a
bench-only dependency; ``pip install backpack-for-pytorch`` would pull another torch, so install
it with ``pip install --no-deps backpack-for-pytorch einops unfoldNd``.

Targets (issue 4): "ggn" on the Fashion-MNIST CNN faster than BackPACK's DiagHessian (ratio
< 1.0) and equal to it within 1e-10 in float64; Hutchinson <= 2 gradients per probe with 8 or
more probes batched; "hvp" memory bounded by chunk_size.

Then (issue 16, ``bench/curvature_general.py``): ``ggn_diagonal`` / one gradient on a transformer
and a ResNet block model with train-mode BatchNorm (the bench's own small ones and the project's
``transformer`` and ``resnet_block``), "hvp" / ``ggn_diagonal`` on a 1,806-parameter GELU+BN CNN
(target >= 50x), and the control variate's error against plain Hutchinson at equal HVP count and
at equal wall time. ``--part sequential`` runs the first part only, ``--part general`` the second.

    python bench/curvature.py [--repeats 5] [--threads 2] [--seeds 5] [--part all|sequential|general]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from arturo_diag.curvature import exact_diagonal, hutchinson_diagonal, loss_of_parameters
from arturo_diag.curvature.hvp import batched_hvp, hvp_plan
from arturo_diag.training.datasets import load_digits, probe_batch
from arturo_diag.training.models import FashionCNN, SmallCNN

try:  # run as a script (bench/ on sys.path) or imported as bench.curvature
    from curvature_general import run_general
except ImportError:  # pragma: no cover
    from bench.curvature_general import run_general

try:
    from backpack import backpack, extend
    from backpack.extensions import DiagHessian
except ImportError as missing:  # pragma: no cover - reported in the output
    BACKPACK_MISSING: str | None = str(missing)
else:
    BACKPACK_MISSING = None

PROBE = 128
LOSS = nn.CrossEntropyLoss()


def median_times(tasks: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each task over ``repeats`` rounds, the tasks interleaved within a round.

    Each timing is of the second of two back-to-back calls, so that every task, the small
    gradient included, is timed with the allocator warmed by itself rather than left trimmed by
    the large task before it (measured to inflate the gradient unit by up to 2x).
    """
    times: dict[str, list[float]] = {name: [] for name in tasks}
    for _ in range(repeats):
        for name, task in tasks.items():
            task()
            start = time.perf_counter()
            task()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def gradient_task(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        model.zero_grad(set_to_none=True)
        LOSS(model(x), y).backward()

    return run


def backpack_twin(model: nn.Module) -> nn.Module:
    """The same function as ``model`` as an extended nn.Sequential BackPACK can walk.

    SmallCNN's AdaptiveMaxPool2d(2) sees a 4x4 map on 8x8 inputs, where it is MaxPool2d(2)."""
    twin = FashionCNN() if isinstance(model, FashionCNN) else SmallCNN()
    twin.load_state_dict(model.state_dict())
    layers = [nn.MaxPool2d(2) if isinstance(m, nn.AdaptiveMaxPool2d) else m for m in twin.net]
    return extend(nn.Sequential(*layers).to(next(model.parameters())).eval())


def backpack_task(twin: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], dict]:
    loss = extend(nn.CrossEntropyLoss())

    def run() -> dict:
        twin.zero_grad(set_to_none=True)
        with backpack(DiagHessian()):
            loss(twin(x), y).backward()
        return {n: p.diag_h for n, p in twin.named_parameters()}

    return run


def hvp_chunk_task(model: nn.Module, x, y, chunk: int, start: int = 0, batched: bool = True) -> Callable[[], None]:
    """One chunk of the "hvp" method: the one-hot vectors e_start .. e_{start+chunk-1}, cut per
    parameter, through one batched HVP call, as ``exact_diagonal`` runs each chunk."""
    names, params, loss = loss_of_parameters(model, LOSS, x, y)
    products = batched_hvp(loss, params, batched)

    def run() -> None:
        tangents, offset = [], 0
        for p in params:
            piece = torch.zeros(chunk, p.numel(), dtype=p.dtype)
            lo, hi = max(start, offset), min(start + chunk, offset + p.numel())
            if lo < hi:
                idx = torch.arange(lo, hi)
                piece[idx - start, idx - offset] = 1
            tangents.append(piece.view(chunk, *p.shape))
            offset += p.numel()
        products(tuple(tangents))

    return run


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def memory_section(model: nn.Module, x, y) -> list[str]:
    """Peak resident memory added by one vmap-ed "hvp" chunk (the memory-hungrier of the two
    ways), for growing chunk sizes (run first, while the process's high-water mark is low)."""
    lines = []
    total = sum(p.numel() for p in model.parameters())
    base = max_rss_mb()
    previous = None
    for chunk in (4, 16, 64):
        hvp_chunk_task(model, x, y, chunk, batched=True)()
        extra = max_rss_mb() - base
        per = extra / chunk
        lines.append(f"  chunk_size {chunk:3d}: peak +{extra:7.1f} MB  ({per:5.1f} MB per one-hot vector)")
        previous = extra
    full = total * total * x.element_size() / 2**30
    lines.append(
        f"  the full Hessian would be {total:,} x {total:,} = {full:,.0f} GiB: never formed; peak "
        f"memory grows with chunk_size (+{previous:.0f} MB at 64)"
    )
    return lines


HUTCHINSON = ((2, 2), (8, 8), (32, None), (32, 32))  # (probes, probes per vmap call)


def bench_model(label: str, model: nn.Module, x, y, repeats: int, hvp_full: bool) -> dict:
    model.eval()
    total = sum(p.numel() for p in model.parameters())
    problem = loss_of_parameters(model, LOSS, x, y)
    plan = hvp_plan(problem.loss, problem.params, total)  # the defaults of "hvp"
    chunk = plan.chunk
    print(f"\n== {label}: {total:,} parameters, probe batch {x.shape[0]}, float32")
    tasks: dict[str, Callable[[], object]] = {
        "gradient": gradient_task(model, x, y),
        "ggn": lambda: exact_diagonal(model, LOSS, x, y, "ggn"),
    }
    twin = None
    if BACKPACK_MISSING is None:
        twin = backpack_twin(model)
        tasks["backpack"] = backpack_task(twin, x, y)
    med = median_times(tasks, repeats)
    ratio = {name: t / med["gradient"] for name, t in med.items()}
    # Hutchinson and "hvp" allocate far more memory than the methods above: each is timed in its
    # own interleaved group, against its own gradient unit, so that its allocations do not slow
    # the others.
    generator = torch.Generator().manual_seed(0)
    hutchinson_tasks: dict[str, Callable[[], object]] = {"gradient": gradient_task(model, x, y)}
    for samples, per_call in HUTCHINSON:
        hutchinson_tasks[f"hutchinson_{samples}_{per_call}"] = lambda s=samples, c=per_call: hutchinson_diagonal(
            model, LOSS, x, y, s, generator, chunk_size=c
        )
    hvp_tasks: dict[str, Callable[[], object]] = {"gradient": gradient_task(model, x, y)}
    if hvp_full:
        hvp_tasks["hvp"] = lambda: exact_diagonal(model, LOSS, x, y, "hvp")
    hvp_tasks["hvp_chunk"] = hvp_chunk_task(model, x, y, chunk, total // 2, plan.batched)
    for group, group_repeats in (
        (hutchinson_tasks, repeats),
        (hvp_tasks, max(3, repeats // 2)),
    ):
        group_med = median_times(group, group_repeats)
        for name, t in group_med.items():
            if name != "gradient":
                med[name] = t
                ratio[name] = t / group_med["gradient"]
    chunks = -(-total // chunk)
    hvp_estimate = ratio["hvp_chunk"] * chunks
    print("  (unit: one gradient = forward + backward on the batch; medians of interleaved repeats)")
    print(f"  ggn exact diagonal          {ratio['ggn']:10.2f} gradients")
    if twin is not None:
        print(f"  BackPACK DiagHessian        {ratio['backpack']:10.2f} gradients")
        print(f"  ggn / BackPACK              {med['ggn'] / med['backpack']:10.3f}")
    else:
        print(f"  BackPACK DiagHessian        not run: {BACKPACK_MISSING}")
    if hvp_full:
        print(
            f"  hvp exact diagonal          {ratio['hvp']:10.2f} gradients (measured, default chunk_size {chunk}, {'vmap' if plan.batched else 'loop'})"
        )
        print(f"  hvp, estimated from a chunk {hvp_estimate:10.2f} gradients ({chunks} chunks x one chunk)")
        print(f"  ggn speed-up over hvp       {ratio['hvp'] / ratio['ggn']:10.1f}x (measured)")
    else:
        print(
            f"  hvp exact diagonal          {hvp_estimate:10.0f} gradients (ESTIMATED: {chunks:,} chunks "
            f"of {chunk} (the default, {'vmap' if plan.batched else 'loop'}) x the median of one chunk; not run in full)"
        )
        print(f"  ggn speed-up over hvp       {hvp_estimate / ratio['ggn']:10.0f}x (estimated)")
    for samples, per_call in HUTCHINSON:
        probe_plan = hvp_plan(problem.loss, problem.params, samples)
        used = per_call or probe_plan.chunk
        mode = "vmap" if probe_plan.batched else "loop"
        per_probe = ratio[f"hutchinson_{samples}_{per_call}"] / samples
        how = "default chunking" if per_call is None else "chunk_size set"
        print(
            f"  Hutchinson, {samples:2d} probes, {used:2d} per call, {mode} ({how}) "
            f"{per_probe:6.2f} gradients per probe"
        )
    return {"ratio": ratio, "med": med, "twin": twin}


def agreement(label: str, build: Callable[[], nn.Module], x, y, with_hvp: bool, repeats: int) -> dict:
    """float64: ggn against BackPACK (and hvp), and the float64 ggn / BackPACK time ratio."""
    model = build().double().eval()
    x = x.double()
    ggn = exact_diagonal(model, LOSS, x, y, "ggn")
    out = {"scale": max(float(v.abs().max()) for v in ggn.values())}
    print(f"\n== {label}, float64 agreement (largest |diag H| entry {out['scale']:.3g})")
    if BACKPACK_MISSING is None:
        twin = backpack_twin(model)
        run_backpack = backpack_task(twin, x, y)
        reference = run_backpack()
        names = list(ggn)
        out["backpack"] = max(float((ggn[n] - reference[t]).abs().max()) for n, t in zip(names, reference))
        print(f"  max |ggn - BackPACK DiagHessian|  {out['backpack']:.3g}")
        med = median_times(
            {"ggn": lambda: exact_diagonal(model, LOSS, x, y, "ggn"), "backpack": run_backpack},
            max(3, repeats // 2),
        )
        out["time_ratio"] = med["ggn"] / med["backpack"]
        print(f"  ggn / BackPACK time, float64      {out['time_ratio']:.3f}")
    if with_hvp:
        hvp = exact_diagonal(model, LOSS, x, y, "hvp")
        out["hvp"] = max(float((ggn[n] - hvp[n]).abs().max()) for n in ggn)
        print(f"  max |ggn - hvp|                   {out['hvp']:.3g}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=5, help="seeds of the control variate's comparison")
    parser.add_argument("--part", choices=("all", "sequential", "general"), default="all")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; "
        f"load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    checks = sequential_part(args) if args.part != "general" else []
    if args.part != "sequential":
        print("\n==== models beyond Sequential stacks (bench/curvature_general.py)")
        checks += run_general(args.repeats, args.seeds)
    print("\n== targets")
    for label, ok in checks:
        print(f"  [{'PASS' if ok else 'FAIL'}] {label}")
    if args.part != "general":
        print("  [see above] hvp memory: peak grows with chunk_size, the full Hessian is never formed")
    print(f"load average at end {os.getloadavg()[0]:.1f} (other processes share the CPUs)")


def sequential_part(args: argparse.Namespace) -> list[tuple[str, bool]]:
    """The measurements of issue 4 (Sequential CNNs: ggn, BackPACK, hvp, Hutchinson); returns the checks."""
    if BACKPACK_MISSING is not None:
        print(f"BackPACK not importable ({BACKPACK_MISSING}); its comparisons are skipped")

    g = torch.Generator().manual_seed(0)
    fashion_x = torch.randn(PROBE, 1, 28, 28, generator=g)
    fashion_y = torch.randint(0, 10, (PROBE,), generator=g)
    digits = load_digits(seed=0)
    digits_x, digits_y = probe_batch(digits, PROBE, seed=0)

    torch.manual_seed(0)
    fashion = FashionCNN()
    print('\n== memory of one vmap-ed "hvp" chunk, Fashion-MNIST CNN, float32')
    for line in memory_section(fashion.eval(), fashion_x, fashion_y):
        print(line)

    fashion_result = bench_model("Fashion-MNIST CNN", fashion, fashion_x, fashion_y, args.repeats, hvp_full=False)
    torch.manual_seed(0)
    small = SmallCNN()
    small_result = bench_model(
        "SmallCNN (compare default), digits", small, digits_x, digits_y, args.repeats, hvp_full=True
    )

    def rebuilt(model: nn.Module) -> Callable[[], nn.Module]:
        def build() -> nn.Module:
            copy = type(model)()
            copy.load_state_dict(model.state_dict())
            return copy

        return build

    fashion64 = agreement("Fashion-MNIST CNN", rebuilt(fashion), fashion_x, fashion_y, False, args.repeats)
    small64 = agreement("SmallCNN", rebuilt(small), digits_x, digits_y, True, args.repeats)

    checks = []
    if BACKPACK_MISSING is None:
        r32 = fashion_result["med"]["ggn"] / fashion_result["med"]["backpack"]
        checks.append((f"ggn / BackPACK time, Fashion-MNIST CNN, float32 = {r32:.3f} < 1.0", r32 < 1.0))
        checks.append(
            (
                f"ggn / BackPACK time, Fashion-MNIST CNN, float64 = {fashion64['time_ratio']:.3f} < 1.0",
                fashion64["time_ratio"] < 1.0,
            )
        )
        checks.append(
            (
                f"max |ggn - BackPACK|, float64 = {fashion64['backpack']:.2g} <= 1e-10 (Fashion-MNIST CNN)",
                fashion64["backpack"] <= 1e-10,
            )
        )
        checks.append(
            (
                f"max |ggn - BackPACK|, float64 = {small64['backpack']:.2g} <= 1e-10 (SmallCNN)",
                small64["backpack"] <= 1e-10,
            )
        )
    checks.append((f"max |ggn - hvp|, float64 = {small64['hvp']:.2g} <= 1e-10 (SmallCNN)", small64["hvp"] <= 1e-10))
    for label, result in (("Fashion-MNIST CNN", fashion_result), ("SmallCNN", small_result)):
        for samples, per_call in HUTCHINSON[1:]:
            per = result["ratio"][f"hutchinson_{samples}_{per_call}"] / samples
            how = "default chunking" if per_call is None else f"{per_call} per call"
            checks.append(
                (f"Hutchinson {samples} probes ({how}): {per:.2f} gradients per probe <= 2 ({label})", per <= 2.0)
            )
    return checks


if __name__ == "__main__":
    main()
