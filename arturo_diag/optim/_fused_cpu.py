"""Fused CPU kernels for the faithful (decoupled-KL) step: one pass over memory per stage.

The eager path in :mod:`.functional` runs some fifty elementwise passes per step, each allocating
a temporary; on a CPU that is memory- and page-fault bound (about 9x Adam's step). These numba
kernels compute the same formulas (ARTURO.md steps 0-5) in three fused loops: prepare (weight
decay, filter predict and update, the eta-independent dual terms; it reads the weights and fresh
gradients where they are, no gather pass), one reduction per trial ``eta``, and commit. ``tests/optim/test_fused.py`` checks them against the eager kernels in float64.

Scalars are passed in the arrays' dtype so float32 stays float32 arithmetic, as in the eager path.
"""

from __future__ import annotations

import numpy as np

try:  # numba is optional: without it (or off the CPU) the eager kernels run
    import numba
except ImportError:  # pragma: no cover
    numba = None

AVAILABLE = numba is not None

if AVAILABLE:
    # Parallel loops on numba's own "workqueue" threads: numba's OpenMP layer competes with
    # torch's OpenMP threads, which keep spinning after each torch op (seen: a 390k-element
    # reduction taking 12 ms instead of 0.2 ms on 2 cores); the work queue does not. Serial loops
    # are memory-bound (prepare: 2.2 ms vs 0.41 ms on 2 cores). The work queue does not allow two
    # Python threads to run these kernels at once. NUMBA_THREADING_LAYER, if set, wins.
    # 'reassoc' lets LLVM vectorise the sums (their order changes at rounding level); no other
    # fast-math liberties are taken, so infinities and NaNs propagate as in the eager path.
    import os as _os

    if "NUMBA_THREADING_LAYER" not in _os.environ:
        numba.config.THREADING_LAYER = "workqueue"
    _jit = numba.njit(cache=True, fastmath={"reassoc"}, nogil=True, parallel=True)

    @_jit
    def prepare(
        thetas,
        grads,
        chunk_param,
        chunk_lo,
        chunk_hi,
        chunk_base,
        theta,
        numerator,
        intercept,
        curvature,
        cov_bb,
        cov_ba,
        cov_aa,
        decay,
        q,
        r,
        c,
        lower,
    ):  # pragma: no cover - compiled
        """Steps 0-2 and the dual's numerator, reading each parameter's weights and gradient in place.

        ``thetas``/``grads`` are the parameters' own flat arrays (a tuple, one per parameter); the
        chunk table maps them onto the bucket's flat buffers (chunk ``k`` is elements
        ``chunk_lo[k]:chunk_hi[k]`` of parameter ``chunk_param[k]``, at ``chunk_base[k]`` in the flat
        buffers), so no gather pass copies them first. Writes ``theta <- w - decay*w``
        (``decay = lr_group*wd``; theta is then the mean ``mu``), the filter predict and update of
        ``(b, a, P)``, and the numerator ``s = b + (a + c) mu`` (``a`` clamped at ``lower``: the
        guard's floor, or -inf without guard). Returns how many coordinates the guard changed.
        Elementwise only (no float reduction), so the chunking cannot change a number.
        """
        acted = 0
        for k in numba.prange(chunk_param.shape[0]):
            weights = thetas[chunk_param[k]]
            gradient = grads[chunk_param[k]]
            base = chunk_base[k] - chunk_lo[k]
            for j_signed in range(chunk_lo[k], chunk_hi[k]):
                # unsigned indices: no negative-index wraparound test, so the loop vectorises
                j = np.uintp(j_signed)
                i = np.uintp(base + j_signed)
                t = weights[j]
                t = t - decay * t
                theta[i] = t
                bb = cov_bb[i] + q
                ba = cov_ba[i]
                aa = cov_aa[i] + q
                u_b = bb + t * ba
                u_a = ba + t * aa
                s = u_b + t * u_a + r
                k_b = u_b / s
                k_a = u_a / s
                b = intercept[i]
                a = curvature[i]
                d = gradient[j] - (a * t + b)
                b = b + k_b * d
                a = a + k_a * d
                intercept[i] = b
                curvature[i] = a
                cov_bb[i] = bb - k_b * u_b
                cov_ba[i] = ba - k_b * u_a
                cov_aa[i] = aa - k_a * u_a
                acted += np.int64(a < lower)
                a = lower if a < lower else a  # noqa: FURB136 - NaN stays NaN, as in torch.clamp (max would not)
                numerator[i] = b + (a + c) * t
        return acted

    @_jit
    def kl_of_eta(curvature, precision, numerator, c, lower, eta):  # pragma: no cover - compiled
        """``sum pi s^2 / (a + c + eta pi)^2``: twice the mean part of the KL at ``eta``."""
        acc = numerator.dtype.type(0.0)
        for i in numba.prange(numerator.shape[0]):
            a = curvature[i]
            a = lower if a < lower else a  # noqa: FURB136 - NaN stays NaN (max would not)
            pi = precision[i]
            num = numerator[i]
            den = a + c + eta * pi
            acc += pi * num * num / (den * den)
        return acc

    @_jit
    def commit(theta, precision, curvature, numerator, c, lower, eta, reg_weight, nu):  # pragma: no cover
        """Step 5 in place: ``theta <- mu - s/(a + c + eta pi)``, ``pi <- (a + c + nu pi)/(rho + nu)``.

        Returns ``(sum pi (mu' - mu)^2, #{pi' <= 0}, #{a + c + eta pi <= 0})``.
        """
        acc = theta.dtype.type(0.0)
        bad_precision = 0
        bad_denominator = 0
        scale = reg_weight + nu
        for i in numba.prange(theta.shape[0]):
            a = curvature[i]
            a = lower if a < lower else a  # noqa: FURB136 - NaN stays NaN (max would not)
            pi = precision[i]
            tot = a + c
            den = tot + eta * pi
            delta = numerator[i] / den
            theta[i] = theta[i] - delta
            acc += pi * delta * delta
            new_pi = (tot + nu * pi) / scale
            precision[i] = new_pi
            bad_precision += np.int64(new_pi <= 0)
            bad_denominator += np.int64(den <= 0)
        return acc, bad_precision, bad_denominator
