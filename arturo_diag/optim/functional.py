"""The math of arTuRO as small pure functions on tensors.

Every function here implements one numbered step of ``ARTURO.md`` ("One step, given the minibatch
gradient ``g`` at the current weights ``theta``") or one ablation of it. They are elementwise over
any tensor shape (one parameter, or many parameters flattened into one buffer) and return new
tensors; the optimizer class only orchestrates them. Symbols follow ARTURO.md:

==============  =====================  ==========================================
symbol          argument               meaning
==============  =====================  ==========================================
``theta``       ``weight``             the network weight seen by the filter
``mu``          ``mean``               mean of the Gaussian over the weight
``pi``          ``precision``          its precision (1 / variance)
``a``, ``b``    ``curvature``,         surrogate gradient model ``g(theta) = a*theta + b``
                ``intercept``
``P``           ``cov_bb/ba/aa``       2x2 filter covariance over ``(b, a)``
``q``, ``r``    ``dynamic_model_noise``, ``measurement_noise``
``c``           ``prior_curvature``    ``rho * lam`` (``reg_weight * prior_prec``)
``rho``, ``nu`` ``reg_weight``, ``nu``
``eta``         ``eta``                dual variable of the trust region
==============  =====================  ==========================================

Reference: Dahlinger et al., "Information-Theoretic Trust Regions for Stochastic Gradient-Based
Optimization", arXiv 2310.20574.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

#: initial value of the curvature estimate ``a`` (ARTURO.md, "State per coordinate").
INITIAL_CURVATURE = 0.1
#: upper end of the first bisection bracket and cap of later ones (ARTURO.md step 4).
ETA_MAX = 10000.0


class FilterState(NamedTuple):
    """The recursive-least-squares (Kalman) filter over ``(b, a)`` of one tensor of coordinates."""

    intercept: Tensor  # b, shaped like the parameter
    curvature: Tensor  # a, the diagonal-Hessian estimate
    cov_bb: Tensor  # P_bb
    cov_ba: Tensor  # P_ba
    cov_aa: Tensor  # P_aa


def filter_init(grad: Tensor, start_filter_cov: float) -> FilterState:
    """Initial filter state (ARTURO.md, "State per coordinate").

    ``b = g`` (the first gradient seen), ``a = 0.1``, ``P_bb = P_aa = P0``, ``P_ba = 0``.
    """
    return FilterState(
        intercept=grad.clone(),
        curvature=torch.full_like(grad, INITIAL_CURVATURE),
        cov_bb=torch.full_like(grad, start_filter_cov),
        cov_ba=torch.zeros_like(grad),
        cov_aa=torch.full_like(grad, start_filter_cov),
    )


def filter_predict(state: FilterState, dynamic_model_noise: float) -> FilterState:
    """Filter predict, ARTURO.md step 1: ``P_bb += q``, ``P_aa += q`` (``P_ba`` gets 0).

    The drift model: the surrogate's parameters may move between steps, so their uncertainty grows.
    With ``q = 0`` the filter is plain recursive least squares (the "no drift" ablation).
    """
    if dynamic_model_noise == 0.0:
        return state
    return state._replace(
        cov_bb=state.cov_bb + dynamic_model_noise,
        cov_aa=state.cov_aa + dynamic_model_noise,
    )


def filter_update(state: FilterState, weight: Tensor, grad: Tensor, measurement_noise: float) -> FilterState:
    """Filter update, ARTURO.md step 2, with observation row ``h = [1, theta]`` and observation ``g``.

    ``s = P_bb + 2 theta P_ba + theta^2 P_aa + r``; gains ``k_b = (P_bb + theta P_ba)/s``,
    ``k_a = (P_ba + theta P_aa)/s``; innovation ``d = g - (a theta + b)``; ``b += k_b d``,
    ``a += k_a d``; ``P_bb -= k_b^2 s``, ``P_ba -= k_b k_a s``, ``P_aa -= k_a^2 s``.

    ``u = P h`` is formed once: ``s = u_b + theta u_a + r`` and ``k^2 s = k u`` are the same
    quantities as above, with fewer passes over memory.
    """
    u_b = torch.addcmul(state.cov_bb, weight, state.cov_ba)  # P_bb + theta P_ba
    u_a = torch.addcmul(state.cov_ba, weight, state.cov_aa)  # P_ba + theta P_aa
    s = torch.addcmul(u_b, weight, u_a).add_(measurement_noise)
    k_b = u_b / s
    k_a = u_a / s
    innovation = grad - torch.addcmul(state.intercept, state.curvature, weight)
    return FilterState(
        intercept=torch.addcmul(state.intercept, k_b, innovation),
        curvature=torch.addcmul(state.curvature, k_a, innovation),
        cov_bb=torch.addcmul(state.cov_bb, k_b, u_b, value=-1.0),
        cov_ba=torch.addcmul(state.cov_ba, k_b, u_a, value=-1.0),
        cov_aa=torch.addcmul(state.cov_aa, k_a, u_a, value=-1.0),
    )


def oracle_filter_state(state: FilterState, weight: Tensor, grad: Tensor, curvature: Tensor) -> FilterState:
    """Oracle-curvature ablation (ARTURO.md "Ablations"): replace ``a`` by a reference diagonal Hessian.

    ``b`` is reset so that ``a theta + b`` still equals the observed gradient: ``b = g - a theta``.
    The filter covariance is left as the filter computed it.
    """
    curvature = curvature.to(dtype=weight.dtype, device=weight.device)
    return state._replace(curvature=curvature.clone(), intercept=torch.addcmul(grad, curvature, weight, value=-1.0))


def closed_form_mean(
    mean: Tensor, precision: Tensor, curvature: Tensor, intercept: Tensor, prior_curvature: float, eta: float
) -> Tensor:
    """New mean for a trial ``eta``, ARTURO.md step 3: ``mu' = (eta pi mu - b) / (a + c + eta pi)``."""
    denominator = curvature + prior_curvature + eta * precision
    return (eta * precision * mean - intercept) / denominator


