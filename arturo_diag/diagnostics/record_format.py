"""The run-record format ``arturo-diag-run/1`` (``docs/record.md``): its constants and names.

Format version, kinds and statuses, the column orders of the three tables, the file names of a
record, :func:`layer_of`, :func:`snapshot_filename`, and the files that mark an ablation study's
directory. Written by :mod:`~arturo_diag.diagnostics.record_writer`, read and checked by
:mod:`~arturo_diag.diagnostics.record_reader` / :mod:`~arturo_diag.diagnostics.record_checks`;
import the public names from :mod:`arturo_diag.diagnostics.record`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

RECORD_FORMAT = "arturo-diag-run/1"
RECORD_KINDS = ("compare", "monitor")

# Column orders of docs/record.md; a table always has these columns (NaN where a row lacks one),
# followed by any extra columns in the order they were first seen.
STEP_COLUMNS = (
    "step",
    "epoch",
    "loss",
    "kl_bound",
    "eta",
    "eta_lo",
    "eta_hi",
    "iterations",
    "kl_ratio",
    "eta_prev",
    "precision_nonpos",
    "denominator_nonpos",
    "guard_acted",
    "precision_q01",
    "precision_q50",
    "precision_q99",
    "numel",
)
EPOCH_COLUMNS = ("epoch", "step", "train_loss", "train_accuracy", "test_loss", "test_accuracy")
SNAPSHOT_COLUMNS = (
    "step",
    "kl_bound",
    "eta",
    "kl0_ratio",
    "eta_star",
    "reference",
    "exact_method",
    "hutchinson_samples",
    "probe_loss",
    "seconds",
)

_MANIFEST = "record.json"
#: Files that make a directory an ablation study's (written by arturo_diag.study; diagnostics may
#: not import it): a run record is never written into one, nor a study into a run record.
STUDY_MARKERS = ("study.toml", "study.json")
_CONFIG = "config.toml"
_TABLES = {
    "steps": ("steps.csv", STEP_COLUMNS),
    "epochs": ("epochs.csv", EPOCH_COLUMNS),
    "snapshots": ("snapshots.csv", SNAPSHOT_COLUMNS),
}
_SNAPSHOT_DIR = "snapshots"
_SNAPSHOT_RE = re.compile(r"^step_(\d{7,})\.npz$")
# Instruments' arrays of any shape (the spectrum's per-probe values, ...), one file per snapshot
# that has any: instruments/step_0000010.npz with keys INSTRUMENT/FIELD.
_INSTRUMENT_DIR = "instruments"
_INSTRUMENT_KEY_RE = re.compile(r"^[a-z][a-z0-9_]*/[a-z][a-z0-9_]*$")
# Files of a record and of its reports; removed when a directory is overwritten, so that nothing
# of the previous run can be mistaken for the new one's.
#: The weights when the Monitor started (step 0: initialisation), for the distance travelled.
INITIAL_WEIGHTS = "initial_weights.npz"
#: The flat coordinates kept of each subsampled parameter (record.json "subsample"), int64, sorted.
SUBSAMPLE_INDEX = "subsample_index.npz"
#: The dtypes a snapshot's arrays may be stored in (record.json "snapshot_dtype").
SNAPSHOT_DTYPES = ("float64", "float32")
_RECORD_FILES = (
    _MANIFEST,
    _CONFIG,
    INITIAL_WEIGHTS,
    SUBSAMPLE_INDEX,
    "steps.csv",
    "epochs.csv",
    "snapshots.csv",
    "metrics.json",
    "metrics_long.csv",  # metrics.json's long table (arturo_diag/report/exports.py)
    "metrics_long.parquet",
)
# ... and every report file, whatever its format: report.md, report.html, report.document.json, ...
_REPORT_GLOB = "report.*"


#: Every status a record may have; ``"complete"`` is the only one a report is rendered from as is.
RECORD_STATUSES = ("running", "complete", "failed", "diverged")


def layer_of(name: str) -> str:
    """The layer of a parameter: its module path, i.e. the name without the last component.

    ``"net.0.weight" -> "net.0"``; a top-level parameter (``"scale"``) is its own layer.
    """
    head, sep, _ = name.rpartition(".")
    return head if sep and head else name


def snapshot_filename(step: int) -> str:
    """Path of the arrays of the snapshot at ``step``, relative to the run directory."""
    return f"{_SNAPSHOT_DIR}/step_{int(step):07d}.npz"


def instrument_filename(step: int) -> str:
    """Path of the instruments' arrays of the snapshot at ``step``, relative to the run directory."""
    return f"{_INSTRUMENT_DIR}/step_{int(step):07d}.npz"


def study_marker(path: str | os.PathLike[str]) -> str | None:
    """The file that makes ``path`` an ablation study's directory (``study.toml``, ``study.json``), or None."""
    path = Path(path)
    return next((name for name in STUDY_MARKERS if (path / name).is_file()), None)


def looks_like_study_dir(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds an ablation study (``arturo_diag.study`` writes these files)."""
    return study_marker(path) is not None
