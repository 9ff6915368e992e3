"""spectrum: trace (Hutchinson, Hutch++), extreme eigenvalues, SLQ density and the diagonal's share
against the dense autograd Hessian of tiny float64 models and of quadratics with a known Hessian."""

import math

import numpy as np
import pytest
import torch
from curvature_cases import DTYPE, Quadratic, batch, mean_output, mlp, spd_matrix
from torch import nn
from torch.func import functional_call

from arturo_diag.curvature import CurvatureError, exact_diagonal, hutchinson_diagonal
from arturo_diag.curvature.spectrum import (
    diagonal_share,
    hessian_operator,
    hessian_trace,
    hutchpp_trace,
    spectral_density,
    top_eigenvalues,
)

LOSS = nn.CrossEntropyLoss()


def dense_hessian(model, loss_fn, inputs, targets):
    """The full Hessian in the trainable parameters, by torch.autograd.functional.hessian."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    flat = torch.cat([p.detach().reshape(-1) for _, p in named])
    sizes = [p.numel() for _, p in named]

    def loss_of_flat(vector):
        state = {n: part.view_as(p) for (n, p), part in zip(named, vector.split(sizes))}
        return loss_fn(functional_call(model, state, (inputs,)), targets)

    return torch.autograd.functional.hessian(loss_of_flat, flat)


def tanh_case():
    model = mlp(0, nn.Tanh).eval()
    x, y = batch((4,), classes=3, n=12, seed=7)
    return model, LOSS, x, y


def relu_case():
    model = mlp(1, nn.ReLU).eval()
    x, y = batch((4,), classes=3, n=12, seed=8)
    return model, LOSS, x, y


def quadratic_case(n=10, seed=3):
    a = spd_matrix(n, seed=seed) - 1.5 * torch.eye(n, dtype=DTYPE)  # indefinite
    x = torch.zeros(2, 1, dtype=DTYPE)
    return Quadratic(a), mean_output, x, x, a


CASES = {"tanh": tanh_case, "relu": relu_case}


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    model, loss_fn, x, y = CASES[request.param]()
    return model, loss_fn, x, y, dense_hessian(model, loss_fn, x, y)


def test_the_cases_are_nontrivial(case):
    *_, h = case
    eig = torch.linalg.eigvalsh(h)
    assert 60 <= h.shape[0] <= 300
    assert float(eig.min()) < -1e-4 < 1e-4 < float(eig.max())  # indefinite
    assert float((h - torch.diag(h.diagonal())).abs().max()) > 1e-3  # far from diagonal


# ---------------------------------------------------------------------------------------------
# eigenvalues


def test_top_and_most_negative_eigenvalues_match_dense(case):
    model, loss_fn, x, y, h = case
    eig = torch.linalg.eigvalsh(h).numpy()
    top = top_eigenvalues(model, loss_fn, x, y, k=3)
    assert top.which == "LA" and top.converged and top.hvps > 0
    np.testing.assert_allclose(top.values, eig[::-1][:3], atol=1e-8, rtol=0)
    low = top_eigenvalues(model, loss_fn, x, y, k=1, which="SA")
    np.testing.assert_allclose(low.values, eig[:1], atol=1e-8, rtol=0)
    assert low.values[0] < 0


def test_eigenvalues_of_a_known_quadratic_and_operator_reuse():
    model, loss_fn, x, y, a = quadratic_case(12)
    eig = torch.linalg.eigvalsh(a).numpy()
    op = hessian_operator(model, loss_fn, x, y)
    top = top_eigenvalues(None, None, None, None, k=3, operator=op)
    low = top_eigenvalues(None, None, None, None, k=2, which="SA", operator=op)
    np.testing.assert_allclose(top.values, eig[::-1][:3], atol=1e-10, rtol=0)
    np.testing.assert_allclose(low.values, eig[:2], atol=1e-10, rtol=0)
    assert op.hvps == top.hvps + low.hvps
    # the operator is H itself
    v = torch.randn(12, generator=torch.Generator().manual_seed(0), dtype=DTYPE)
    torch.testing.assert_close(op.matvec(v), a @ v, atol=1e-12, rtol=0)


# ---------------------------------------------------------------------------------------------
# traces


def coverage(estimates, errors, truth):
    estimates, errors = np.asarray(estimates), np.asarray(errors)
    return float(np.mean(np.abs(estimates - truth) <= 2 * errors))


def test_hutchinson_trace_is_unbiased_and_its_standard_error_honest(case):
    model, loss_fn, x, y, h = case
    truth = float(h.trace())
    generator = torch.Generator().manual_seed(123)  # fixed: the test cannot flake
    runs = [hessian_trace(model, loss_fn, x, y, 30, generator) for _ in range(200)]
    values = np.array([r.value for r in runs])
    errors = np.array([r.stderr for r in runs])
    assert all(r.hvps == 30 and r.method == "hutchinson" for r in runs)
    assert abs(values.mean() - truth) <= 4 * values.std(ddof=1) / math.sqrt(len(runs))
    assert 0.88 <= coverage(values, errors, truth) <= 0.99
    # the reported SE is the spread of the estimate across runs
    assert 0.8 <= np.sqrt(np.mean(errors**2)) / values.std(ddof=1) <= 1.2


def test_hutchinson_trace_is_the_sum_of_the_hutchinson_diagonal_from_the_same_probes(case):
    model, loss_fn, x, y, _ = case
    trace = hessian_trace(model, loss_fn, x, y, 9, torch.Generator().manual_seed(4), chunk_size=4)
    diagonal, _ = hutchinson_diagonal(model, loss_fn, x, y, 9, torch.Generator().manual_seed(4))
    assert trace.value == pytest.approx(float(diagonal.flatten().sum()), abs=1e-10)
    again = hessian_trace(model, loss_fn, x, y, 9, torch.Generator().manual_seed(4))
    assert again.value == pytest.approx(trace.value, abs=1e-12)
    assert again.stderr == pytest.approx(trace.stderr, abs=1e-12)


def test_hutchpp_trace_is_unbiased_and_its_standard_error_honest(case):
    model, loss_fn, x, y, h = case
    truth = float(h.trace())
    generator = torch.Generator().manual_seed(321)
    runs = [hutchpp_trace(model, loss_fn, x, y, 36, generator) for _ in range(200)]
    values = np.array([r.value for r in runs])
    errors = np.array([r.stderr for r in runs])
    assert all(r.sketch == 12 and r.probes == 12 and r.hvps == 36 and not r.exact for r in runs)
    assert abs(values.mean() - truth) <= 4 * values.std(ddof=1) / math.sqrt(len(runs))
    assert 0.85 <= coverage(values, errors, truth) <= 0.99
    # at the same budget Hutch++ beats Hutchinson here (the spectrum decays)
    plain = [hessian_trace(model, loss_fn, x, y, 36, generator).value for _ in range(100)]
    assert values.std() < np.std(plain)


def test_hutchpp_is_exact_when_the_sketch_spans_the_space(case):
    model, loss_fn, x, y, h = case
    p = h.shape[0]
    result = hutchpp_trace(model, loss_fn, x, y, 3 * p, torch.Generator().manual_seed(0))
    assert result.exact and result.stderr == 0.0 and result.sketch == p and result.probes == 0
    assert result.hvps == p
    assert result.value == pytest.approx(float(h.trace()), abs=1e-10)


def test_traces_of_a_known_quadratic():
    model, loss_fn, x, y, a = quadratic_case(10)
    truth = float(a.trace())
    exact = hutchpp_trace(model, loss_fn, x, y, 30, torch.Generator().manual_seed(1))
    assert exact.value == pytest.approx(truth, abs=1e-12)
    # a sketch of rank k captures a rank-k matrix fully: the residual vanishes
    u = torch.randn(10, 2, generator=torch.Generator().manual_seed(2), dtype=DTYPE)
    low_rank = Quadratic(u @ u.T)
    result = hutchpp_trace(low_rank, loss_fn, x, y, 8, torch.Generator().manual_seed(3))
    assert result.sketch == 2 and not result.exact
    assert result.value == pytest.approx(float((u * u).sum()), abs=1e-10)
    assert result.stderr < 1e-10
    diagonal = Quadratic(torch.diag(torch.arange(1.0, 11.0, dtype=DTYPE)))
    plain = hessian_trace(diagonal, loss_fn, x, y, 3, torch.Generator().manual_seed(4))
    assert plain.value == pytest.approx(55.0, abs=1e-12) and plain.stderr < 1e-12


# ---------------------------------------------------------------------------------------------
# Frobenius norm and the diagonal's share


def test_frobenius_norm_and_diagonal_share_against_dense(case):
    model, loss_fn, x, y, h = case
    frob_sq = float((h * h).sum())
    share_true = float(h.diagonal().norm()) / math.sqrt(frob_sq)
    diagonal = exact_diagonal(model, loss_fn, x, y, "hvp")
    generator = torch.Generator().manual_seed(77)
    runs = [diagonal_share(model, loss_fn, x, y, diagonal, 40, generator) for _ in range(200)]
    assert all(r.diagonal_norm == pytest.approx(float(h.diagonal().norm()), abs=1e-10) for r in runs)
    f2 = np.array([r.frobenius_sq for r in runs])
    f2_se = np.array([r.frobenius_sq_stderr for r in runs])
    share = np.array([r.share for r in runs])
    share_se = np.array([r.stderr for r in runs])
    assert abs(f2.mean() - frob_sq) <= 4 * f2.std(ddof=1) / math.sqrt(len(runs))
    assert 0.85 <= coverage(f2, f2_se, frob_sq) <= 0.99
    assert 0.85 <= coverage(share, share_se, share_true) <= 0.99
    assert 0.0 < share_true < 0.95
    # the delta-method SE and the free trace, by hand for one run
    r = runs[0]
    assert r.stderr == pytest.approx(r.share * r.frobenius_sq_stderr / (2 * r.frobenius_sq), rel=1e-12)
    assert r.frobenius == pytest.approx(math.sqrt(r.frobenius_sq), rel=1e-12)
    assert r.hvps == r.samples == 40
    assert abs(r.trace - float(h.trace())) <= 5 * r.trace_stderr


def test_diagonal_share_of_a_diagonal_quadratic_is_one_with_no_error():
    d = torch.arange(1.0, 9.0, dtype=DTYPE)
    model = Quadratic(torch.diag(d))
    x = torch.zeros(2, 1, dtype=DTYPE)
    result = diagonal_share(model, mean_output, x, x, {"x": d}, 5, torch.Generator().manual_seed(0))
    assert result.share == pytest.approx(1.0, abs=1e-12) and result.stderr < 1e-12
    assert result.frobenius_sq == pytest.approx(float((d * d).sum()), rel=1e-12)
    flat = diagonal_share(model, mean_output, x, x, d, 5, torch.Generator().manual_seed(0))
    assert flat.share == pytest.approx(result.share, abs=1e-14)


# ---------------------------------------------------------------------------------------------
# stochastic Lanczos quadrature


def probe_vectors(seed, probes, p):
    g = torch.Generator().manual_seed(seed)
    z = [torch.randint(0, 2, (p,), generator=g, dtype=torch.int8).to(DTYPE) * 2 - 1 for _ in range(probes)]
    return [v / math.sqrt(p) for v in z]


def test_slq_quadrature_is_exact_for_polynomials_with_the_same_probes(case):
    model, loss_fn, x, y, h = case
    p = h.shape[0]
    density = spectral_density(model, loss_fn, x, y, lanczos_steps=p, probes=3,
                               generator=torch.Generator().manual_seed(5))  # fmt: skip
    vectors = probe_vectors(5, 3, p)
    scale = float(torch.linalg.eigvalsh(h).abs().max())
    for power in range(1, 7):
        expected = [float(v @ torch.linalg.matrix_power(h, power) @ v) for v in vectors]
        np.testing.assert_allclose(density.moments(power), expected, atol=1e-9 * scale**power, rtol=1e-8)
    for w in density.weights:
        assert w.sum() == pytest.approx(1.0, abs=1e-12) and (w >= 0).all()
    assert density.hvps <= 3 * p and density.dimension == p


def test_slq_density_integrates_to_one_and_its_moments_match_the_dense_spectrum(case):
    model, loss_fn, x, y, h = case
    p = h.shape[0]
    density = spectral_density(model, loss_fn, x, y, lanczos_steps=20, probes=40,
                               generator=torch.Generator().manual_seed(9))  # fmt: skip
    assert density.hvps == 40 * 20 and all(len(t) == 20 for t in density.nodes)
    grid, phi = density.grid, density.density
    assert np.trapezoid(phi, grid) == pytest.approx(1.0, abs=1e-6)
    # moments of the smoothed density: the nodes' mean, and their second moment + sigma^2
    first, first_se = density.moment(1)
    second, second_se = density.moment(2)
    assert np.trapezoid(grid * phi, grid) == pytest.approx(first, abs=1e-6 * max(1.0, abs(first)))
    assert np.trapezoid(grid**2 * phi, grid) == pytest.approx(second + density.sigma**2, rel=1e-5)
    # against the dense spectrum, within 3 standard errors (fixed seed)
    assert abs(first - float(h.trace()) / p) <= 3 * first_se
    assert abs(second - float((h * h).sum()) / p) <= 3 * second_se
    # first two moments from m >= 2 steps are exact per probe: v^T H v and ||H v||^2
    vectors = probe_vectors(9, 40, p)
    np.testing.assert_allclose(density.moments(1), [float(v @ h @ v) for v in vectors], atol=1e-10)
    np.testing.assert_allclose(density.moments(2), [float((h @ v).norm() ** 2) for v in vectors], atol=1e-10)
    # the nodes lie within the spectrum
    eig = torch.linalg.eigvalsh(h)
    everything = np.concatenate(density.nodes)
    assert everything.min() >= float(eig.min()) - 1e-8 and everything.max() <= float(eig.max()) + 1e-8


def test_slq_on_a_known_quadratic_finds_its_eigenvalues():
    model, loss_fn, x, y, a = quadratic_case(8, seed=5)
    density = spectral_density(model, loss_fn, x, y, lanczos_steps=50, probes=2,
                               generator=torch.Generator().manual_seed(1), sigma=0.05)  # fmt: skip
    eig = torch.linalg.eigvalsh(a).numpy()
    for theta in density.nodes:
        assert len(theta) == 8  # capped at P, a full Lanczos run
        np.testing.assert_allclose(np.sort(theta), eig, atol=1e-9)
    assert density.sigma == 0.05
    # one eigenvalue twice: Lanczos finds the invariant subspace early and stops
    repeated = Quadratic(torch.diag(torch.tensor([1.0, 1.0, 2.0, 2.0, 3.0], dtype=DTYPE)))
    small = spectral_density(repeated, loss_fn, x, y, lanczos_steps=5, probes=1,
                             generator=torch.Generator().manual_seed(2))  # fmt: skip
    assert len(small.nodes[0]) == 3
    np.testing.assert_allclose(small.nodes[0], [1.0, 2.0, 3.0], atol=1e-10)
    np.testing.assert_allclose(small.weights[0], [0.4, 0.4, 0.2], atol=1e-12)


# ---------------------------------------------------------------------------------------------
# float32, refusals


def test_float32_models_work():
    model = mlp(0, nn.Tanh).float().eval()
    x, y = batch((4,), classes=3, n=12, seed=7)
    x = x.float()
    h = dense_hessian(mlp(0, nn.Tanh).eval(), LOSS, x.double(), y)
    eig = torch.linalg.eigvalsh(h).numpy()
    top = top_eigenvalues(model, LOSS, x, y, k=2)
    np.testing.assert_allclose(top.values, eig[::-1][:2], rtol=1e-3, atol=1e-4)
    assert top.tol == 1e-4
    trace = hutchpp_trace(model, LOSS, x, y, 3 * h.shape[0], torch.Generator().manual_seed(0))
    assert trace.value == pytest.approx(float(h.trace()), rel=1e-4)
    density = spectral_density(model, LOSS, x, y, lanczos_steps=10, probes=2,
                               generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert np.trapezoid(density.density, density.grid) == pytest.approx(1.0, abs=1e-6)


def test_refusals():
    model, loss_fn, x, y = tanh_case()
    g = torch.Generator().manual_seed(0)
    with pytest.raises(CurvatureError, match="samples"):
        hessian_trace(model, loss_fn, x, y, 1, g)
    with pytest.raises(CurvatureError, match="samples"):
        hutchpp_trace(model, loss_fn, x, y, 3, g)
    with pytest.raises(CurvatureError, match="which"):
        top_eigenvalues(model, loss_fn, x, y, which="BE")
    with pytest.raises(CurvatureError, match="k:"):
        top_eigenvalues(model, loss_fn, x, y, k=64)
    with pytest.raises(CurvatureError, match="sigma"):
        spectral_density(model, loss_fn, x, y, sigma=0.0)
    with pytest.raises(CurvatureError, match="generator"):
        hessian_trace(model, loss_fn, x, y, 4, 7)
    with pytest.raises(CurvatureError, match="diagonal"):
        diagonal_share(model, loss_fn, x, y, torch.zeros(5), 4, g)
    with pytest.raises(CurvatureError, match="diagonal"):
        diagonal_share(model, loss_fn, x, y, {"0.weight": torch.zeros(5, 4)}, 4, g)
    with pytest.raises(CurvatureError, match="rows"):
        hessian_trace(model, loss_fn, x, y[:3], 4, g)
