"""arturo-diag: diagnostics for the arTuRO optimizer (arXiv 2310.20574).

The optimizer is :class:`arturo_diag.optim.Arturo`; reference curvature lives in
:mod:`arturo_diag.curvature`; snapshot monitoring and analysis in :mod:`arturo_diag.diagnostics`.
"""

__version__ = "0.1.0"
