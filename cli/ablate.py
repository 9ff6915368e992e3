"""`arturo-diag ablate`: variants x seeds (x setups) in worker processes, one aggregate report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from arturo_diag.study.executors import EXECUTORS
from arturo_diag.study.variants import VARIANT_SPECS

from .common import choices_help, fail, user_errors

_O = typer.Option


def ablate(
    config: Annotated[
        Path | None,
        _O(
            "--config",
            help="Study TOML (\\[study] seeds, variants; \\[setups.NAME] run fields). Default: the embedded study (digits, every variant, 3 seeds).",
        ),
    ] = None,
    variants: Annotated[
        str | None,
        _O(
            help=choices_help(
                {spec.syntax: spec.help for spec in VARIANT_SPECS.values()},
                lead="Comma-separated variants (e.g. faithful,fixed-eta:1.0,sgd): ",
            )
        ),
    ] = None,
    seeds: Annotated[str | None, _O(help="Comma-separated seeds, e.g. 0,1,2.")] = None,
    workers: Annotated[int | None, _O(help="Worker processes, one torch thread each (default: min(2, CPUs)).")] = None,
    epochs: Annotated[int | None, _O(help="Set every setup's epochs (shortens a study).")] = None,
    max_steps: Annotated[int | None, _O(help="Cap every run at this many steps.")] = None,
    data_dir: Annotated[str | None, _O(help="Folder with the Fashion-MNIST / CIFAR files of the paper setups.")] = None,
    out: Annotated[
        Path | None, _O(help="Study directory (default runs/ablate/STUDY_NAME). Re-running resumes it.")
    ] = None,
    fresh: Annotated[bool, _O("--fresh", help="Redo every run, even finished ones.")] = False,
    executor: Annotated[
        str, _O(help=choices_help(EXECUTORS, default="local", lead="Where the runs execute: "))
    ] = "local",
    ray_address: Annotated[
        str | None,
        _O(
            help="With --executor ray: auto, or HOST:PORT of a running cluster (ray start --head); "
            "default: start a local instance with --workers CPUs. The study directory must be on a path every node sees."
        ),
    ] = None,
    cpus_per_run: Annotated[
        float | None,
        _O(help="With --executor ray: CPUs each run reserves (a fraction up to 1 or a whole number; default 1)."),
    ] = None,
    gpus_per_run: Annotated[
        float | None,
        _O(help="With --executor ray: GPUs each run reserves (fractional: runs share a GPU; default 0)."),
    ] = None,
    retries: Annotated[
        int | None,
        _O(help="With --executor ray: restarts of a run whose worker died, before it counts as failed (default 1)."),
    ] = None,
) -> None:
    """Run an ablation study (which part of arTuRO matters?) and write study.md / study.html / study.json.

    With no options: the embedded default study, every arTuRO variant and SGD/Adam/AdamW on the
    built-in digits, 3 seeds. Re-running the same command skips finished runs.
    """
    console = Console(stderr=True)
    with user_errors():
        from arturo_diag.errors import ConfigError
        from arturo_diag.study import default_study, load_study, parse_seeds, parse_variants, with_overrides

        if workers is not None and workers < 1:
            raise ConfigError("workers", workers, "a whole number >= 1")
        study = load_study(config) if config is not None else default_study()
        study = with_overrides(
            study,
            variants=parse_variants(variants) if variants is not None else None,
            seeds=parse_seeds(seeds) if seeds is not None else None,
            epochs=epochs,
            max_steps=max_steps,
            data_dir=data_dir,
        )
        runner = _executor(executor, workers, ray_address, cpus_per_run, gpus_per_run, retries)
        study_dir = out if out is not None else Path("runs") / "ablate" / study.name
        try:
            result = _run_with_progress(study, study_dir, runner, fresh, console)
        except KeyboardInterrupt:
            raise fail("interrupted: finished runs are kept; run the same command again to resume", 130) from None
    _summarize(result)
    if result.failed:
        raise fail(
            f"{len(result.failed)} of {len(result.outcomes)} runs failed (listed in study.md); "
            "run the same command again to retry them",
            1,
        )


def _executor(name: str, workers, address, cpus_per_run, gpus_per_run, retries):
    """The executor the options ask for; Ray's options without --executor ray are refused."""
    from arturo_diag.errors import ConfigError
    from arturo_diag.study import execution
    from arturo_diag.study.executors import LocalExecutor, RayExecutor

    if name not in EXECUTORS:
        raise ConfigError("executor", name, ", ".join(EXECUTORS))
    ray_options = {
        "ray_address": address,
        "cpus_per_run": cpus_per_run,
        "gpus_per_run": gpus_per_run,
        "retries": retries,
    }
    if name == "local":
        for field, value in ray_options.items():
            if value is not None:
                raise ConfigError(field, value, "only with --executor ray")
        return LocalExecutor(execution.default_workers() if workers is None else workers)
    return RayExecutor(
        address,
        workers=workers,
        cpus_per_run=1.0 if cpus_per_run is None else cpus_per_run,
        gpus_per_run=0.0 if gpus_per_run is None else gpus_per_run,
        retries=1 if retries is None else retries,
    )


def _run_with_progress(study, study_dir: Path, executor, fresh: bool, console: Console):
    from arturo_diag.study import run_study

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    # The bar is drawn at the first event ("plan"), i.e. once the study, its data and its directory
    # have been checked: a refused input gets its one error line and no empty bar.
    bar = Progress(*columns, console=console, transient=False)
    try:
        task = bar.add_task(f"study {study.name}", total=None, status="")
        failed = 0

        def progress(event: str, info: dict[str, Any]) -> None:
            nonlocal failed
            if not bar.live.is_started:
                bar.start()
            if event == "plan":
                bar.update(
                    task,
                    total=info["total"],
                    completed=info["finished"],
                    status=f"{info['finished']} already done, {info['pending']} to run on {info['where']}",
                )
            elif event == "executor":
                bar.update(
                    task,
                    status=f"Ray up in {info['seconds']:.1f} s: {info['cpus']:g} CPUs, {info['gpus']:g} GPUs "
                    f"on {info['nodes']} node(s)",
                )
            elif event == "run":
                failed += info["status"] == "failed"
                label = f"{info['setup']}/{info['variant']}/seed{info['seed']} {info['status']}"
                bar.update(task, completed=info["done"], status=label + (f" ({failed} failed)" if failed else ""))
            elif event == "render":
                bar.update(task, status="rendering the report")
            elif event == "done":
                bar.update(task, status="done")

        return run_study(study, study_dir, executor=executor, fresh=fresh, progress=progress)
    finally:
        if bar.live.is_started:
            bar.stop()


def _summarize(result) -> None:
    out = Console()
    ran, skipped, failed = len(result.ran), len(result.skipped), len(result.failed)
    diverged = len(result.diverged)  # a result (NaN/inf, named in the findings), not a failure: exit 0
    out.print(
        f"[bold]study[/bold] {escape(str(result.study_dir))}  ({ran} run, "
        + (f"{diverged} diverged, " if diverged else "")
        + f"{skipped} already done, {failed} failed; {result.seconds:.1f} s)"
    )
    report = result.report
    if report is not None:
        for finding in report.findings:
            marker = "[yellow]![/yellow]" if finding.get("severity") == "warning" else "-"
            out.print(f" {marker} {escape(finding['text'])}")
        out.print(f"[bold]report[/bold] {escape(f'{report.markdown}  {report.html}  {report.json}')}")
