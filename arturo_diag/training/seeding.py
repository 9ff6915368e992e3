"""Seeding: one call to make a run repeatable, and explicit generators for shuffling.

``seed_everything(seed)`` seeds python's ``random``, numpy's global generator and torch (CPU and
all CUDA devices) and asks torch for deterministic kernels with ``warn_only=True``, so an operation
without a deterministic implementation warns instead of failing. Code that needs its own stream of
random numbers (minibatch order, probe batches) takes a ``torch.Generator`` from
``make_generator(seed, device)`` rather than relying on the global state.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from arturo_diag.errors import ConfigError

__all__ = ["seed_everything", "make_generator"]


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63:
        raise ConfigError("seed", seed, "an integer in [0, 2**63)")
    return int(seed)


def seed_everything(seed: int, *, deterministic: bool = True) -> None:
    """Seed python ``random``, numpy and torch with ``seed``; optionally request deterministic kernels.

    With ``deterministic`` (the default) this calls
    ``torch.use_deterministic_algorithms(True, warn_only=True)``, turns off cuDNN benchmarking and
    sets ``CUBLAS_WORKSPACE_CONFIG`` if unset (needed for deterministic cuBLAS; harmless on CPU).
    The torch setting is process-wide, like the seeds.

    Raises:
        ConfigError: ``seed`` if it is not an integer in ``[0, 2**63)``.
    """
    seed = _check_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)  # numpy's legacy global seed must fit in 32 bits
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh ``torch.Generator`` on ``device`` seeded with ``seed`` (same seed, same stream).

    Raises:
        ConfigError: ``seed`` if it is not an integer in ``[0, 2**63)``.
    """
    generator = torch.Generator(device=torch.device(device))
    generator.manual_seed(_check_seed(seed))
    return generator
