"""`arturo-diag compare`: train with arTuRO, snapshot its curvature against the true Hessian, report."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from arturo_diag.curvature.instruments import INSTRUMENTS
from arturo_diag.curvature.methods import EXACT_METHODS, ORACLES
from arturo_diag.curvature.references import REFERENCE_BATCHES, REFERENCE_METHODS, REFERENCE_MODES
from arturo_diag.diagnostics.snapshot_cost import SNAPSHOT_DTYPE_CHOICES
from arturo_diag.errors import Diverged
from arturo_diag.optim.arturo import DUAL_CHOICES, KL_CHOICES
from arturo_diag.optim.presets import PRESET_NAMES
from arturo_diag.training.config import (
    DTYPES,
    OPTIMIZERS,
    RunConfig,
    check_used,
    config_from_mapping,
    load_config,
)
from arturo_diag.training.datasets import DATASET_SPECS
from arturo_diag.training.models import MODELS

from .common import EXIT_DIVERGED, choices_help, user_errors
from .timing import WallClock

_O = typer.Option
_DEFAULT = {f.name: f.default for f in dataclasses.fields(RunConfig)}  # each choice option's default


def _choices(name: str, declaration, lead: str = "") -> str:
    return choices_help(declaration, _DEFAULT[name], lead)


def build_config(config_file: Path | None, options: dict[str, Any]) -> RunConfig:
    """Defaults, then the TOML file, then the options given on the command line; an option that
    would have no effect (``--fixed-eta`` with ``--optimizer sgd``, ...) is refused."""
    base = load_config(config_file) if config_file is not None else RunConfig()
    given = {k: v for k, v in options.items() if v is not None}
    if "lr_milestones" in given:
        given["lr_milestones"] = tuple(given["lr_milestones"])
    if "instruments" in given:  # comma-separated names; "none" (or nothing) for none
        given["instruments"] = instrument_names(given["instruments"])
    config = config_from_mapping(given, base, source="option")
    check_used(config)
    return config


def instrument_names(text: str) -> tuple[str, ...]:
    """``--instruments``'s value as names: ``"noise,spectrum" -> ("noise", "spectrum")``, ``"none"`` -> ()."""
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    return () if names == ("none",) else names


def progress_display(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def run_with_progress(config: RunConfig, console: Console, overwrite: bool):
    from arturo_diag.training.loop import prepare, run

    # Everything that can be refused (config, data, device, the output directory) is refused here,
    # before a progress bar is drawn.
    prepared = prepare(config, overwrite=overwrite)
    if prepared.cost is not None and prepared.snapshots:
        for line in prepared.cost.lines():
            console.print(f"[bold]estimate[/bold] {escape(line)}", highlight=False)
    for warning in prepared.warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False)
    with progress_display(console) as bar:
        task = bar.add_task("training", total=None, status="")
        reference = None

        def progress(event: str, info: dict[str, Any]) -> None:
            nonlocal reference
            if event == "start":
                bar.update(task, total=info["total_steps"])
                if info.get("snapshots"):
                    reference = bar.add_task("reference h", total=info["snapshots"], status="")
            elif event == "step":
                bar.update(task, completed=info["step"], status=f"loss {info['loss']:.4f}")
            elif event == "snapshot" and reference is not None:
                if info["phase"] == "start":
                    bar.update(reference, status=f"computing at step {info['step']}")
                else:
                    bar.update(reference, advance=1, status=f"last at step {info['step']}")
            elif event == "epoch":
                bar.update(task, status=f"epoch {info['epoch']}: test acc {info['test_accuracy']:.3f}")

        return run(prepared.config, progress=progress, prepared=prepared)


