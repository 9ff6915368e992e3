"""The agreement section's scale-vs-shape part: a short table of what the zero vector, the
constants and a (as it is, and optimally rescaled) score against h, the agreement verdicts, and,
when two estimates exist, their shapes side by side. No new numbers: every cell is in
``metrics["agreement"]`` or ``metrics["verdicts"]``' agreement entries.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from arturo_diag.quantities._estimator import is_arturo, optimizer_name
from arturo_diag.quantities.agreement_verdicts import agreement_verdicts
from arturo_diag.report.document import Block, Bullets, Paragraph, Table, code, text
from arturo_diag.report.format import distinguishing_digits, get, num

__all__ = ["scale_shape_blocks"]


def _scale_table(step: Any, overall: Mapping[str, Any]) -> Table | None:
    scale = overall.get("scale")
    if not scale:
        return None
    estimate, constant = overall["estimate"], overall["constant"]
    value = overall.get("constant_value", 0.1)
    rows = [
        ("zero vector", "0", scale["zero"]["relative_error"], None),
        (f"constant {num(value)} (a's start)", num(value), constant["relative_error"], constant["cosine"]),
        ("best constant mean(h)", num(scale["best_constant"]["value"]), *_pair(scale["best_constant"])),
        ("constant median |h|", num(scale["median_constant"]["value"]), *_pair(scale["median_constant"])),
        ("a (estimate)", "", estimate["relative_error"], estimate["cosine"]),
        ("c* a (a optimally rescaled)", f"c* = {num(scale['rescaled']['factor'])}", *_pair(scale["rescaled"])),
    ]
    digits = distinguishing_digits([r[2] for r in rows])
    return Table(
        ("vector", "value", "relative error ||x-h||/||h||", "cosine"),
        tuple((name, v, num(err, digits), "" if cos is None else num(cos)) for name, v, err, cos in rows),
        align=("l", "r", "r", "r"),
        caption=(
            f"Scale apart from shape at step {step}, all coordinates: c* = <a,h>/<a,a> minimises ||c a - h||, so "
            "c* a's error is what a's shape leaves once its scale is right; the best constant's is what no "
            "shape at all leaves."
        ),
    )


def _pair(entry: Mapping[str, Any]) -> tuple[Any, Any]:
    return entry["relative_error"], entry["cosine"]


def _layer_table(layers: Mapping[str, Any]) -> Table | None:
    rows = []
    for layer, entry in layers.items():
        scale = entry.get("scale")
        if not scale:
            continue
        rows.append(
            (
                layer,
                num(scale["rescaled"]["factor"]),
                num(entry["estimate"]["relative_error"]),
                num(scale["rescaled"]["relative_error"]),
                num(scale["best_constant"]["relative_error"]),
                num(entry["estimate"]["spearman"]),
            )
        )
    if len(rows) < 2:
        return None
    return Table(
        ("layer", "c*", "a's error", "c* a's error", "best constant's error", "Spearman"),
        tuple(rows),
        caption="Per layer: the optimal factor c*, the relative error of a and of c* a, the best constant's, and Spearman.",
    )


def _two_estimates(
    a_overall: Mapping[str, Any], hutchinson: Mapping[str, Any] | None, who: str = "arTuRO"
) -> Table | None:
    hv = (hutchinson or {}).get("overall")
    if not hv or not hv.get("scale") or not a_overall.get("scale"):
        return None

    def row(name: str, entry: Mapping[str, Any], scale: Mapping[str, Any]) -> tuple[str, ...]:
        r = scale["rescaled"]
        return (name, num(entry["spearman"]), num(entry["cosine"]), num(r["factor"]), num(r["relative_error"]))

    return Table(
        ("estimate of the exact h", "Spearman", "cosine", "c*", "error after rescaling"),
        (
            row(f"a ({who})", a_overall["estimate"], a_overall["scale"]),
            row("Hutchinson", hv, hv["scale"]),
        ),
        caption="Two estimates of the same exact h, compared on shape (scale removed by each one's own c*).",
    )


def scale_shape_blocks(metrics: Mapping[str, Any]) -> list[Block]:
    """The scale-vs-shape table (overall, then per layer), the two estimates' shapes, the verdicts."""
    final = get(metrics, "agreement", "final")
    if not final:
        return []
    blocks: list[Block] = []
    for table in (
        _scale_table(final.get("step"), final["overall"]),
        _layer_table(final.get("layers") or {}),
        _two_estimates(
            final["overall"],
            get(metrics, "agreement", "hutchinson_vs_exact", "final"),
            "arTuRO" if is_arturo(metrics) else optimizer_name(metrics),
        ),
    ):
        if table is not None:
            blocks.append(table)
    verdicts = agreement_verdicts(metrics)
    blocks.append(Paragraph("Verdicts (the rules are in metrics.json's verdicts and docs/metrics.md):"))
    blocks.append(
        Bullets(
            tuple((code(v.id), text(f": {v.outcome}. {v.text}")) for v in verdicts),
            tuple("" if v.outcome == "yes" else "warning" for v in verdicts),
        )
    )
    return blocks
