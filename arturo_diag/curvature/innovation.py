"""arTuRO's own innovation residuals at one step: what the filter saw against what it expected.

Per coordinate, with the filter state BEFORE the step (intercept ``b``, curvature ``a``, covariance
``P_bb``, ``P_ba``, ``P_aa``), the weight the filter saw (theta after the step's weight decay,
ARTURO.md "One step" 0: ``theta = w - lr_g * wd * w``, ``w`` the weight before the step, ``lr_g``
its group's ``lr``) and the step's minibatch gradient ``g`` (ARTURO.md steps 1-2, with the drift
``q`` and the measurement noise ``r`` of the parameter's group):

    innovation            d = g - (a theta + b)
    its predicted variance s = (P_bb + q) + 2 theta P_ba + theta^2 (P_aa + q) + r

``s`` is the variance the filter assigns to ``d`` (the observation row ``h = [1, theta]`` through
the predicted covariance, plus ``r``). When the filter's model is right (the gradient is linear in
theta with the drift it assumes, and one minibatch gradient carries noise of variance ``r``),
``d ~ N(0, s)``: the normalised innovation ``d^2 / s`` is chi-squared with one degree of freedom,
mean 1 and median 0.455 (:data:`CHI2_1_MEDIAN`). Much larger: the filter is overconfident (r or
q too small, or the gradient not linear in theta); much smaller: it claims more noise than the
residuals show. Computed in float64 from the state's own dtype (arXiv 2310.20574; the filter's
step 2).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

__all__ = ["CHI2_1_MEDIAN", "innovation"]

#: The median of a chi-squared variable with one degree of freedom: that of d^2/s when d ~ N(0, s).
CHI2_1_MEDIAN = 0.45493642311957283


def innovation(
    weight_before: Tensor,
    grad: Tensor,
    state: Mapping[str, Tensor],
    *,
    lr: float,
    weight_decay: float,
    q: float,
    r: float,
) -> tuple[Tensor, Tensor]:
    """``(d, s)`` of one parameter, float64, shaped like it (see the module docstring).

    ``state``: the filter before the step, keys ``intercept``, ``curvature``, ``filter_cov_bb``,
    ``filter_cov_ba``, ``filter_cov_aa`` (the optimizer's state names).
    """
    w = weight_before.detach().to(torch.float64)
    theta = w - (float(lr) * float(weight_decay)) * w  # step 0, as the optimizer writes it
    b, a = state["intercept"].to(torch.float64), state["curvature"].to(torch.float64)
    p_bb = state["filter_cov_bb"].to(torch.float64) + float(q)  # step 1, predict
    p_ba = state["filter_cov_ba"].to(torch.float64)
    p_aa = state["filter_cov_aa"].to(torch.float64) + float(q)
    d = grad.detach().to(torch.float64) - (a * theta + b)
    s = p_bb + 2.0 * theta * p_ba + theta * theta * p_aa + float(r)
    return d.reshape(weight_before.shape), s.reshape(weight_before.shape)
