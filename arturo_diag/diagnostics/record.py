"""The run record: writer (used by the training loop and monitor) and loader (used by analysis).

Format ``arturo-diag-run/1``, specified in ``docs/record.md``::

    RUN_DIR/config.toml, steps.csv, epochs.csv, snapshots.csv,
    RUN_DIR/snapshots/step_XXXXXXX.npz   keys "{param_name}/{field}", float64
    RUN_DIR/record.json                  manifest; status "complete" only when the run finished

:class:`RecordWriter` writes ``record.json`` with status ``"running"`` as soon as it is created
and rewrites it with status ``"complete"`` as the very last act of :meth:`RecordWriter.finish`,
so a run killed at any point leaves a directory that says it is incomplete. Every file is
written atomically (:mod:`arturo_diag.diagnostics.io`).

The code lives in one module per concept; this module is the public one, import from it:

- :mod:`~arturo_diag.diagnostics.record_format`: format constants, column orders, file names,
  :func:`layer_of`, :func:`snapshot_filename`, the study markers.
- :mod:`~arturo_diag.diagnostics.record_writer`: :class:`RecordWriter`.
- :mod:`~arturo_diag.diagnostics.record_checks`: what each file must hold (the reader's rules).
- :mod:`~arturo_diag.diagnostics.record_reader`: :class:`RunRecord`.
"""

from __future__ import annotations

from arturo_diag.diagnostics.record_format import (
    EPOCH_COLUMNS,
    RECORD_FORMAT,
    RECORD_KINDS,
    RECORD_STATUSES,
    SNAPSHOT_COLUMNS,
    STEP_COLUMNS,
    STUDY_MARKERS,
    layer_of,
    looks_like_study_dir,
    snapshot_filename,
    study_marker,
)
from arturo_diag.diagnostics.record_reader import RunRecord
from arturo_diag.diagnostics.record_writer import RecordWriter

__all__ = [
    "RECORD_FORMAT",
    "RECORD_KINDS",
    "RECORD_STATUSES",
    "STEP_COLUMNS",
    "EPOCH_COLUMNS",
    "SNAPSHOT_COLUMNS",
    "RecordWriter",
    "RunRecord",
    "STUDY_MARKERS",
    "layer_of",
    "looks_like_study_dir",
    "study_marker",
    "snapshot_filename",
]
