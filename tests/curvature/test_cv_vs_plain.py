"""hessian_diagonal_cv_compared: the control variate against plain Hutchinson on the same S probes.

Ground truth from torch and numpy alone: the dense Hessian H (torch.autograd.functional.hessian) and
GGN G = J^T H_out J (jacrev) of tiny float64 nets, the probes redrawn here from the seed, plain
Hutchinson's own function, and the Rademacher variance sum_{j != i} A_ij^2 of diag(A)'s estimator
(A = H for plain Hutchinson, H - G for the control variate) for the interval's coverage.
"""

import math

import numpy as np
import pytest
import torch
from curvature_cases import batch, mlp
from general_cases import DTYPE, dense_matrices
from scipy.stats import t as student_t
from torch import nn

from arturo_diag.curvature import hessian_diagonal_cv, hutchinson_diagonal
from arturo_diag.curvature.control_variate import hessian_diagonal_cv_compared

CE = nn.CrossEntropyLoss()


def _case(activation):
    model = mlp(1, activation).eval()
    x, y = batch((4,), classes=3, n=12)
    return model, x, y


def _terms(hessian, ggn, samples, seed):
    """Both estimators' per-probe terms from the probes redrawn as the package draws them."""
    g = torch.Generator().manual_seed(seed)
    draws = torch.stack(
        [torch.randint(0, 2, (hessian.shape[0],), generator=g, dtype=torch.int8) for _ in range(samples)]
    )
    z = (draws.to(DTYPE) * 2 - 1).numpy()
    h, gg = hessian.numpy(), ggn.numpy()
    return z * (z @ h), z * (z @ (h - gg))  # plain, cv


def _numpy_interval(plain, cv, groups):
    """The documented interval, recomputed: delete-one-group jackknife of log(sum A_plain / sum A_cv)."""
    a_plain = np.array([((t - t.mean(0)) ** 2).sum() for t in np.array_split(plain, groups)])
    a_cv = np.array([((t - t.mean(0)) ** 2).sum() for t in np.array_split(cv, groups)])
    logs = np.log((a_plain.sum() - a_plain) / (a_cv.sum() - a_cv))
    se = math.sqrt((groups - 1) / groups * ((logs - logs.mean()) ** 2).sum())
    ratio = plain.var(0, ddof=1).sum() / cv.var(0, ddof=1).sum()
    half = student_t.ppf(0.975, groups - 1) * se
    return ratio * math.exp(-half), ratio * math.exp(half)


@pytest.mark.parametrize("activation", [nn.Tanh, nn.GELU])
@pytest.mark.parametrize("chunk_size", [None, 3])
def test_plain_stderr_is_hutchinsons_on_the_same_probes(activation, chunk_size):
    model, x, y = _case(activation)
    samples, seed = 13, 5
    result = hessian_diagonal_cv_compared(model, CE, x, y, samples, torch.Generator().manual_seed(seed),
                                          chunk_size=chunk_size)  # fmt: skip
    _, plain_se = hutchinson_diagonal(model, CE, x, y, samples, torch.Generator().manual_seed(seed))
    assert result.plain_stderr.method == "hutchinson-stderr" and result.plain_stderr.samples == samples
    torch.testing.assert_close(result.plain_stderr.flatten(), plain_se.flatten(), atol=1e-12, rtol=0)
    estimate, stderr = hessian_diagonal_cv(model, CE, x, y, samples, torch.Generator().manual_seed(seed))
    torch.testing.assert_close(result.estimate.flatten(), estimate.flatten(), atol=1e-12, rtol=0)
    torch.testing.assert_close(result.stderr.flatten(), stderr.flatten(), atol=1e-12, rtol=0)
    hessian, ggn, _ = dense_matrices(model, CE, x, y)
    plain, cv = _terms(hessian, ggn, samples, seed)
    np.testing.assert_allclose(result.plain_stderr.flatten().numpy(), plain.std(0, ddof=1) / samples**0.5,
                               atol=1e-12, rtol=0)  # fmt: skip
    np.testing.assert_allclose(result.stderr.flatten().numpy(), cv.std(0, ddof=1) / samples**0.5, atol=1e-12, rtol=0)


@pytest.mark.parametrize(("samples", "chunk_size"), [(13, None), (13, 4), (32, 5), (64, None)])
def test_the_variance_reduction_and_its_interval_are_the_documented_numpy(samples, chunk_size):
    model, x, y = _case(nn.GELU)
    seed = 2
    result = hessian_diagonal_cv_compared(model, CE, x, y, samples, torch.Generator().manual_seed(seed),
                                          chunk_size=chunk_size)  # fmt: skip
    hessian, ggn, _ = dense_matrices(model, CE, x, y)
    plain, cv = _terms(hessian, ggn, samples, seed)
    var_plain, var_cv = plain.var(0, ddof=1), cv.var(0, ddof=1)
    assert result.variance_reduction == pytest.approx(var_plain.sum() / var_cv.sum(), rel=1e-10)
    assert result.cv_se_rms == pytest.approx(math.sqrt((var_cv / samples).mean()), rel=1e-10)
    assert result.plain_se_rms == pytest.approx(math.sqrt((var_plain / samples).mean()), rel=1e-10)
    groups = min(10, samples // 2)
    assert result.groups == groups
    assert result.interval == pytest.approx(_numpy_interval(plain, cv, groups), rel=1e-9)
    assert result.interval[0] < result.variance_reduction < result.interval[1]


def test_too_few_probes_give_no_interval_and_a_proved_model_no_comparison():
    model, x, y = _case(nn.GELU)
    few = hessian_diagonal_cv_compared(model, CE, x, y, 5, torch.Generator().manual_seed(0))
    assert few.groups == 0 and all(math.isnan(b) for b in few.interval)
    hessian, ggn, _ = dense_matrices(model, CE, x, y)
    plain, cv = _terms(hessian, ggn, 5, 0)
    assert few.variance_reduction == pytest.approx(plain.var(0, ddof=1).sum() / cv.var(0, ddof=1).sum(), rel=1e-10)
    relu, rx, ry = _case(nn.ReLU)  # every output linear in each weight: diag(H - G) = 0, no probe
    proved = hessian_diagonal_cv_compared(relu, CE, rx, ry, 16, torch.Generator().manual_seed(0))
    assert proved.estimate.samples == 0 and proved.plain_stderr is None and proved.groups == 0
    assert all(
        math.isnan(v) for v in (proved.cv_se_rms, proved.plain_se_rms, proved.variance_reduction, *proved.interval)
    )


def test_the_interval_covers_the_true_variance_ratio():
    model, x, y = _case(nn.GELU)
    hessian, ggn, _ = dense_matrices(model, CE, x, y)

    def off_diagonal(a):  # sum_i Var of the Rademacher estimator of a_ii: sum_i sum_{j != i} a_ij^2
        return float((a**2).sum() - (a.diagonal() ** 2).sum())

    truth = off_diagonal(hessian) / off_diagonal(hessian - ggn)
    assert 1.2 < truth < 2  # the GGN carries part of the off-diagonal mass here
    covered, ratios = 0, []
    for seed in range(200):
        result = hessian_diagonal_cv_compared(model, CE, x, y, 64, torch.Generator().manual_seed(seed))
        lo, hi = result.interval
        covered += lo <= truth <= hi
        ratios.append(result.variance_reduction)
    assert 0.85 <= covered / 200 <= 0.99
    assert np.mean(ratios) == pytest.approx(truth, rel=0.03)  # the point estimate is centred on the truth
