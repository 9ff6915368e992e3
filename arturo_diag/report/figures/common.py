"""What every figure module shares: the Agg backend, the fixed style and deterministic PNG writing
(:func:`draw_figure`), :class:`FigureSpec`, :class:`FigureSkipped`, and the small helpers the plot
functions use (tables of the record, layer colours and per-layer lines, legends, KL-bound drops).
The underscore names are for the figure modules only.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")  # the report only ever writes files

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from arturo_diag.diagnostics.record import RunRecord
from arturo_diag.report.format import count, get, is_number, num

__all__ = ["DPI", "FigureSkipped", "FigureSpec", "draw_figure"]

DPI = 100
_MANY_LAYERS = 10  # above this, layers are coloured by depth instead of named in the legend

# seaborn's whitegrid look, fixed fonts; applied with rc_context around each figure only.
_RC: dict[str, Any] = {
    **sns.axes_style("whitegrid"),
    **sns.plotting_context("notebook", font_scale=0.8),
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "font.family": "DejaVu Sans",
    "axes.titlesize": 10,
    "figure.titlesize": 11,
    "legend.fontsize": 8,
    "legend.frameon": True,
    "legend.framealpha": 0.9,
    "axes.formatter.useoffset": False,
}
_PNG_METADATA = {"Software": None}  # no matplotlib version in the file
_C = {
    "overall": "black",
    "constant": "#e7298a",
    "eta": "#1f77b4",
    "growth": "#ff7f0e",
    "frozen": "#d62728",
    "fixed": "#7f7f7f",
    "kl": "#2ca02c",
    "drop": "#9467bd",
    "collapse": "#d62728",
    "calibrated": "#2ca02c",
}


class FigureSkipped(Exception):
    """Raised by a figure function when the record lacks what the figure needs; ``reason`` says what."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class FigureSpec:
    """One figure of the report: file name ``figures/{name}.png``, what draws it, its caption."""

    name: str
    function: Callable[[RunRecord, dict[str, Any], Figure], None]
    size: tuple[float, float]
    caption: str


def draw_figure(spec: FigureSpec, record: RunRecord, metrics: dict[str, Any]) -> bytes:
    """PNG bytes of one figure, rendered deterministically (raises :class:`FigureSkipped`)."""
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=spec.size, dpi=DPI, layout="constrained")
        FigureCanvasAgg(fig)
        spec.function(record, metrics, fig)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=DPI, metadata=_PNG_METADATA)
    return buffer.getvalue()


# ------------------------------------------------------------------------------------ helpers
def _steps(record: RunRecord) -> pd.DataFrame:
    steps = record.steps
    if "step" not in steps.columns or len(steps) == 0:
        return steps.iloc[0:0]
    steps = steps.assign(step=pd.to_numeric(steps["step"], errors="coerce"))
    return steps[steps["step"].notna()].sort_values("step", kind="stable").reset_index(drop=True)


def _col(table: pd.DataFrame, name: str) -> np.ndarray:
    if name not in table.columns:
        return np.full(len(table), np.nan)
    return pd.to_numeric(table[name], errors="coerce").to_numpy(dtype=np.float64)


def _steps_words(n: int) -> str:
    return f"{count(n)} step" + ("" if n == 1 else "s")


def _no_reference_reason(metrics: dict[str, Any]) -> str:
    run = metrics.get("run") or {}
    if not run.get("n_snapshots"):
        return "the record has no snapshots (reference 'none' or no snapshot was due)"
    return (
        f"none of the {run['n_snapshots']} snapshots has both the curvature estimate a and a reference h "
        f"(reference: {run.get('reference')})"
    )


def _layer_colors(layers: Sequence[str]) -> tuple[dict[str, Any], bool]:
    """Layer -> colour; ``many`` when there are too many layers to name each in a legend."""
    many = len(layers) > _MANY_LAYERS
    palette = sns.color_palette("viridis" if many else "tab10", max(len(layers), 1))
    return {layer: palette[i] for i, layer in enumerate(layers)}, many


