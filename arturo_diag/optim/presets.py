"""The authors' published arTuRO settings (Dahlinger et al., arXiv 2310.20574), as plain data.

This module is the one declaration of the presets: ``Arturo.from_preset`` reads it, the run config
(``arturo_diag.training.config``) resolves its ``preset`` field from it, and the TOML files in
``experiments/presets/`` are copies for reading and for ``--config``, checked equal to it by
``tests/optim/test_presets.py``. Values as in ARTURO.md, "Published settings"; ``lr`` is the KL
bound ``eps``. ``LR_GAMMA`` is the factor by which the paper's MultiStepLR multiplies that bound
at each milestone (a schedule setting, not an optimizer argument).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

__all__ = ["LR_GAMMA", "PRESETS", "PRESET_NAMES", "load_preset"]

_FMNIST = MappingProxyType(
    {
        "lr": 0.08567456,
        "reg_weight": 0.05865662,
        "prior_prec": 0.0015,
        "var_init": 0.01,
        "nu": 1.3,
        "dynamic_model_noise": 0.01739296,
        "measurement_noise": 2.81679116,
        "start_filter_cov": 5e-5,
        "eta_tol": 0.5,
        "weight_decay": 1.5404e-6,
    }
)
_CIFAR_CNN = MappingProxyType(
    {
        "lr": 0.00278750,
        "reg_weight": 0.29678596,
        "prior_prec": 0.0015,
        "var_init": 0.01,
        "nu": 1.3,
        "dynamic_model_noise": 0.00245526,
        "measurement_noise": 1.21975001,
        "start_filter_cov": 5e-5,
        "eta_tol": 0.5,
        "weight_decay": 0.0,
    }
)
_CIFAR10_RESNET34 = MappingProxyType(
    {
        "lr": 0.00713292,
        "reg_weight": 1.59735443,
        "prior_prec": 0.0015,
        "var_init": 0.01,
        "nu": 1.3,
        "dynamic_model_noise": 0.08938099,
        "measurement_noise": 9.32844002,
        "start_filter_cov": 5e-5,
        "eta_tol": 0.5,
        "weight_decay": 7.0291e-4,
    }
)
_CIFAR100_RESNET34 = MappingProxyType(
    {
        "lr": 0.00723373,
        "reg_weight": 1.67676999,
        "prior_prec": 0.0015,
        "var_init": 0.01,
        "nu": 1.3,
        "dynamic_model_noise": 0.00977875,
        "measurement_noise": 4.82203163,
        "start_filter_cov": 5e-5,
        "eta_tol": 0.5,
        "weight_decay": 0.0,
    }
)

#: Optimizer keywords of each published setup (the ResNet-18 and CIFAR-100 CNN reuse a sibling's).
PRESETS: Mapping[str, Mapping[str, float]] = MappingProxyType(
    {
        "fmnist_cnn": _FMNIST,
        "fmnist_resnet18": _FMNIST,
        "cifar10_cnn": _CIFAR_CNN,
        "cifar100_cnn": _CIFAR_CNN,
        "cifar10_resnet34": _CIFAR10_RESNET34,
        "cifar100_resnet34": _CIFAR100_RESNET34,
    }
)

#: The preset names, in the order of ARTURO.md's table.
PRESET_NAMES: tuple[str, ...] = tuple(PRESETS)

#: The MultiStepLR factor applied to the KL bound at each milestone, per preset.
LR_GAMMA: Mapping[str, float] = MappingProxyType(dict.fromkeys(PRESET_NAMES, 0.006))


def load_preset(name: str) -> dict[str, float]:
    """The optimizer keywords of a published preset (a fresh dict: change it freely)."""
    if name not in PRESETS:
        raise ValueError(f"preset: got {name!r}; allowed: {', '.join(PRESET_NAMES)}")
    return dict(PRESETS[name])
