"""hutchinson_diagonal: exact on diagonal Hessians, unbiased, calibrated standard error, seeded."""

import pytest
import torch
from curvature_cases import DTYPE, Quadratic, batch, brute_force_diagonal, mean_output, mlp, spd_matrix
from torch import nn

from arturo_diag.curvature import CurvatureError, hutchinson_diagonal


def test_diagonal_quadratic_is_estimated_exactly_with_zero_error():
    # z_i (A z)_i = A_ii z_i^2 = A_ii when A is diagonal: every probe gives diag(A)
    a = spd_matrix(6, seed=1, dense=False)
    x = torch.zeros(2, 1, dtype=DTYPE)
    estimate, stderr = hutchinson_diagonal(Quadratic(a), mean_output, x, x, 3, torch.Generator().manual_seed(0))
    torch.testing.assert_close(estimate["x"], a.diagonal(), atol=1e-12, rtol=0)
    assert float(stderr["x"].abs().max()) < 1e-7


def test_dense_quadratic_is_within_its_standard_error():
    a = spd_matrix(8, seed=2)
    x = torch.zeros(2, 1, dtype=DTYPE)
    estimate, stderr = hutchinson_diagonal(
        Quadratic(a), mean_output, x, x, 400, torch.Generator().manual_seed(1), chunk_size=64
    )
    assert estimate.method == "hutchinson" and stderr.method == "hutchinson-stderr"
    assert estimate.samples == stderr.samples == 400
    assert bool((stderr["x"] > 0).all())
    assert bool(((estimate["x"] - a.diagonal()).abs() <= 4 * stderr["x"]).all())
    # the error is real, not zero: the estimate is not the exact diagonal
    assert float((estimate["x"] - a.diagonal()).abs().max()) > 1e-6


def test_standard_error_is_the_probe_formula():
    # a 2x2 quadratic: z1 (A z)_1 = A11 + A12 z1 z2, so the per-probe terms are A11 +- A12 and
    # the standard error is std(terms, ddof=1) / sqrt(S), computed here from the signs alone
    a = torch.tensor([[2.0, 0.5], [0.5, 3.0]], dtype=DTYPE)
    x = torch.zeros(1, 1, dtype=DTYPE)
    samples = 10
    g = torch.Generator().manual_seed(3)
    estimate, stderr = hutchinson_diagonal(Quadratic(a), mean_output, x, x, samples, g)
    g = torch.Generator().manual_seed(3)
    signs = torch.stack([torch.randint(0, 2, (2,), generator=g, dtype=torch.int8) for _ in range(samples)])
    z = signs.to(DTYPE) * 2 - 1
    terms = z * (z @ a)
    torch.testing.assert_close(estimate["x"], terms.mean(0), atol=1e-14, rtol=0)
    torch.testing.assert_close(stderr["x"], terms.std(0) / samples**0.5, atol=1e-14, rtol=0)


def test_same_generator_state_gives_the_same_estimate_whatever_the_chunk_size():
    model = mlp(0).eval()
    x, y = batch((4,), classes=3)
    runs = [
        hutchinson_diagonal(model, nn.CrossEntropyLoss(), x, y, 7, torch.Generator().manual_seed(5), chunk_size=c)
        for c in (1, 3, None)
    ]
    for estimate, stderr in runs[1:]:
        for name in estimate:
            torch.testing.assert_close(estimate[name], runs[0][0][name], atol=1e-14, rtol=0)
            torch.testing.assert_close(stderr[name], runs[0][1][name], atol=1e-14, rtol=0)
    other, _ = hutchinson_diagonal(model, nn.CrossEntropyLoss(), x, y, 7, torch.Generator().manual_seed(6))
    assert not torch.equal(other.flatten(), runs[0][0].flatten())


