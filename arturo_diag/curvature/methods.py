"""The curvature vocabulary, declared once: name -> one line for ``--help`` and the docs.

How the exact diagonal is computed (``--exact-method``) and what replaces arTuRO's estimate in the
oracle ablation (``--oracle``); :class:`~arturo_diag.training.config.RunConfig` validates against
these and ``arturo-diag compare --help`` lists them. The reference methods (``--reference``) and
their estimators are declared in :mod:`arturo_diag.curvature.references`.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

__all__ = ["EXACT_METHODS", "ORACLES"]

#: How the exact diagonal is computed (``exact_diagonal(method=...)``; the first is the default).
EXACT_METHODS: Mapping[str, str] = MappingProxyType(
    {
        "auto": "ggn where it provably equals the Hessian, else hvp",
        "ggn": "the generalised Gauss-Newton diagonal (fast; refused where it is not exact)",
        "hvp": "one-hot Hessian-vector products (any model)",
    }
)

#: The curvature that replaces arTuRO's estimate a in the oracle ablation (the first is the default).
ORACLES: Mapping[str, str] = MappingProxyType(
    {
        "none": "arTuRO's own estimate",
        "exact": "the minibatch's exact diagonal Hessian",
        "hutchinson": "a Hutchinson estimate of it",
    }
)
