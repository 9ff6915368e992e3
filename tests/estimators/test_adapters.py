"""The adapters return exactly what the optimizers keep; the registry finds a user's adapter."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from estimator_cases import batches, mlp

from arturo_diag.estimators import (
    CurvatureEstimate,
    EstimatorError,
    adapter_for,
    register_adapter,
    registered_adapters,
    unregister_adapter,
)
from arturo_diag.optim import Arturo


def _train(opt, model, steps=3):
    for x, y in batches((4,), steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


def test_arturo_adapter_returns_exactly_curvature_and_filter_cov_aa():
    model = mlp()
    opt = Arturo(model.parameters())
    _train(opt, model)
    e = adapter_for(opt).estimate(opt, model.named_parameters())
    assert e.optimizer == "arturo" and e.target == "hessian_diagonal" and e.missing == ()
    for n, p in model.named_parameters():
        assert torch.equal(e.estimate[n], opt.state[p]["curvature"])
        assert torch.equal(e.variance[n], opt.state[p]["filter_cov_aa"])
        assert e.estimate[n].data_ptr() != opt.state[p]["curvature"].data_ptr()  # a copy, not a view
    assert e.step == 3


def test_arturo_adapter_marks_parameters_without_state_missing():
    model = mlp()
    opt = Arturo(list(model.parameters())[:2])
    _train(opt, model)
    e = adapter_for(opt).estimate(opt, model.named_parameters())
    assert set(e.estimate) == {"0.weight", "0.bias"} and e.missing == ("2.weight", "2.bias")


def test_ivon_adapter_returns_the_packages_hess_buffer_bitwise():
    ivon = pytest.importorskip("ivon")
    model = mlp()
    params = list(model.named_parameters())
    groups = [{"params": [p for _, p in params[:3]]}, {"params": [params[3][1]], "weight_decay": 1e-3}]
    opt = ivon.IVON(groups, lr=0.1, ess=50.0, beta2=0.9)
    for x, y in batches((4,), 4):
        with opt.sampled_params(train=True):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
        opt.step()
    e = adapter_for(opt).estimate(opt, model.named_parameters())
    assert e.optimizer == "ivon" and e.target == "hessian_diagonal" and e.step == 4
    for group in opt.param_groups:
        names = [n for n, p in params if any(p is q for q in group["params"])]
        flat = torch.cat([e.estimate[n].reshape(-1) for n in names])
        assert torch.equal(flat, group["hess"])
        for n in names:
            expected = 1.0 / (group["ess"] * (e.estimate[n] + group["weight_decay"]))
            assert torch.equal(e.extras["posterior_variance"][n], expected)
    assert not torch.equal(opt.param_groups[0]["hess"], torch.ones_like(opt.param_groups[0]["hess"]))


def test_adam_adapter_names_coupled_weight_decay():
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), weight_decay=0.1)
    _train(opt, model)
    e = adapter_for(opt).estimate(opt, model.named_parameters())
    assert "weight_decay * theta" in e.scale and e.variance is None
    for n, p in model.named_parameters():
        assert torch.equal(e.estimate[n], opt.state[p]["exp_avg_sq"] / (1 - 0.999**3))


class _MyAdam(torch.optim.Adam):
    pass


class _MyAdapter:
    name = "my-adam"

    def matches(self, optimizer):
        return isinstance(optimizer, _MyAdam)

    def estimate(self, optimizer, named_parameters):
        est = {n: optimizer.state[p]["exp_avg_sq"].clone() for n, p in named_parameters}
        return CurvatureEstimate(estimate=est, target="gradient_second_moment", scale="raw v", optimizer=self.name)


def test_a_user_adapter_is_registered_and_found_before_the_builtin_one():
    model = mlp()
    opt = _MyAdam(model.parameters())
    _train(opt, model)
    assert adapter_for(opt).name == "adam"  # the built-in one matches a subclass of Adam
    adapter = register_adapter(_MyAdapter())
    try:
        assert adapter_for(opt) is adapter
        assert registered_adapters()[0] is adapter
        e = adapter_for(opt).estimate(opt, model.named_parameters())
        assert e.optimizer == "my-adam" and e.scale == "raw v"
        assert adapter_for(torch.optim.Adam(model.parameters())).name == "adam"
    finally:
        unregister_adapter("my-adam")
    assert adapter_for(opt).name == "adam"


def test_no_adapter_is_one_error_naming_the_registered_ones():
    model = mlp()
    with pytest.raises(EstimatorError, match=r"no curvature adapter matches SGD; registered: .*arturo.*adam"):
        adapter_for(torch.optim.SGD(model.parameters(), lr=0.1))


def test_register_refuses_an_object_without_the_protocol():
    with pytest.raises(EstimatorError, match="adapter:"):
        register_adapter(object())


def test_estimate_refuses_an_unknown_target_and_misshaped_variance():
    with pytest.raises(EstimatorError, match="target: got 'hessian'"):
        CurvatureEstimate(estimate={}, target="hessian", scale="", optimizer="x")
    with pytest.raises(EstimatorError, match="variance: 'w' is shaped"):
        CurvatureEstimate(
            estimate={"w": torch.zeros(2)},
            variance={"w": torch.zeros(3)},
            target="hessian_diagonal",
            scale="",
            optimizer="x",
        )
