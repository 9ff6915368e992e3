"""hessian_diagonal_cv: exact GGN diagonal + Hutchinson on diag(H - G). The probe formula against
dense H and G, unbiased, an honest standard error, exact where diag(H - G) = 0, seeded, chunk
independent, and more accurate than plain Hutchinson at equal HVP cost (fixed seeds)."""

import pytest
import torch
from curvature_cases import batch, mlp
from general_cases import (
    DTYPE,
    ResidualBNBlock,
    TinyTransformer,
    dense_hessian_diagonal,
    dense_matrices,
    tokens,
)
from torch import nn

from arturo_diag.curvature import (
    CurvatureError,
    hessian_diagonal_cv,
    hutchinson_diagonal,
)

CE = nn.CrossEntropyLoss()


def _gelu_case():
    model = mlp(1, nn.GELU).eval()
    x, y = batch((4,), classes=3, n=12)
    return model, x, y


def _flat_truth(model, x, y, train=False):
    truth = dense_hessian_diagonal(model, CE, x, y, train=train)
    return torch.cat([v.reshape(-1) for v in truth.values()])


@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("case", ["bn_train", "transformer"])
def test_ggn_vector_products_match_the_dense_ggn(case, batched):
    from arturo_diag.curvature import loss_of_parameters
    from arturo_diag.curvature.ggn_general import _GGNRun

    if case == "bn_train":
        model, (x, y), train = ResidualBNBlock(), batch((2, 4, 4), classes=4, n=5, seed=1), True
    else:
        model, (x, y), train = TinyTransformer(), tokens(), False
    _, ggn, _ = dense_matrices(model, CE, x, y, train=train)
    problem = loss_of_parameters(model, CE, x, y, train=train)
    run = _GGNRun(problem, CE, None, None)
    v = torch.randn(3, ggn.shape[0], generator=torch.Generator().manual_seed(0), dtype=DTYPE)
    tangents = tuple(
        part.reshape(3, *p.shape) for part, p in zip(v.split([p.numel() for p in problem.params], 1), problem.params)
    )
    products = run.ggn_times(tangents, batched)
    got = torch.cat([t.reshape(3, -1) for t in products], 1)
    torch.testing.assert_close(got, v @ ggn, atol=1e-10, rtol=1e-10)


def test_estimate_and_stderr_are_the_probe_formula_with_dense_h_and_g():
    model, x, y = _gelu_case()
    hessian, ggn, _ = dense_matrices(model, CE, x, y)
    samples = 9
    estimate, stderr = hessian_diagonal_cv(model, CE, x, y, samples, torch.Generator().manual_seed(3))
    assert estimate.method == "ggn+hutchinson" and stderr.method == "ggn+hutchinson-stderr"
    assert estimate.samples == stderr.samples == samples
    g = torch.Generator().manual_seed(3)
    total = hessian.shape[0]
    draws = torch.stack([torch.randint(0, 2, (total,), generator=g, dtype=torch.int8) for _ in range(samples)])
    z = draws.to(DTYPE) * 2 - 1
    terms = z * (z @ (hessian - ggn))
    torch.testing.assert_close(estimate.flatten(), ggn.diagonal() + terms.mean(0), atol=1e-12, rtol=0)
    torch.testing.assert_close(stderr.flatten(), terms.std(0) / samples**0.5, atol=1e-12, rtol=0)


def test_a_user_loss_with_its_output_hessian_uses_that_ggn():
    # L = mean_n sum_d y_nd sin(f_nd), H_out blocks diag(-y sin f) / N (indefinite)
    def loss(outputs, targets):
        return (targets * torch.sin(outputs)).sum(1).mean()

    def output_hessian(outputs, targets):
        return torch.diag_embed(-targets * torch.sin(outputs)) / outputs.shape[0]

    model = mlp(3, nn.GELU)
    x, y = batch((4,), targets_shape=(3,), n=6)
    hessian, ggn, _ = dense_matrices(model, loss, x, y)
    samples = 5
    estimate, stderr = hessian_diagonal_cv(
        model, loss, x, y, samples, torch.Generator().manual_seed(2), output_hessian=output_hessian
    )
    g = torch.Generator().manual_seed(2)
    draws = torch.stack(
        [torch.randint(0, 2, (hessian.shape[0],), generator=g, dtype=torch.int8) for _ in range(samples)]
    )
    z = draws.to(DTYPE) * 2 - 1
    terms = z * (z @ (hessian - ggn))
    torch.testing.assert_close(estimate.flatten(), ggn.diagonal() + terms.mean(0), atol=1e-12, rtol=0)
    torch.testing.assert_close(stderr.flatten(), terms.std(0) / samples**0.5, atol=1e-12, rtol=0)


def test_unbiased_mean_over_seeds_and_honest_stderr():
    model, x, y = _gelu_case()
    truth = _flat_truth(model, x, y)
    estimates, errors = [], []
    for seed in range(100):
        e, s = hessian_diagonal_cv(model, CE, x, y, 32, torch.Generator().manual_seed(seed))
        estimates.append(e.flatten())
        errors.append(s.flatten())
    estimates, errors = torch.stack(estimates), torch.stack(errors)
    mean = estimates.mean(0)
    spread = estimates.std(0) / estimates.shape[0] ** 0.5
    moving = spread > 1e-12  # the head bias: diag(H - G) = 0 and rounding-level terms
    # unbiased: the mean of 100 runs is within 4.5 standard errors of the mean, every coordinate
    assert bool(((mean - truth).abs()[moving] <= 4.5 * spread[moving]).all())
    assert bool(((mean - truth).abs()[~moving] <= 1e-12).all())
    # honest: about 95 % of (coordinate, run) pairs within 2 of their own standard errors
    within = ((estimates - truth).abs() <= 2 * errors)[:, moving].double().mean()
    assert 0.90 <= float(within) <= 0.99
    # and the standard error is the spread across runs, on average (within 15 %)
    ratio = errors[:, moving].mean(0) / estimates[:, moving].std(0)
    assert 0.85 <= float(ratio.median()) <= 1.15


