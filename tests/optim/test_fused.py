"""The fused CPU kernels against the eager kernels, in float64 (as torch tests foreach vs for-loop)."""
import pytest
import torch

from arturo_diag.optim import Arturo
from arturo_diag.optim import _fused_cpu

pytestmark = pytest.mark.skipif(not _fused_cpu.AVAILABLE, reason="numba not installed")


def _train(fused, steps=60, **kwargs):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(3 * 4 * 4, 4)).double()
    optimizer = Arturo(model.parameters(), fused=fused, **kwargs)
    x = torch.randn(32, 1, 6, 6, dtype=torch.float64)
    y = torch.randint(0, 4, (32,))
    trace = []
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        trace.append(dict(optimizer.last_step))
    return model, optimizer, trace


@pytest.mark.parametrize("kwargs", [
    {},
    {"weight_decay": 0.05},
    {"dual": "exact"},
    {"dynamic_model_noise": 0.0},
])
def test_fused_matches_eager_float64(kwargs):
    m_eager, o_eager, t_eager = _train(False, **kwargs)
    m_fused, o_fused, t_fused = _train(None, **kwargs)
    for a, b in zip(m_eager.parameters(), m_fused.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for p_e, p_f in zip(m_eager.parameters(), m_fused.parameters()):
        for key in ("precision", "curvature", "intercept", "filter_cov_bb", "filter_cov_ba", "filter_cov_aa"):
            torch.testing.assert_close(o_eager.state[p_e][key], o_fused.state[p_f][key], rtol=1e-10, atol=1e-12)
    for se, sf in zip(t_eager, t_fused):
        assert se["iterations"] == sf["iterations"]
        for key in ("eta", "eta_lo", "eta_hi", "kl_ratio"):
            assert sf[key] == pytest.approx(se[key], rel=1e-9, abs=1e-12)
        for key in ("precision_nonpos", "denominator_nonpos", "guard_acted"):
            assert se[key] == sf[key]


def _train_indefinite_quadratic(fused, guard, steps=40):
    """0.5 sum d_i x_i^2 with some d_i < 0, noisy gradients: the filter's curvature turns negative."""
    generator = torch.Generator().manual_seed(3)
    d = torch.linspace(-2.0, 3.0, 50, dtype=torch.float64)
    x = torch.nn.Parameter(torch.randn(50, dtype=torch.float64, generator=generator))
    optimizer = Arturo([x], lr=0.5, fused=fused, guard=guard, measurement_noise=0.01,
                       dynamic_model_noise=1e-3, start_filter_cov=1.0)
    trace = []
    for _ in range(steps):
        x.grad = d * x.detach() + 0.01 * torch.randn(50, dtype=torch.float64, generator=generator)
        optimizer.step()
        trace.append(dict(optimizer.last_step))
    return x.detach().clone(), optimizer.state[x], trace


@pytest.mark.parametrize("guard", [False, True])
def test_fused_matches_eager_with_negative_curvature(guard):
    x_e, s_e, t_e = _train_indefinite_quadratic(False, guard)
    x_f, s_f, t_f = _train_indefinite_quadratic(None, guard)
    assert (s_e["curvature"] < 0).any()  # the case exercises what it claims to
    torch.testing.assert_close(x_e, x_f, rtol=1e-10, atol=1e-12)
    for key in ("precision", "curvature", "intercept"):
        torch.testing.assert_close(s_e[key], s_f[key], rtol=1e-10, atol=1e-12)
    assert [s["guard_acted"] for s in t_e] == [s["guard_acted"] for s in t_f]
    assert [s["denominator_nonpos"] for s in t_e] == [s["denominator_nonpos"] for s in t_f]
    assert [s["precision_nonpos"] for s in t_e] == [s["precision_nonpos"] for s in t_f]
    if guard:
        assert sum(s["guard_acted"] for s in t_f) > 0
        assert all(s["denominator_nonpos"] == 0 and s["precision_nonpos"] == 0 for s in t_f)


def test_fused_float32_close_to_eager():
    def run(fused):
        torch.manual_seed(0)
        model = torch.nn.Linear(20, 5)
        optimizer = Arturo(model.parameters(), fused=fused)
        x, y = torch.randn(64, 20), torch.randint(0, 5, (64,))
        for _ in range(30):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
        return model
    for a, b in zip(run(False).parameters(), run(None).parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