def decoupled_precision(
    precision: Tensor, curvature: Tensor, prior_curvature: float, reg_weight: float, nu: float
) -> Tensor:
    """New precision with the decoupled KL, ARTURO.md step 3: ``pi' = (a + c + nu pi) / (rho + nu)``.

    Independent of ``eta``: the covariance part of the KL is a penalty with weight ``nu``.
    """
    return (curvature + prior_curvature + nu * precision) / (reg_weight + nu)


def coupled_precision(
    precision: Tensor, curvature: Tensor, prior_curvature: float, reg_weight: float, eta: float
) -> Tensor:
    """New precision with the coupled KL (ablation): ``pi'(eta) = (a + c + eta pi) / (rho + eta)``.

    At ``eta = inf`` (a zero KL bound: no step) this is its limit ``pi``.
    """
    if math.isinf(eta):
        return precision.clone()
    return (curvature + prior_curvature + eta * precision) / (reg_weight + eta)


def kl_mean_part(precision: Tensor, new_mean: Tensor, mean: Tensor) -> Tensor:
    """Mean part of the KL, ARTURO.md step 4: ``K = 0.5 sum pi (mu' - mu)^2`` (a 0-dim tensor)."""
    return 0.5 * torch.sum(precision * (new_mean - mean) ** 2)


def kl_full(precision: Tensor, new_precision: Tensor, new_mean: Tensor, mean: Tensor) -> Tensor:
    """Full ``KL(q'||q)`` of the diagonal Gaussians, the coupled-KL ablation's constraint.

    ``K = 0.5 sum [pi (mu' - mu)^2 + pi/pi' - 1 - ln(pi/pi')]``.
    """
    ratio = precision / new_precision
    return 0.5 * torch.sum(precision * (new_mean - mean) ** 2 + ratio - 1.0 - torch.log(ratio))


# --------------------------------------------------------------------------------------------
# The dual problem of one tensor of coordinates, with the eta-independent parts precomputed.
# --------------------------------------------------------------------------------------------


class DualTerms(NamedTuple):
    """The pieces of ``K(eta)`` that do not depend on ``eta`` (ARTURO.md steps 3-4).

    With ``A = a + c`` and the surrogate's gradient at the mean ``s = b + A mu``,
    ``mu'(eta) - mu = -s / (A + eta pi)``, so the mean part of the KL is
    ``0.5 sum pi s^2 / (A + eta pi)^2``: one pass over memory per trial ``eta``.
    """

    curvature_total: Tensor  # A = a + c (guarded: clamped, see `guard_curvature`)
    step_numerator: Tensor  # s = b + A mu
    weighted_numerator: Tensor  # pi s^2
    precision: Tensor  # pi
    reg_weight: float  # rho, needed by the coupled KL


