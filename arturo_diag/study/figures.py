"""The figures of a study report, one set per setup, drawn with seaborn on matplotlib's Agg backend.

Each plot function says what it shows: ``plot_curves`` (learning curves with 95 % bands over
seeds), ``plot_eta`` (eta per step, the median over seeds per arTuRO variant, log scale),
``plot_accuracy`` (final test accuracy per variant, seeds as dots, mean with its 95 % t interval),
``plot_estimates`` (the cross-optimizer figure: each variant's curvature estimate against h over
training, its scale c* on a log axis and its shape Spearman(a, h), beside test accuracy).
:func:`draw_figures` draws them for every setup as PNG bytes without metadata, so drawing twice
gives identical files; :data:`FIGURE_CAPTIONS` is their captions, in report order.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from arturo_diag.quantities.agreement_verdicts import SCALE_FACTOR, SHAPE_MARGIN
from arturo_diag.study.aggregate import REFERENCE_VARIANT, StudyData
from arturo_diag.study.stats import mean_ci

__all__ = ["FIGURE_CAPTIONS", "draw_figures", "plot_accuracy", "plot_curves", "plot_estimates", "plot_eta"]

# figure key -> caption, in the order the report shows them
FIGURE_CAPTIONS: dict[str, str] = {
    "curves": "Learning curves: mean over seeds, band = 95 % t interval (dashed: baselines).",
    "eta": "eta per step, median over seeds per arTuRO variant (log scale).",
    "accuracy": "Final test accuracy per variant: dots = seeds, diamond and bar = mean and 95 % t interval; "
    "dashed line = faithful's mean.",
    "estimates": "Each variant's curvature estimate a against the reference h over training: its scale c* = "
    "<a,h>/<a,a> (log axis; 1 = h's scale, the band [1/1.5, 1.5] the verdict agreement.scale's; c* <= 0 falls "
    "off the axis), its shape Spearman(a, h) (dotted: the verdict agreement.shape's 0.1), and test accuracy; "
    "line = mean over seeds, band = 95 % t interval (dashed: baselines and the other optimizers).",
}


def _t_interval(values: Sequence[float]) -> tuple[float, float]:
    summary = mean_ci(list(values))
    return summary["ci_low"], summary["ci_high"]


def _palette(variants: list[str]) -> dict[str, Any]:
    import seaborn as sns

    colors = sns.color_palette("tab10", 10) + sns.color_palette("Dark2", 8)
    return {name: colors[i % len(colors)] for i, name in enumerate(variants)}


def plot_curves(curves: pd.DataFrame, variants: list[str], families: dict[str, str], axes) -> None:
    """Learning curves per variant: train loss, test loss (log scale) and test accuracy after each
    epoch; line = mean over seeds, band = its 95 % t interval. Needs curves.csv's columns."""
    import seaborn as sns

    palette = _palette(variants)
    data = curves.copy()
    data["kind"] = data["variant"].map(lambda v: "baseline" if families.get(v) == "baseline" else "arTuRO")
    for ax, column, title in zip(
        axes, ("train_loss", "test_loss", "test_accuracy"), ("train loss", "test loss", "test accuracy")
    ):
        sns.lineplot(
            data=data,
            x="epoch",
            y=column,
            hue="variant",
            hue_order=variants,
            palette=palette,
            style="kind",
            style_order=["arTuRO", "baseline"],
            dashes={"arTuRO": "", "baseline": (4, 2)},
            errorbar=_t_interval,
            ax=ax,
            legend=ax is axes[-1],
        )
        ax.set_title(title)
        ax.set_ylabel(column.replace("_", " "))
        means = data.groupby(["variant", "epoch"])[column].mean()
        means = means[means.apply(math.isfinite)]
        if column == "test_accuracy":
            ax.set_ylim(0.0, 1.02)  # a t band over few seeds can leave [0, 1]
        elif len(means) and (means > 0).all():
            ax.set_yscale("log")
            ax.set_ylim(0.5 * float(means.min()), 2.0 * float(means.max()))
    legend = axes[-1].get_legend()
    if legend is not None:
        sns.move_legend(axes[-1], "upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, fontsize=8)


def plot_eta(eta: pd.DataFrame, variants: list[str], ax) -> None:
    """eta per step for every arTuRO variant: the median over seeds (log scale). Flat lines at the
    bisection floor or a fixed eta, 5/3-per-step ramps and jumps after a bound drop show here.
    Needs eta.csv (step, eta per run)."""
    import seaborn as sns

    palette = _palette(variants)
    present = [v for v in variants if v in set(eta["variant"])]
    median = eta.groupby(["variant", "step"], sort=True)["eta"].median().reset_index()
    median = median[median["eta"] > 0]
    sns.lineplot(
        data=median,
        x="step",
        y="eta",
        hue="variant",
        hue_order=present,
        palette=palette,
        errorbar=None,
        ax=ax,
        linewidth=1.2,
    )
    ax.set_yscale("log")
    ax.set_title("eta per step (median over seeds)")
    if ax.get_legend() is not None:
        sns.move_legend(ax, "upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, fontsize=8)


def plot_accuracy(runs: pd.DataFrame, variants: list[str], ax) -> None:
    """Final test accuracy (%) per variant: each seed a dot, the mean with its 95 % t interval;
    the dashed line is faithful's mean. Needs runs.csv (variant, status, test_accuracy)."""
    import seaborn as sns

    palette = _palette(variants)
    done = runs[runs.status == "complete"].copy()
    done["test accuracy (%)"] = pd.to_numeric(done["test_accuracy"], errors="coerce") * 100.0
    present = [v for v in variants if v in set(done["variant"])]
    if not present:
        ax.text(0.5, 0.5, "no complete runs", ha="center", va="center", transform=ax.transAxes)
        return
    sns.stripplot(
        data=done,
        x="test accuracy (%)",
        y="variant",
        order=present,
        hue="variant",
        hue_order=present,
        palette=palette,
        ax=ax,
        jitter=False,
        alpha=0.8,
        size=6,
        marker="o",
        linewidth=0.5,
        edgecolor="white",
        legend=False,
        zorder=3,
    )
    sns.pointplot(
        data=done,
        x="test accuracy (%)",
        y="variant",
        order=present,
        hue="variant",
        hue_order=present,
        palette=palette,
        errorbar=_t_interval,
        linestyle="none",
        markers="D",
        ax=ax,
        legend=False,
        capsize=0.2,
    )
    reference = done[done.variant == REFERENCE_VARIANT]["test accuracy (%)"]
    if len(reference):
        ax.axvline(float(reference.mean()), color="0.4", linestyle="--", linewidth=1)
    low = min(0.0, float(done["test accuracy (%)"].min()) if done["test accuracy (%)"].notna().any() else 0.0)
    ax.set_xlim(low, 100.0)
    ax.set_title("final test accuracy (mean, 95 % CI; dots: seeds)")


def plot_estimates(
    estimates: pd.DataFrame, curves: pd.DataFrame, variants: list[str], families: dict[str, str], axes
) -> None:
    """The cross-optimizer figure, three panels against the step: c* = <a,h>/<a,a> (log scale, a
    grey band at [1/1.5, 1.5] and a line at 1), Spearman(a, h) (a dotted line at 0.1) and test
    accuracy; one line per variant with an estimate (mean over seeds, band = 95 % t interval; dashed
    for every optimizer but arTuRO). Needs estimates.csv (step, scale_factor, spearman per run and
    snapshot) and curves.csv (step, test_accuracy per run and epoch)."""
    import seaborn as sns

    palette = _palette(variants)
    present = [v for v in variants if v in set(estimates["variant"])]
    kinds = {v: "arTuRO" if families.get(v) == "arturo" else "other optimizer" for v in present}
    accuracy = curves[curves["variant"].isin(present)]
    panels = (
        (estimates, "scale_factor", "scale c* = <a,h>/<a,a> (log)"),
        (estimates, "spearman", "shape: Spearman(a, h)"),
        (accuracy, "test_accuracy", "test accuracy"),
    )
    for ax, (table, column, title) in zip(axes, panels):
        data = table.assign(kind=table["variant"].map(kinds))
        data = data[pd.to_numeric(data[column], errors="coerce").notna()]
        if len(data):
            sns.lineplot(
                data=data,
                x="step",
                y=column,
                hue="variant",
                hue_order=[v for v in present if v in set(data["variant"])],
                palette=palette,
                style="kind",
                style_order=["arTuRO", "other optimizer"],
                dashes={"arTuRO": "", "other optimizer": (4, 2)},
                errorbar=_t_interval,
                ax=ax,
                legend=ax is axes[-1],
                linewidth=1.2,
            )
        ax.set_title(title)
        ax.set_ylabel(column.replace("_", " "))
    scale_ax, shape_ax, accuracy_ax = axes
    scale_ax.axhspan(1 / SCALE_FACTOR, SCALE_FACTOR, color="0.85", zorder=0)
    scale_ax.axhline(1.0, color="0.4", linewidth=0.8)
    positive = pd.to_numeric(estimates["scale_factor"], errors="coerce")
    if (positive > 0).any():
        scale_ax.set_yscale("log")
        low, high = float(positive[positive > 0].min()), float(positive[positive > 0].max())
        scale_ax.set_ylim(min(low, 1 / SCALE_FACTOR) / 2.0, max(high, SCALE_FACTOR) * 2.0)
    shape_ax.axhline(SHAPE_MARGIN, color="0.4", linestyle=":", linewidth=1)
    shape_ax.set_ylim(-1.02, 1.02)
    accuracy_ax.set_ylim(0.0, 1.02)
    if accuracy_ax.get_legend() is not None:
        sns.move_legend(accuracy_ax, "upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, fontsize=8)


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight", metadata={"Software": None})
    return buffer.getvalue()


def draw_figures(data: StudyData) -> dict[str, dict[str, bytes]]:
    """setup name -> figure key (``curves``, ``eta``, ``accuracy``, ``estimates``) -> PNG bytes, for the
    figures whose data the study has (curves: any epoch rows; eta: any arTuRO step; accuracy: a complete
    run; estimates: any snapshot of a run with a curvature estimate)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import seaborn as sns

    names = [v.name for v in data.study.variants]
    families = {v.name: v.family for v in data.study.variants}
    out: dict[str, dict[str, bytes]] = {}
    with sns.axes_style("whitegrid"), plt.rc_context({"figure.max_open_warning": 0}):
        for setup in data.study.setups:
            figures: dict[str, bytes] = {}
            curves = data.curves[data.curves.setup == setup.name]
            if len(curves):
                fig, axes = plt.subplots(1, 3, figsize=(15, 4))
                plot_curves(curves, [v for v in names if v in set(curves.variant)], families, list(axes))
                figures["curves"] = _png(fig)
                plt.close(fig)
            eta = data.eta[data.eta.setup == setup.name]
            if len(eta):
                fig, ax = plt.subplots(figsize=(9, 4))
                plot_eta(eta, names, ax)
                figures["eta"] = _png(fig)
                plt.close(fig)
            runs = data.runs[data.runs.setup == setup.name]
            if (runs.status == "complete").any():
                fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.2))
                plot_accuracy(runs, names, ax)
                figures["accuracy"] = _png(fig)
                plt.close(fig)
            estimates = data.estimates[data.estimates.setup == setup.name]
            if len(estimates):
                fig, axes = plt.subplots(1, 3, figsize=(15, 4))
                plot_estimates(estimates, curves, names, families, list(axes))
                figures["estimates"] = _png(fig)
                plt.close(fig)
            out[setup.name] = figures
    return out
