"""Intervals shared by the diagnostics' verdicts: Wilson's interval of a proportion, a block bootstrap.

Both are stated in the rules of the verdicts that use them (``docs/metrics.md``):

- :func:`wilson_interval`: the score interval of a binomial proportion (Wilson 1927), which keeps
  inside [0, 1] and stays honest at 0 or n successes, where the normal interval collapses;
- :func:`block_bootstrap_indices`: circular block bootstrap (Politis & Romano 1992) index arrays
  over a time series of ``n`` snapshots, blocks of ``ceil(n ** (1/3))`` consecutive ones, so that a
  slowly varying series is not treated as independent draws.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["Z95", "block_bootstrap_indices", "wilson_interval"]

Z95 = 1.959963984540054  # the two-sided 95 % normal quantile


def wilson_interval(successes: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson's 95 % interval of the proportion ``successes / n`` (``(nan, nan)`` when ``n < 1``)."""
    if not (isinstance(n, (int, float)) and math.isfinite(n) and n >= 1):
        return math.nan, math.nan
    p = float(successes) / float(n)
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    if successes <= 0:  # the closed form's lower bound is 0 exactly here (not a rounding residue)
        return 0.0, min(1.0, centre + half)
    if successes >= n:
        return max(0.0, centre - half), 1.0
    return max(0.0, centre - half), min(1.0, centre + half)


def block_bootstrap_indices(n: int, samples: int, *, seed: int = 0, block: int | None = None) -> np.ndarray:
    """``samples`` x ``n`` index arrays of a circular block bootstrap over ``n`` ordered units.

    Each row strings together blocks of ``block`` consecutive indices (default ``ceil(n ** (1/3))``)
    starting at uniform positions, wrapping around the end, cut to length ``n``.
    """
    if n < 1:
        raise ValueError(f"block_bootstrap_indices: n = {n}; allowed: n >= 1")
    block = max(1, int(block if block is not None else math.ceil(n ** (1 / 3))))
    rng = np.random.default_rng(seed)
    blocks = math.ceil(n / block)
    starts = rng.integers(0, n, size=(samples, blocks))
    offsets = np.arange(block)
    rows = (starts[:, :, None] + offsets[None, None, :]).reshape(samples, blocks * block)[:, :n]
    return rows % n
