"""Reference diagonal Hessians of a probe loss, with torch.func.

The quantity every function here computes or estimates is h = diag(H), H the Hessian of the probe
loss L(theta) = loss_fn(model(inputs; theta), targets) in the model's trainable parameters theta:
the reference that arTuRO's filtered curvature ``a`` is compared with (arXiv 2310.20574).

- :func:`exact_diagonal`: exact, by one-hot Hessian-vector products ("hvp") or, for networks
  piecewise linear in each weight with cross-entropy or MSE, by the GGN ("ggn").
- :func:`hutchinson_diagonal`: Hutchinson's unbiased estimate and its standard error.
- :func:`ggn_diagonal`: the exact GGN diagonal of any model torch.func can trace (the Hessian
  diagonal where :func:`check_ggn_exact` proves it, labelled so).
- :func:`hessian_diagonal_cv`: the exact GGN diagonal plus Hutchinson on diag(H - G) only.
- :func:`gradient_noise`: per-sample gradient mean, variance and Cockpit's GSNR (``noise``).
- ``spectrum``: :func:`hessian_trace`, :func:`hutchpp_trace`, :func:`top_eigenvalues`,
  :func:`spectral_density` (SLQ) and :func:`diagonal_share` of the full Hessian, from HVPs.
- :func:`loss_of_parameters`: the one shared "loss as a function of the parameters".

This package imports nothing of arturo-diag but its error base class.
"""

from arturo_diag.curvature.control_variate import hessian_diagonal_cv
from arturo_diag.curvature.errors import CurvatureError, GGNNotExactError
from arturo_diag.curvature.exact import PIECEWISE_LINEAR_OPT_IN, check_ggn_exact, exact_diagonal
from arturo_diag.curvature.functional import (
    LossOfParameters,
    ParameterLoss,
    evaluation_mode,
    loss_of_parameters,
)
from arturo_diag.curvature.ggn_general import GGNDiagonal, ggn_diagonal
from arturo_diag.curvature.hutchinson import hutchinson_diagonal
from arturo_diag.curvature.noise import GradientNoise, gradient_noise
from arturo_diag.curvature.result import DiagonalHessian
from arturo_diag.curvature.spectrum import (
    diagonal_share,
    hessian_operator,
    hessian_trace,
    hutchpp_trace,
    spectral_density,
    top_eigenvalues,
)

__all__ = [
    "PIECEWISE_LINEAR_OPT_IN",
    "CurvatureError",
    "DiagonalHessian",
    "GGNDiagonal",
    "GGNNotExactError",
    "GradientNoise",
    "LossOfParameters",
    "ParameterLoss",
    "check_ggn_exact",
    "diagonal_share",
    "evaluation_mode",
    "exact_diagonal",
    "ggn_diagonal",
    "hessian_diagonal_cv",
    "gradient_noise",
    "hessian_operator",
    "hessian_trace",
    "hutchpp_trace",
    "hutchinson_diagonal",
    "loss_of_parameters",
    "spectral_density",
    "top_eigenvalues",
]
