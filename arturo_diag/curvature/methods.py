"""The reference-curvature vocabulary, declared once: name -> one line for ``--help`` and the docs.

:class:`~arturo_diag.training.config.RunConfig` validates ``reference``, ``exact_method`` and
``oracle`` against these, :class:`~arturo_diag.diagnostics.monitor.Monitor` checks ``reference``
with them, and ``arturo-diag compare --help`` lists them. To add a reference method: implement it in
this package, then add one line here (and its dispatch where the snapshot is taken).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

__all__ = ["EXACT_METHODS", "ORACLES", "REFERENCE_METHODS"]

#: What a snapshot compares arTuRO's curvature with (the first is the default).
REFERENCE_METHODS: Mapping[str, str] = MappingProxyType(
    {
        "exact": "the exact diagonal Hessian of the probe batch",
        "hutchinson": "a Hutchinson estimate with --samples probes",
        "both": "exact and Hutchinson",
        "none": "no reference (training curves only)",
    }
)

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
