"""Cockpit's alpha gauge: where a step lands on the local 1-D quadratic along its own direction.

Schneider, Dangel and Hennig, "Cockpit: A Practical Debugging Tool for the Training of Deep Neural
Networks" (NeurIPS 2021), quantity ``Alpha``. For the step from theta_t to theta_{t+1}, direction
``d = theta_{t+1} - theta_t``, the loss along it is ``f(tau) = L(theta_t + tau d)``, tau in [0, 1]
the fraction of the step. Observed: the losses ``f0 = f(0)``, ``f1 = f(1)`` and the directional
derivatives ``df0 = grad L(theta_t) . d``, ``df1 = grad L(theta_{t+1}) . d``. Fit
``f(tau) ~ mu0 + mu1 tau + mu2 tau^2`` to the four (three unknowns) by least squares with
Cockpit's observation matrix

    Phi^T = [[1, 0, 0], [1, 1, 1], [0, 1, 0], [0, 1, 2]],  y = (f0, f1, df0, df1),
    mu = (Phi W Phi^T)^-1 Phi W y,

then, as Cockpit's ``_get_alpha``: the point "on the other side" of the valley, where the fit
returns to f(0), is ``alpha_bar = -mu1 / mu2``, and

    alpha = 2 * (step length) / alpha_bar - 1 = -2 mu2 / mu1 - 1     (step length 1 in tau),

so alpha = -1: the step did not move along the valley (a tiny step); 0: it landed on the 1-D
minimum; +1: it overshot to the mirror point at the start's height; > 1: it went up the far side;
< -1: it went uphill from the start (mu1 > 0). Cockpit's conventions for degenerate fits are kept:
a concave fit (mu2 < 0: still going down where it stepped to) gives -1, and so does a flat one
(mu2 = 0, mu1 != 0: Cockpit divides to an infinite alpha_bar); a zero step (d = 0) gives -1. Two
cases Cockpit leaves to floating point are fixed here: mu1 = 0 with mu2 > 0 (the start is the 1-D
minimum, any step overshoots) gives +inf (Cockpit's -0.0 division gives -inf or +inf by the zero's
sign), and mu1 = mu2 = 0 gives NaN; so does a non-finite observation.

The fit's weights W. Cockpit fits in units of distance (tau * ||d||, slopes ``g . d / ||d||``) and
weights each observation by its inverse mini-batch variance (per-sample losses and projected
per-sample gradients), because its four values come from two different noisy minibatches. Here
the four values are exact, all four from the snapshot's one fixed batch, one deterministic
function: there is no sampling noise to weight by, and on a loss that is quadratic along the step
every weighting gives the same, exact quadratic. What remains is the misfit of a non-quadratic
loss, and that is weighted equally in LOSS units: W = I in tau (the four residuals are all
losses, f in loss and f'(tau) = g . d in loss per step), which is Cockpit's distance-unit fit with
variances (1, 1) for f and (1/||d||^2, 1/||d||^2) for its slopes. Unlike W = I in distance units
this does not change when the parameters are rescaled, and alpha is a function of (f0, f1, df0,
df1) alone, the four numbers stored beside it. It costs two gradient evaluations on the batch and
no per-sample gradients.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import grad_and_value

from arturo_diag.curvature.functional import loss_of_parameters

__all__ = ["alpha_from_observations", "fit_quadratic_in_tau", "step_alpha"]

# Cockpit's observation matrix with the second point at tau = 1: rows f(0), f(1), f'(0), f'(1)
_PHI = np.array([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.0, 1.0, 2.0]]).T


def fit_quadratic_in_tau(f0: float, f1: float, df0: float, df1: float) -> np.ndarray:
    """``(mu0, mu1, mu2)`` of ``f(tau) ~ mu0 + mu1 tau + mu2 tau^2`` fitted to f(0), f(1), f'(0),
    f'(1) by least squares with equal weights in tau (see the module docstring)."""
    y = np.array([f0, f1, df0, df1], dtype=np.float64)
    return np.linalg.solve(_PHI @ _PHI.T, _PHI @ y)


def alpha_from_observations(f0: float, f1: float, df0: float, df1: float, *, moved: bool = True) -> float:
    """Cockpit's alpha of a step from its losses and directional derivatives ``g . d`` at both ends
    (``moved=False``: the step was zero, alpha = -1); the conventions are the module docstring's."""
    if not moved:
        return -1.0
    if not all(math.isfinite(v) for v in (f0, f1, df0, df1)):
        return math.nan
    _, mu1, mu2 = (float(v) for v in fit_quadratic_in_tau(f0, f1, df0, df1))
    # the solve's rounding (it differs between LAPACK builds) is no slope and no curvature
    rounding = 16 * np.finfo(np.float64).eps * (abs(f0) + abs(f1) + abs(df0) + abs(df1))
    mu1 = 0.0 if abs(mu1) <= rounding else mu1
    mu2 = 0.0 if abs(mu2) <= rounding else mu2
    if mu2 < 0 or (mu2 == 0 and mu1 != 0):
        return -1.0
    if mu1 == 0:
        return math.inf if mu2 > 0 else math.nan
    return -2.0 * mu2 / mu1 - 1.0


def step_alpha(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    inputs: Tensor,
    targets: Tensor,
    weights_before: Mapping[str, Tensor],
    *,
    train: bool = False,
) -> dict[str, float]:
    """Alpha of the step from ``weights_before`` (theta_t, by parameter name) to the model's current
    weights (theta_{t+1}) on the loss of one batch, in eval mode (``train=True``: batch statistics;
    see :mod:`arturo_diag.curvature.functional`). The model is not modified: theta_t enters through
    ``torch.func.functional_call``. A trainable parameter missing from ``weights_before`` did not move.

    Returns ``alpha``, ``alpha_f0``, ``alpha_f1``, ``alpha_df0``, ``alpha_df1`` (df = grad L . d,
    accumulated in float64).
    """
    names, after, loss = loss_of_parameters(model, loss_fn, inputs, targets, train=train)
    before = tuple(
        weights_before[n].detach().to(p.device, p.dtype) if n in weights_before else p for n, p in zip(names, after)
    )
    direction = [(a.double() - b.double()) for a, b in zip(after, before)]
    gradient_and_loss = grad_and_value(loss)
    losses, slopes = [], []
    for point in (before, after):
        grads, value = gradient_and_loss(point)
        losses.append(float(value))
        slopes.append(float(sum(torch.sum(g.double() * d) for g, d in zip(grads, direction))))
    moved = any(bool(torch.any(d != 0)) for d in direction)
    alpha = alpha_from_observations(*losses, *slopes, moved=moved)
    return {
        "alpha": alpha,
        "alpha_f0": losses[0],
        "alpha_f1": losses[1],
        "alpha_df0": slopes[0],
        "alpha_df1": slopes[1],
    }