# Longer than 80 lines by design: typer reads the options from this signature, one parameter per
# RunConfig field; the body only gathers them into a RunConfig and hands over to the library.
def compare(
    model: Annotated[str | None, _O(help=_choices("model", MODELS, "Network: "))] = None,
    dataset: Annotated[
        str | None, _O(help=_choices("dataset", {name: spec.help for name, spec in DATASET_SPECS.items()}))
    ] = None,
    data_dir: Annotated[
        str | None, _O(help="Folder with the files of fashion_mnist/cifar10/cifar100 (nothing is downloaded).")
    ] = None,
    epochs: Annotated[int | None, _O(help="Training epochs (default 12).")] = None,
    steps: Annotated[int | None, _O(help="Stop after this many steps (overrides --epochs).")] = None,
    batch_size: Annotated[int | None, _O(help="Minibatch size (default 64).")] = None,
    train_size: Annotated[int | None, _O(help="Use only the first N training examples.")] = None,
    every: Annotated[int | None, _O(help="Snapshot (reference Hessian) every N steps (default 10).")] = None,
    reference: Annotated[str | None, _O(help=_choices("reference", REFERENCE_METHODS))] = None,
    reference_mode: Annotated[
        str | None, _O(help=_choices("reference_mode", REFERENCE_MODES, "The model's mode while h is taken: "))
    ] = None,
    reference_batch: Annotated[
        str | None, _O(help=_choices("reference_batch", REFERENCE_BATCHES, "The batch h is taken on: "))
    ] = None,
    instruments: Annotated[
        str | None,
        _O(
            help=choices_help(
                {**INSTRUMENTS, "none": "no instrument"},
                None,
                f"Instruments run at snapshots beside h, comma-separated (default {','.join(_DEFAULT['instruments'])}): ",
            )
        ),
    ] = None,
    exact_method: Annotated[str | None, _O(help=_choices("exact_method", EXACT_METHODS))] = None,
    samples: Annotated[int | None, _O(help="Hutchinson probes per snapshot (default 64).")] = None,
    probe_size: Annotated[int | None, _O(help="Examples in the fixed probe batch (default 128).")] = None,
    snapshot_dtype: Annotated[
        str | None, _O(help=_choices("snapshot_dtype", SNAPSHOT_DTYPE_CHOICES, "The snapshots' arrays: "))
    ] = None,
    subsample: Annotated[
        int | None,
        _O(help="Keep at most N coordinates of each parameter tensor in the snapshots (seeded, fixed; 0: all)."),
    ] = None,
    tensorboard: Annotated[
        bool | None,
        _O("--tensorboard/--no-tensorboard", help="Also write TensorBoard event files into RUN_DIR/tensorboard."),
    ] = None,
    preset: Annotated[
        str | None, _O(help=_choices("preset", PRESET_NAMES, "Published arTuRO hyperparameters: "))
    ] = None,
    optimizer: Annotated[str | None, _O(help=_choices("optimizer", OPTIMIZERS))] = None,
    lr: Annotated[
        float | None,
        _O(
            help="arTuRO's KL bound eps (the preset's if unset); another optimizer's learning rate (its default if unset)."
        ),
    ] = None,
    reg_weight: Annotated[float | None, _O(help="rho, weight of the KL to the prior.")] = None,
    prior_prec: Annotated[float | None, _O(help="lam, precision of the prior.")] = None,
    var_init: Annotated[float | None, _O(help="Initial variance of every weight.")] = None,
    nu: Annotated[float | None, _O(help="Weight of the covariance part of the KL.")] = None,
    dynamic_model_noise: Annotated[float | None, _O(help="q, the filter's drift (0: no drift).")] = None,
    measurement_noise: Annotated[float | None, _O(help="r, noise of one stochastic gradient.")] = None,
    start_filter_cov: Annotated[float | None, _O(help="P0, initial filter variance.")] = None,
    eta_tol: Annotated[float | None, _O(help="Bisection stops when its bracket is narrower.")] = None,
    weight_decay: Annotated[
        float | None,
        _O(
            help="Weight decay: decoupled, scaled by lr (arTuRO, AdamW, AdaHessian, Sophia); added to the gradient "
            "(SGD, Adam); IVON's prior precision delta. The optimizer's default if unset."
        ),
    ] = None,
    kl: Annotated[str | None, _O(help=_choices("kl", KL_CHOICES))] = None,
    dual: Annotated[str | None, _O(help=_choices("dual", DUAL_CHOICES))] = None,
    fixed_eta: Annotated[float | None, _O(help="Fix eta (trust region off; ablation).")] = None,
    guard: Annotated[bool | None, _O("--guard/--no-guard", help="Keep precision and denominators positive.")] = None,
    oracle: Annotated[
        str | None, _O(help=_choices("oracle", ORACLES, "Replace a by the minibatch's diagonal Hessian (ablation): "))
    ] = None,
    oracle_every: Annotated[int | None, _O(help="Oracle curvature every N steps.")] = None,
    lr_milestones: Annotated[
        list[int] | None, _O(help="Epoch at which lr is multiplied by --lr-gamma (repeatable).")
    ] = None,
    lr_gamma: Annotated[float | None, _O(help="Factor at each milestone (the preset's 0.006 if unset).")] = None,
    seed: Annotated[int | None, _O(help="Seed of data split, init, batches and probes (default 0).")] = None,
    device: Annotated[str | None, _O(help="cpu (default) or cuda.")] = None,
    dtype: Annotated[str | None, _O(help=_choices("dtype", DTYPES))] = None,
    out: Annotated[str | None, _O(help="Run directory (default runs/compare).")] = None,
    config: Annotated[
        Path | None,
        _O(
            "--config",
            help="TOML file with any of these fields (\\[run], \\[optimizer], \\[schedule], \\[diagnostics]).",
        ),
    ] = None,
    overwrite: Annotated[bool, _O("--overwrite", help="Replace a run record already in --out.")] = False,
) -> None:
    """Train with arTuRO, compare its curvature estimate with the true diagonal Hessian, write a report.

    With no options: the small CNN on scikit-learn's 8x8 digits, exact reference every 10 steps.

    Exit codes: 0 done; 1 internal error (a bug: a traceback); 2 bad input (one "error:" line, nothing that looks complete); 3 diverged (a NaN/inf loss, gradient, weight or optimizer state: the record is marked diverged and the report's first finding names step, quantity and layer); 130 interrupted (the record is left incomplete).
    """
    options = {k: v for k, v in locals().items() if k not in ("config", "overwrite")}
    clock = WallClock()
    console = Console(stderr=True)
    with user_errors():
        cfg = build_config(config, options)
        from arturo_diag.diagnostics.lock import keep_locked
        from arturo_diag.report.render import render_report

        with keep_locked(cfg.out):  # no other process between the record and its report
            result, diverged = None, None
            try:
                result = run_with_progress(cfg, console, overwrite)
            except Diverged as error:  # a result, not a user error: the report says where, exit 3
                diverged = error
            clock.mark("report")
            report = render_report(result.run_dir if result is not None else cfg.out)
            clock.mark("done")
    if diverged is not None:
        summarize_diverged(report, diverged, console)
        raise typer.Exit(code=EXIT_DIVERGED)
    summarize(report, result, console, clock)


def summarize_diverged(report, error: Diverged, console: Console) -> None:
    """A diverged run: one line on stderr saying where, then the report's findings (the first states it)."""
    console.print(f"[red]diverged:[/red] {escape(str(error))}; the record is marked diverged", highlight=False)
    out = Console()
    out.print(f"[bold]run[/bold] {escape(str(report.run_dir))}  (diverged at step {error.info.get('step')})")
    for finding in report.findings:
        marker = "[yellow]![/yellow]" if finding.get("severity") == "warning" else "-"
        out.print(f" {marker} {escape(finding['text'])}")
    out.print(f"[bold]report[/bold] {escape(f'{report.markdown}  {report.html}')}")


def summarize(report, result, console: Console, clock: WallClock | None = None) -> None:
    out = Console()
    out.print(f"[bold]run[/bold] {escape(str(result.run_dir))}  ({result.steps} steps)")
    if clock is not None:
        out.print(f"[bold]time[/bold] {escape(clock.summary(result))}")
    for finding in report.findings:
        marker = "[yellow]![/yellow]" if finding.get("severity") == "warning" else "-"
        out.print(f" {marker} {escape(finding['text'])}")
    out.print(f"[bold]report[/bold] {escape(f'{report.markdown}  {report.html}')}")
