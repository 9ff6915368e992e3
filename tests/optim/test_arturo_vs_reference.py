"""Arturo against the independent reference, step by step, in float64 (ARTURO.md "One step").

Each test runs 60 steps on a tiny MLP or CNN with random minibatches and compares, after every
step: weights, eta, its final bracket, the number of K evaluations, K(eta)/eps, the KL bound, the
non-positive precision/denominator counts, and every state tensor (rtol 1e-10, atol 1e-12).
"""

from __future__ import annotations

import pytest
import torch
from arturo_cases import Case, reference_for, run_against_reference

from arturo_diag.optim import Arturo

STEPS = 60

# ARTURO.md, "Published settings" (kl_bound is lr), typed literally; eta_tol is 0.5 everywhere.
FMNIST = dict(
    lr=0.08567456,
    reg_weight=0.05865662,
    prior_prec=0.0015,
    var_init=0.01,
    nu=1.3,
    dynamic_model_noise=0.01739296,
    measurement_noise=2.81679116,
    start_filter_cov=5e-5,
    weight_decay=1.5404e-6,
    eta_tol=0.5,
)
CIFAR_CNN = dict(
    lr=0.00278750,
    reg_weight=0.29678596,
    prior_prec=0.0015,
    var_init=0.01,
    nu=1.3,
    dynamic_model_noise=0.00245526,
    measurement_noise=1.21975001,
    start_filter_cov=5e-5,
    weight_decay=0.0,
    eta_tol=0.5,
)
CIFAR10_RESNET34 = dict(
    lr=0.00713292,
    reg_weight=1.59735443,
    prior_prec=0.0015,
    var_init=0.01,
    nu=1.3,
    dynamic_model_noise=0.08938099,
    measurement_noise=9.32844002,
    start_filter_cov=5e-5,
    weight_decay=7.0291e-4,
    eta_tol=0.5,
)
CIFAR100_RESNET34 = dict(
    lr=0.00723373,
    reg_weight=1.67676999,
    prior_prec=0.0015,
    var_init=0.01,
    nu=1.3,
    dynamic_model_noise=0.00977875,
    measurement_noise=4.82203163,
    start_filter_cov=5e-5,
    weight_decay=0.0,
    eta_tol=0.5,
)
PRESETS = {
    "fmnist_cnn": FMNIST,
    "fmnist_resnet18": FMNIST,
    "cifar10_cnn": CIFAR_CNN,
    "cifar100_cnn": CIFAR_CNN,
    "cifar10_resnet34": CIFAR10_RESNET34,
    "cifar100_resnet34": CIFAR100_RESNET34,
}
DEFAULTS = FMNIST  # the constructor's defaults are the Fashion-MNIST setting


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_matches_reference(name, kind):
    case = Case(kind, seed=1)
    opt = Arturo.from_preset(name, case.model.parameters())
    ref = reference_for(opt, hyper=[PRESETS[name]])
    run_against_reference(case, opt, ref, STEPS)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_with_two_groups_decay_and_multistep_lr_matches_reference(name):
    """Each preset with a second group at 3x the KL bound, weight decay 1e-3 (override) and the
    paper's schedule shape (x0.006 at two milestones)."""
    case = Case("cnn", seed=12)
    first, second = _two_groups(case.model)
    eps = PRESETS[name]["lr"]
    opt = Arturo.from_preset(name, [{"params": first}, {"params": second, "lr": 3 * eps}], weight_decay=1e-3)
    milestones, gamma = [20, 35], 0.006
    scheduler = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=gamma)
    hyper = [dict(PRESETS[name], weight_decay=1e-3), dict(PRESETS[name], weight_decay=1e-3, lr=3 * eps)]
    ref = reference_for(opt, hyper=hyper)

    def lr_of_step(k):
        drops = sum(1 for m in milestones if m <= k - 1)
        return [eps * gamma**drops, 3 * eps * gamma**drops]

    run_against_reference(case, opt, ref, STEPS, scheduler=scheduler, lr_of_step=lr_of_step)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_defaults_match_reference(kind):
    case = Case(kind, seed=2)
    opt = Arturo(case.model.parameters())
    ref = reference_for(opt, hyper=[DEFAULTS])
    run_against_reference(case, opt, ref, STEPS)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_weight_decay_matches_reference(kind):
    hyper = dict(DEFAULTS, lr=0.05, weight_decay=0.3)
    case = Case(kind, seed=3)
    opt = Arturo(case.model.parameters(), lr=0.05, weight_decay=0.3)
    ref = reference_for(opt, hyper=[hyper])
    run_against_reference(case, opt, ref, STEPS)


