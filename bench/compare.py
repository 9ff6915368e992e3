"""Wall time of `arturo-diag compare` with its defaults, and the share spent in diagnostics.

1. Runs the CLI exactly as a user would (`arturo-diag compare --out TMP`), in a subprocess, and
   prints its wall time (imports, training, snapshots, analysis and report included).
2. In this process, alternating over repeats: the default run, and the same run with
   `reference = "none"` (pure training: no snapshots). Prints the medians' ratio, and the share
   of the default run spent in diagnostics as the Monitor measures it.

Targets (issue 5): wall time <= 60 s on 2 cores; diagnostics <= 30 % of the default run's time.

    python bench/compare.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from arturo_diag.training.config import RunConfig
from arturo_diag.training.loop import run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        cli = Path(sys.executable).with_name("arturo-diag")
        command = [str(cli)] if cli.exists() else [sys.executable, "-m", "cli.app"]
        subprocess.run(
            [*command, "compare", "--out", os.path.join(tmp, "cli")],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wall = time.perf_counter() - start
        print(f"arturo-diag compare (defaults, report included): {wall:.1f} s wall   target <= 60 s")

        full, pure, share = [], [], []
        for i in range(args.repeats):
            result = run(RunConfig(out=os.path.join(tmp, f"full{i}")))
            full.append(result.seconds)
            share.append(result.diagnostics_seconds / result.seconds)
            pure.append(run(RunConfig(out=os.path.join(tmp, f"pure{i}"), reference="none")).seconds)
        print(
            f"training loop with diagnostics / pure training = "
            f"{statistics.median(full) / statistics.median(pure):.2f}x  (medians of {args.repeats})"
        )
        print(f"diagnostics share of the default run = {100 * statistics.median(share):.0f} %   target <= 30 %")


if __name__ == "__main__":
    main()
