"""integrations: arturo-diag's Monitor inside other training frameworks.

- ``lightning``: :class:`~arturo_diag.integrations.lightning.ArturoDiagCallback`, a PyTorch Lightning
  callback that writes a run record of a ``Trainer.fit`` (docs/lightning.md; the ``lightning`` extra).

Nothing is imported here: each integration imports its framework when it is imported itself.
"""
