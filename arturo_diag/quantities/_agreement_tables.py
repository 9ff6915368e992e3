"""The tables of the agreement section (:mod:`arturo_diag.quantities.agreement`), as report blocks.

At the final snapshot: each metric of a beside the constant and previous-h baselines, over all
coordinates and per layer (one row per metric, or one compact row per layer above
``_MANY_LAYERS`` layers), and Hutchinson's estimate against the exact h. No new numbers: every
cell is a number of ``metrics["agreement"]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from arturo_diag.report.document import Block, Table
from arturo_diag.report.format import count, distinguishing_digits, get, num, pct, yes_no

__all__ = ["_METRIC_ROWS", "agreement_tables", "hutchinson_table"]

_METRIC_ROWS = (
    ("relative_error", "relative error (lower is better)", num),
    ("cosine", "cosine (higher is better)", num),
    ("spearman", "Spearman (higher is better)", num),
    ("sign_agreement", "sign agreement (higher is better)", pct),
    ("log_ratio_abs_median", "median |log10(|a|/|h|)| (lower is better)", num),
)


_MANY_LAYERS = 10  # above this, per-layer agreement is one compact row per layer


def agreement_tables(
    step: Any, overall: Mapping[str, Any], layers: Mapping[str, Any], constant_name: str
) -> list[Block]:
    """Every metric over all coordinates (and per layer, up to ``_MANY_LAYERS`` layers) beside the
    baselines; above that, a second table with one compact row per layer."""
    caption = (
        f"Agreement at step {step}; the constant has no ranks, so its Spearman is undefined and a beats it "
        "when its own Spearman is above 0."
    )
    header = (
        "Layer (coordinates)",
        "Metric",
        "a (estimate)",
        constant_name,
        "previous h",
        "a better than constant (point estimates)",
        "a better than previous h (point estimates)",
    )
    long_entries = [("all coordinates", overall)] + (list(layers.items()) if len(layers) <= _MANY_LAYERS else [])
    blocks: list[Block] = [
        Table(header, tuple(_agreement_rows(long_entries)), align=("l", "l", "r", "r", "r", "r", "r"), caption=caption)
    ]
    if len(layers) > _MANY_LAYERS:
        blocks.append(_compact_layer_table(step, layers, constant_name))
    return blocks


def _agreement_rows(entries: Sequence[tuple[str, Mapping[str, Any]]]) -> list[tuple[str, ...]]:
    rows = []
    for name, entry in entries:
        label = f"{name} ({count(get(entry, 'estimate', 'n'))})"
        for i, (metric, words, fmt) in enumerate(_METRIC_ROWS):
            values = [get(entry, kind, metric) for kind in ("estimate", "constant", "previous_h")]
            digits = distinguishing_digits(values, fmt)
            rows.append(
                (
                    label if i == 0 else "",
                    words,
                    *(fmt(v, digits) for v in values),
                    "tie (a > 0)"  # a > 0 everywhere: a positive constant's signs are a's by construction
                    if metric == "sign_agreement"
                    and get(entry, "scale", "a_all_positive")
                    and (get(entry, "constant_value") or 0) > 0
                    else yes_no(get(entry, "beats_constant", metric)),
                    yes_no(get(entry, "beats_previous_h", metric)),
                )
            )
    return rows


def _compact_layer_table(step: Any, layers: Mapping[str, Any], constant_name: str) -> Table:
    """One row per layer: four metrics of a beside the baselines, and the verdict on relative error."""
    rows = []
    for name, entry in layers.items():
        cells = [f"{name} ({count(get(entry, 'estimate', 'n'))})"]
        for metric, kinds, fmt in (
            ("relative_error", ("estimate", "constant", "previous_h"), num),
            ("cosine", ("estimate", "constant", "previous_h"), num),
            ("spearman", ("estimate", "previous_h"), num),
            ("sign_agreement", ("estimate", "constant", "previous_h"), pct),
        ):
            values = [get(entry, kind, metric) for kind in kinds]
            digits = distinguishing_digits(values, fmt)
            cells += [fmt(v, digits) for v in values]
        rows.append((*cells, yes_no(get(entry, "beats_constant", "relative_error"))))
    return Table(
        (
            "Layer (coordinates)",
            "rel. error a",
            "const.",
            "prev. h",
            "cosine a",
            "const.",
            "prev. h",
            "Spearman a",
            "prev. h",
            "sign agr. a",
            "const.",
            "prev. h",
            "a beats const. (rel. error)",
        ),
        tuple(rows),
        caption=f"Per layer at step {step} ({len(layers)} layers, one row each; const. = the {constant_name}).",
    )


def hutchinson_table(
    hutchinson: Mapping[str, Any], overall: Mapping[str, Any], layers: Mapping[str, Any], who: str = "arTuRO's a"
) -> Table:
    """Hutchinson's estimate against the exact h, over all coordinates and per layer, beside a's
    (``who``: whose estimate a is, in words)."""
    rows = []
    for name, entry in [("all coordinates", hutchinson["overall"]), *(hutchinson.get("layers") or {}).items()]:
        a_entry = overall if name == "all coordinates" else layers.get(name) or {}
        rows.append(
            (
                name,
                num(entry.get("relative_error")),
                num(entry.get("spearman")),
                num(get(a_entry, "estimate", "relative_error")),
                num(get(a_entry, "estimate", "spearman")),
            )
        )
    return Table(
        ("Layer", "Hutchinson rel. error", "Hutchinson Spearman", "a rel. error", "a Spearman"),
        tuple(rows),
        caption=f"Hutchinson's estimate against the exact h at step {hutchinson['step']}, beside {who}.",
    )
