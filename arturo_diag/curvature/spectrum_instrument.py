"""The ``spectrum`` instrument: the probe loss's Hessian spectrum at a snapshot, for the record.

One call measures, on the reference's batch and in its mode (H = the Hessian of that loss, never
formed; the math of each part is in its module of :mod:`arturo_diag.curvature.spectrum`):

- S Rademacher probes z_s through batched HVPs: per probe z^T H z (Hutchinson's trace) and, per
  parameter tensor, ||(H z)_param||^2, whose expectation is the squared Frobenius norm of H's rows
  of that tensor (E (Hz)_i^2 = sum_j H_ij^2). Their sums over the tensors give ||H||_F^2's
  estimate; the analysis divides the reference diagonal's norm by it (the diagonal's share, per
  layer and whole, with delta-method standard errors from the per-probe values kept here);
- Hutch++'s trace (a second, lower-variance estimate with its own SE);
- the top-k eigenvalues and the most negative one (Lanczos, ARPACK via ``eigsh``), on one
  :class:`HessianOperator` whose graph is built once;
- stochastic Lanczos quadrature on the same operator: per probe the Ritz values and weights.

Scalars go to ``snapshots.csv`` (``spectrum_*`` columns, :data:`SCALARS`); the per-probe values go
to the snapshot's instrument arrays (``instruments/step_*.npz``, keys ``spectrum/<field>``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from arturo_diag.curvature.functional import loss_of_parameters
from arturo_diag.curvature.spectrum_density import spectral_density
from arturo_diag.curvature.spectrum_eigen import top_eigenvalues
from arturo_diag.curvature.spectrum_operator import hessian_operator
from arturo_diag.curvature.spectrum_probes import _Batched, _rademacher
from arturo_diag.curvature.spectrum_trace import hutchpp_trace

__all__ = ["SCALARS", "SpectrumSettings", "spectrum_snapshot"]

#: The ``snapshots.csv`` columns of the instrument (top-k eigenvalues: ``spectrum_top_1`` ...).
SCALARS = (
    "spectrum_trace",
    "spectrum_trace_se",
    "spectrum_trace_hutchpp",
    "spectrum_trace_hutchpp_se",
    "spectrum_frobenius_sq",
    "spectrum_frobenius_sq_se",
    "spectrum_min",
    "spectrum_converged",
    "spectrum_probes",
    "spectrum_hvps",
)


@dataclass(frozen=True)
class SpectrumSettings:
    """Budgets of one spectrum measurement (defaults: about 180-250 Hessian-vector products on the
    default CNN, about 0.4 s on a quiet CPU; the eigenvalues to ARPACK's relative 1e-3).

    probes: Rademacher probes for the trace and the Frobenius norm (S >= 2).
    hutchpp: Hutch++'s product budget (>= 4).
    top_k: how many of the largest eigenvalues.
    slq_probes, slq_steps: stochastic Lanczos quadrature's starting vectors and Lanczos steps each.
    eig_tol: ARPACK's relative tolerance; ``eig_maxiter``: its restarts' cap (the result says
        whether it converged).
    """

    probes: int = 32
    hutchpp: int = 30
    top_k: int = 3
    slq_probes: int = 2
    slq_steps: int = 32
    eig_tol: float = 1e-3
    eig_maxiter: int = 300


DEFAULT = SpectrumSettings()


def spectrum_snapshot(
    model, loss_fn, inputs, targets, names, *, seed: int, train: bool = False, settings: SpectrumSettings = DEFAULT
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """One spectrum measurement: (``snapshots.csv`` scalars, per-probe arrays). ``names``: the
    trainable parameters in the loss's order (they must match :func:`loss_of_parameters`')."""
    generator = torch.Generator().manual_seed(int(seed))
    problem = loss_of_parameters(model, loss_fn, inputs, targets, train=train)
    if list(problem.names) != list(names):
        raise ValueError(f"spectrum: parameters {list(problem.names)} are not the record's {list(names)}")
    sizes = [p.numel() for p in problem.params]
    total = sum(sizes)
    batched = _Batched(problem, settings.probes, None)
    quad, per_param = [], []
    for start in range(0, settings.probes, batched.chunk):
        z = _rademacher(generator, min(batched.chunk, settings.probes - start), total)
        hz = batched(z)
        quad.append((z * hz).sum(1))
        per_param.append(torch.stack([(part * part).sum(1) for part in hz.split(sizes, dim=1)], dim=1))
    quad_t, per_param_t = torch.cat(quad), torch.cat(per_param)  # (S,), (S, tensors)
    squares = per_param_t.sum(1)
    s = quad_t.numel()
    scalars: dict[str, float] = {
        "spectrum_trace": float(quad_t.mean()),
        "spectrum_trace_se": float(quad_t.std() / math.sqrt(s)),
        "spectrum_frobenius_sq": float(squares.mean()),
        "spectrum_frobenius_sq_se": float(squares.std() / math.sqrt(s)),
        "spectrum_probes": s,
    }
    hvps = batched.hvps
    trace = hutchpp_trace(model, loss_fn, inputs, targets, min(settings.hutchpp, 3 * total), generator, train=train)
    scalars["spectrum_trace_hutchpp"], scalars["spectrum_trace_hutchpp_se"] = trace.value, trace.stderr
    hvps += trace.hvps
    operator = hessian_operator(model, loss_fn, inputs, targets, train=train)
    converged = True
    k = min(settings.top_k, total - 1)
    if k >= 1:
        top = top_eigenvalues(None, None, None, None, k=k, which="LA", tol=settings.eig_tol,
                              maxiter=settings.eig_maxiter, generator=generator, operator=operator)  # fmt: skip
        low = top_eigenvalues(None, None, None, None, k=1, which="SA", tol=settings.eig_tol,
                              maxiter=settings.eig_maxiter, generator=generator, operator=operator)  # fmt: skip
        converged = top.converged and low.converged
        for i in range(settings.top_k):
            scalars[f"spectrum_top_{i + 1}"] = float(top.values[i]) if i < top.values.size else math.nan
        scalars["spectrum_min"] = float(low.values[0]) if low.values.size else math.nan
    else:
        scalars["spectrum_min"] = math.nan
    density = spectral_density(None, None, None, None, lanczos_steps=min(settings.slq_steps, total),
                               probes=settings.slq_probes, generator=generator, operator=operator)  # fmt: skip
    hvps += operator.hvps
    scalars["spectrum_converged"] = bool(converged)
    scalars["spectrum_hvps"] = hvps
    width = max(n.size for n in density.nodes)
    nodes = np.full((len(density.nodes), width), np.nan)
    weights = np.full_like(nodes, np.nan)
    for i, (n, w) in enumerate(zip(density.nodes, density.weights)):
        nodes[i, : n.size], weights[i, : w.size] = n, w
    arrays = {
        "quad": quad_t.numpy(),
        "row_sq": per_param_t.numpy(),
        "ritz_nodes": nodes,
        "ritz_weights": weights,
    }
    return scalars, arrays