def dual_terms(
    mean: Tensor, precision: Tensor, curvature: Tensor, intercept: Tensor, prior_curvature: float, reg_weight: float
) -> DualTerms:
    """Precompute :class:`DualTerms` from the state after the filter update."""
    total = curvature + prior_curvature
    numerator = torch.addcmul(intercept, total, mean)
    return DualTerms(total, numerator, precision * numerator * numerator, precision, reg_weight)


def guard_curvature(curvature: Tensor) -> tuple[Tensor, int]:
    """``guard=True`` (a named improvement, not in the published rule): clamp ``a`` at 0 in the update.

    With ``a >= 0``, ``c >= 0`` and ``pi > 0`` the denominator ``a + c + eta pi`` and the new precision
    stay positive, so a negative curvature estimate can neither flip nor blow up a step. The filter's
    own ``a`` is left alone. Returns the clamped curvature and how many coordinates it changed.
    The clamp is at the smallest positive normal number so that ``c = 0, eta = 0`` still divides.
    """
    floor = torch.finfo(curvature.dtype).tiny
    acted = int(torch.count_nonzero(curvature < floor))
    return curvature.clamp(min=floor), acted


def kl_decoupled_of_eta(terms: DualTerms, eta: float) -> Tensor:
    """``K(eta)`` for the decoupled KL (mean part only), a 0-dim tensor. Equals
    ``kl_mean_part(pi, closed_form_mean(..., eta), mu)`` up to rounding."""
    denominator = torch.add(terms.curvature_total, terms.precision, alpha=eta)
    return 0.5 * torch.sum(terms.weighted_numerator / (denominator * denominator))


def kl_coupled_of_eta(terms: DualTerms, eta: float) -> Tensor:
    """``K(eta)`` for the coupled KL, a 0-dim tensor. Equals
    ``kl_full(pi, coupled_precision(..., eta), closed_form_mean(..., eta), mu)`` up to rounding."""
    denominator = torch.add(terms.curvature_total, terms.precision, alpha=eta)
    ratio = terms.precision * (terms.reg_weight + eta) / denominator  # pi / pi'(eta)
    mean_part = terms.weighted_numerator / (denominator * denominator)
    return 0.5 * torch.sum(mean_part + ratio - 1.0 - torch.log(ratio))


def new_mean_from_terms(mean: Tensor, terms: DualTerms, eta: float) -> tuple[Tensor, Tensor]:
    """ARTURO.md step 5's mean ``mu'(eta) = mu - s / (A + eta pi)``; also returns the denominator."""
    denominator = torch.add(terms.curvature_total, terms.precision, alpha=eta)
    return mean - terms.step_numerator / denominator, denominator


# --------------------------------------------------------------------------------------------
# Dual solvers: functions of a callable K(eta) -> float.
# --------------------------------------------------------------------------------------------


class DualSolution(NamedTuple):
    """Result of a dual solve: ``eta``, the final bracket, how many times ``K`` was evaluated."""

    eta: float
    eta_lo: float
    eta_hi: float
    iterations: int
    converged: bool = True


def solve_eta_bisection(
    kl: Callable[[float], float], kl_bound: float, eta_prev: float | None, eta_tol: float, dtype: np.dtype = np.float64
) -> DualSolution:
    """The published coarse bisection for ``K(eta) = eps``, ARTURO.md step 4, quirks included.

    Bracket ``[0, 10000]`` on the first step (``eta_prev is None``), afterwards
    ``[eta_prev/3, min(3 eta_prev, 10000)]``. While ``hi - lo > eta_tol``: ``m = (lo + hi)/2``;
    ``K(m) > eps`` moves ``lo`` up, else ``hi`` down; stop early once ``|K(m) - eps| < 0.1 eps``.
    Returns the midpoint of the final bracket (not the last ``m``). Hence once
    ``eta_prev <= 0.1875`` nothing is evaluated and ``eta`` grows by 5/3 per step, and for
    ``eta_prev`` in ``(0.1875, 0.375]`` it is either frozen or jumps to ``7/3 eta_prev``.

    Arithmetic on ``eta`` happens in ``dtype`` (the parameters' dtype, see ARTURO.md "dtype").
    """
    t = np.dtype(dtype).type
    eps = t(kl_bound)
    tol = t(eta_tol)
    if eta_prev is None:
        lo, hi = t(0.0), t(ETA_MAX)
    else:
        prev = t(eta_prev)
        lo, hi = prev / t(3.0), min(prev * t(3.0), t(ETA_MAX))
    iterations = 0
    while hi - lo > tol:
        m = (lo + hi) / t(2.0)
        k = t(kl(float(m)))
        iterations += 1
        if k > eps:
            lo = m
        else:
            hi = m
        if abs(k - eps) < t(0.1) * eps:
            break
    eta = (lo + hi) / t(2.0)
    return DualSolution(float(eta), float(lo), float(hi), iterations)


