"""The flat buffers a step runs on: a param group's parameters by device and dtype, their state in one
buffer per key, and its lazy initialisation (ARTURO.md table)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import functional as F

# The per-coordinate state that lives in one flat buffer per bucket (see `Bucket`).
FLAT_KEYS = ("precision", "curvature", "intercept", "filter_cov_bb", "filter_cov_ba", "filter_cov_aa")
FILTER_KEYS = ("intercept", "curvature", "filter_cov_bb", "filter_cov_ba", "filter_cov_aa")  # FilterState order


class Bucket:
    """Parameters of one group that share device and dtype, with their state in flat buffers.

    ``self.state[p][key]`` are views into ``flat[key]``, so the kernels run once over the whole
    bucket instead of once per parameter (the speed of ``torch.optim``'s foreach path, without its
    per-tensor dispatch). The views are what ``state_dict()`` sees; if they are replaced
    (``load_state_dict``), the bucket is rebuilt from them at the next step.
    """

    def __init__(self, params: list[Tensor]):
        self.params = params
        self.numels = [p.numel() for p in params]
        self.offsets = np.concatenate([[0], np.cumsum(self.numels)]).tolist()
        self.numel = self.offsets[-1]
        self.flat: dict[str, Tensor] = {}
        self.views: dict[str, list[Tensor]] = {}
        self.scratch: tuple[Tensor, Tensor] | None = None  # (mean, numerator) for the fused path
        self.chunks: tuple[np.ndarray, ...] = ()  # the fused prepare's work table (see fused_buffers)

    def slices(self, flat: Tensor) -> list[Tensor]:
        return [flat[lo:hi].view_as(p) for lo, hi, p in zip(self.offsets[:-1], self.offsets[1:], self.params)]

    def install(self, key: str, flat: Tensor, state: Mapping[Tensor, dict]) -> None:
        self.flat[key] = flat
        self.views[key] = self.slices(flat)
        for p, view in zip(self.params, self.views[key]):
            state[p][key] = view

    def valid(self, state: Mapping[Tensor, dict]) -> bool:
        for key in FLAT_KEYS:
            views = self.views.get(key)
            if views is None:
                return False
            for p, view in zip(self.params, views):
                if state[p].get(key) is not view:
                    return False
        return True

    #: elements per chunk of the fused prepare's work table (its prange runs over chunks)
    CHUNK = 16384

    def fused_buffers(self) -> tuple[Tensor, Tensor, tuple[np.ndarray, ...]]:
        """Two reusable flat buffers (mean, numerator) and the chunk table of the fused prepare."""
        if self.scratch is None:
            like = self.params[0]
            self.scratch = (
                torch.empty(self.numel, dtype=like.dtype, device=like.device),
                torch.empty(self.numel, dtype=like.dtype, device=like.device),
            )
            rows = [
                (j, lo, min(lo + self.CHUNK, n), self.offsets[j] + lo)
                for j, n in enumerate(self.numels)
                for lo in range(0, n, self.CHUNK)
            ]
            self.chunks = tuple(np.ascontiguousarray(np.array(column, dtype=np.int64)) for column in zip(*rows))
        return self.scratch[0], self.scratch[1], self.chunks

    def gather(self, tensors: list[Tensor]) -> Tensor:
        return torch.cat([t.reshape(-1) for t in tensors]) if len(tensors) > 1 else tensors[0].reshape(-1)


class Work:
    """One bucket's part of a step: after preparing, ``kl(eta)`` and ``commit(eta)`` close over it."""

    def __init__(self, group: dict[str, Any], bucket: Bucket):
        self.group = group
        self.bucket = bucket
        self.kl: Callable[[float], float]
        self.commit: Callable[[float], tuple[float, int, int]]


def group_buckets(
    state: Mapping[Tensor, dict], cache: dict[int, list[Bucket]], index: int, group: dict[str, Any]
) -> list[tuple[Bucket, list[bool]]]:
    """The buckets of param group ``index`` with a gradient (rebuilt in ``cache`` if they changed), each
    with which of its parameters step for the first time (their state is initialised here)."""
    params = []
    for p in group["params"]:
        if p.grad is None:
            continue  # skipped entirely, as torch optimizers do (ARTURO.md "Missing gradients")
        if p.grad.is_sparse:
            raise RuntimeError("Arturo does not support sparse gradients")
        params.append(p)
    by_kind: dict[tuple[torch.device, torch.dtype], list[Tensor]] = defaultdict(list)
    for p in params:
        by_kind[(p.device, p.dtype)].append(p)
    cached = cache.get(index, [])
    cached_ids = [tuple(map(id, b.params)) for b in cached]
    wanted_ids = [tuple(map(id, ps)) for ps in by_kind.values()]
    if cached_ids != wanted_ids or not all(b.valid(state) for b in cached):
        cached = [build_bucket(state, ps) for ps in by_kind.values()]
        cache[index] = cached
    result = []
    for bucket in cached:
        fresh = ["step" not in state[p] for p in bucket.params]
        if any(fresh):
            init_fresh(state, group, bucket, fresh)
        result.append((bucket, fresh))
    return result


def build_bucket(state: Mapping[Tensor, dict], params: list[Tensor]) -> Bucket:
    """A bucket of ``params``, its flat buffers filled from the state they have (if any)."""
    bucket = Bucket(params)
    like = params[0]
    for key in FLAT_KEYS:
        flat = torch.empty(bucket.numel, dtype=like.dtype, device=like.device)
        for p, view in zip(params, bucket.slices(flat)):
            old = state[p].get(key)
            if old is not None:
                view.copy_(old)
        bucket.install(key, flat, state)
    return bucket


def init_fresh(state: Mapping[Tensor, dict], group: dict[str, Any], bucket: Bucket, fresh: list[bool]) -> None:
    """Lazily create the state of parameters seen for the first time (ARTURO.md table)."""
    for i, p in enumerate(bucket.params):
        if not fresh[i]:
            continue
        p_state = state[p]
        init = F.filter_init(p.grad, group["start_filter_cov"])
        for key, value in zip(FILTER_KEYS, init):
            p_state[key].copy_(value)
        p_state["precision"].fill_(1.0 / group["var_init"])
        p_state["step"] = torch.tensor(0.0)
        # the torch convention: the mean is copied from the weights at the first step (before decay)
        p_state["mean"] = p.detach().clone()
