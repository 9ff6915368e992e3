"""The two paths of one bucket's part of a step, and which one runs: the fused CPU kernels
(:mod:`._fused_cpu`) or the eager kernels (:mod:`.functional`, any device, dtype, KL and ablation).

Each prepares steps 0-2 of ARTURO.md and leaves the eta-dependent parts as ``Work.kl(eta)`` and
``Work.commit(eta)``; :meth:`.arturo.Arturo.step` chooses eta over all buckets.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import _fused_cpu
from . import functional as F
from ._buckets import FILTER_KEYS, FLAT_KEYS, Bucket, Work
from ._validation import fused_unsupported, scalar


def use_fused(group: dict[str, Any], bucket: Bucket, fresh: list[bool], oracle: Mapping[Tensor, Tensor]) -> bool:
    """Whether this bucket's step runs the fused kernels (``fused=True`` raises where they cannot)."""
    wanted = group["fused"]
    if wanted is False:
        return False
    reason = fused_unsupported(group, bucket.params[0])
    if reason is not None:
        if wanted is True:
            raise RuntimeError(f"fused=True: {reason}")
        return False
    # per-step conditions, eager whatever `fused` says: a first step, an oracle curvature
    return not any(fresh) and not any(p in oracle for p in bucket.params)


def prepare_fused(item: Work) -> int:
    """Steps 0-2 with the fused CPU kernels; the eta-dependent parts are `Work.kl/commit`."""
    group, bucket = item.group, item.bucket
    theta, numerator, chunks = bucket.fused_buffers()
    t = np.dtype(str(theta.dtype).replace("torch.", "")).type
    flat = {k: bucket.flat[k].numpy() for k in FLAT_KEYS}
    c = t(float(group["reg_weight"]) * float(group["prior_prec"]))
    # the guard's clamp as a lower bound (-inf: no guard), so the loops stay branch-free
    lower = t(torch.finfo(theta.dtype).tiny) if group["guard"] else t(-np.inf)
    theta_np, numerator_np = theta.numpy(), numerator.numpy()
    # the weights and the fresh gradients are read where they are (reshape copies only a
    # non-contiguous one)
    weights = tuple(p.detach().reshape(-1).numpy() for p in bucket.params)
    grads = tuple(p.grad.reshape(-1).numpy() for p in bucket.params)
    acted = _fused_cpu.prepare(
        weights,
        grads,
        *chunks,
        theta_np,
        numerator_np,
        flat["intercept"],
        flat["curvature"],
        flat["filter_cov_bb"],
        flat["filter_cov_ba"],
        flat["filter_cov_aa"],
        t(scalar(group["lr"]) * float(group["weight_decay"])),
        t(group["dynamic_model_noise"]),
        t(group["measurement_noise"]),
        c,
        lower,
    )
    rho, nu = t(group["reg_weight"]), t(group["nu"])

    def kl(eta: float) -> float:
        return 0.5 * float(_fused_cpu.kl_of_eta(flat["curvature"], flat["precision"], numerator_np, c, lower, t(eta)))

    def commit(eta: float) -> tuple[float, int, int]:
        twice_kl, bad_precision, bad_denominator = _fused_cpu.commit(
            theta_np, flat["precision"], flat["curvature"], numerator_np, c, lower, t(eta), rho, nu
        )
        torch._foreach_copy_(bucket.params, bucket.slices(theta))
        return 0.5 * float(twice_kl), int(bad_precision), int(bad_denominator)

    item.kl, item.commit = kl, commit
    return int(acted)


def prepare_eager(item: Work, fresh: list[bool], oracle: Mapping[Tensor, Tensor]) -> int:
    """Steps 0-2 with the eager kernels of `functional` (any device, dtype, KL and ablation)."""
    group, bucket = item.group, item.bucket
    lr_g = scalar(group["lr"])
    wd = float(group["weight_decay"])
    rho = float(group["reg_weight"])
    c = rho * float(group["prior_prec"])
    theta = bucket.gather(bucket.params)
    grad = bucket.gather([p.grad for p in bucket.params])
    # 0. decoupled weight decay, scaled by this group's lr; the first-step mean is the
    #    undecayed copy, later the mean is the weight itself (ARTURO.md step 0)
    mean = theta
    if wd != 0.0:
        decayed = torch.add(theta, theta, alpha=-lr_g * wd)
        mean = decayed
        if any(fresh):
            mean = decayed.clone()
            for i, is_fresh in enumerate(fresh):
                if is_fresh:
                    lo, hi = bucket.offsets[i], bucket.offsets[i + 1]
                    mean[lo:hi] = theta[lo:hi]
        theta = decayed
    # 1.-2. filter predict and update (and the oracle ablation)
    fs = F.FilterState(*(bucket.flat[k] for k in FILTER_KEYS))
    fs = F.filter_predict(fs, float(group["dynamic_model_noise"]))
    fs = F.filter_update(fs, theta, grad, float(group["measurement_noise"]))
    fs = apply_oracle(bucket, fs, theta, grad, oracle)
    for key, value in zip(FILTER_KEYS, fs):
        bucket.flat[key].copy_(value)
    curvature, acted = fs.curvature, 0
    if group["guard"]:
        curvature, acted = F.guard_curvature(curvature)
    precision = bucket.flat["precision"]
    terms = F.dual_terms(mean, precision, curvature, fs.intercept, c, rho)
    coupled = group["kl"] == "coupled"

    def kl(eta: float) -> float:
        fn = F.kl_coupled_of_eta if coupled else F.kl_decoupled_of_eta
        return float(fn(terms, eta))

    def commit(eta: float) -> tuple[float, int, int]:
        new_mean, denominator = F.new_mean_from_terms(mean, terms, eta)
        if coupled:
            new_precision = F.coupled_precision(precision, terms.curvature_total, 0.0, rho, eta)
            kl_value = float(F.kl_full(precision, new_precision, new_mean, mean))
        else:
            new_precision = F.decoupled_precision(precision, terms.curvature_total, 0.0, rho, float(group["nu"]))
            kl_value = float(F.kl_mean_part(precision, new_mean, mean))
        bad_precision = int(torch.count_nonzero(new_precision <= 0)) if float(new_precision.min()) <= 0 else 0
        bad_denominator = int(torch.count_nonzero(denominator <= 0)) if float(denominator.min()) <= 0 else 0
        bucket.flat["precision"].copy_(new_precision)
        torch._foreach_copy_(bucket.params, bucket.slices(new_mean))
        return kl_value, bad_precision, bad_denominator

    item.kl, item.commit = kl, commit
    return acted


def apply_oracle(
    bucket: Bucket, fs: F.FilterState, theta: Tensor, grad: Tensor, oracle: Mapping[Tensor, Tensor]
) -> F.FilterState:
    """Oracle ablation on the parameters that have an oracle; the others keep the filter's (a, b)."""
    if not oracle or not any(p in oracle for p in bucket.params):
        return fs
    curvature, intercept = fs.curvature.clone(), fs.intercept.clone()
    for i, p in enumerate(bucket.params):
        if p in oracle:
            lo, hi = bucket.offsets[i], bucket.offsets[i + 1]
            part = F.FilterState(*(t[lo:hi] for t in fs))
            replaced = F.oracle_filter_state(part, theta[lo:hi], grad[lo:hi], oracle[p].reshape(-1))
            curvature[lo:hi] = replaced.curvature
            intercept[lo:hi] = replaced.intercept
    return fs._replace(curvature=curvature, intercept=intercept)
