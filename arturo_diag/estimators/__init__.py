"""Optimizers' own curvature estimates behind one protocol (imports torch and arturo_diag.optim only).

``adapter_for(optimizer).estimate(optimizer, model.named_parameters())`` gives a
:class:`CurvatureEstimate`: per parameter name the estimate, its claimed variance where the method
has one, what it estimates and on what scale. Built in: arTuRO, Adam/AdamW, IVON (``ivon-opt``),
and AdaHessian, Sophia-H, Sophia-G implemented here from their papers.
"""

from .adahessian import AdaHessian
from .adapters import AdaHessianAdapter, AdamAdapter, ArturoAdapter, IvonAdapter, SophiaAdapter
from .defaults import DEFAULTS, defaults
from .protocol import (
    TARGETS,
    CurvatureAdapter,
    CurvatureEstimate,
    EstimatorError,
    adapter_for,
    register_adapter,
    registered_adapters,
    unregister_adapter,
)
from .sophia import SophiaG, SophiaH, gnb_closure

__all__ = [
    "AdaHessian",
    "SophiaH",
    "SophiaG",
    "gnb_closure",
    "TARGETS",
    "CurvatureEstimate",
    "CurvatureAdapter",
    "EstimatorError",
    "adapter_for",
    "register_adapter",
    "unregister_adapter",
    "registered_adapters",
    "ArturoAdapter",
    "AdamAdapter",
    "IvonAdapter",
    "AdaHessianAdapter",
    "SophiaAdapter",
    "DEFAULTS",
    "defaults",
]
