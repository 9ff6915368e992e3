"""Where a study and its runs stand on disk: the study's file names and :func:`run_status`.

Below :mod:`~arturo_diag.study.execution` (which runs what is not complete) and
:mod:`~arturo_diag.study.aggregate` (which reads what is), so that neither imports the other.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from arturo_diag._toml import tomllib
from arturo_diag.errors import RecordError
from arturo_diag.study.config import RunSpec

__all__ = ["FAILURE_FILE", "STUDY_FILE", "run_status"]

FAILURE_FILE = "study_failure.json"
STUDY_FILE = "study.toml"

# Where a run and its data live: not part of what a run computes, so moving them redoes nothing.
_LOCATIONS = ("out", "data_dir")


def _expected_config(spec: RunSpec) -> dict[str, Any]:
    from arturo_diag.training.config import config_to_toml

    data = tomllib.loads(config_to_toml(spec.config.resolved()))
    for key in _LOCATIONS:
        data.get("run", {}).pop(key, None)
    return data


def run_status(spec: RunSpec) -> tuple[str, str]:
    """Where a run of the grid stands: ``("complete" | "diverged" | "failed" | "stale" | "incomplete" | "damaged" | "missing", detail)``.

    ``complete`` only if its record loads as complete and its config.toml is the config the
    study asks for (the run and data directories may move: ``out`` and ``data_dir`` are not
    compared). ``diverged``: the same, for a run that ended at its first NaN/inf (a result, not redone;
    the detail is where). ``stale``: a complete record made with another config (the study changed since).
    ``damaged``: a record whose files do not load (the detail names the file and the problem).
    """
    from arturo_diag.diagnostics.record import RunRecord

    run_dir = Path(spec.config.out)
    failure = run_dir / FAILURE_FILE
    if failure.is_file():
        try:
            return "failed", str(json.loads(failure.read_text(encoding="utf-8")).get("error", "failed"))
        except (OSError, ValueError):
            return "failed", "failed (unreadable failure note)"
    if not (run_dir / "record.json").is_file():
        return "missing", ""
    try:
        record = RunRecord.load(run_dir, allow_incomplete=True)
    except RecordError as error:
        return "damaged", str(error)
    if not record.complete and record.status != "diverged":
        return "incomplete", f"status {record.status}"
    config = dict(record.config)
    config["run"] = {k: v for k, v in (config.get("run") or {}).items() if k not in _LOCATIONS}
    if config != _expected_config(spec):
        return "stale", "made with another config"
    if record.status == "diverged":  # finished: it went NaN/inf (a result; not redone)
        return "diverged", str((record.divergence or {}).get("message") or "diverged")
    return "complete", ""
