"""AdaHessian, Sophia-H and Sophia-G against the straight-line paper versions, step by step, float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from estimator_cases import batches, cnn, functional_loss, mlp
from reference_optimizers import adahessian_reference, sophia_reference

from arturo_diag.estimators import AdaHessian, SophiaG, SophiaH, gnb_closure

STEPS = 30
TOL = 1e-12


def _theta(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _clip_counts(opt, gamma):
    """(clipped, unclipped) coordinates of the last step's m / max(gamma h, eps)."""
    clipped = unclipped = 0
    for group in opt.param_groups:
        for p in group["params"]:
            s = opt.state[p]
            r = (s["exp_avg"] / torch.clamp(gamma * s["hessian"], min=group["eps"])).abs()
            clipped += int((r >= 1).sum())
            unclipped += int((r < 1).sum())
    return clipped, unclipped


def _assert_close(model, expected, what):
    for n, p in model.named_parameters():
        err = (p.detach() - expected[n]).abs().max().item()
        scale = 1.0 + expected[n].abs().max().item()
        assert err <= TOL * scale, f"{what}: {n} differs by {err:.3g}"


@pytest.mark.parametrize("case", ["mlp", "cnn"])
@pytest.mark.parametrize("weight_decay,k", [(0.0, 1.0), (5e-4, 0.5)])
def test_adahessian_matches_reference(case, weight_decay, k):
    model = mlp() if case == "mlp" else cnn()
    shape = (4,) if case == "mlp" else (1, 5, 5)
    data = batches(shape, STEPS)
    loss_of, _ = functional_loss(model, data)
    hp = dict(lr=0.05, beta1=0.9, beta2=0.999, eps=1e-4, weight_decay=weight_decay, k=k, spatial=True)
    expected = adahessian_reference(loss_of, _theta(model), STEPS, torch.Generator().manual_seed(7), **hp)
    opt = AdaHessian(
        model.parameters(),
        lr=0.05,
        betas=(0.9, 0.999),
        eps=1e-4,
        weight_decay=weight_decay,
        hessian_power=k,
        spatial_average=True,
        generator=torch.Generator().manual_seed(7),
    )
    for t, (x, y) in enumerate(data, start=1):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward(create_graph=True)
        opt.step()
        _assert_close(model, expected[t - 1], f"step {t}")


def test_adahessian_spatial_average_is_used_for_conv_kernels():
    """With spatial averaging off the CNN run differs from the averaged reference (the option acts)."""
    model = cnn()
    data = batches((1, 5, 5), 3)
    loss_of, _ = functional_loss(model, data)
    hp = dict(lr=0.05, beta1=0.9, beta2=0.999, eps=1e-4, weight_decay=0.0, k=1.0)
    averaged = adahessian_reference(loss_of, _theta(model), 3, torch.Generator().manual_seed(7), spatial=True, **hp)
    opt = AdaHessian(model.parameters(), lr=0.05, spatial_average=False, generator=torch.Generator().manual_seed(7))
    for x, y in data:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward(create_graph=True)
        opt.step()
    kernel = dict(model.named_parameters())["0.weight"].detach()
    assert (kernel - averaged[-1]["0.weight"]).abs().max().item() > 1e-6


def test_adahessian_refuses_gradients_without_graph():
    model = mlp()
    x, y = batches((4,), 1)[0]
    F.cross_entropy(model(x), y).backward()
    with pytest.raises(RuntimeError, match="create_graph=True"):
        AdaHessian(model.parameters()).step()


@pytest.mark.parametrize("k,probe,weight_decay", [(1, "gaussian", 0.1), (3, "rademacher", 0.0), (10, "gaussian", 0.2)])
def test_sophia_h_matches_reference(k, probe, weight_decay):
    model = mlp()
    data = batches((4,), STEPS)
    loss_of, _ = functional_loss(model, data)
    # gamma 2 (not the paper's 0.01) so that both branches of the clip occur on this small problem
    hp = dict(lr=0.02, beta1=0.96, beta2=0.99, gamma=2.0, eps=1e-12, weight_decay=weight_decay, k=k)
    expected = sophia_reference(
        loss_of, _theta(model), STEPS, torch.Generator().manual_seed(3), estimator="hutchinson", probe=probe, **hp
    )
    opt = SophiaH(
        model.parameters(),
        lr=0.02,
        betas=(0.96, 0.99),
        gamma=2.0,
        eps=1e-12,
        weight_decay=weight_decay,
        hessian_interval=k,
        probe=probe,
        generator=torch.Generator().manual_seed(3),
    )
    counts = [0, 0]
    for t, (x, y) in enumerate(data, start=1):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward(create_graph=opt.hessian_due)
        opt.step()
        counts = [a + b for a, b in zip(counts, _clip_counts(opt, 2.0))]
        theta, h = expected[t - 1]
        _assert_close(model, theta, f"step {t}")
        for n, p in model.named_parameters():
            assert (opt.state[p]["hessian"] - h[n]).abs().max().item() <= TOL * (1 + h[n].abs().max().item())
    assert min(counts) > 0, f"clipped/unclipped coordinates {counts}: one branch of the clip was never tested"


@pytest.mark.parametrize("k", [1, 4])
def test_sophia_g_matches_reference(k):
    model = mlp()
    data = batches((4,), STEPS)
    loss_of, logits_of = functional_loss(model, data)
    hp = dict(lr=0.02, beta1=0.96, beta2=0.99, gamma=2.0, eps=1e-12, weight_decay=0.1, k=k)
    expected = sophia_reference(
        loss_of, _theta(model), STEPS, torch.Generator().manual_seed(5), estimator="gnb", logits_of=logits_of, **hp
    )
    gen = torch.Generator().manual_seed(5)
    opt = SophiaG(
        model.parameters(), lr=0.02, betas=(0.96, 0.99), gamma=2.0, eps=1e-12, weight_decay=0.1, hessian_interval=k
    )
    counts = [0, 0]
    for t, (x, y) in enumerate(data, start=1):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step(hessian_closure=gnb_closure(model, x, generator=gen) if opt.hessian_due else None)
        counts = [a + b for a, b in zip(counts, _clip_counts(opt, 2.0))]
        theta, h = expected[t - 1]
        _assert_close(model, theta, f"step {t}")
        for n, p in model.named_parameters():
            assert (opt.state[p]["hessian"] - h[n]).abs().max().item() <= TOL * (1 + h[n].abs().max().item())
    assert min(counts) > 0, f"clipped/unclipped coordinates {counts}: one branch of the clip was never tested"


def test_sophia_g_requires_the_closure_when_due():
    model = mlp()
    x, y = batches((4,), 1)[0]
    F.cross_entropy(model(x), y).backward()
    with pytest.raises(ValueError, match="hessian_closure"):
        SophiaG(model.parameters()).step()


def test_sophia_state_dict_round_trip_continues_identically():
    data = batches((4,), 12)

    def run(split):
        model = mlp()
        gen = torch.Generator().manual_seed(3)
        opt = SophiaH(model.parameters(), lr=0.02, hessian_interval=3, generator=gen)
        for t, (x, y) in enumerate(data, start=1):
            if t == split:
                saved = opt.state_dict()
                opt = SophiaH(model.parameters(), lr=0.02, hessian_interval=3, generator=gen)
                opt.load_state_dict(saved)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward(create_graph=opt.hessian_due)
            opt.step()
        return [p.detach().clone() for p in model.parameters()]

    for a, b in zip(run(split=None), run(split=6)):
        assert torch.equal(a, b)
