"""What every reliability case asserts: the exit code, one line naming the problem, no traceback,
nothing that looks complete.

A case runs the CLI in process (typer's CliRunner keeps stdout and stderr apart) unless it needs
a real process (signals, locks held by another process): then :func:`run_process`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from typer.testing import CliRunner

from cli.app import app

ROOT = Path(__file__).resolve().parents[2]

#: Small settings of `compare` that train in well under a second.
TINY = (
    "--model",
    "mlp",
    "--dataset",
    "teacher",
    "--train-size",
    "96",
    "--batch-size",
    "32",
    "--epochs",
    "2",
    "--every",
    "2",
    "--probe-size",
    "16",
    "--lr-milestones",
    "2",
)

#: Files whose presence would make a directory look like a finished run or study.
COMPLETE_LOOKING = ("report.md", "report.html", "metrics.json", "study.md", "study.html", "study.json")


@dataclass
class Outcome:
    exit_code: int
    stdout: str
    stderr: str
    exception: BaseException | None = None


def invoke(*args: object, cwd: Path | None = None) -> Outcome:
    """Run ``arturo-diag ARGS`` in this process (in ``cwd`` if given)."""
    runner = CliRunner()
    old = Path.cwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        result = runner.invoke(app, [str(a) for a in args])
    finally:
        os.chdir(old)
    exception = result.exception if not isinstance(result.exception, SystemExit) else None
    return Outcome(result.exit_code, result.stdout, result.stderr, exception)


def run_process(
    *args: object, cwd: Path | None = None, timeout: float = 300, env: dict[str, str] | None = None
) -> Outcome:
    """Run ``arturo-diag ARGS`` as a separate Python process."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    code = "import sys; from cli.app import main; sys.argv[0] = 'arturo-diag'; main()"
    done = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Outcome(done.returncode, done.stdout, done.stderr)


def error_lines(outcome: Outcome) -> list[str]:
    return [line for line in outcome.stderr.splitlines() if line.startswith("error:")]


def assert_user_error(outcome: Outcome, *names: str, code: int = 2, quiet: bool = True) -> str:
    """Exit ``code``, exactly one ``error:`` line naming every one of ``names``, no traceback.

    ``quiet``: nothing else on stderr and nothing on stdout (the error came before any work, so no
    progress bar was drawn). Returns the error line.
    """
    text = outcome.stdout + outcome.stderr
    assert outcome.exception is None, f"uncaught {type(outcome.exception).__name__}: {outcome.exception}\n{text}"
    assert "Traceback" not in text, text
    assert outcome.exit_code == code, f"exit {outcome.exit_code}, wanted {code}\n{text}"
    lines = error_lines(outcome)
    assert len(lines) == 1, f"wanted one 'error:' line, got {len(lines)}\n{text}"
    line = lines[0]
    for name in names:
        assert name.lower() in line.lower(), f"{name!r} not named in: {line}"
    if quiet:
        others = [line for line in outcome.stderr.splitlines() if line.strip() and not line.startswith("error:")]
        assert not others, f"more than the error on stderr:\n{outcome.stderr}"
        assert not outcome.stdout.strip(), f"stdout not empty:\n{outcome.stdout}"
    return line


def assert_nothing_complete(*directories: Path) -> None:
    """No directory holds a record marked complete nor a report or study summary."""
    for directory in directories:
        directory = Path(directory)
        if not directory.is_dir():
            continue
        manifest = directory / "record.json"
        if manifest.is_file():
            try:
                status = json.loads(manifest.read_text()).get("status")
            except ValueError:
                status = None
            assert status != "complete", f"{manifest} says complete"
        for name in COMPLETE_LOOKING:
            assert not (directory / name).exists(), f"{directory / name} written"


def write_bytes(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def tiny(*extra: Sequence[object] | object) -> list[str]:
    return [*TINY, *map(str, extra)]


def as_args(values: Iterable[object]) -> list[str]:
    return [str(v) for v in values]


def start_process(*args: object, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``arturo-diag ARGS`` as a separate Python process without waiting (the process is
    the command itself: its pid is the one a lock names and a signal reaches); end it with
    :func:`finish_process`."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    code = "import sys; from cli.app import main; sys.argv[0] = 'arturo-diag'; main()"
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        cwd=cwd,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish_process(process: subprocess.Popen, timeout: float = 300) -> Outcome:
    """Wait for a process of :func:`start_process` (killed after ``timeout``) and return its outcome."""
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
    return Outcome(process.returncode, stdout, stderr)
