"""The step instruments ``innovation`` and ``alpha``: the Monitor's copies before a snapshot step,
the filter's innovation against the straight-line reference of ARTURO.md, and Cockpit's alpha on
quadratics whose 1-D minimum along the step is known in closed form.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from arturo_diag.curvature.alpha import alpha_from_observations, fit_quadratic_in_tau, step_alpha
from arturo_diag.curvature.innovation import CHI2_1_MEDIAN
from arturo_diag.diagnostics.monitor import Monitor
from arturo_diag.diagnostics.monitor_step import FILTER_KEYS
from arturo_diag.diagnostics.record import RunRecord
from arturo_diag.optim import Arturo
from arturo_diag.optim._buckets import FILTER_KEYS as OPTIMIZER_FILTER_KEYS
from tests.optim.arturo_reference import ArturoReference

SETTINGS = dict(lr=0.05, weight_decay=0.02, dynamic_model_noise=0.003, measurement_noise=0.7)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()


def _batch(generator, n=5):
    return torch.randn(n, 3, generator=generator, dtype=torch.float64), torch.randint(0, 2, (n,), generator=generator)


def test_the_monitor_copies_the_optimizers_own_filter_keys():
    assert FILTER_KEYS == OPTIMIZER_FILTER_KEYS


@pytest.mark.parametrize("fused", [False, None])
def test_the_optimizer_leaves_the_gradient_as_it_was(fused):
    model = _mlp()
    optimizer = Arturo(model.parameters(), fused=fused, **SETTINGS)
    generator = torch.Generator().manual_seed(3)
    for _ in range(3):  # the first step is eager whatever `fused` says; the later ones take the fused path
        x, y = _batch(generator)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        before = [p.grad.clone() for p in model.parameters()]
        optimizer.step()
        for p, g in zip(model.parameters(), before):
            assert torch.equal(p.grad, g)
    assert optimizer.last_step["path"] == ("eager" if fused is False else "fused")


@pytest.mark.parametrize("fused", [False, None])
def test_stored_innovation_is_the_straight_line_filters_own(tmp_path, fused):
    model = _mlp()
    optimizer = Arturo(model.parameters(), fused=fused, **SETTINGS)
    weights = [p.detach().clone() for p in model.parameters()]  # the reference's own weights
    reference = ArturoReference([{"params": weights, **SETTINGS}])
    names = [n for n, _ in model.named_parameters()]
    generator = torch.Generator().manual_seed(1)
    probe = _batch(generator, 9)
    expected = {}
    loss_fn = nn.functional.cross_entropy
    with Monitor(model, optimizer, loss_fn, probe, every=2, out=str(tmp_path / "run"),
                 instruments=("innovation",)) as monitor:  # fmt: skip
        for t in range(1, 7):
            x, y = _batch(generator)
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            grads = [p.grad.clone() for p in model.parameters()]
            if t % 2 == 0:  # ARTURO.md steps 0-2 by hand, from the reference's state before the step
                lr, wd, q, r = (SETTINGS[k] for k in ("lr", "weight_decay", "dynamic_model_noise", "measurement_noise"))
                for j, name in enumerate(names):
                    st, w, g = reference.state[(0, j)], weights[j], grads[j]
                    theta = w - lr * wd * w
                    d = g - (st["curvature"] * theta + st["intercept"])
                    s = (
                        (st["filter_cov_bb"] + q)
                        + 2 * theta * st["filter_cov_ba"]
                        + theta**2 * (st["filter_cov_aa"] + q)
                    )
                    expected[(t, name)] = (d.numpy(), (s + r).numpy(), theta, st["filter_cov_ba"].clone(),
                                           (st["filter_cov_aa"] + q).clone(), st["curvature"].clone())  # fmt: skip
            optimizer.step()
            reference.step([grads])
            monitor.step(loss.item())
        monitor.finish()
    for p, w in zip(model.parameters(), weights):  # the same run on both sides
        torch.testing.assert_close(p.detach(), w, rtol=1e-10, atol=1e-12)
    record = RunRecord.load(tmp_path / "run")
    assert record.snapshot_steps == [2, 4, 6]
    assert record.manifest["instrument_steps"] == {"innovation": [2, 4, 6]}
    for t in (2, 4, 6):
        snap = record.snapshot(t)
        for name in names:
            d, s, theta, p_ba, p_aa, a = expected[(t, name)]
            np.testing.assert_allclose(snap[name]["innovation"], d, rtol=1e-10, atol=1e-14)
            np.testing.assert_allclose(snap[name]["innovation_var"], s, rtol=1e-12)
            # the filter's own update: a_new = a + k_a d, k_a = (P_ba + theta (P_aa + q)) / s
            k_a = (p_ba + theta * p_aa).numpy() / snap[name]["innovation_var"]
            a_new = a.numpy() + k_a * snap[name]["innovation"]
            np.testing.assert_allclose(snap[name]["curvature"], a_new, rtol=1e-9, atol=1e-14)
    assert np.abs(record.snapshot(6)[names[0]]["innovation"]).max() > 0


def _train_arturo(tmp_path, every, steps, by_hand=False, instruments=("innovation", "alpha")):
    model = _mlp()
    optimizer = Arturo(model.parameters(), **SETTINGS)
    generator = torch.Generator().manual_seed(2)
    probe = _batch(generator, 9)
    with Monitor(model, optimizer, nn.functional.cross_entropy, probe, every=every, out=str(tmp_path / "run"),
                 instruments=instruments) as monitor:  # fmt: skip
        for _ in range(steps):
            x, y = _batch(generator)
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            monitor.step(loss.item())
        if by_hand:
            monitor.snapshot()  # by hand, after the last step: no step copies for it
        monitor.finish()
    return RunRecord.load(tmp_path / "run")


def test_the_first_step_has_no_filter_state_and_stores_no_innovation(tmp_path):
    record = _train_arturo(tmp_path, every=1, steps=2)
    first, second = record.snapshot(1), record.snapshot(2)
    assert all("innovation" not in f and "innovation_var" not in f for f in first.values())
    assert all({"innovation", "innovation_var"} <= set(f) for f in second.values())
    # alpha needs only the weights before the step: it is there at the first snapshot too
    assert np.isfinite(record.snapshots["alpha"].to_numpy()).all()


def test_a_snapshot_taken_by_hand_gets_no_step_state(tmp_path):
    record = _train_arturo(tmp_path, every=2, steps=3, by_hand=True)  # scheduled at 2, by hand at 3
    assert record.snapshot_steps == [2, 3]
    rows = record.snapshots.set_index("step")
    assert np.isfinite(rows.loc[2, "alpha"]) and math.isnan(rows.loc[3, "alpha"])
    assert "innovation" in record.snapshot(2)["0.weight"] and "innovation" not in record.snapshot(3)["0.weight"]


# ---------------------------------------------------------------------------------------- alpha


class _Quadratic(nn.Module):
    """loss_fn(model(x), y) = 0.5 (w - c)^T A (w - c), whatever the batch."""

    def __init__(self, start: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(start.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w.expand(x.shape[0], -1)


def _quadratic_problem(seed=0, n=5, definite=True):
    rng = np.random.default_rng(seed)
    m = rng.normal(size=(n, n))
    eig = rng.uniform(0.5, 3.0, n) if definite else np.array([-2.0, *rng.uniform(0.5, 3.0, n - 1)])
    q, _ = np.linalg.qr(m)
    a = torch.tensor(q @ np.diag(eig) @ q.T)
    c = torch.tensor(rng.normal(size=n))

    def loss_fn(out, _targets):
        diff = out - c
        return 0.5 * torch.mean(torch.einsum("bi,ij,bj->b", diff, a, diff))

    x0 = torch.tensor(rng.normal(size=n))
    batch = (torch.zeros(4, 1, dtype=torch.float64), torch.zeros(4, dtype=torch.float64))
    return a, c, loss_fn, x0, batch


def _alpha_of_move(x0, x1, loss_fn, batch):
    model = _Quadratic(x1)
    return step_alpha(model, loss_fn, *batch, {"w": x0}), model


@pytest.mark.parametrize(("fraction", "alpha"), [(1.0, 0.0), (2.0, 1.0), (0.5, -0.5), (1.5, 0.5), (1e-4, -1 + 1e-4)])
def test_alpha_on_a_quadratic_is_the_step_over_the_distance_to_the_1d_minimum_minus_one(fraction, alpha):
    a, c, loss_fn, x0, batch = _quadratic_problem()
    g0 = a @ (x0 - c)
    u = -g0 + 0.5 * g0.norm() * torch.tensor(np.random.default_rng(1).normal(size=5))  # a descent direction, not -g0
    tau_star = float(-(g0 @ u) / (u @ a @ u))  # the 1-D minimum along u, closed form
    assert tau_star > 0
    x1 = x0 + fraction * tau_star * u
    found, model = _alpha_of_move(x0, x1, loss_fn, batch)
    assert found["alpha"] == pytest.approx(alpha, abs=1e-9)
    d = x1 - x0
    f = lambda x: float(0.5 * (x - c) @ a @ (x - c))  # noqa: E731
    assert found["alpha_f0"] == pytest.approx(f(x0), rel=1e-12)
    assert found["alpha_f1"] == pytest.approx(f(x1), rel=1e-12)
    assert found["alpha_df0"] == pytest.approx(float(g0 @ d), rel=1e-10)
    assert found["alpha_df1"] == pytest.approx(float((a @ (x1 - c)) @ d), rel=1e-9, abs=1e-13)
    assert torch.equal(model.w.detach(), x1)  # evaluated at theta_t without touching the model


def test_alpha_conventions_of_cockpit():
    # Cockpit's own noise-free example ("walked to the minimum"): f = (1, 0.5), f' = (-1, 0) at t = 1
    np.testing.assert_allclose(fit_quadratic_in_tau(1.0, 0.5, -1.0, 0.0), [1.0, -1.0, 0.5], atol=1e-12)
    assert alpha_from_observations(1.0, 0.5, -1.0, 0.0) == pytest.approx(0.0, abs=1e-12)
    assert alpha_from_observations(1.0, 0.5, -1.0, 0.0, moved=False) == -1.0  # a zero step
    assert alpha_from_observations(1.0, 0.0, -0.5, -1.5) == -1.0  # concave: still going down
    assert alpha_from_observations(1.0, 0.0, -1.0, -1.0) == -1.0  # a straight line (mu2 = 0)
    assert alpha_from_observations(1.0, 2.0, 0.0, 2.0) == math.inf  # started at the 1-D minimum
    assert alpha_from_observations(1.0, 1.0, 0.0, 0.0) != alpha_from_observations(1.0, 1.0, 0.0, 0.0)  # NaN
    # uphill from the start (mu1 > 0): below -1
    assert alpha_from_observations(1.0, 2.0, 0.5, 1.5) < -1


def test_alpha_of_a_concave_direction_is_minus_one():
    a, c, loss_fn, _, batch = _quadratic_problem(definite=False)
    eigvals, eigvecs = torch.linalg.eigh(a)
    u = eigvecs[:, 0]  # the negative-curvature direction
    x0 = c + 0.3 * u
    found, _ = _alpha_of_move(x0, x0 + 0.5 * u, loss_fn, batch)
    assert eigvals[0] < 0 and found["alpha"] == -1.0


def test_the_fit_in_loss_units_is_cockpits_distance_fit_with_slope_variances_one_over_length_squared():
    # on a loss that is not quadratic along the step the weighting matters: an independent twin,
    # Cockpit's fit in distance units (diagnostics.gauges), weighted as the module docstring says
    model = _mlp()
    generator = torch.Generator().manual_seed(4)
    x, y = _batch(generator, 12)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = torch.autograd.grad(nn.functional.cross_entropy(model(x), y), list(model.parameters()))
    with torch.no_grad():
        for p, g in zip(model.parameters(), grads):  # a long gradient step: far from quadratic along it
            p.sub_(6.0 * g)
    found = step_alpha(model, nn.functional.cross_entropy, x, y, before)
    t = math.sqrt(sum(float(((p.detach() - before[n]) ** 2).sum()) for n, p in model.named_parameters()))
    observed = (found["alpha_f0"], found["alpha_f1"], found["alpha_df0"] / t, found["alpha_df1"] / t)
    twin = _distance_fit_alpha(t, observed, (1.0, 1.0, 1 / t**2, 1 / t**2))
    assert found["alpha"] == pytest.approx(twin, rel=1e-9)
    assert -1 < found["alpha"] < 5 and found["alpha"] != pytest.approx(0.0, abs=1e-3)
    unweighted = _distance_fit_alpha(t, observed, (1.0, 1.0, 1.0, 1.0))
    assert abs(unweighted - found["alpha"]) > 1e-6  # the weighting is a real choice here


def _distance_fit_alpha(t, observed, variances):
    """Cockpit's fit in distance units, straight from its description: weighted least squares of
    f(s) = mu0 + mu1 s + mu2 s^2 to f(0), f(t), f'(0), f'(t), alpha = -2 t mu2 / mu1 - 1."""
    phi = np.array([[1.0, 0.0, 0.0], [1.0, t, t * t], [0.0, 1.0, 0.0], [0.0, 1.0, 2.0 * t]])
    w = np.sqrt(1.0 / np.asarray(variances))
    mu = np.linalg.lstsq(phi * w[:, None], np.asarray(observed) * w, rcond=None)[0]
    return float(-2.0 * t * mu[2] / mu[1] - 1.0)


def test_the_monitor_stores_alpha_of_each_snapshot_step_of_sgd_on_a_quadratic(tmp_path):
    a, c, loss_fn, x0, batch = _quadratic_problem(seed=3)
    model = _Quadratic(x0)
    lr = 0.15
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    expected = {}
    with Monitor(model, optimizer, loss_fn, batch, every=2, out=str(tmp_path / "run"),
                 instruments=("innovation", "alpha")) as monitor:  # fmt: skip
        for t in range(1, 7):
            optimizer.zero_grad()
            loss = loss_fn(model(batch[0]), batch[1])
            loss.backward()
            g = model.w.grad.detach().clone()
            # SGD's step d = -lr g: tau* = g.g / (lr g^T A g), so alpha = 1/tau* - 1 = lr g^T A g / g.g - 1
            expected[t] = float(lr * (g @ a @ g) / (g @ g) - 1)
            optimizer.step()
            monitor.step(loss.item())
        monitor.finish()
    record = RunRecord.load(tmp_path / "run")
    rows = record.snapshots.set_index("step")
    for t in (2, 4, 6):
        assert rows.loc[t, "alpha"] == pytest.approx(expected[t], abs=1e-9)
        assert "innovation" not in record.snapshot(t)["w"]  # not arTuRO: no filter, nothing stored
    assert set(record.instruments) == {"innovation", "alpha"}


def test_chi2_median_constant():
    draws = np.random.default_rng(0).normal(size=400_000) ** 2
    assert np.median(draws) == pytest.approx(CHI2_1_MEDIAN, abs=3e-3)
