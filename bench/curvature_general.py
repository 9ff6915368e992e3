"""Cost of ggn_diagonal on models beyond Sequential stacks, and the control variate's error, in one process.

CPU, 2 threads, float32, probe batches as in ``compare`` (128 rows; 16 sequences for the transformer):
  (i)   a GELU + BatchNorm CNN on the 8x8 digits (1,806 parameters, eval mode as ``compare``
        runs the reference): "hvp" exact_diagonal / ggn_diagonal (issue 16: >= 50x);
  (ii)  a small pre-norm transformer (embedding, causal single-head attention, LayerNorm, GELU
        MLP, residuals) on seeded random tokens: ggn_diagonal / one gradient;
  (iii) a ResNet block model with train-mode BatchNorm (rows coupled): ggn_diagonal / one gradient;
  (iv)  the control variate (exact diag(G) + Hutchinson on diag(H - G)) against plain Hutchinson
        on (i), relative error ||h_hat - h|| / ||h|| against the exact "hvp" diagonal, at equal
        numbers of HVPs (the same probes for both: they share the probe stream), medians over seeds,
        and at 64 probes at equal wall time (Hutchinson given as many probes as fit the CV's time);
  (v), (vi) the project's own ``resnet_block`` and ``transformer`` (arturo_diag.training.models,
        where present): ggn_diagonal / one gradient.
``bench/curvature.py`` runs all of these after its own measurements (``--part general``: these only).
Times are medians over interleaved repeats, each the second of two back-to-back calls (as in
bench/curvature.py); "hvp" (seconds per call) is timed once per repeat after one warm-up call.

    python bench/curvature_general.py [--repeats 5] [--threads 2] [--seeds 5]

On a machine whose cores other jobs hold, 2 threads measured up to 100x slower small operations
(OpenMP threads waiting for each other); ``--threads 1`` then gives the steadier ratios.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from arturo_diag.curvature import (
    exact_diagonal,
    ggn_diagonal,
    hessian_diagonal_cv,
    hutchinson_diagonal,
)
from arturo_diag.training.datasets import load_digits, probe_batch

LOSS = nn.CrossEntropyLoss()


def gelu_bn_cnn(classes: int = 10) -> nn.Sequential:
    """Conv 1->8, BN, GELU, max-pool, conv 8->20, BN, GELU, global average pool, linear 20->10."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.GELU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 20, 3, padding=1), nn.BatchNorm2d(20), nn.GELU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(20, classes),
    )  # fmt: skip


class Transformer(nn.Module):
    """One pre-norm block: token embedding + learned positions, causal single-head attention and a
    GELU MLP, each with a residual, final LayerNorm, head; logits as (N, V, T)."""

    def __init__(self, vocab: int = 16, dim: int = 16, length: int = 16, hidden: int = 32):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.position = nn.Parameter(0.1 * torch.randn(length, dim))
        self.norm1, self.norm2, self.norm_out = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.head = nn.Linear(dim, vocab)
        self.register_buffer("mask", torch.ones(length, length).tril().bool())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        t = tokens.shape[1]
        h = self.embed(tokens) + self.position[:t]
        q, k, v = self.qkv(self.norm1(h)).chunk(3, dim=-1)
        scores = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).masked_fill(~self.mask[:t, :t], float("-inf"))
        h = h + self.proj(torch.softmax(scores, dim=-1) @ v)
        h = h + self.fc2(F.gelu(self.fc1(self.norm2(h))))
        return self.head(self.norm_out(h)).transpose(1, 2)


class ResNetBlockModel(nn.Module):
    """Conv stem 1->8 + BN + ReLU, one basic block (two conv3x3 + BN, identity shortcut), global
    average pool, linear 8->10."""

    def __init__(self, width: int = 8, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(h)))))
        return self.head(torch.relu(out + h).mean((2, 3)))


class Times(dict):
    """name -> median seconds; ``.least``: name -> minimum seconds (on a shared, overloaded
    machine the minima are the less disturbed figure, both are printed)."""

    least: dict[str, float]


def median_times(tasks: dict[str, Callable[[], object]], repeats: int, warm: bool = True) -> Times:
    """Median (and minimum) seconds per task, interleaved within each repeat; ``warm``: time the
    second of two back-to-back calls, else one call (after one warm-up call before the first
    repeat)."""
    times: dict[str, list[float]] = {name: [] for name in tasks}
    if not warm:
        for task in tasks.values():
            task()
    for _ in range(repeats):
        for name, task in tasks.items():
            if warm:
                task()
            start = time.perf_counter()
            task()
            times[name].append(time.perf_counter() - start)
    out = Times({name: statistics.median(values) for name, values in times.items()})
    out.least = {name: min(values) for name, values in times.items()}
    return out


def gradient_task(model: nn.Module, x, y, train: bool = False) -> Callable[[], None]:
    def run() -> None:
        model.train(train)
        model.zero_grad(set_to_none=True)
        LOSS(model(x), y).backward()
        model.eval()

    return run


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def relative_error(estimate, truth: torch.Tensor) -> float:
    return float((estimate.flatten() - truth).norm() / truth.norm())


