"""The spectrum of the probe loss's Hessian from Hessian-vector products: trace, extreme
eigenvalues, spectral density and the diagonal's share of the Frobenius norm.

H is the P x P Hessian of the probe loss L(theta) (see :mod:`arturo_diag.curvature.functional`;
eval mode by default), never formed. This module is the public face; each quantity lives in its own
module, whose docstring gives its math:

- :func:`hessian_trace` (Hutchinson) and :func:`hutchpp_trace` (Hutch++):
  :mod:`arturo_diag.curvature.spectrum_trace`;
- :func:`top_eigenvalues` (Lanczos, ARPACK): :mod:`arturo_diag.curvature.spectrum_eigen`;
- :func:`spectral_density` (stochastic Lanczos quadrature):
  :mod:`arturo_diag.curvature.spectrum_density`;
- :func:`diagonal_share` (||diag H|| / ||H||_F): :mod:`arturo_diag.curvature.spectrum_share`;
- :class:`HessianOperator` and :func:`hessian_operator`: :mod:`arturo_diag.curvature.spectrum_operator`;
  the probes and batched products the estimators share: :mod:`arturo_diag.curvature.spectrum_probes`.

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

from arturo_diag.curvature.spectrum_density import SpectralDensity, spectral_density
from arturo_diag.curvature.spectrum_eigen import Eigenvalues, top_eigenvalues
from arturo_diag.curvature.spectrum_operator import HessianOperator, LossFn, hessian_operator
from arturo_diag.curvature.spectrum_share import DiagonalShare, diagonal_share
from arturo_diag.curvature.spectrum_trace import TraceEstimate, hessian_trace, hutchpp_trace

__all__ = [
    "DiagonalShare",
    "Eigenvalues",
    "HessianOperator",
    "LossFn",
    "SpectralDensity",
    "TraceEstimate",
    "diagonal_share",
    "hessian_operator",
    "hessian_trace",
    "hutchpp_trace",
    "spectral_density",
    "top_eigenvalues",
]