def test_unbiased_with_train_mode_batch_norm():
    model = ResidualBNBlock()
    x, y = batch((2, 4, 4), classes=4, n=5, seed=1)
    truth = _flat_truth(model, x, y, train=True)
    estimate, stderr = hessian_diagonal_cv(model, CE, x, y, 1500, torch.Generator().manual_seed(0), train=True)
    error = (estimate.flatten() - truth).abs()
    assert bool((error <= 4.5 * stderr.flatten() + 1e-12).all())
    assert "coupled" in estimate.note


def test_unbiased_on_the_transformer():
    model = TinyTransformer()
    x, y = tokens()
    truth = _flat_truth(model, x, y)
    estimate, stderr = hessian_diagonal_cv(model, CE, x, y, 800, torch.Generator().manual_seed(1))
    error = (estimate.flatten() - truth).abs()
    assert bool((error <= 4.5 * stderr.flatten() + 1e-12).all())


def test_exact_with_zero_stderr_where_h_equals_g():
    # one linear layer with cross-entropy: H = G exactly (not only on the diagonal)
    torch.manual_seed(0)
    model = nn.Linear(4, 3).to(DTYPE)
    x, y = batch((4,), classes=3, n=6)
    truth = _flat_truth(model, x, y)
    estimate, stderr = hessian_diagonal_cv(model, CE, x, y, 8, torch.Generator().manual_seed(0), force_residual=True)
    torch.testing.assert_close(estimate.flatten(), truth, atol=1e-12, rtol=0)
    assert float(stderr.flatten().max()) <= 1e-12


def test_no_probe_where_the_residual_diagonal_is_proved_zero():
    # a ReLU MLP: diag(H - G) = 0 but its off-diagonal is not, so probing would only add noise
    model = mlp(0).eval()
    x, y = batch((4,), classes=3, n=6)
    truth = _flat_truth(model, x, y)
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    estimate, stderr = hessian_diagonal_cv(model, CE, x, y, 8, g)
    assert torch.equal(g.get_state(), state)  # nothing drawn
    assert estimate.samples == 0 and "no probe" in estimate.note
    torch.testing.assert_close(estimate.flatten(), truth, atol=1e-10, rtol=1e-10)
    assert float(stderr.flatten().abs().max()) == 0.0
    _, forced_se = hessian_diagonal_cv(model, CE, x, y, 8, g, force_residual=True)
    assert float(forced_se.flatten().max()) > 1e-6


def test_same_seed_same_result_whatever_the_chunk_size():
    model, x, y = _gelu_case()
    runs = [
        hessian_diagonal_cv(model, CE, x, y, 7, torch.Generator().manual_seed(5), chunk_size=c) for c in (1, 3, None)
    ]
    for estimate, stderr in runs[1:]:
        torch.testing.assert_close(estimate.flatten(), runs[0][0].flatten(), atol=1e-14, rtol=0)
        torch.testing.assert_close(stderr.flatten(), runs[0][1].flatten(), atol=1e-14, rtol=0)
    again = hessian_diagonal_cv(model, CE, x, y, 7, torch.Generator().manual_seed(5))
    assert torch.equal(again[0].flatten(), runs[2][0].flatten())
    other = hessian_diagonal_cv(model, CE, x, y, 7, torch.Generator().manual_seed(6))
    assert not torch.equal(other[0].flatten(), runs[2][0].flatten())


def test_smaller_error_than_plain_hutchinson_at_equal_hvp_cost():
    # fixed seeds, the same probes for both (shared probe stream): deterministic, cannot flake
    model, x, y = _gelu_case()
    truth = _flat_truth(model, x, y)
    cv_errors, plain_errors = [], []
    for seed in range(10):
        cv, _ = hessian_diagonal_cv(model, CE, x, y, 32, torch.Generator().manual_seed(seed))
        plain, _ = hutchinson_diagonal(model, CE, x, y, 32, torch.Generator().manual_seed(seed))
        cv_errors.append(float((cv.flatten() - truth).norm() / truth.norm()))
        plain_errors.append(float((plain.flatten() - truth).norm() / truth.norm()))
    cv_mean = sum(cv_errors) / 10
    plain_mean = sum(plain_errors) / 10
    assert cv_mean < 0.85 * plain_mean, (cv_mean, plain_mean)


def test_bad_arguments_are_refused():
    model, x, y = _gelu_case()
    with pytest.raises(CurvatureError, match="samples"):
        hessian_diagonal_cv(model, CE, x, y, 1, None)
    with pytest.raises(CurvatureError, match="chunk_size"):
        hessian_diagonal_cv(model, CE, x, y, 4, None, chunk_size=0)
    with pytest.raises(CurvatureError, match="generator"):
        hessian_diagonal_cv(model, CE, x, y, 4, 0)
