"""Speed and memory of one arTuRO step against torch.optim.Adam(foreach=True), in one process.

On the paper's Fashion-MNIST CNN (390,410 parameters), float32, CPU, 2 threads. Gradients are
fixed random tensors (the step's cost does not depend on where they come from). Each optimizer is
timed over interleaved rounds; the printed numbers are ratios of medians measured side by side.

Targets (issue 3): faithful step <= 2.5x Adam's time; optimizer state <= 3.5x Adam's bytes.

    python bench/optimizer_step.py [--repeats 200]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from arturo_diag.optim import Arturo
from arturo_diag.training.models import FashionCNN


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    variants = {
        "adam": lambda ps: torch.optim.Adam(ps, lr=1e-3, foreach=True),
        "arturo": lambda ps: Arturo.from_preset("fmnist_cnn", ps),
        "arturo_exact": lambda ps: Arturo.from_preset("fmnist_cnn", ps, dual="exact"),
    }
    models, optimizers = {}, {}
    for name, build in variants.items():
        torch.manual_seed(0)
        model = FashionCNN()
        params = list(model.parameters())
        models[name] = params
        optimizers[name] = build(params)
    n = sum(p.numel() for p in models["adam"])
    generator = torch.Generator().manual_seed(1)
    grad_sets = [[torch.randn(p.shape, generator=generator) * 1e-2 for p in models["adam"]] for _ in range(4)]

    def one_step(name: str, i: int) -> float:
        for p, g in zip(models[name], grad_sets[i % len(grad_sets)]):
            p.grad = g
        start = time.perf_counter()
        optimizers[name].step()
        return time.perf_counter() - start

    for name in variants:  # warm-up; also takes arTuRO past its first (wide-bracket) step
        for i in range(10):
            one_step(name, i)
    times: dict[str, list[float]] = {name: [] for name in variants}
    iterations: list[int] = []
    for i in range(args.repeats):
        for name in variants:
            times[name].append(one_step(name, i))
        iterations.append(optimizers["arturo"].last_step["iterations"])

    median = {name: statistics.median(t) for name, t in times.items()}
    adam_bytes = state_bytes(optimizers["adam"], models["adam"])
    print(f"Fashion-MNIST CNN: {n:,} parameters, float32, {args.threads} threads, {args.repeats} interleaved rounds")
    print(f"arTuRO bisection iterations per step: median {statistics.median(iterations)}, "
          f"max {max(iterations)} (random gradients, not a training run)")
    for name in ("arturo", "arturo_exact"):
        b = state_bytes(optimizers[name], models[name])
        print(f"{name:>13}: step time / Adam = {median[name] / median['adam']:.2f}x   "
              f"state bytes / Adam = {b / adam_bytes:.2f}x ({b / n:.1f} B/param vs {adam_bytes / n:.1f})")
    print("targets: faithful step <= 2.5x Adam; state <= 3.5x Adam")


if __name__ == "__main__":
    main()