def _two_groups(model):
    modules = list(model.children())
    return list(modules[0].parameters()), list(modules[1].parameters())


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_two_groups_with_different_lr_match_reference(kind):
    case = Case(kind, seed=4)
    first, second = _two_groups(case.model)
    opt = Arturo([{"params": first, "lr": 0.02}, {"params": second, "lr": 0.2}], weight_decay=0.1)
    hyper = [dict(DEFAULTS, lr=0.02, weight_decay=0.1), dict(DEFAULTS, lr=0.2, weight_decay=0.1)]
    ref = reference_for(opt, hyper=hyper)
    run_against_reference(case, opt, ref, STEPS)


def test_per_group_hyperparameters_are_honoured():
    case = Case("mlp", seed=5)
    first, second = _two_groups(case.model)
    g0 = dict(
        lr=0.03,
        reg_weight=0.2,
        prior_prec=0.01,
        var_init=0.05,
        nu=0.7,
        dynamic_model_noise=0.001,
        measurement_noise=0.5,
        start_filter_cov=0.01,
        weight_decay=0.05,
    )
    g1 = dict(
        lr=0.1,
        reg_weight=1.5,
        prior_prec=0.0,
        var_init=0.002,
        nu=2.5,
        dynamic_model_noise=0.05,
        measurement_noise=4.0,
        start_filter_cov=1e-3,
        weight_decay=0.0,
    )
    opt = Arturo([dict(g0, params=first), dict(g1, params=second)])
    ref = reference_for(opt, hyper=[dict(g0, eta_tol=0.5), dict(g1, eta_tol=0.5)])
    run_against_reference(case, opt, ref, STEPS)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_multistep_lr_schedules_the_kl_bound(kind):
    case = Case(kind, seed=6)
    first, second = _two_groups(case.model)
    opt = Arturo([{"params": first, "lr": 0.05}, {"params": second, "lr": 0.2}], weight_decay=0.01)
    milestones, gamma = [20, 35], 0.006
    scheduler = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=gamma)
    hyper = [dict(DEFAULTS, lr=0.05, weight_decay=0.01), dict(DEFAULTS, lr=0.2, weight_decay=0.01)]
    ref = reference_for(opt, hyper=hyper)

    def lr_of_step(k):  # the scheduler has been stepped k-1 times before step k
        drops = sum(1 for m in milestones if m <= k - 1)
        return [0.05 * gamma**drops, 0.2 * gamma**drops]

    run_against_reference(case, opt, ref, STEPS, scheduler=scheduler, lr_of_step=lr_of_step)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05 * gamma**2, rel=1e-14)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_coupled_kl_matches_reference(kind):
    case = Case(kind, seed=7)
    opt = Arturo(case.model.parameters(), kl="coupled")
    ref = reference_for(opt, hyper=[DEFAULTS], kl="coupled")
    run_against_reference(case, opt, ref, STEPS)


@pytest.mark.parametrize("fixed_eta", [0.0, 0.7, 25.0])
def test_fixed_eta_matches_reference(fixed_eta):
    case = Case("mlp", seed=8)
    opt = Arturo(case.model.parameters(), fixed_eta=fixed_eta, lr=0.01)
    ref = reference_for(opt, hyper=[dict(DEFAULTS, lr=0.01)], fixed_eta=fixed_eta)
    run_against_reference(case, opt, ref, STEPS, bracket=False)
    assert opt.last_step["iterations"] == 0
    assert opt.last_step["eta"] == fixed_eta


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_no_drift_matches_reference(kind):
    case = Case(kind, seed=9)
    opt = Arturo(case.model.parameters(), dynamic_model_noise=0.0)
    ref = reference_for(opt, hyper=[dict(DEFAULTS, dynamic_model_noise=0.0)])
    run_against_reference(case, opt, ref, STEPS)


def test_named_parameters_match_reference():
    case = Case("cnn", seed=10)
    opt = Arturo(case.model.named_parameters(), weight_decay=0.02)
    ref = reference_for(opt, hyper=[dict(DEFAULTS, weight_decay=0.02)])
    run_against_reference(case, opt, ref, STEPS)


def test_parameters_without_gradient_are_skipped_like_the_reference():
    """A parameter whose grad is None: no decay, no filter, not moved, not in K (ARTURO.md,
    "Missing gradients"). fc2.bias gets no gradient on steps 1-3 and every 7th step; its state
    starts (with an undecayed mean) at the first step it has one."""
    case = Case("mlp", seed=11)
    first, second = _two_groups(case.model)
    opt = Arturo([{"params": first, "lr": 0.05}, {"params": second, "lr": 0.1}], weight_decay=0.2)
    hyper = [dict(DEFAULTS, lr=0.05, weight_decay=0.2), dict(DEFAULTS, lr=0.1, weight_decay=0.2)]
    ref = reference_for(opt, hyper=hyper)

    def skip(k):
        return {(1, 1)} if (k <= 3 or k % 7 == 0) else set()

    run_against_reference(case, opt, ref, STEPS, skip=skip)
    assert float(opt.state[second[1]]["step"]) == ref.state[(1, 1)]["step"] == STEPS - 3 - 8
