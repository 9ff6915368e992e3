"""Cost of the instruments of issue 12 (gradient noise, Hessian spectrum), in gradients, in one
process.

The compare default: SmallCNN (3,658 parameters) on the 8x8 digits, a probe batch of 128, float32,
CPU. Every cost is (median time of the task) / (median time of one gradient: forward + backward of
the mean cross-entropy on the same batch), the tasks interleaved within each repeat so that a busy
machine slows them alike, each timed on the second of two back-to-back calls (as
bench/curvature.py). The machine's load average is printed at the start and the end.

Targets (issue 12, item 5): per-sample gradients of the probe batch <= 3 gradients; one Lanczos
HVP <= 2 gradients. Both wall-clock and CPU-time ratios are printed (the machine is shared;
see :func:`median_times`). The Lanczos HVP is :meth:`HessianOperator.matvec` on a built operator (the
gradient graph is built once per Lanczos run: its cost is printed separately, and amortised in the
end-to-end eigsh line).

Then (issue 12's target: the default instrument set <= 25 % of `compare`'s wall time) the default
compare job in this process: ``arturo-diag compare --out TMP`` through the typer application itself
(:data:`cli.app.app`, as a user runs it: RunConfig's defaults, option parsing, run lock, training
with snapshots, report rendering), alternately with the default instruments (``RunConfig().
instruments``, read at run time, never hard-coded here) and with ``--instruments none``, over
``--compare-repeats`` rounds (the order swapped every round; one short untimed warm-up run first,
so that no round pays the first imports). Per round and as medians it prints

* (a) share as measured inside the run = sum over instruments of record.json's ``instruments``
  seconds / the whole compare command's wall time of that run (and per instrument);
* (b) share by difference = (median wall with - median wall without) / median wall with;
* (c) and (c') the same two, (a) and (b), with the training loop's own record.json ``"seconds"``
  (training + snapshots; without imports, run setup and report rendering) as the denominator
  (and, for (c'), the loop seconds as the minuend and subtrahend) instead of the whole command.

The target line judges (a). ``--no-compare`` skips this part (2 x ``--compare-repeats`` + 1
compare runs, about 10 s each on 2 idle cores).

    python bench/instruments.py [--repeats 15] [--threads 2] [--compare-repeats 3] [--no-compare]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.func import grad, vjp, vmap

from arturo_diag.curvature import exact_diagonal, loss_of_parameters
from arturo_diag.curvature.hvp import batched_hvp
from arturo_diag.curvature.noise import _SampleLoss, gradient_noise
from arturo_diag.curvature.spectrum import (
    diagonal_share,
    hessian_operator,
    hessian_trace,
    hutchpp_trace,
    spectral_density,
    top_eigenvalues,
)
from arturo_diag.training.config import RunConfig
from arturo_diag.training.datasets import load_digits, probe_batch
from arturo_diag.training.models import build_model

PROBE = 128
LOSS = nn.CrossEntropyLoss()
SHARE_TARGET = 0.25  # issue 12: the default instruments' share of compare's wall time


def median_times(tasks: dict[str, Callable[[], object]], repeats: int) -> tuple[dict[str, float], dict[str, float]]:
    """Median wall-clock and median CPU seconds (``time.process_time``: this process's threads)
    per task over ``repeats`` interleaved rounds, the second of two calls each. On a shared,
    overloaded machine the CPU time is the one other processes barely disturb (waiting for a core
    is not counted); with 1 thread it is the work itself."""
    wall: dict[str, list[float]] = {name: [] for name in tasks}
    cpu: dict[str, list[float]] = {name: [] for name in tasks}
    for _ in range(repeats):
        for name, task in tasks.items():
            task()
            start, start_cpu = time.perf_counter(), time.process_time()
            task()
            cpu[name].append(time.process_time() - start_cpu)
            wall[name].append(time.perf_counter() - start)
    return (
        {name: statistics.median(values) for name, values in wall.items()},
        {name: statistics.median(values) for name, values in cpu.items()},
    )


def compare_once(out: str, *options: str) -> tuple[float, dict]:
    """``arturo-diag compare --out OUT *options`` in this process, through the typer application
    (output captured, not printed): (wall seconds of the whole command, its record.json)."""
    from typer.testing import CliRunner

    from cli.app import app

    start = time.perf_counter()
    outcome = CliRunner().invoke(app, ["compare", "--out", out, *options])
    wall = time.perf_counter() - start
    if outcome.exit_code != 0:
        raise RuntimeError(
            f"arturo-diag compare {' '.join(options)} exited {outcome.exit_code}:\n{outcome.output}"
        ) from (outcome.exception)
    return wall, json.loads((Path(out) / "record.json").read_text())


def compare_share(repeats: int) -> float:
    """The default instruments' share of the default compare run, printed per round and as medians
    (module docstring, (a)-(c)); returns (a)'s median."""
    names = tuple(RunConfig().instruments)
    print(
        f"\n== share of the default instruments ({','.join(names) or 'none'}) in `arturo-diag compare` "
        f"(defaults, report included; in this process, {torch.get_num_threads()} threads; "
        f"{repeats} rounds, with/without interleaved)"
    )
    wall: dict[str, list[float]] = {"with": [], "without": []}
    loop: dict[str, list[float]] = {"with": [], "without": []}
    inside, inside_loop = [], []
    per: dict[str, list[float]] = {name: [] for name in names}
    options = {"with": (), "without": ("--instruments", "none")}
    with tempfile.TemporaryDirectory(prefix="bench-instruments-") as tmp:
        compare_once(os.path.join(tmp, "warmup"), "--steps", "10")  # imports (report, instruments); untimed
        for round_ in range(1, repeats + 1):
            order = ("with", "without") if round_ % 2 else ("without", "with")
            load = os.getloadavg()[0]
            for kind in order:
                seconds, record = compare_once(os.path.join(tmp, f"{kind}{round_}"), *options[kind])
                wall[kind].append(seconds)
                loop[kind].append(float(record["seconds"]))
                if kind == "with":
                    spent = {name: float(record.get("instruments", {}).get(name, 0.0)) for name in names}
                    for name in names:
                        per[name].append(spent[name] / seconds)
                    inside.append(sum(spent.values()) / seconds)
                    inside_loop.append(sum(spent.values()) / float(record["seconds"]))
            by_name = ", ".join(f"{name} {100 * per[name][-1]:.1f} %" for name in names)
            print(
                f"  round {round_} ({' then '.join(order)}; load average {load:.1f} before, {os.getloadavg()[0]:.1f} "
                f"after): wall {wall['with'][-1]:.1f} s with / {wall['without'][-1]:.1f} s without; training loop "
                f"{loop['with'][-1]:.1f} s / {loop['without'][-1]:.1f} s; (a) {100 * inside[-1]:.1f} % ({by_name}); "
                f"(c) {100 * inside_loop[-1]:.1f} %; (b) "
                f"{100 * (wall['with'][-1] - wall['without'][-1]) / wall['with'][-1]:.1f} %; (c') "
                f"{100 * (loop['with'][-1] - loop['without'][-1]) / loop['with'][-1]:.1f} %",
                flush=True,
            )
    med = {kind: statistics.median(values) for kind, values in wall.items()}
    med_loop = {kind: statistics.median(values) for kind, values in loop.items()}
    share = statistics.median(inside)
    print(f"  medians over {repeats} rounds:")
    print(
        f"    whole compare command wall time: {med['with']:.1f} s with the instruments, {med['without']:.1f} s "
        f'with --instruments none; training loop (record.json "seconds"): {med_loop["with"]:.1f} s, '
        f"{med_loop['without']:.1f} s"
    )
    print(
        f'    (a)  instruments\' own seconds (record.json "instruments", summed) / whole compare wall time '
        f"= {100 * share:.1f} %"
    )
    for name in names:
        print(f"           {name:10s} seconds / whole compare wall time = {100 * statistics.median(per[name]):.1f} %")
    print(
        f"    (b)  (wall with - wall without) / wall with (whole command, medians) "
        f"= {100 * (med['with'] - med['without']) / med['with']:.1f} %"
    )
    print(
        f"    (c)  instruments' own seconds (summed) / training loop's \"seconds\" "
        f"= {100 * statistics.median(inside_loop):.1f} %"
    )
    print(
        f"    (c') (loop seconds with - loop seconds without) / loop seconds with (medians) "
        f"= {100 * (med_loop['with'] - med_loop['without']) / med_loop['with']:.1f} %"
    )
    return share


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compare-repeats", type=int, default=3, help="rounds of the compare share (with/without)")
    parser.add_argument("--no-compare", action="store_true", help="skip the (slow) share in compare")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; "
        f"load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    digits = load_digits(seed=0)
    x, y = probe_batch(digits, PROBE, seed=0)
    torch.manual_seed(0)
    model = build_model("small_cnn", in_channels=1, num_classes=10, image_size=8).eval()
    total = sum(p.numel() for p in model.parameters())
    print(f"small_cnn: {total:,} parameters, probe batch {PROBE} of digits, float32")

    _, params, loss = loss_of_parameters(model, LOSS, x, y)
    vector = torch.randn(total, generator=torch.Generator().manual_seed(1))
    tangents = tuple(part.view_as(p) for part, p in zip(vector.split([p.numel() for p in params]), params))
    op = hessian_operator(model, LOSS, x, y)
    _, pullback = vjp(grad(loss), params)
    single = batched_hvp(loss, params, True)
    eight = tuple(torch.stack([t] * 8) for t in tangents)
    per_sample = vmap(grad(_SampleLoss(loss)), in_dims=(None, 0, 0))

    def gradient() -> None:
        model.zero_grad(set_to_none=True)
        LOSS(model(x), y).backward()

    tasks: dict[str, Callable[[], object]] = {
        "gradient": gradient,
        "noise": lambda: gradient_noise(model, LOSS, x, y),
        "per_sample_vmap": lambda: per_sample(params, loss.inputs, loss.targets),
        "hvp_operator": lambda: op.matvec(vector),
        "hvp_func_pullback": lambda: pullback(tangents),
        "hvp_batched_1": lambda: single(tuple(t.unsqueeze(0) for t in tangents)),
        "hvp_batched_8": lambda: single(eight),
        "operator_build": lambda: hessian_operator(model, LOSS, x, y),
    }
    med, cpu = median_times(tasks, args.repeats)
    unit = med["gradient"]
    ratio = {name: t / unit for name, t in med.items()}
    low = {name: t / cpu["gradient"] for name, t in cpu.items()}
    print(
        f"\n(unit: one gradient = {unit * 1e3:.2f} ms wall, {cpu['gradient'] * 1e3:.2f} ms CPU; ratios of "
        f"median wall times over {args.repeats} interleaved repeats, of median CPU times in brackets)"
    )
    rows = (
        ("gradient_noise (per-sample gradients + statistics)", "noise", 1),
        ("per-sample gradients alone (vmap of grad)", "per_sample_vmap", 1),
        ("one Lanczos HVP (HessianOperator.matvec: shared graph, double backward)", "hvp_operator", 1),
        ("one HVP, torch.func vjp-of-grad pullback, shared graph", "hvp_func_pullback", 1),
        ("one HVP, batched_hvp with 1 vector (graph rebuilt)", "hvp_batched_1", 1),
        ("batched_hvp, 8 vectors vmap-ed, per vector", "hvp_batched_8", 8),
        ("building the operator (once per Lanczos run)", "operator_build", 1),
    )
    for label, name, per in rows:
        print(f"  {label:74s} {ratio[name] / per:6.2f} [{low[name] / per:5.2f}] gradients")

    # end to end, once each (the HVP counts are the instruments' own)
    def timed(fn):
        start = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - start

    top, t_top = timed(lambda: top_eigenvalues(model, LOSS, x, y, k=3))
    bottom, t_low = timed(lambda: top_eigenvalues(model, LOSS, x, y, k=1, which="SA"))
    slq, t_slq = timed(lambda: spectral_density(model, LOSS, x, y, generator=torch.Generator().manual_seed(0)))
    trace, t_trace = timed(lambda: hessian_trace(model, LOSS, x, y, 32, torch.Generator().manual_seed(0)))
    plusplus, t_pp = timed(lambda: hutchpp_trace(model, LOSS, x, y, 96, torch.Generator().manual_seed(0)))
    diagonal = exact_diagonal(model, LOSS, x, y)
    share, t_share = timed(lambda: diagonal_share(model, LOSS, x, y, diagonal, 64, torch.Generator().manual_seed(0)))
    noise, t_noise = timed(lambda: gradient_noise(model, LOSS, x, y))
    print("\nend to end (one call each, float32; the untrained model):")
    overall = noise.summary["overall"]
    print(
        f"  gradient noise: median minibatch-gradient variance {float(overall['minibatch_variance_median']):.3g}, "
        f"Cockpit mean GSNR {noise.mean_gsnr:.3g}, {t_noise:.3f} s"
    )
    print(
        f"  top-3 eigenvalues {', '.join(f'{v:.4g}' for v in top.values)}: {top.hvps} HVPs, "
        f"{t_top:.2f} s = {t_top / unit / max(1, top.hvps):.2f} gradients per HVP"
    )
    print(
        f"  most negative eigenvalue {bottom.values[0]:.4g}: {bottom.hvps} HVPs, {t_low:.2f} s "
        f"(converged: {top.converged and bottom.converged})"
    )
    print(
        f"  SLQ density (64 steps x 4 probes): {slq.hvps} HVPs, {t_slq:.2f} s = "
        f"{t_slq / unit / slq.hvps:.2f} gradients per HVP"
    )
    print(
        f"  Hutchinson trace, 32 probes: {trace.value:.4g} +- {trace.stderr:.2g}, {t_trace:.2f} s = "
        f"{t_trace / unit / 32:.2f} gradients per probe"
    )
    print(f"  Hutch++ trace, 96 products: {plusplus.value:.4g} +- {plusplus.stderr:.2g}, {t_pp:.2f} s")
    print(
        f"  diagonal share ||diag H|| / ||H||_F, 64 probes: {share.share:.3f} +- {share.stderr:.3f} "
        f"(||H||_F {share.frobenius:.3g}), {t_share:.2f} s"
    )

    share = None if args.no_compare else compare_share(args.compare_repeats)

    print("\n== targets")
    for label, name, target in (
        ("per-sample gradients of the probe batch (vmap of grad) / one gradient", "per_sample_vmap", 3.0),
        ("one Lanczos HVP / one gradient", "hvp_operator", 2.0),
    ):
        value = ratio[name]
        print(
            f"  [{'PASS' if value <= target else 'FAIL'}] {label} = {value:.2f} <= {target:g} "
            f"(CPU-time ratio {low[name]:.2f})"
        )
    print(
        f"  [info] the noise instrument whole (per-sample gradients + per-layer statistics) / one gradient = "
        f"{ratio['noise']:.2f} (CPU-time ratio {low['noise']:.2f})"
    )
    if share is None:
        print(
            f"  [skipped] default instruments' share of compare's wall time (--no-compare); target <= {100 * SHARE_TARGET:.0f} %"
        )
    else:
        print(
            f"  [{'PASS' if share <= SHARE_TARGET else 'FAIL'}] (a) default instruments' own seconds / whole compare "
            f"wall time = {100 * share:.1f} % <= {100 * SHARE_TARGET:.0f} % (issue 12)"
        )
    print(f"load average at end {os.getloadavg()[0]:.1f} (other processes share the CPUs)")


if __name__ == "__main__":
    main()
