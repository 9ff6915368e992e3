"""The spectral density of the probe loss's Hessian H from Hessian-vector products (H never
formed; see :mod:`arturo_diag.curvature.spectrum`):

- :func:`spectral_density`: stochastic Lanczos quadrature (Ghorbani, Krishnan and Xiao, "An
  Investigation into Neural Net Optimization via Hessian Eigenvalue Density", ICML 2019; the
  method of PyHessian, Yao et al. 2020). For each unit probe v = z / sqrt(P) (Rademacher z),
  m Lanczos steps with full reorthogonalisation give a tridiagonal T = U diag(theta) U^T; the
  nodes theta_j with weights tau_j = U_0j^2 (summing to 1) are the Gauss quadrature of the
  spectral measure of H seen from v: sum_j tau_j f(theta_j) = v^T f(H) v exactly for every
  polynomial f of degree <= 2m - 1. So E[sum_j tau_j theta_j^p] = tr(H^p) / P: the first moment
  is tr(H)/P, the second ||H||_F^2 / P. The density is the probes' average of
  sum_j tau_j N(t; theta_j, sigma^2) on a grid; it integrates to 1, its mean is the first moment
  and its second moment is the nodes' second moment + sigma^2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from arturo_diag.curvature._checks import check_count
from arturo_diag.curvature.errors import CurvatureError
from arturo_diag.curvature.spectrum_operator import HessianOperator, LossFn, hessian_operator
from arturo_diag.curvature.spectrum_probes import _check_common, _rademacher

__all__ = ["SpectralDensity", "spectral_density"]


@dataclass(frozen=True)
class SpectralDensity:
    """Stochastic Lanczos quadrature of H's spectral density.

    nodes, weights: per probe, the Ritz values theta_j and their weights tau_j (float64 arrays of
        the Lanczos steps that probe took: fewer than asked when an invariant subspace was found,
        where the quadrature is exact); each probe's weights sum to 1.
    grid, density: the Gaussian-smoothed density (probes' average) on an even grid covering every
        node +- 8 sigma.
    sigma: the kernel's standard deviation; hvps: products used; dimension: P.
    """

    nodes: tuple[np.ndarray, ...]
    weights: tuple[np.ndarray, ...]
    grid: np.ndarray
    density: np.ndarray
    sigma: float
    hvps: int
    dimension: int

    def moments(self, power: int) -> np.ndarray:
        """Per probe, sum_j tau_j theta_j^power: unbiased for tr(H^power) / P (for power <= 2m-1)."""
        return np.array([float(np.sum(w * t**power)) for t, w in zip(self.nodes, self.weights)])

    def moment(self, power: int) -> tuple[float, float]:
        """(mean over probes, its standard error (ddof 1; nan for one probe)) of :meth:`moments`."""
        per_probe = self.moments(power)
        se = float(per_probe.std(ddof=1) / math.sqrt(per_probe.size)) if per_probe.size > 1 else math.nan
        return float(per_probe.mean()), se


def spectral_density(
    model: nn.Module,
    loss_fn: LossFn,
    inputs: Tensor,
    targets: Tensor,
    *,
    lanczos_steps: int = 64,
    probes: int = 4,
    generator: torch.Generator | None = None,
    sigma: float | None = None,
    grid_points: int = 1024,
    train: bool = False,
    operator: HessianOperator | None = None,
) -> SpectralDensity:
    """Stochastic Lanczos quadrature of H's eigenvalue density (module docstring).

    Args:
        lanczos_steps: m, Lanczos steps per probe (capped at P); m HVPs per probe, and m
            float64 vectors of P entries kept for the full reorthogonalisation.
        probes: unit Rademacher start vectors, drawn from ``generator`` (None: torch's global
            generator).
        sigma: the Gaussian kernel's standard deviation; default 1 % of the nodes' range (or of
            their largest magnitude, or 1, if the range is 0).
        grid_points: points of the density's grid.
        operator: a :class:`HessianOperator` to reuse; then model, loss_fn, inputs, targets and
            train are ignored.

    Returns:
        :class:`SpectralDensity`.
    """
    from scipy.linalg import eigh_tridiagonal

    check_count("lanczos_steps", lanczos_steps, 1)
    check_count("probes", probes, 1)
    check_count("grid_points", grid_points, 2)
    _check_common(generator, None)
    if sigma is not None and not (isinstance(sigma, (int, float)) and sigma > 0):
        raise CurvatureError(f"sigma: got {sigma!r}; allowed: a positive number or None")
    op = operator or hessian_operator(model, loss_fn, inputs, targets, train=train)
    steps = min(lanczos_steps, op.dimension)
    before = op.hvps
    breakdown = 1e-12 if op.dtype == torch.float64 else 1e3 * torch.finfo(op.dtype).eps
    nodes, weights = [], []
    for _ in range(probes):
        z = _rademacher(generator, 1, op.dimension)[0]
        alphas, betas = _lanczos(op, z / math.sqrt(op.dimension), steps, breakdown)
        if len(alphas) == 1:
            theta, vectors = np.array(alphas), np.ones((1, 1))
        else:
            theta, vectors = eigh_tridiagonal(np.array(alphas), np.array(betas))
        nodes.append(theta)
        weights.append(vectors[0] ** 2)
    everything = np.concatenate(nodes)
    lo, hi = float(everything.min()), float(everything.max())
    if sigma is None:
        spread = hi - lo or max(abs(lo), abs(hi)) or 1.0
        sigma = 0.01 * spread
    grid = np.linspace(lo - 8 * sigma, hi + 8 * sigma, grid_points)
    density = np.zeros_like(grid)
    for theta, tau in zip(nodes, weights):
        kernel = np.exp(-0.5 * ((grid[:, None] - theta[None, :]) / sigma) ** 2)
        density += kernel @ tau
    density /= probes * sigma * math.sqrt(2 * math.pi)
    return SpectralDensity(tuple(nodes), tuple(weights), grid, density, float(sigma),
                           op.hvps - before, op.dimension)  # fmt: skip


def _lanczos(op: HessianOperator, start: Tensor, steps: int, breakdown: float):
    """Lanczos with full reorthogonalisation (twice per step) in float64 on flat vectors.

    Returns the tridiagonal's diagonal (alphas) and off-diagonal (betas, one fewer). Stops early
    when beta falls below ``breakdown`` times the largest coefficient so far (an invariant
    subspace: the quadrature is exact there).
    """
    basis = torch.empty(steps, start.numel(), dtype=torch.float64)
    basis[0] = start / start.norm()
    alphas, betas = [], []
    scale = 0.0
    previous, beta = None, 0.0
    for j in range(steps):
        v = basis[j]
        w = op.matvec(v).to(torch.float64).cpu()
        alpha = float(w @ v)
        w = w - alpha * v
        if previous is not None:
            w = w - beta * previous
        for _ in range(2):
            w = w - basis[: j + 1].T @ (basis[: j + 1] @ w)
        alphas.append(alpha)
        beta = float(w.norm())
        scale = max(scale, abs(alpha), beta)
        if j == steps - 1 or beta <= breakdown * scale:
            break
        betas.append(beta)
        previous = v
        basis[j + 1] = w / beta
    return alphas, betas