def _layer_label(layer: str, i: int, layers: Sequence[str], many: bool) -> str:
    if not many:
        return layer
    if i == 0:
        return f"first layer ({layer}); {len(layers)} layers, dark to light by depth"
    if i == len(layers) - 1:
        return f"last layer ({layer})"
    return "_nolegend_"


def _legend_outside(ax: Any, handles: Sequence[Any] | None = None, **kwargs: Any) -> None:
    if handles is not None:
        kwargs["handles"] = list(handles)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, **kwargs)


def _series_layers(entries: Sequence[dict[str, Any]]) -> list[str]:
    layers: dict[str, None] = {}
    for entry in entries:
        for layer in entry.get("layers") or {}:
            layers.setdefault(layer, None)
    return list(layers)


def _values(entries: Sequence[dict[str, Any]], *path: Any) -> np.ndarray:
    out = []
    for entry in entries:
        value = get(entry, *path)
        out.append(float(value) if is_number(value) else np.nan)
    return np.asarray(out, dtype=np.float64)


def _plot_per_layer(ax: Any, steps: np.ndarray, entries: Sequence[dict[str, Any]], *path: Any) -> None:
    """One line per layer of ``entry["layers"][layer][*path]`` and a thick black line of
    ``entry["overall"][*path]`` over the snapshots ``entries`` (dots at each when at most 60)."""
    layers = _series_layers(entries)
    colors, many = _layer_colors(layers)
    marker = "." if len(steps) <= 60 else None
    for i, layer in enumerate(layers):
        ax.plot(
            steps,
            _values(entries, "layers", layer, *path),
            color=colors[layer],
            lw=1.1,
            marker=marker,
            ms=4,
            alpha=0.9,
            label=_layer_label(layer, i, layers, many),
        )
    ax.plot(
        steps,
        _values(entries, "overall", *path),
        color=_C["overall"],
        lw=2.4,
        marker=marker,
        ms=5,
        label="all coordinates",
    )


def _log_if_wide(ax: Any, values: np.ndarray, axis: str = "y", ratio: float = 20.0) -> None:
    finite = values[np.isfinite(values)]
    if finite.size and np.all(finite > 0) and finite.max() / finite.min() > ratio:
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")


def _bound_drops(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    return [d for d in (get(metrics, "trust_region", "bound_drops") or []) if is_number(d.get("step"))]


def _mark_drops(axes: Sequence[Any], drops: Sequence[dict[str, Any]], label: bool = True) -> None:
    for i, drop in enumerate(drops):
        factor = f" (x{num(drop['factor'])})" if is_number(drop.get("factor")) else ""
        for j, ax in enumerate(axes):
            ax.axvline(
                drop["step"],
                color=_C["drop"],
                ls="-.",
                lw=1.0,
                label=f"KL bound drop{factor}" if (label and i == 0 and j == 0) else "_nolegend_",
            )


def _final_arrays(record: RunRecord, step: int, fields: Sequence[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Concatenated arrays of ``fields`` at ``step`` over the parameters holding all of them, and
    the layer index of every coordinate (layers in the record's order)."""
    snapshot = record.snapshot(step, fields=fields)
    names = [name for name, arrays in snapshot.items() if all(f in arrays for f in fields)]
    if not names:
        raise FigureSkipped(f"the snapshot at step {step} holds none of {', '.join(fields)} for any parameter")
    layer_order = list(dict.fromkeys(record.layers.get(n, n) for n in list(record.parameters) + names))
    index = {layer: i for i, layer in enumerate(layer_order)}
    arrays = {f: np.concatenate([snapshot[n][f].reshape(-1) for n in names]) for f in fields}
    layer_index = np.concatenate([np.full(snapshot[n][fields[0]].size, index[record.layers.get(n, n)]) for n in names])
    return arrays, layer_index
