"""Speed and memory of one arTuRO step against torch.optim.Adam(foreach=True), in one process.

On the paper's Fashion-MNIST CNN (390,410 parameters), float32, CPU, 2 threads, two settings:

- synthetic: gradients are a few fixed random tensors, assigned to ``.grad`` before each step (the
  step's arithmetic does not depend on where they come from; their memory is warm);
- in a training loop: forward, backward (fresh gradients each step, ``zero_grad(set_to_none=True)``
  as torch's default), step, on a synthetic batch of 255 images (the paper's batch size). Only the
  step is timed, but it runs on gradients that backward has just written, as in a real run.

Each optimizer is timed over interleaved rounds (one step of each per round, so a load change hits
all alike); the printed numbers are ratios of medians measured side by side, with the machine's
load average before and after (the ratios are only comparable on an otherwise idle machine).

Targets (issues 3 and 10): faithful step <= 2.5x Adam's time synthetic, <= 1.5x in the training
loop; optimizer state <= 3.5x Adam's bytes.

    python bench/optimizer_step.py [--repeats 200] [--loop-repeats 100]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from arturo_diag.optim import Arturo
from arturo_diag.training.models import FashionCNN

VARIANTS = {
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-3, foreach=True),
    "arturo": lambda ps: Arturo.from_preset("fmnist_cnn", ps),
    "arturo_exact": lambda ps: Arturo.from_preset("fmnist_cnn", ps, dual="exact"),
}


def state_bytes(optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> int:
    """Bytes of tensors in the optimizer state; storage shared with a parameter or counted already
    (e.g. arTuRO's mean, which is the weight itself) is counted once, and parameters not at all."""
    seen = {p.untyped_storage().data_ptr() for p in params}
    total = 0
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                ptr = value.untyped_storage().data_ptr()
                if ptr in seen:
                    continue
                seen.add(ptr)
                total += value.untyped_storage().nbytes()
    return total


def build() -> tuple[dict[str, FashionCNN], dict[str, torch.optim.Optimizer]]:
    models, optimizers = {}, {}
    for name, make in VARIANTS.items():
        torch.manual_seed(0)
        models[name] = FashionCNN()
        optimizers[name] = make(list(models[name].parameters()))
    return models, optimizers


def synthetic(repeats: int) -> tuple[dict[str, float], list[int], dict[str, int], int]:
    """Median step seconds with fixed random gradients; bisection iterations; state bytes."""
    models, optimizers = build()
    params = {name: list(m.parameters()) for name, m in models.items()}
    generator = torch.Generator().manual_seed(1)
    grad_sets = [[torch.randn(p.shape, generator=generator) * 1e-2 for p in params["adam"]] for _ in range(4)]

    def one_step(name: str, i: int) -> float:
        for p, g in zip(params[name], grad_sets[i % len(grad_sets)]):
            p.grad = g
        start = time.perf_counter()
        optimizers[name].step()
        return time.perf_counter() - start

    for name in VARIANTS:  # warm-up; also takes arTuRO past its first (wide-bracket) step
        for i in range(10):
            one_step(name, i)
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    iterations: list[int] = []
    for i in range(repeats):
        for name in VARIANTS:
            times[name].append(one_step(name, i))
        iterations.append(optimizers["arturo"].last_step["iterations"])
    nbytes = {name: state_bytes(optimizers[name], params[name]) for name in VARIANTS}
    return (
        {name: statistics.median(t) for name, t in times.items()},
        iterations,
        nbytes,
        sum(p.numel() for p in params["adam"]),
    )


def in_loop(repeats: int, batch_size: int) -> tuple[dict[str, float], dict[str, float], list[int]]:
    """Median step seconds (and whole-iteration seconds) inside a training loop."""
    models, optimizers = build()
    generator = torch.Generator().manual_seed(2)
    batches = [
        (
            torch.rand(batch_size, 1, 28, 28, generator=generator),
            torch.randint(0, 10, (batch_size,), generator=generator),
        )
        for _ in range(4)
    ]
    loss_fn = torch.nn.CrossEntropyLoss()

    def one_iteration(name: str, i: int) -> tuple[float, float]:
        x, y = batches[i % len(batches)]
        begin = time.perf_counter()
        optimizers[name].zero_grad(set_to_none=True)
        loss_fn(models[name](x), y).backward()
        start = time.perf_counter()
        optimizers[name].step()
        end = time.perf_counter()
        return end - start, end - begin

    for name in VARIANTS:
        for i in range(5):
            one_iteration(name, i)
    steps: dict[str, list[float]] = {name: [] for name in VARIANTS}
    whole: dict[str, list[float]] = {name: [] for name in VARIANTS}
    iterations: list[int] = []
    for i in range(repeats):
        for name in VARIANTS:
            step, total = one_iteration(name, i)
            steps[name].append(step)
            whole[name].append(total)
        iterations.append(optimizers["arturo"].last_step["iterations"])
    if optimizers["arturo"].last_step["path"] != "fused":
        print(f"note: arTuRO ran its {optimizers['arturo'].last_step['path']} path (numba missing?)")
    return (
        {n: statistics.median(t) for n, t in steps.items()},
        {n: statistics.median(t) for n, t in whole.items()},
        iterations,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200, help="interleaved rounds, synthetic gradients")
    parser.add_argument("--loop-repeats", type=int, default=100, help="interleaved rounds, training loop")
    parser.add_argument("--batch-size", type=int, default=255)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    load_before = os.getloadavg()
    median, iterations, nbytes, n = synthetic(args.repeats)
    loop_median, loop_whole, loop_iterations = in_loop(args.loop_repeats, args.batch_size)
    load_after = os.getloadavg()

    print(
        f"Fashion-MNIST CNN: {n:,} parameters, float32, {args.threads} threads on {os.cpu_count()} CPUs; "
        f"load average (1, 5, 15 min) before {', '.join(f'{v:.2f}' for v in load_before)}, "
        f"after {', '.join(f'{v:.2f}' for v in load_after)}"
    )
    print(
        f"synthetic: {args.repeats} interleaved rounds; training loop: {args.loop_repeats} rounds of batch "
        f"{args.batch_size}"
    )
    print(
        f"arTuRO bisection iterations per step: synthetic median {statistics.median(iterations)}, max "
        f"{max(iterations)}; training loop median {statistics.median(loop_iterations)}, max {max(loop_iterations)}"
    )
    print(f"{'':>13}  {'synthetic step':>15}  {'in-loop step':>13}  {'in-loop iteration':>18}  state bytes")
    print(
        f"{'adam':>13}  {median['adam'] * 1e3:>12.2f} ms  {loop_median['adam'] * 1e3:>10.2f} ms  "
        f"{loop_whole['adam'] * 1e3:>15.2f} ms  {nbytes['adam'] / n:.1f} B/param"
    )
    for name in ("arturo", "arturo_exact"):
        print(
            f"{name:>13}  {median[name] / median['adam']:>14.2f}x  {loop_median[name] / loop_median['adam']:>12.2f}x  "
            f"{loop_whole[name] / loop_whole['adam']:>17.2f}x  {nbytes[name] / nbytes['adam']:.2f}x "
            f"({nbytes[name] / n:.1f} B/param)"
        )
    print(
        "ratios to Adam's medians; targets: faithful step <= 2.5x synthetic, <= 1.5x in the training loop; "
        "state <= 3.5x"
    )


if __name__ == "__main__":
    main()
