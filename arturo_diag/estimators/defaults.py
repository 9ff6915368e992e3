"""Each optimizer's own hyperparameters, with where each value comes from.

``DEFAULTS[optimizer][hyperparameter] = {"value": ..., "source": ...}``. The constructors of
:mod:`.adahessian` and :mod:`.sophia` use these values as their defaults; :func:`defaults` gives
the keyword arguments. Papers: AdaHessian, Yao et al., AAAI 2021 (arXiv 2006.00719); Sophia,
Liu et al., ICLR 2024 (arXiv 2305.14342); IVON, Shen et al., ICML 2024 (arXiv 2402.17641).
"""

from __future__ import annotations

from typing import Any

__all__ = ["DEFAULTS", "defaults"]

_ADAHESSIAN_CODE = "original code's constructor default (github amirgholami/adahessian, instruction/adahessian.py)"
_SOPHIA_PAPER = "Sophia paper, arXiv 2305.14342, Sec. 3 / Appendix (GPT-2 setting)"
_SOPHIA_CODE = "official code's constructor default (github Liuhong99/Sophia, sophia.py, SophiaG)"
_IVON = "ivon-opt 0.1.3 constructor default (ivon/_ivon.py)"
_TORCH = "torch.optim default"

DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "adahessian": {
        "lr": {"value": 0.15, "source": _ADAHESSIAN_CODE + "; also its CIFAR-10 ResNet configs (--lr 0.15)"},
        "betas": {"value": (0.9, 0.999), "source": _ADAHESSIAN_CODE},
        "eps": {"value": 1e-4, "source": _ADAHESSIAN_CODE},
        "weight_decay": {"value": 0.0, "source": _ADAHESSIAN_CODE + " (decoupled: lr * wd * theta)"},
        "hessian_power": {"value": 1.0, "source": _ADAHESSIAN_CODE + "; paper Eq. 10, k = 1"},
        "spatial_average": {
            "value": True,
            "source": "paper Sec. 3.3 / Eq. 8 (conv kernels averaged over "
            "their spatial block), as the original code does for 4D kernels",
        },
    },
    "sophia-h": {
        "lr": {"value": 1e-4, "source": _SOPHIA_CODE + " (the paper tunes the peak lr per model size)"},
        "betas": {"value": (0.96, 0.99), "source": _SOPHIA_PAPER + "; official code uses beta1 0.965"},
        "gamma": {"value": 0.01, "source": _SOPHIA_PAPER + " (gamma = 0.01 for Sophia-H; levanter GAMMA_SOPHIA_H)"},
        "eps": {"value": 1e-12, "source": _SOPHIA_PAPER},
        "weight_decay": {"value": 0.1, "source": _SOPHIA_CODE + " (decoupled, Algorithm 3 line 12)"},
        "hessian_interval": {"value": 10, "source": _SOPHIA_PAPER + " (k = 10)"},
        "probe": {"value": "gaussian", "source": "paper Algorithm 1 (u ~ N(0, I))"},
    },
    "sophia-g": {
        "lr": {"value": 1e-4, "source": _SOPHIA_CODE},
        "betas": {"value": (0.96, 0.99), "source": _SOPHIA_PAPER + "; official code uses beta1 0.965"},
        "gamma": {
            "value": 0.05,
            "source": _SOPHIA_PAPER + " (gamma = 0.05 for Sophia-G; levanter GAMMA_SOPHIA_G; "
            "official code's rho = 0.04)",
        },
        "eps": {"value": 1e-12, "source": _SOPHIA_PAPER},
        "weight_decay": {"value": 0.1, "source": _SOPHIA_CODE + " (decoupled, Algorithm 3 line 12)"},
        "hessian_interval": {"value": 10, "source": _SOPHIA_PAPER + " (k = 10)"},
    },
    "ivon": {
        "lr": {"value": None, "source": "ivon-opt: required, no default"},
        "ess": {"value": None, "source": "ivon-opt: required, no default (the paper sets it to the training-set size)"},
        "hess_init": {"value": 1.0, "source": _IVON},
        "beta1": {"value": 0.9, "source": _IVON},
        "beta2": {"value": 0.99999, "source": _IVON},
        "weight_decay": {"value": 1e-4, "source": _IVON + " (the prior precision delta, not added to hess)"},
        "mc_samples": {"value": 1, "source": _IVON},
        "hess_approx": {"value": "price", "source": _IVON + " (reparameterization/Price estimator)"},
    },
    "adam": {
        "lr": {"value": 1e-3, "source": _TORCH},
        "betas": {"value": (0.9, 0.999), "source": _TORCH},
        "eps": {"value": 1e-8, "source": _TORCH},
        "weight_decay": {"value": 0.0, "source": _TORCH},
    },
    "adamw": {
        "lr": {"value": 1e-3, "source": _TORCH},
        "betas": {"value": (0.9, 0.999), "source": _TORCH},
        "eps": {"value": 1e-8, "source": _TORCH},
        "weight_decay": {"value": 1e-2, "source": _TORCH},
    },
}


def defaults(optimizer: str) -> dict[str, Any]:
    """The default keyword arguments of ``optimizer`` (a key of :data:`DEFAULTS`)."""
    if optimizer not in DEFAULTS:
        raise ValueError(f"optimizer: got {optimizer!r}; allowed: {', '.join(DEFAULTS)}")
    return {k: v["value"] for k, v in DEFAULTS[optimizer].items()}
