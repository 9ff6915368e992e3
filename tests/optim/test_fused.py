"""The fused CPU kernels against the eager kernels, in float64 (as torch tests foreach vs for-loop)."""

import pytest
import torch

from arturo_diag.optim import Arturo, _fused_cpu

pytestmark = pytest.mark.skipif(not _fused_cpu.AVAILABLE, reason="numba not installed")


def _train(fused, steps=60, **kwargs):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 4)
    ).double()
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


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"weight_decay": 0.05},
        {"dual": "exact"},
        {"dynamic_model_noise": 0.0},
    ],
)
def test_fused_matches_eager_float64(kwargs):
    m_eager, o_eager, t_eager = _train(False, **kwargs)
    m_fused, o_fused, t_fused = _train(None, **kwargs)
    assert [s["path"] for s in t_eager] == ["eager"] * len(t_eager)
    assert [s["path"] for s in t_fused] == ["eager"] + ["fused"] * (len(t_fused) - 1)  # compares what it claims
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
    optimizer = Arturo(
        [x], lr=0.5, fused=fused, guard=guard, measurement_noise=0.01, dynamic_model_noise=1e-3, start_filter_cov=1.0
    )
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
    assert [s["path"] for s in t_f[1:]] == ["fused"] * (len(t_f) - 1)
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


# ---------------------------------------------------------------- which path ran (path pinning)
def _steps(optimizer, params, steps, generator):
    paths = []
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, dtype=p.dtype, generator=generator)
        optimizer.step()
        paths.append(optimizer.last_step["path"])
    return paths


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_default_takes_the_fused_path_after_the_first_step(dtype):
    """Losing the fast path (numba, a condition in _use_fused) must fail a test, not pass quietly."""
    model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Linear(4, 2)).to(dtype)
    params = list(model.parameters())
    optimizer = Arturo(params)
    assert optimizer.param_groups[0]["fused"] is None
    paths = _steps(optimizer, params, 5, torch.Generator().manual_seed(0))
    assert paths == ["eager", "fused", "fused", "fused", "fused"]


def test_fused_false_always_runs_eager_and_true_runs_fused():
    generator = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.zeros(7))]
    assert _steps(Arturo(params, fused=False), params, 3, generator) == ["eager"] * 3
    params = [torch.nn.Parameter(torch.zeros(7))]
    assert _steps(Arturo(params, fused=True), params, 3, generator) == ["eager", "fused", "fused"]


def test_a_new_parameter_and_an_oracle_step_run_eager_then_fused_again():
    """The two per-step conditions: a parameter's first step, a step with an oracle curvature."""
    generator = torch.Generator().manual_seed(0)
    first, second = torch.nn.Parameter(torch.zeros(5)), torch.nn.Parameter(torch.zeros(3))
    optimizer = Arturo([first], fused=True)
    assert _steps(optimizer, [first], 2, generator) == ["eager", "fused"]
    optimizer.add_param_group({"params": [second], "lr": 0.01})
    assert _steps(optimizer, [first, second], 2, generator) == ["mixed", "fused"]
    optimizer.set_oracle_curvature({first: torch.ones(5), second: torch.ones(3)})
    assert _steps(optimizer, [first, second], 2, generator) == ["eager", "fused"]


def test_fused_true_raises_when_it_cannot_apply_for_the_whole_run(monkeypatch):
    def param(dtype=torch.float32, device="cpu"):
        return [torch.nn.Parameter(torch.zeros(3, dtype=dtype, device=device))]

    with pytest.raises(ValueError, match=r"^fused: got True; the fused kernels run the decoupled KL; kl='coupled'$"):
        Arturo(param(), fused=True, kl="coupled")
    with pytest.raises(
        ValueError,
        match=r"^fused: got True; the fused kernels take float32 or float64; "
        r"the parameters are bfloat16$",
    ):
        Arturo(param(torch.bfloat16), fused=True)
    with pytest.raises(
        ValueError,
        match=r"^fused: got True; the fused kernels run on the CPU; the parameters "
        r"are on meta$",
    ):
        Arturo(param(device="meta"), fused=True)
    # None quietly takes the eager kernels in the same cases
    for optimizer in (Arturo(param(), kl="coupled"), Arturo(param(torch.bfloat16))):
        assert _steps(optimizer, optimizer.param_groups[0]["params"], 2, None) == ["eager", "eager"]
    # a condition that changes after construction raises at the step
    ps = param()
    optimizer = Arturo(ps, fused=True)
    _steps(optimizer, ps, 1, None)
    optimizer.param_groups[0]["kl"] = "coupled"
    with pytest.raises(RuntimeError, match=r"^fused=True: the fused kernels run the decoupled KL"):
        _steps(optimizer, ps, 1, None)
    monkeypatch.setattr(_fused_cpu, "AVAILABLE", False)
    with pytest.raises(ValueError, match=r"^fused: got True; the fused kernels need numba \(pip install numba\)$"):
        Arturo(param(), fused=True)
    optimizer = Arturo(param())
    assert _steps(optimizer, optimizer.param_groups[0]["params"], 2, None) == ["eager", "eager"]


def test_fused_reads_non_contiguous_weights_and_gradients_like_eager():
    """The fused prepare reads each parameter and gradient in place; a channels-last weight and a
    transposed gradient take its copy path and must give the eager numbers."""

    def run(fused):
        generator = torch.Generator().manual_seed(5)
        weight = torch.nn.Parameter(
            torch.randn(4, 3, 3, 3, dtype=torch.float64, generator=generator).to(memory_format=torch.channels_last)
        )
        matrix = torch.nn.Parameter(torch.randn(6, 5, dtype=torch.float64, generator=generator))
        optimizer = Arturo([weight, matrix], fused=fused, weight_decay=0.01)
        paths = []
        for _ in range(6):
            weight.grad = torch.randn(weight.shape, dtype=torch.float64, generator=generator).to(
                memory_format=torch.channels_last
            )
            matrix.grad = torch.randn(5, 6, dtype=torch.float64, generator=generator).t()
            optimizer.step()
            paths.append(optimizer.last_step["path"])
        assert not weight.is_contiguous() and not matrix.grad.is_contiguous()
        return [weight.detach().clone(), matrix.detach().clone()], paths

    (eager, eager_paths), (fused, fused_paths) = run(False), run(True)
    assert fused_paths == ["eager"] + ["fused"] * 5 and eager_paths == ["eager"] * 6
    for a, b in zip(eager, fused):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