def test_unbiased_and_its_standard_error_matches_the_spread_across_runs():
    model = mlp(2).eval()
    x, y = batch((4,), classes=3, n=10)
    loss_fn = nn.CrossEntropyLoss()
    exact = torch.cat([v.reshape(-1) for v in brute_force_diagonal(model, loss_fn, x, y).values()])
    generator = torch.Generator().manual_seed(11)
    runs, samples = 400, 8
    estimates, errors = [], []
    for _ in range(runs):
        estimate, stderr = hutchinson_diagonal(model, loss_fn, x, y, samples, generator)
        estimates.append(estimate.flatten())
        errors.append(stderr.flatten())
    estimates, errors = torch.stack(estimates), torch.stack(errors)
    reported = errors.pow(2).mean(0).sqrt()  # the reported SE, as an RMS over the runs
    spread = estimates.std(0)  # the empirical SE: how much one run's estimate varies
    varying = reported > 1e-10
    assert int(varying.sum()) >= 30  # most coordinates have off-diagonal curvature
    # the identity holds where there is no spread: exact coordinates, zero SE
    assert float(torch.cat([spread[~varying], spread.new_zeros(1)]).max()) < 1e-10
    # unbiased: the mean of 400 runs is within 4 of its own standard errors of the exact diagonal
    mean_error = (estimates.mean(0) - exact).abs()
    assert bool((mean_error <= 4 * reported / runs**0.5 + 1e-12).all())
    # calibrated: reported SE / empirical spread within 20 % for every varying coordinate
    ratio = reported[varying] / spread[varying]
    assert float(ratio.min()) > 0.8 and float(ratio.max()) < 1.2, (ratio.min(), ratio.max())


def test_more_probes_shrink_the_error_like_one_over_sqrt_samples():
    model = mlp(3).eval()
    x, y = batch((4,), classes=3)
    g = torch.Generator().manual_seed(2)
    _, few = hutchinson_diagonal(model, nn.CrossEntropyLoss(), x, y, 16, g)
    _, many = hutchinson_diagonal(model, nn.CrossEntropyLoss(), x, y, 256, g)
    ratio = float(few.flatten().norm() / many.flatten().norm())
    assert 3.0 < ratio < 5.5  # sqrt(256 / 16) = 4


def test_follows_the_models_dtype_and_draws_on_the_generators_device():
    model = mlp(0).float().eval()
    x, y = batch((4,), classes=3)
    estimate, stderr = hutchinson_diagonal(model, nn.CrossEntropyLoss(), x, y, 4, torch.Generator())
    assert all(v.dtype == torch.float32 for v in estimate.values())
    assert all(v.dtype == torch.float32 for v in stderr.values())
    assert [v.shape for v in estimate.values()] == [p.shape for p in model.parameters()]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_model_with_a_cpu_generator_matches_the_cpu_run():
    model = mlp(0).eval()
    x, y = batch((4,), classes=3)
    cpu, _ = hutchinson_diagonal(model, nn.CrossEntropyLoss(), x, y, 5, torch.Generator().manual_seed(0))
    gpu, _ = hutchinson_diagonal(model.cuda(), nn.CrossEntropyLoss(), x, y, 5, torch.Generator().manual_seed(0))
    for name in cpu:
        assert gpu[name].is_cuda
        torch.testing.assert_close(gpu[name].cpu(), cpu[name], atol=1e-10, rtol=0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"samples": 1}, "samples"),
        ({"samples": 0}, "samples"),
        ({"samples": 4.0}, "samples"),
        ({"samples": 4, "chunk_size": 0}, "chunk_size"),
        ({"samples": 4, "generator": 42}, "generator"),
    ],
)
def test_bad_options_raise_a_curvature_error(kwargs, match):
    model = mlp(0)
    x, y = batch((4,), classes=3)
    kwargs = {"generator": torch.Generator(), **kwargs}
    with pytest.raises(CurvatureError, match=match):
        hutchinson_diagonal(model, nn.CrossEntropyLoss(), x, y, **kwargs)


def test_looped_and_vmapped_products_give_the_same_estimate(monkeypatch):
    import arturo_diag.curvature.hvp as hvp

    model = mlp(0).eval()
    x, y = batch((4,), classes=3)
    runs = []
    for loop_above in (0, 2**62):
        monkeypatch.setattr(hvp, "LOOP_ABOVE_BYTES", loop_above)
        runs.append(hutchinson_diagonal(model, nn.CrossEntropyLoss(), x, y, 6, torch.Generator().manual_seed(4)))
    for a, b in zip(runs[0], runs[1]):
        torch.testing.assert_close(a.flatten(), b.flatten(), atol=1e-13, rtol=0)
