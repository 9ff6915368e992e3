"""Figure of the training curves: loss per step and at each evaluation, accuracy."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from arturo_diag.diagnostics.record import RunRecord
from arturo_diag.report.figures.common import (
    FigureSkipped,
    FigureSpec,
    _bound_drops,
    _col,
    _log_if_wide,
    _mark_drops,
    _steps,
)
from arturo_diag.report.format import get, is_number, pct

__all__ = ["FIGURE", "plot_training"]


def plot_training(record: RunRecord, metrics: dict[str, Any], fig: Figure) -> None:
    """Training curves: minibatch loss per step (faint) and its moving average, train/test loss and
    accuracy at each evaluation (end of epoch); KL-bound drops as dash-dotted verticals.

    Needs steps.csv ``step``, ``loss`` and/or epochs.csv ``step``, ``train_loss``, ``test_loss``,
    ``train_accuracy``, ``test_accuracy``.
    """
    steps = _steps(record)
    step, loss = _col(steps, "step"), _col(steps, "loss")
    has_loss = np.isfinite(loss)
    epochs = record.epochs
    if "step" in epochs.columns and len(epochs):
        epochs = epochs.assign(step=pd.to_numeric(epochs["step"], errors="coerce")).sort_values("step", kind="stable")
    e_step = _col(epochs, "step")
    curves = {name: _col(epochs, name) for name in ("train_loss", "test_loss", "train_accuracy", "test_accuracy")}
    has_eval = (
        np.isfinite(e_step) & np.column_stack([np.isfinite(v) for v in curves.values()]).any(axis=1)
        if len(epochs)
        else np.zeros(0, dtype=bool)
    )
    if not has_loss.any() and not has_eval.any():
        raise FigureSkipped("no loss in steps.csv and no evaluation in epochs.csv")
    ax_loss, ax_acc = fig.subplots(1, 2)
    levels = []
    if has_loss.any():
        s, l = step[has_loss], loss[has_loss]
        window = max(1, int(round(len(l) / 30)))
        ax_loss.plot(s, l, color="#1f77b4", lw=0.7, alpha=0.3, label="minibatch loss")
        smooth = pd.Series(l).rolling(window, min_periods=1).mean().to_numpy()
        ax_loss.plot(s, smooth, color="#1f77b4", lw=1.8, label=f"moving average ({window} steps)")
        levels.append(l)
    for name, color, marker in (("train_loss", "#ff7f0e", "o"), ("test_loss", "#2ca02c", "s")):
        ok = np.isfinite(e_step) & np.isfinite(curves[name])
        if ok.any():
            ax_loss.plot(
                e_step[ok],
                curves[name][ok],
                color=color,
                marker=marker,
                ms=4,
                lw=1.4,
                label=name.replace("_", " ") + " (evaluation)",
            )
            levels.append(curves[name][ok])
    if levels:
        _log_if_wide(ax_loss, np.concatenate(levels), ratio=10.0)
    ax_loss.set_xlabel("optimizer step")
    ax_loss.set_ylabel("cross-entropy loss")
    ax_loss.set_title("loss")
    drawn_accuracy = False
    for name, color, marker in (("train_accuracy", "#ff7f0e", "o"), ("test_accuracy", "#2ca02c", "s")):
        ok = np.isfinite(e_step) & np.isfinite(curves[name])
        if ok.any():
            ax_acc.plot(
                e_step[ok], curves[name][ok], color=color, marker=marker, ms=4, lw=1.4, label=name.replace("_", " ")
            )
            drawn_accuracy = True
    drops = _bound_drops(metrics)
    _mark_drops((ax_loss,), drops)
    if drawn_accuracy:
        _mark_drops((ax_acc,), drops)
        ax_acc.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax_acc.set_xlabel("optimizer step")
        ax_acc.set_ylabel("accuracy")
        ax_acc.set_title("accuracy at each evaluation (end of epoch)")
        ax_acc.legend(loc="lower right")
    else:
        ax_acc.text(0.5, 0.5, "no accuracy recorded (epochs.csv)", ha="center", va="center", transform=ax_acc.transAxes)
        ax_acc.set_axis_off()
    ax_loss.legend(loc="best")
    final = get(metrics, "training", "final") or {}
    accuracy = final.get("test_accuracy")
    tail = f": final test accuracy {pct(accuracy)}" if is_number(accuracy) else ""
    fig.suptitle(f"Training{tail}")


#: This figure, listed in its quantity's ``figures`` (:mod:`arturo_diag.quantities`).
FIGURE = FigureSpec(
    "training",
    plot_training,
    (11.0, 4.5),
    "Minibatch loss (raw and moving average), train/test loss and accuracy at each evaluation.",
)