def gelu_cnn_section(repeats: int, checks: list[tuple[str, bool]]):
    """(i): the GELU + BN CNN on the digits, eval mode: hvp / ggn_diagonal. Returns (cnn, x, y, exact float64 h)."""
    digits = load_digits(seed=0)
    x, y = probe_batch(digits, 128, seed=0)
    torch.manual_seed(0)
    cnn = gelu_bn_cnn().eval()
    print(f"\n== (i) GELU+BatchNorm CNN, {count(cnn):,} parameters, digits probe batch {x.shape[0]}, eval mode")
    result = ggn_diagonal(cnn, LOSS, x, y)
    print(f"  ggn_diagonal: mode {result.mode}, coupled {result.coupled}, is_hessian {result.is_hessian}")
    fast = median_times({"gradient": gradient_task(cnn, x, y), "ggn": lambda: ggn_diagonal(cnn, LOSS, x, y)}, repeats)
    slow = median_times(
        {"ggn": lambda: ggn_diagonal(cnn, LOSS, x, y), "hvp": lambda: exact_diagonal(cnn, LOSS, x, y, "hvp")},
        max(3, repeats // 2),
        warm=False,
    )
    speedup = slow["hvp"] / slow["ggn"]
    speedup_min = slow.least["hvp"] / slow.least["ggn"]
    print("  (medians; minima in brackets)")
    print(f"  one gradient                {fast['gradient'] * 1e3:9.2f} ms  [{fast.least['gradient'] * 1e3:.2f} ms]")
    print(
        f"  ggn_diagonal                {fast['ggn'] * 1e3:9.2f} ms = {fast['ggn'] / fast['gradient']:8.1f} gradients"
        f"  [{fast.least['ggn'] / fast.least['gradient']:.1f}]"
    )
    print(
        f"  hvp exact_diagonal          {slow['hvp']:9.2f} s  [{slow.least['hvp']:.2f} s] "
        f"({slow['ggn'] * 1e3:.1f} ms ggn beside it)"
    )
    print(f"  hvp / ggn_diagonal          {speedup:9.1f}x  [{speedup_min:.1f}x]")
    checks.append(
        (f"hvp / ggn_diagonal on the GELU+BN CNN = {speedup:.1f}x (minima {speedup_min:.1f}x) >= 50x", speedup >= 50)
    )
    cnn64 = gelu_bn_cnn().double()
    cnn64.load_state_dict(cnn.state_dict())
    cnn64.eval()
    hvp64 = exact_diagonal(cnn64, LOSS, x.double(), y, "hvp").flatten()
    ggn64 = ggn_diagonal(cnn64, LOSS, x.double(), y).flatten()
    print(
        f"  float64: ||diag G - diag H|| / ||diag H|| = {float((ggn64 - hvp64).norm() / hvp64.norm()):.3f} "
        "(GELU: the GGN is not the Hessian)"
    )
    return cnn, x, y, hvp64


def ggn_cost_section(label: str, model: nn.Module, x, y, train: bool, repeats: int) -> float:
    """ggn_diagonal / one gradient on ``model`` (``train``: BatchNorm on batch statistics). Returns the ratio."""
    print(f"\n== {label}")
    info = ggn_diagonal(model, LOSS, x, y, train=train)
    print(f"  ggn_diagonal: mode {info.mode}, coupled {info.coupled}, is_hessian {info.is_hessian}")
    med = median_times(
        {"gradient": gradient_task(model, x, y, train),
         "ggn": lambda: ggn_diagonal(model, LOSS, x, y, train=train)},
        repeats,
    )  # fmt: skip
    print(f"  one gradient                {med['gradient'] * 1e3:9.2f} ms  [{med.least['gradient'] * 1e3:.2f} ms]")
    ratio = med["ggn"] / med["gradient"]
    print(
        f"  ggn_diagonal                {med['ggn'] * 1e3:9.2f} ms = {ratio:8.1f} gradients"
        f"  [{med.least['ggn'] / med.least['gradient']:.1f}]"
    )
    return ratio


def bench_models_section(repeats: int) -> None:
    """(ii) and (iii) on the bench's own small transformer and ResNet block model."""
    digits = load_digits(seed=0)
    x, y = probe_batch(digits, 128, seed=0)
    torch.manual_seed(0)
    transformer = Transformer().eval()
    g = torch.Generator().manual_seed(0)
    seq = torch.randint(0, 16, (16, 17), generator=g)
    torch.manual_seed(0)
    resnet = ResNetBlockModel().eval()
    ggn_cost_section(
        f"(ii) transformer (bench's), {count(transformer):,} parameters, 16 sequences x 16 tokens, vocab 16",
        transformer, seq[:, :-1], seq[:, 1:], False, repeats,
    )  # fmt: skip
    ggn_cost_section(
        f"(iii) ResNet block model (bench's), {count(resnet):,} parameters, digits probe batch 128, train-mode BN",
        resnet, x, y, True, repeats,
    )  # fmt: skip


def variance_section(cnn: nn.Module, x, y, truth: torch.Tensor, seeds: int, checks: list[tuple[str, bool]]) -> dict:
    """(iv): the control variate against plain Hutchinson on (i), at equal HVP count (the same probes)
    and, at 64 probes, at equal wall time (Hutchinson given the CV's time in probes, measured)."""
    print(f"\n== (iv) control variate vs plain Hutchinson, GELU+BN CNN (i), float32, medians over {seeds} seeds")
    truth = truth.float()
    print("  probes  rel.err CV  rel.err Hutchinson  error ratio  variance ratio  time CV / Hutchinson")
    out = {}
    for samples in (16, 64, 256):
        cv_err, h_err, cv_t, h_t = [], [], [], []
        for seed in range(seeds):
            start = time.perf_counter()
            cv, _ = hessian_diagonal_cv(cnn, LOSS, x, y, samples, torch.Generator().manual_seed(seed))
            cv_t.append(time.perf_counter() - start)
            start = time.perf_counter()
            plain, _ = hutchinson_diagonal(cnn, LOSS, x, y, samples, torch.Generator().manual_seed(seed))
            h_t.append(time.perf_counter() - start)
            cv_err.append(relative_error(cv, truth))
            h_err.append(relative_error(plain, truth))
        e_cv, e_h = statistics.median(cv_err), statistics.median(h_err)
        t_ratio = statistics.median(cv_t) / statistics.median(h_t)
        out[samples] = {"cv": e_cv, "hutchinson": e_h, "time_ratio": t_ratio}
        print(
            f"  {samples:6d}  {e_cv:10.3f}  {e_h:18.3f}  {e_h / e_cv:11.2f}x  {(e_h / e_cv) ** 2:13.1f}x  {t_ratio:12.2f}"
        )
        if samples == 64:
            checks.append((f"CV error below Hutchinson's at 64 probes ({e_cv:.3f} < {e_h:.3f})", e_cv < e_h))
            equal = max(2, round(samples * t_ratio))  # Hutchinson's probes in the CV's wall time
            errors = [
                relative_error(
                    hutchinson_diagonal(cnn, LOSS, x, y, equal, torch.Generator().manual_seed(seed))[0], truth
                )
                for seed in range(seeds)
            ]
            out["equal_time"] = {"probes": equal, "hutchinson": statistics.median(errors)}
            print(
                f"          (equal wall time instead: Hutchinson with {equal} probes, measured error "
                f"{statistics.median(errors):.3f}, against the CV's {e_cv:.3f} with 64)"
            )
    return out


def project_models_section(repeats: int) -> None:
    """ggn_diagonal / one gradient on the project's ``transformer`` and ``resnet_block`` models
    (arturo_diag.training.models), where that module has them."""
    from arturo_diag.training import models

    digits = load_digits(seed=0)
    x, y = probe_batch(digits, 128, seed=0)
    if hasattr(models, "ResNetBlockNet"):
        torch.manual_seed(0)
        resnet = models.ResNetBlockNet(in_channels=1, num_classes=10).eval()
        ggn_cost_section(
            f"(v) resnet_block (arturo_diag.training.models), {count(resnet):,} parameters, digits probe batch "
            "128, train-mode BN",
            resnet, x, y, True, repeats,
        )  # fmt: skip
    else:
        print("\n== (v) resnet_block: not in arturo_diag.training.models here; skipped")
    if hasattr(models, "CharTransformer"):
        torch.manual_seed(0)
        vocab, context = 30, 32
        transformer = models.CharTransformer(vocab=vocab, context=context).eval()
        g = torch.Generator().manual_seed(0)
        tokens = torch.randint(0, vocab, (128, context), generator=g)
        targets = torch.randint(0, vocab, (128,), generator=g)
        ggn_cost_section(
            f"(vi) transformer (arturo_diag.training.models), {count(transformer):,} parameters, 128 sequences x "
            f"{context} tokens, vocab {vocab}",
            transformer, tokens, targets, False, repeats,
        )  # fmt: skip
    else:
        print("\n== (vi) transformer: not in arturo_diag.training.models here; skipped")


def run_general(repeats: int, seeds: int) -> list[tuple[str, bool]]:
    """Every section above, in order; returns the (target, passed) checks."""
    checks: list[tuple[str, bool]] = []
    cnn, x, y, truth = gelu_cnn_section(repeats, checks)
    bench_models_section(repeats)
    project_models_section(repeats)
    variance_section(cnn, x, y, truth, seeds, checks)
    return checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; "
        f"load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    checks = run_general(args.repeats, args.seeds)
    print("\n== targets")
    for label, ok in checks:
        print(f"  [{'PASS' if ok else 'FAIL'}] {label}")
    print(f"load average at end {os.getloadavg()[0]:.1f} (other processes share the CPUs)")


if __name__ == "__main__":
    main()
