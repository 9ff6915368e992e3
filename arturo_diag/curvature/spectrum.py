"""The spectrum of the probe loss's Hessian from Hessian-vector products: trace, extreme
eigenvalues, spectral density and the diagonal's share of the Frobenius norm.

H is the P x P Hessian of the probe loss L(theta) (see :mod:`arturo_diag.curvature.functional`;
eval mode by default), never formed. What each function computes:

- :func:`hessian_trace`: Hutchinson's tr(H) ~ (1/S) sum_s z_s^T H z_s with Rademacher z_s
  (Hutchinson 1990), and its standard error std_s(z_s^T H z_s) / sqrt(S) (ddof 1). Unbiased:
  E[z^T H z] = sum_ij H_ij E[z_i z_j] = tr(H); Var[z^T H z] = 2 sum_{i != j} H_ij^2.
- :func:`hutchpp_trace`: Hutch++ (Meyer, Musco, Musco and Woodruff, "Hutch++: Optimal Stochastic
  Trace Estimation", SOSA 2021, Algorithm 1). With a budget of S products, k = S // 3 sketch
  vectors (capped at P) and g = S - 2k Hutchinson probes: Q = orth(H Z_sketch) (P x k), then
  tr(H) ~ tr(Q^T H Q) + (1/g) sum_s w_s^T H w_s, w_s = (I - Q Q^T) z_s. The first term is exact
  given Q; the second is Hutchinson's estimate of tr((I - QQ^T) H (I - QQ^T)), unbiased given Q,
  so the estimate is unbiased, and its error is that of the second term alone: the standard error
  reported is std_s(w_s^T H w_s) / sqrt(g) (ddof 1, conditional on Q; its square estimates the
  estimator's variance because E[Var(.|Q)] is the whole variance). When the sketch spans the
  range of H (always when k = P, i.e. S >= 3P) the deflated matrix is 0 and the estimate is
  exact: then Q = I is used directly (P products, nothing drawn) and the standard error is 0.
- :func:`top_eigenvalues`: Lanczos (implicitly restarted, ARPACK through
  ``scipy.sparse.linalg.eigsh``) on a float64 ``LinearOperator`` whose matvec is one HVP:
  ``which="LA"`` the k largest (algebraic) eigenvalues, ``which="SA"`` the smallest, e.g. k = 1
  for the most negative one.
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
- :func:`diagonal_share`: ||diag H||_2 / ||H||_F with the diagonal given exactly (e.g. from
  :func:`arturo_diag.curvature.exact_diagonal`) and ||H||_F^2 = tr(H^2) = E||H z||^2 for
  Rademacher z, estimated by F2 = (1/S) sum_s ||H z_s||^2 with standard error
  se(F2) = std_s(||H z_s||^2) / sqrt(S). The share's standard error is the delta method's: with
  share = D F2^(-1/2), d share / d F2 = -share / (2 F2), so se(share) = share * se(F2) / (2 F2)
  (first order: it ignores the O(se^2) bias of 1/sqrt(F2) and is meaningful when
  se(F2) << F2). The estimate can exceed 1 by noise; it is not clipped.

A diagonal model of the curvature (arTuRO's ``a``, ARTURO.md; arXiv 2310.20574) can capture at most
the share ``diagonal_share`` of H's Frobenius norm.

HVPs: the batched estimators (trace, Hutch++, Frobenius norm) use
:func:`arturo_diag.curvature.hvp.batched_hvp` (one gradient graph per chunk of vectors, vmap-ed
for small models). The sequential ones (Lanczos, SLQ) use :class:`HessianOperator`: the gradient
graph is built once (``torch.autograd.grad(..., create_graph=True)``) and every product is one
double-backward pass through it (``retain_graph=True``), measured on CPU about as fast as
``torch.func``'s ``vjp``-of-``grad`` pullback on a shared graph and 2-3x faster than
``jvp``-of-``grad`` (which redoes the forward and backward pass per vector); where a double
backward is missing it falls back to ``jvp`` of ``grad``. On convolutional models a product costs
about 3 gradients (bench/instruments.py): PyTorch's ``_convolution_double_backward`` computes the
input gradient of every convolution whenever a weight tangent is given, the first layer's too,
whose input (the data) needs none. Rademacher probes are drawn as in
:func:`arturo_diag.curvature.hutchinson_diagonal` (one int8 draw of P entries per probe, in probe
order), so the same generator state gives the same probes whatever the chunking.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from arturo_diag.curvature._checks import check_chunk_size, check_count, check_generator
from arturo_diag.curvature.errors import CurvatureError
from arturo_diag.curvature.functional import LossOfParameters, loss_of_parameters
from arturo_diag.curvature.hvp import batched_hvp, hvp_plan

__all__ = [
    "DiagonalShare",
    "Eigenvalues",
    "HessianOperator",
    "SpectralDensity",
    "TraceEstimate",
    "diagonal_share",
    "hessian_operator",
    "hessian_trace",
    "hutchpp_trace",
    "spectral_density",
    "top_eigenvalues",
]

LossFn = Callable[[Tensor, Tensor], Tensor]


# --------------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class TraceEstimate:
    """An estimate of tr(H): ``value`` +- ``stderr``, from ``hvps`` Hessian-vector products.

    method: "hutchinson" or "hutch++"; samples: the budget S asked for; for Hutch++ also
    ``sketch`` (k) and ``probes`` (g), and ``exact`` (the sketch spans R^P: no error).
    """

    value: float
    stderr: float
    method: str
    samples: int
    hvps: int
    sketch: int = 0
    probes: int = 0
    exact: bool = False


@dataclass(frozen=True)
class Eigenvalues:
    """Extreme eigenvalues of H by Lanczos (ARPACK).

    values: float64, ``which="LA"``/``"LM"``: descending; ``"SA"``: ascending.
    which, k: as asked; hvps: products used (ARPACK's matvecs); tol: the tolerance passed.
    converged: False if ARPACK stopped at ``maxiter``; ``values`` then holds the converged ones.
    """

    values: np.ndarray
    which: str
    k: int
    hvps: int
    tol: float
    converged: bool = True


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


@dataclass(frozen=True)
class DiagonalShare:
    """||diag H|| / ||H||_F with its standard error (delta method), and what it is made of.

    share, stderr: the ratio and its standard error.
    diagonal_norm: ||diag H||_2, exact (from the diagonal given).
    frobenius_sq, frobenius_sq_stderr: the estimate of ||H||_F^2 = E||H z||^2 and its SE.
    frobenius, frobenius_stderr: sqrt of it and its delta-method SE, se(F2) / (2 sqrt(F2)).
    trace, trace_stderr: Hutchinson's tr(H) from the same probes, free.
    samples: S probes; hvps: products used (= S).
    """

    share: float
    stderr: float
    diagonal_norm: float
    frobenius_sq: float
    frobenius_sq_stderr: float
    frobenius: float
    frobenius_stderr: float
    trace: float
    trace_stderr: float
    samples: int
    hvps: int


# --------------------------------------------------------------------------------------------------
# The operator


class HessianOperator:
    """``v -> H v`` on flat vectors, the gradient graph built once for all products.

    Attributes: ``dimension`` P, ``dtype``/``device`` of the parameters, ``hvps`` products so far.
    :meth:`matvec` takes and returns flat tensors (any float dtype in; the parameters' dtype out);
    :meth:`linear_operator` wraps it as a float64 ``scipy.sparse.linalg.LinearOperator``.
    """

    def __init__(self, problem: LossOfParameters):
        self.problem = problem
        _, params, loss = problem
        self.sizes = [p.numel() for p in params]
        self.dimension = sum(self.sizes)
        self.dtype = params[0].dtype
        self.device = params[0].device
        self.hvps = 0
        self._leaves = tuple(p.detach().clone().requires_grad_(True) for p in params)
        self._gradient: tuple[Tensor, ...] | None = None
        self._forward: Callable[[tuple[Tensor, ...]], tuple[Tensor, ...]] | None = None
        with torch.enable_grad():
            value = loss(self._leaves)
            self.loss_value = float(value.detach())
            gradient = torch.autograd.grad(value, self._leaves, create_graph=True, allow_unused=True)
        if any(g is None or not g.requires_grad for g in gradient):
            # a parameter the loss does not depend on twice-differentiably: let jvp handle it
            self._use_forward()
        else:
            self._gradient = gradient

    def _use_forward(self) -> None:
        from torch.func import grad, jvp

        _, params, loss = self.problem
        grad_loss = grad(loss)
        self._gradient = None
        self._forward = lambda tangents: jvp(grad_loss, (params,), (tangents,))[1]

    def _split(self, flat: Tensor) -> tuple[Tensor, ...]:
        parts = flat.to(device=self.device, dtype=self.dtype).split(self.sizes)
        return tuple(part.view_as(p) for part, p in zip(parts, self._leaves))

    def matvec(self, vector: Tensor) -> Tensor:
        """H v for a flat vector of P entries."""
        tangents = self._split(vector.reshape(-1))
        if self._gradient is not None:
            try:
                with torch.enable_grad():
                    products = torch.autograd.grad(
                        self._gradient, self._leaves, tangents, retain_graph=True, allow_unused=True
                    )
            except RuntimeError as failure:
                if "derivative for" not in str(failure) and "double backward" not in str(failure):
                    raise
                self._use_forward()
                return self.matvec(vector)
            products = tuple(torch.zeros_like(leaf) if p is None else p for p, leaf in zip(products, self._leaves))
        else:
            products = self._forward(tangents)
        self.hvps += 1
        return torch.cat([p.detach().reshape(-1) for p in products])

    def linear_operator(self):
        """The operator as a float64 scipy ``LinearOperator`` (P x P, symmetric)."""
        from scipy.sparse.linalg import LinearOperator

        def matvec(v: np.ndarray) -> np.ndarray:
            flat = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64).reshape(-1))
            return self.matvec(flat).to(torch.float64).cpu().numpy()

        return LinearOperator((self.dimension, self.dimension), matvec=matvec, rmatvec=matvec, dtype=np.float64)


def hessian_operator(
    model: nn.Module, loss_fn: LossFn, inputs: Tensor, targets: Tensor, *, train: bool = False
) -> HessianOperator:
    """The Hessian of the probe loss as an operator on flat vectors (see :class:`HessianOperator`).

    Build it once to run several sequential quantities (Lanczos, SLQ) on one gradient graph.
    """
    return HessianOperator(loss_of_parameters(model, loss_fn, inputs, targets, train=train))


# --------------------------------------------------------------------------------------------------
# Probes and batched products


def _check_common(generator, chunk_size) -> None:
    check_chunk_size(chunk_size)
    check_generator(generator)


def _rademacher(generator: torch.Generator | None, count: int, total: int) -> Tensor:
    """(count, total) float64 signs, one int8 draw of ``total`` per probe, as Hutchinson draws."""
    device = generator.device if generator is not None else torch.device("cpu")
    draws = torch.stack(
        [torch.randint(0, 2, (total,), generator=generator, device=device, dtype=torch.int8)
         for _ in range(count)]
    )  # fmt: skip
    return draws.to(torch.float64).mul_(2).sub_(1).cpu()


class _Batched:
    """Products H V for a (count, P) float64 block, in chunks through :func:`batched_hvp`."""

    def __init__(self, problem: LossOfParameters, limit: int, chunk_size: int | None):
        _, params, loss = problem
        plan = hvp_plan(loss, params, max(1, limit))
        self.chunk = min(chunk_size or plan.chunk, max(1, limit))
        self.products = batched_hvp(loss, params, plan.batched)
        self.params = params
        self.sizes = [p.numel() for p in params]
        self.hvps = 0

    def __call__(self, block: Tensor) -> Tensor:
        like = self.params[0]
        out = []
        for start in range(0, block.shape[0], self.chunk):
            part = block[start : start + self.chunk].to(device=like.device, dtype=like.dtype)
            count = part.shape[0]
            tangents = tuple(
                piece.reshape(count, *p.shape).contiguous()
                for piece, p in zip(part.split(self.sizes, dim=1), self.params)
            )
            products = self.products(tangents)
            out.append(torch.cat([h.reshape(count, -1) for h in products], dim=1).to(torch.float64).cpu())
            self.hvps += count
        return torch.cat(out) if out else block.new_zeros(0, block.shape[1])


def _mean_and_se(terms: Tensor) -> tuple[float, float]:
    mean = float(terms.mean())
    se = float(terms.std(unbiased=True) / math.sqrt(terms.numel())) if terms.numel() > 1 else math.nan
    return mean, se


# --------------------------------------------------------------------------------------------------
# Trace


def hessian_trace(
    model: nn.Module,
    loss_fn: LossFn,
    inputs: Tensor,
    targets: Tensor,
    samples: int,
    generator: torch.Generator | None,
    *,
    train: bool = False,
    chunk_size: int | None = None,
) -> TraceEstimate:
    """Hutchinson's estimate of tr(H) with its standard error (module docstring), S = ``samples``
    >= 2 Rademacher probes from ``generator``; ``chunk_size`` probes per batched HVP call.

    With the same generator state the probes are those of ``hutchinson_diagonal``, so the value
    equals the sum of that diagonal estimate.
    """
    check_count("samples", samples, 2)
    _check_common(generator, chunk_size)
    problem = loss_of_parameters(model, loss_fn, inputs, targets, train=train)
    quad, _, hvps = _probe_terms(problem, samples, generator, chunk_size)
    value, se = _mean_and_se(quad)
    return TraceEstimate(value, se, "hutchinson", samples, hvps)


def _probe_terms(problem, samples, generator, chunk_size):
    """Per probe z^T H z and ||H z||^2 (float64), in chunks; and the products used."""
    total = sum(p.numel() for p in problem.params)
    batched = _Batched(problem, samples, chunk_size)
    quad, squares = [], []
    for start in range(0, samples, batched.chunk):
        z = _rademacher(generator, min(batched.chunk, samples - start), total)
        hz = batched(z)
        quad.append((z * hz).sum(1))
        squares.append((hz * hz).sum(1))
    return torch.cat(quad), torch.cat(squares), batched.hvps


def hutchpp_trace(
    model: nn.Module,
    loss_fn: LossFn,
    inputs: Tensor,
    targets: Tensor,
    samples: int,
    generator: torch.Generator | None,
    *,
    train: bool = False,
    chunk_size: int | None = None,
) -> TraceEstimate:
    """Hutch++'s estimate of tr(H) with its (conditional) standard error (module docstring).

    Budget S = ``samples`` >= 4 products: k = min(S // 3, P) sketch vectors, g = S - 2k probes
    (none when k = P: then Q = I, the estimate is exact and ``hvps`` = P). All random vectors are
    Rademacher from ``generator``, the sketch first.
    """
    check_count("samples", samples, 4)
    _check_common(generator, chunk_size)
    problem = loss_of_parameters(model, loss_fn, inputs, targets, train=train)
    total = sum(p.numel() for p in problem.params)
    sketch = min(samples // 3, total)
    exact = sketch == total
    probes = 0 if exact else samples - 2 * sketch
    batched = _Batched(problem, max(sketch, probes), chunk_size)
    if exact:
        basis = torch.eye(total, dtype=torch.float64)  # Q = I: tr(Q^T H Q) = tr(H)
    else:
        y = batched(_rademacher(generator, sketch, total))  # rows: (H s_j)^T
        basis = torch.linalg.qr(y.T, mode="reduced").Q.T.contiguous()  # rows: orthonormal q_j
    top = float((basis * batched(basis)).sum())
    if exact:
        return TraceEstimate(top, 0.0, "hutch++", samples, batched.hvps, sketch, 0, True)
    g = _rademacher(generator, probes, total)
    deflated = g - (g @ basis.T) @ basis
    deflated = deflated - (deflated @ basis.T) @ basis  # twice: orthogonal to rounding
    terms = (deflated * batched(deflated)).sum(1)
    rest, se = _mean_and_se(terms)
    return TraceEstimate(top + rest, se, "hutch++", samples, batched.hvps, sketch, probes, False)


# --------------------------------------------------------------------------------------------------
# Extreme eigenvalues

_WHICH = ("LA", "SA", "LM")


def top_eigenvalues(
    model: nn.Module,
    loss_fn: LossFn,
    inputs: Tensor,
    targets: Tensor,
    k: int = 3,
    *,
    which: str = "LA",
    tol: float | None = None,
    maxiter: int | None = None,
    ncv: int | None = None,
    generator: torch.Generator | None = None,
    train: bool = False,
    operator: HessianOperator | None = None,
) -> Eigenvalues:
    """The k extreme eigenvalues of H by Lanczos (``scipy.sparse.linalg.eigsh`` on HVPs).

    Args:
        k: how many, 1 <= k < P.
        which: "LA" largest algebraic (default: the top-k), "SA" smallest algebraic (k = 1: the
            most negative eigenvalue), "LM" largest magnitude.
        tol: ARPACK's relative accuracy of the Ritz values; default 0 (machine precision) for
            float64 parameters, 1e-4 for lower precision (the products' rounding would keep
            ARPACK from converging further).
        maxiter, ncv: passed to eigsh (defaults: ARPACK's, i.e. 10 P and max(2k + 1, 20)).
        generator: draws the start vector (standard normal); None: a generator seeded 0, so the
            result is reproducible.
        operator: a :class:`HessianOperator` to reuse (its graph and HVP count); then model,
            loss_fn, inputs, targets and train are ignored.

    Returns:
        :class:`Eigenvalues` with ``hvps`` the products this call used.

    Raises:
        CurvatureError: bad input, k out of range, unknown ``which``.
    """
    from scipy.sparse.linalg import ArpackNoConvergence, eigsh

    if which not in _WHICH:
        raise CurvatureError(f"which: got {which!r}; allowed: {', '.join(_WHICH)}")
    check_count("k", k, 1)
    _check_common(generator, None)
    op = operator or hessian_operator(model, loss_fn, inputs, targets, train=train)
    if k >= op.dimension:
        raise CurvatureError(f"k: got {k}; allowed: fewer than the {op.dimension} parameters (Lanczos needs k < P)")
    if tol is None:
        tol = 0.0 if op.dtype == torch.float64 else 1e-4
    generator = generator or torch.Generator().manual_seed(0)
    start = torch.randn(op.dimension, generator=generator, dtype=torch.float64,
                        device=generator.device).cpu().numpy()  # fmt: skip
    before = op.hvps
    converged = True
    try:
        values = eigsh(op.linear_operator(), k=k, which=which, tol=tol, maxiter=maxiter, ncv=ncv,
                       v0=start, return_eigenvectors=False)  # fmt: skip
    except ArpackNoConvergence as failure:
        values, converged = np.asarray(failure.eigenvalues), False
    values = np.sort(np.asarray(values, dtype=np.float64).real)
    if which != "SA":
        values = values[::-1].copy()
    return Eigenvalues(values, which, k, op.hvps - before, float(tol), converged)


# --------------------------------------------------------------------------------------------------
# Spectral density


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


# --------------------------------------------------------------------------------------------------
# The diagonal's share


def diagonal_share(
    model: nn.Module,
    loss_fn: LossFn,
    inputs: Tensor,
    targets: Tensor,
    diagonal: Mapping[str, Tensor] | Tensor,
    samples: int,
    generator: torch.Generator | None,
    *,
    train: bool = False,
    chunk_size: int | None = None,
) -> DiagonalShare:
    """||diag H|| / ||H||_F, ||diag H|| exact from ``diagonal``, ||H||_F^2 = E||H z||^2 from
    S = ``samples`` >= 2 Rademacher probes; the standard error by the delta method (module
    docstring).

    ``diagonal``: name -> tensor per trainable parameter (a ``DiagonalHessian``, e.g. from
    ``exact_diagonal``), or one flat vector of P entries in parameter order.
    """
    check_count("samples", samples, 2)
    _check_common(generator, chunk_size)
    problem = loss_of_parameters(model, loss_fn, inputs, targets, train=train)
    flat = _flat_diagonal(diagonal, problem)
    diagonal_norm = float(flat.norm())
    quad, squares, hvps = _probe_terms(problem, samples, generator, chunk_size)
    trace, trace_se = _mean_and_se(quad)
    f2, f2_se = _mean_and_se(squares)
    frobenius = math.sqrt(f2) if f2 > 0 else 0.0
    share = diagonal_norm / frobenius if frobenius > 0 else math.nan
    share_se = share * f2_se / (2 * f2) if f2 > 0 else math.nan
    frob_se = f2_se / (2 * frobenius) if frobenius > 0 else math.nan
    return DiagonalShare(share, share_se, diagonal_norm, f2, f2_se, frobenius, frob_se, trace,
                         trace_se, samples, hvps)  # fmt: skip


def _flat_diagonal(diagonal, problem: LossOfParameters) -> Tensor:
    names, params, _ = problem
    total = sum(p.numel() for p in params)
    if isinstance(diagonal, Tensor):
        if diagonal.numel() != total:
            raise CurvatureError(f"diagonal: got {diagonal.numel()} entries; the model has {total} trainable ones")
        return diagonal.detach().reshape(-1).to(torch.float64).cpu()
    if not isinstance(diagonal, Mapping):
        raise CurvatureError(f"diagonal: got {type(diagonal).__name__}; allowed: a mapping name -> tensor or a tensor")
    if list(diagonal) != list(names):
        raise CurvatureError(
            f"diagonal: its parameters {list(diagonal)} are not the model's trainable ones {list(names)} (in order)"
        )
    parts = []
    for name, p in zip(names, params):
        value = diagonal[name]
        if tuple(value.shape) != tuple(p.shape):
            raise CurvatureError(f"diagonal[{name!r}]: shape {tuple(value.shape)}; the parameter's is {tuple(p.shape)}")
        parts.append(value.detach().reshape(-1).to(torch.float64).cpu())
    return torch.cat(parts)
