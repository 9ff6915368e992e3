"""The spectrum library against curvlinops (Dangel et al.), an independent implementation of the
Hessian as a linear operator: the same Hessian-vector products, the same extreme eigenvalues and
the same trace on a tiny float64 model, and curvlinops' Hutch++ within our standard errors.

curvlinops installs beside torch 2.13 with ``--no-deps`` (its plain install pulls BackPACK, hence
torchvision, which does not import beside the CPU build): the README's test command installs it
so. It is skipped only where it is not installed."""

import math

import numpy as np
import pytest
import torch
from test_spectrum import dense_hessian, tanh_case

from arturo_diag.curvature.spectrum import hessian_operator, hutchpp_trace, top_eigenvalues

curvlinops = pytest.importorskip("curvlinops")


@pytest.fixture(scope="module")
def both():
    model, loss, x, y = tanh_case()
    params = [p for p in model.parameters() if p.requires_grad]
    theirs = curvlinops.HessianLinearOperator(model, loss, params, [(x, y)])
    ours = hessian_operator(model, loss, x, y)
    return model, loss, x, y, theirs, ours


def test_the_same_hessian_vector_products(both):
    *_, theirs, ours = both
    rng = np.random.default_rng(0)
    for _ in range(3):
        v = torch.from_numpy(rng.standard_normal(ours.dimension))
        assert torch.allclose(ours.matvec(v), theirs @ v, rtol=1e-10, atol=1e-12)


def test_the_same_extreme_eigenvalues_and_trace(both):
    from scipy.sparse.linalg import eigsh

    model, loss, x, y, theirs, _ = both
    scipy_op = theirs.to_scipy()
    their_top = np.sort(eigsh(scipy_op, k=3, which="LA", tol=0, return_eigenvectors=False))[::-1]
    their_low = eigsh(scipy_op, k=1, which="SA", tol=0, return_eigenvectors=False)
    our_top = top_eigenvalues(model, loss, x, y, k=3, which="LA").values
    our_low = top_eigenvalues(model, loss, x, y, k=1, which="SA").values
    assert np.allclose(our_top, their_top, rtol=0, atol=1e-8)
    assert np.allclose(our_low, their_low, rtol=0, atol=1e-8)
    dense = dense_hessian(model, loss, x, y).numpy()
    assert np.allclose(np.linalg.eigvalsh(dense)[-3:][::-1], their_top, atol=1e-8)  # both against autograd


def test_hutchpp_ours_and_theirs_agree_in_distribution(both):
    """Over 40 seeds at the same budget (60 products): both Hutch++ estimates are centred on the
    dense trace with the same spread, and our stated SE is the spread we see."""
    model, loss, x, y, theirs, _ = both
    truth = float(np.trace(dense_hessian(model, loss, x, y).numpy()))
    their, ours = [], []
    for seed in range(40):
        torch.manual_seed(seed)
        their.append(float(curvlinops.hutchpp_trace(theirs, num_matvecs=60)))
        ours.append(hutchpp_trace(model, loss, x, y, 60, torch.Generator().manual_seed(seed)))
    values = np.array([o.value for o in ours])
    spread, their_spread = values.std(ddof=1), np.std(their, ddof=1)
    assert abs(values.mean() - truth) < 4 * spread / math.sqrt(40)
    assert abs(np.mean(their) - truth) < 4 * their_spread / math.sqrt(40)
    assert 0.6 < spread / their_spread < 1.6
    assert 0.7 < np.mean([o.stderr for o in ours]) / spread < 1.4
