"""Choose the baselines of the built-in digits setup by a small grid on a VALIDATION split.

The paper publishes no baselines for scikit-learn's 8x8 digits, so the SGD/Adam/AdamW values of
``experiments/baselines.toml``'s top-level tables come from this grid. Each seed's digits split is
the one a run with that seed uses (``load_dataset("digits", seed=s)``); of its TRAIN split a
seeded, stratified 20 % is held out as the validation split, the rest trains. The test split is
never read. Every cell trains with the default protocol of ``arturo-diag compare`` and the default
study (small CNN, 12 epochs of batch 64, lr x 0.1 at epochs 6 and 9; RunConfig's defaults)
through the project's own training loop, and is scored by its final validation accuracy (mean over
the seeds; ties: the lower mean validation loss).

    python experiments/tune_digits_baselines.py            # writes experiments/digits_baselines_grid.md

Sizes: 3 SGD and 4 Adam/AdamW learning rates x 2 seeds = 22 runs of ~220 steps, a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from arturo_diag.training.config import RunConfig  # noqa: E402
from arturo_diag.training.datasets import ArrayDataset, load_dataset  # noqa: E402
from arturo_diag.training.loop import run  # noqa: E402

#: the grid: optimizer -> (fixed fields, learning rates tried)
GRID = {
    "sgd": ({"momentum": 0.9, "weight_decay": 0.0}, (0.03, 0.1, 0.3)),
    "adam": ({"weight_decay": 0.0}, (1e-3, 3e-3, 1e-2, 3e-2)),
    "adamw": ({"weight_decay": 0.01}, (1e-3, 3e-3, 1e-2, 3e-2)),
}
SEEDS = (0, 1)
VALIDATION_FRACTION = 0.2
LR_GAMMA = 0.1


def validation_split(seed: int) -> ArrayDataset:
    """The seed's digits TRAIN split cut into train (80 %) and validation (20 %, in the test slots:
    the loop's end-of-epoch "test" numbers are then validation numbers). Stratified, seeded."""
    data = load_dataset("digits", seed=seed)
    g = torch.Generator().manual_seed(10_000 + seed)
    train_idx, val_idx = [], []
    for c in range(data.num_classes):
        idx = torch.nonzero(data.y_train == c).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=g)]
        n_val = int(round(VALIDATION_FRACTION * idx.numel()))
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    tr = torch.cat(train_idx)[torch.randperm(sum(i.numel() for i in train_idx), generator=g)]
    va = torch.cat(val_idx)
    return dataclasses.replace(
        data,
        name="digits-validation",
        x_train=data.x_train[tr],
        y_train=data.y_train[tr],
        x_test=data.x_train[va],
        y_test=data.y_train[va],
    )


def final_row(run_dir: Path) -> dict[str, float]:
    with (run_dir / "epochs.csv").open() as f:
        rows = list(csv.DictReader(f))
    return {k: float(v) for k, v in rows[-1].items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "digits_baselines_grid.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    splits = {seed: validation_split(seed) for seed in SEEDS}
    rows = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for optimizer, (fixed, lrs) in GRID.items():
            for lr in lrs:
                accs, losses, train_accs = [], [], []
                for seed in SEEDS:
                    config = RunConfig(
                        optimizer=optimizer,
                        lr=lr,
                        lr_gamma=LR_GAMMA,
                        seed=seed,
                        out=f"{tmp}/{optimizer}-{lr}-{seed}",
                        **fixed,
                    )
                    run(config, dataset=splits[seed], kind="compare")
                    last = final_row(Path(config.out))
                    accs.append(last["test_accuracy"])
                    losses.append(last["test_loss"])
                    train_accs.append(last["train_accuracy"])
                rows.append((optimizer, lr, fixed, accs, losses, train_accs))
                print(f"{optimizer:5s} lr {lr:g}: validation accuracy {[round(a, 4) for a in accs]}", flush=True)
    seconds = time.perf_counter() - start
    best = {}
    for optimizer in GRID:
        cells = [r for r in rows if r[0] == optimizer]
        best[optimizer] = max(cells, key=lambda r: (statistics.mean(r[3]), -statistics.mean(r[4])))
    args.out.write_text(render(rows, best, seconds, splits))
    print(f"wrote {args.out} ({seconds:.0f} s)")


def render(rows, best, seconds, splits) -> str:
    n_train, n_val = splits[SEEDS[0]].num_train, splits[SEEDS[0]].x_test.shape[0]
    lines = [
        "# Baselines of the built-in digits setup: the validation grid",
        "",
        "Written by `python experiments/tune_digits_baselines.py` (the script says how; "
        f"{len(rows) * len(SEEDS)} runs, {seconds:.0f} s here). No published baselines exist for this setup.",
        "",
        f"Validation: of each seed's digits train split, a seeded stratified {VALIDATION_FRACTION:.0%} "
        f"({n_val} examples) is held out; {n_train} train. The test split is never read. Protocol: "
        "RunConfig's defaults (the default compare run and the default study): small CNN, 12 epochs of "
        f"batch 64, lr x {LR_GAMMA} at epochs 6 and 9. Seeds {', '.join(map(str, SEEDS))}. Score: final "
        "validation accuracy, mean over the seeds (ties: lower mean validation loss). The inputs are "
        "standardised with the whole train split's statistics (validation part included: no labels).",
        "",
        "| optimizer | fixed | lr | validation accuracy (per seed) | mean | mean validation loss "
        "| mean train accuracy | chosen |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for optimizer, lr, fixed, accs, losses, train_accs in rows:
        fixed_text = ", ".join(f"{k} {v:g}" for k, v in fixed.items())
        chosen = "**yes**" if best[optimizer][1] == lr else ""
        lines.append(
            f"| {optimizer} | {fixed_text} | {lr:g} | {' / '.join(f'{a:.4f}' for a in accs)} | "
            f"{statistics.mean(accs):.4f} | {statistics.mean(losses):.4f} | {statistics.mean(train_accs):.4f} | {chosen} |"
        )
    lines += ["", "Chosen (copied into experiments/baselines.toml's top-level tables):", ""]
    for optimizer, (_, lr, fixed, accs, _, _) in best.items():
        fixed_text = ", ".join(f"{k} = {v:g}" for k, v in fixed.items())
        lines.append(f"- {optimizer}: lr = {lr:g}, {fixed_text}, lr_gamma = {LR_GAMMA:g}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
