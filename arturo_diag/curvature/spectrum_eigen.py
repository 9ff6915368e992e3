"""The extreme eigenvalues of the probe loss's Hessian H from Hessian-vector products (H never
formed; see :mod:`arturo_diag.curvature.spectrum`):

- :func:`top_eigenvalues`: Lanczos (implicitly restarted, ARPACK through
  ``scipy.sparse.linalg.eigsh``) on a float64 ``LinearOperator`` whose matvec is one HVP:
  ``which="LA"`` the k largest (algebraic) eigenvalues, ``which="SA"`` the smallest, e.g. k = 1
  for the most negative one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from arturo_diag.curvature._checks import check_count
from arturo_diag.curvature.errors import CurvatureError
from arturo_diag.curvature.spectrum_operator import HessianOperator, LossFn, hessian_operator
from arturo_diag.curvature.spectrum_probes import _check_common

__all__ = ["Eigenvalues", "top_eigenvalues"]


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
