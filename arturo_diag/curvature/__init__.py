"""Reference diagonal Hessians of a probe loss, with torch.func.

The quantity every function here computes or estimates is h = diag(H), H the Hessian of the probe
loss L(theta) = loss_fn(model(inputs; theta), targets) in the model's trainable parameters theta:
the reference that arTuRO's filtered curvature ``a`` is compared with (arXiv 2310.20574).

- :func:`exact_diagonal`: exact, by one-hot Hessian-vector products ("hvp") or, for networks
  piecewise linear in each weight with cross-entropy or MSE, by the GGN ("ggn").
- :func:`hutchinson_diagonal`: Hutchinson's unbiased estimate and its standard error.
- :func:`gradient_noise`: per-sample gradient mean, variance and Cockpit's GSNR (``noise``).
- :func:`loss_of_parameters`: the one shared "loss as a function of the parameters".

This package imports nothing of arturo-diag but its error base class.
"""
from arturo_diag.curvature.errors import CurvatureError, GGNNotExactError
from arturo_diag.curvature.exact import PIECEWISE_LINEAR_OPT_IN, check_ggn_exact, exact_diagonal
from arturo_diag.curvature.functional import (
    LossOfParameters,
    ParameterLoss,
    evaluation_mode,
    loss_of_parameters,
)
from arturo_diag.curvature.hutchinson import hutchinson_diagonal
from arturo_diag.curvature.noise import GradientNoise, gradient_noise
from arturo_diag.curvature.result import DiagonalHessian

__all__ = [
    "PIECEWISE_LINEAR_OPT_IN",
    "CurvatureError",
    "DiagonalHessian",
    "GGNNotExactError",
    "GradientNoise",
    "LossOfParameters",
    "ParameterLoss",
    "check_ggn_exact",
    "evaluation_mode",
    "exact_diagonal",
    "gradient_noise",
    "hutchinson_diagonal",
    "loss_of_parameters",
]