def solve_eta_exact(
    kl: Callable[[float], float], kl_bound: float, eta_prev: float | None, rtol: float = 1e-6, max_iterations: int = 100
) -> DualSolution:
    """``dual="exact"`` (a named improvement): solve ``K(eta) = eps`` to ``|K/eps - 1| <= rtol``.

    KKT: if the unconstrained step already satisfies the bound (``K(0) <= eps``) then ``eta = 0``.
    Otherwise bracket the root by geometric steps from ``eta_prev`` and refine with a safeguarded
    secant (Illinois) step on ``phi(eta) = K(eta)^(-1/2) - eps^(-1/2)``, which is exactly linear in
    ``eta`` for one coordinate of the decoupled KL and nearly linear in general; the bracket is kept,
    and a step that leaves it is replaced by bisection. ``K`` must decrease in ``eta`` on the bracket
    (true when every denominator ``a + c + eta pi`` is positive). A ``K`` that is not finite counts
    as "above the bound".

    A zero bound (``eps = 0``) allows no mean step: the root is ``eta = inf`` (``mu' = mu``), returned
    as such unless ``K(0)`` is already 0.
    """
    iterations = 0
    if not kl_bound > 0.0:
        k0 = kl(0.0)
        return DualSolution(0.0, 0.0, 0.0, 1) if k0 == 0.0 else DualSolution(math.inf, math.inf, math.inf, 1)

    def phi(eta: float) -> float:
        nonlocal iterations
        iterations += 1
        k = kl(eta)
        if not math.isfinite(k) or k <= 0.0:
            return -math.inf if not (k <= 0.0) else math.inf
        return 1.0 / math.sqrt(k) - 1.0 / math.sqrt(kl_bound)

    def done(value: float) -> bool:
        if not math.isfinite(value):
            return False
        root = value + 1.0 / math.sqrt(kl_bound)  # K^(-1/2); 0 when K is too large to tell from eps's scale
        if not (root > 0.0 and root**2 > 0.0):
            return False
        k = 1.0 / root**2
        return abs(k / kl_bound - 1.0) <= rtol

    f0 = phi(0.0)
    if f0 >= 0.0 or done(f0):
        return DualSolution(0.0, 0.0, 0.0, iterations)
    lo, f_lo = 0.0, f0
    guess = eta_prev if (eta_prev is not None and 0.0 < eta_prev < math.inf) else 1.0
    hi, f_hi = guess, phi(guess)
    while f_hi < 0.0 and not done(f_hi):  # K(hi) > eps: move up
        lo, f_lo = hi, f_hi
        hi *= 10.0
        if hi > 1e30:
            return DualSolution(hi, lo, hi, iterations, converged=False)
        f_hi = phi(hi)
    if done(f_hi):
        return DualSolution(hi, lo, hi, iterations)
    side = 0
    for _ in range(max_iterations):
        if math.isfinite(f_lo) and math.isfinite(f_hi) and f_hi != f_lo:
            m = hi - f_hi * (hi - lo) / (f_hi - f_lo)
            if not (lo < m < hi):
                m = 0.5 * (lo + hi)
        else:
            m = 0.5 * (lo + hi)
        f_m = phi(m)
        if done(f_m):
            return DualSolution(m, lo, hi, iterations)
        if f_m < 0.0:  # K(m) > eps
            lo, f_lo = m, f_m
            if side == -1:
                f_hi *= 0.5  # Illinois: halve the stale end so the secant does not stall
            side = -1
        else:
            hi, f_hi = m, f_m
            if side == 1:
                f_lo *= 0.5
            side = 1
        if hi - lo <= 1e-15 * max(hi, 1e-300):
            break
    return DualSolution(0.5 * (lo + hi), lo, hi, iterations, converged=False)
