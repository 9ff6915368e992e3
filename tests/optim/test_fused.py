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
    {"lr": 20.0, "guard": True, "measurement_noise": 0.01},  # large steps: negative curvature appears
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


def test_guard_case_really_has_negative_curvature():
    # the guarded case above must exercise the guard, else it tests nothing
    _, _, trace = _train(None, lr=20.0, guard=True, measurement_noise=0.01)
    assert sum(s["guard_acted"] for s in trace) > 0


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
