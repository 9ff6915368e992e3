"""diagnostics: the run record, and the analysis of arTuRO's curvature estimate against h.

One concept per module (ARTURO.md, "Diagnostic quantities"); import from the modules:

- ``io``: atomic writers (text, bytes, JSON with NaN -> null, npz, CSV).
- ``record``: ``RecordWriter`` / ``RunRecord``, the run-record format of ``docs/record.md``.
- ``agreement``, ``movement``, ``calibration``, ``lag``, ``trust_region``, ``health``: pure
  functions of arrays and tables.
- ``findings``: the metrics in words; ``analysis``: ``analyze_record(record) -> metrics dict``.
- ``monitor``: snapshots of a live optimizer during training (writes records).
"""
