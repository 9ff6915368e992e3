"""The training outcome: the last evaluation and the best test accuracy.

``metrics["training"]``: n_evaluations, final {epoch, step, train_loss, train_accuracy, test_loss,
test_accuracy} or None, best_test_accuracy, best_test_accuracy_epoch (from ``epochs.csv``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from arturo_diag.quantities._words import _get, _is_number, _num
from arturo_diag.quantities.base import Context, Findings, Quantity
from arturo_diag.report.document import Block, Heading, Paragraph, Table, text
from arturo_diag.report.figures.training import FIGURE
from arturo_diag.report.format import is_number, num, pct, plural

__all__ = ["QUANTITY"]


def _outcome(epochs: pd.DataFrame) -> dict[str, Any]:
    if len(epochs) == 0:
        return {"n_evaluations": 0, "final": None, "best_test_accuracy": math.nan, "best_test_accuracy_epoch": None}
    ordered = epochs.sort_values([c for c in ("step", "epoch") if c in epochs.columns], kind="stable")
    last = ordered.iloc[-1]

    def number(row: pd.Series, column: str) -> float:
        value = pd.to_numeric(pd.Series([row.get(column)]), errors="coerce").iloc[0]
        return float(value)

    final = {
        column: number(last, column)
        for column in ("epoch", "step", "train_loss", "train_accuracy", "test_loss", "test_accuracy")
    }
    for column in ("epoch", "step"):
        if math.isfinite(final[column]):
            final[column] = int(final[column])
    accuracy = pd.to_numeric(ordered.get("test_accuracy", pd.Series(dtype=float)), errors="coerce")
    if accuracy.notna().any():
        best_at = int(np.nanargmax(accuracy.to_numpy(dtype=np.float64)))
        best, best_epoch = float(accuracy.iloc[best_at]), number(ordered.iloc[best_at], "epoch")
        best_epoch = int(best_epoch) if math.isfinite(best_epoch) else None
    else:
        best, best_epoch = math.nan, None
    return {
        "n_evaluations": int(len(epochs)),
        "final": final,
        "best_test_accuracy": best,
        "best_test_accuracy_epoch": best_epoch,
    }


def compute(context: Context) -> dict[str, Any]:
    return _outcome(context.record.epochs)


def _training(out: Findings, metrics: Mapping[str, Any]) -> None:
    final = _get(metrics, "training", "final")
    if not final:
        return
    parts = []
    if _is_number(final.get("test_accuracy")):
        parts.append(f"test accuracy {100 * final['test_accuracy']:.2f}%")
    if _is_number(final.get("test_loss")):
        parts.append(f"test loss {_num(final['test_loss'])}")
    if _is_number(final.get("train_accuracy")):
        parts.append(f"train accuracy {100 * final['train_accuracy']:.2f}%")
    if _is_number(final.get("train_loss")):
        parts.append(f"train loss {_num(final['train_loss'])}")
    if parts:
        when = f" (epoch {final['epoch']}, step {final['step']})" if final.get("epoch") is not None else ""
        label = "Last evaluation before the divergence" if _get(metrics, "run", "divergence") else "Final evaluation"
        out.add("training", "info", f"{label}{when}: " + ", ".join(parts) + ".")


def training_section(metrics: Mapping[str, Any]) -> list[Block]:
    """Final train/test loss and accuracy, and the best test accuracy."""
    blocks: list[Block] = [Heading(2, (text("Training"),))]
    training = metrics.get("training") or {}
    final = training.get("final")
    if not final:
        return blocks + [Paragraph("No evaluation was recorded (epochs.csv is empty).")]
    blocks.append(
        Table(
            ("Final evaluation", "epoch", "step", "train loss", "train accuracy", "test loss", "test accuracy"),
            (
                (
                    "end of run",
                    str(final.get("epoch")),
                    str(final.get("step")),
                    num(final.get("train_loss")),
                    pct(final.get("train_accuracy")),
                    num(final.get("test_loss")),
                    pct(final.get("test_accuracy")),
                ),
            ),
        )
    )
    if is_number(training.get("best_test_accuracy")):
        blocks.append(
            Paragraph(
                f"Best test accuracy {pct(training['best_test_accuracy'])} at epoch "
                f"{training.get('best_test_accuracy_epoch')} of {plural(training.get('n_evaluations'), 'evaluation')}."
            )
        )
    return blocks


QUANTITY = Quantity(
    name="training",
    needs=("epochs.csv",),
    compute=compute,
    findings=_training,
    blocks=training_section,
    figures=(FIGURE,),
)
