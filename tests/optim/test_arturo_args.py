"""Bad constructor arguments raise ValueError naming the argument (torch.optim convention)."""

from __future__ import annotations

import math

import pytest
import torch

from arturo_diag.optim import Arturo

BAD = [
    ("lr", -0.1),
    ("lr", math.nan),
    ("reg_weight", -1.0),
    ("prior_prec", -1e-3),
    ("var_init", 0.0),
    ("var_init", -0.01),
    ("nu", -0.5),
    ("dynamic_model_noise", -1e-3),
    ("measurement_noise", 0.0),
    ("measurement_noise", -1.0),
    ("start_filter_cov", 0.0),
    ("start_filter_cov", -5e-5),
    ("eta_tol", 0.0),
    ("eta_tol", -0.5),
    ("weight_decay", -1e-4),
    ("kl", "full"),
    ("dual", "newton"),
    ("fixed_eta", -1.0),
]


def _param():
    return [torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))]


@pytest.mark.parametrize("name, value", BAD, ids=[f"{n}={v}" for n, v in BAD])
def test_bad_argument_raises_value_error_naming_it(name, value):
    with pytest.raises(ValueError) as info:
        Arturo(_param(), **{name: value})
    assert name in str(info.value), str(info.value)


@pytest.mark.parametrize("name, value", BAD[:5], ids=[f"{n}={v}" for n, v in BAD[:5]])
def test_bad_per_group_argument_raises(name, value):
    with pytest.raises(ValueError) as info:
        Arturo([{"params": _param()}, {"params": _param(), name: value}])
    assert name in str(info.value), str(info.value)


def test_unknown_preset_raises_value_error_naming_it():
    with pytest.raises(ValueError, match=r"^preset: got 'imagenet_vit'; allowed: fmnist_cnn, "):
        Arturo.from_preset("imagenet_vit", _param())


@pytest.mark.parametrize("value", [1, "yes", 0.0])
def test_fused_must_be_none_or_a_bool(value):
    with pytest.raises(ValueError, match=r"^fused: got .*; allowed: None, True or False$"):
        Arturo(_param(), fused=value)


@pytest.mark.parametrize(
    "name, value",
    [
        ("prior_prec", 0.0),
        ("weight_decay", 0.0),
        ("dynamic_model_noise", 0.0),
        ("fixed_eta", 0.0),
        ("nu", 0.0),
        ("reg_weight", 0.0),
    ],
)
def test_boundary_values_are_allowed(name, value):
    """ARTURO.md: a flat prior (lam = 0), no decay, no drift (an ablation), eta fixed at 0
    (no trust region), no covariance penalty and no prior term are all meaningful."""
    Arturo(_param(), **{name: value})


@pytest.mark.parametrize(
    "name", ["fmnist_cnn", "fmnist_resnet18", "cifar10_cnn", "cifar100_cnn", "cifar10_resnet34", "cifar100_resnet34"]
)
def test_presets_accept_overrides(name):
    opt = Arturo.from_preset(name, _param(), weight_decay=0.0, kl="coupled")
    assert opt.param_groups[0]["weight_decay"] == 0.0
    assert opt.param_groups[0]["kl"] == "coupled"
