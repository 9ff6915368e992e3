"""The command's wall time and its parts, for the summary line (issue 15: honest timing).

The wall time runs from the process's start (Linux: ``/proc/self/stat``; elsewhere from the
command's entry, and the summary says so) to the report's last file. Its parts add up to it:
start-up (the interpreter, imports, data, model, the cost probe: everything before the training
loop), training (the loop without the diagnostics), diagnostics (the Monitor's snapshots and
per-step work), report (analysis, figures, files).
"""

from __future__ import annotations

import os
import time

__all__ = ["WallClock", "process_age"]


def process_age() -> float | None:
    """Seconds since this process started, from the kernel's clock (None where it cannot be read)."""
    try:
        with open(f"/proc/{os.getpid()}/stat", encoding="ascii") as handle:
            fields = handle.read().rpartition(")")[2].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # starttime, the 22nd field
        with open("/proc/uptime", encoding="ascii") as handle:
            uptime = float(handle.read().split()[0])
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    return max(uptime - started, 0.0)


class WallClock:
    """Marks of one command: ``mark("report")`` before the report, ``mark("done")`` after it."""

    def __init__(self) -> None:
        age = process_age()
        self.since_process = age is not None
        self.origin = time.perf_counter() - (age or 0.0)
        self.marks: dict[str, float] = {}

    def mark(self, name: str) -> None:
        self.marks[name] = time.perf_counter() - self.origin

    def summary(self, result) -> str:
        """``wall 15.9 s = start-up 4.1 s + training 0.5 s + diagnostics 1.9 s + report 9.4 s``."""
        done = self.marks.get("done", time.perf_counter() - self.origin)
        report = done - self.marks.get("report", done)
        diagnostics = min(result.diagnostics_seconds, result.seconds)
        training = result.seconds - diagnostics
        start_up = max(done - report - result.seconds, 0.0)
        origin = "" if self.since_process else " (from the command's start)"
        return (
            f"wall {done:.1f} s{origin} = start-up {start_up:.1f} s + training {training:.1f} s "
            f"+ diagnostics {diagnostics:.1f} s + report {report:.1f} s"
        )
