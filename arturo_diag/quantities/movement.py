"""Movement: is a large where h is large? (ARTURO.md, "Diagnostic quantities").

``metrics["movement"]``: a series of per-layer entries ``{step, reference, overall: X, layers}``
with X = ``movement(a, h, prior=0.1)`` (:mod:`arturo_diag.diagnostics.movement`), and ``left_prior``
(``left_prior(a)`` of the final usable snapshot, with its ``step``): the counts of the verdict
``movement.left_prior`` (:mod:`arturo_diag.quantities.topic_verdicts`).

Every number here is measured from 0.1, arTuRO's initial a: for another optimizer's estimate
(Adam's v-hat starts at the first squared gradient, IVON's hess at hess_init, AdaHessian's at the
first |z * Hz|) the distance from 0.1 means nothing, so the entry is empty (``not_applicable``
says why), there is no verdict, and the estimate's scale against h is in Agreement (c*).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from arturo_diag.diagnostics.agreement import per_layer
from arturo_diag.diagnostics.movement import left_prior, movement
from arturo_diag.quantities._blocks import _no_reference_reason, _not_computed
from arturo_diag.quantities._estimator import ARTURO, estimator_of
from arturo_diag.quantities._words import _get, _is_number, _num, _pct
from arturo_diag.quantities.base import (
    Context,
    Findings,
    Quantity,
    SnapshotView,
    concat,
    series,
    split,
)
from arturo_diag.quantities.topic_verdicts import movement_verdicts, with_finding
from arturo_diag.report.document import Block, Heading, Paragraph, Table, text
from arturo_diag.report.figures.movement import FIGURE
from arturo_diag.report.format import count, get, num, pct

__all__ = ["QUANTITY"]


class _Observer:
    def __init__(self, context: Context) -> None:
        self.applies = (estimator_of(context.record.manifest) or {}).get("name") == ARTURO
        self.prior = context.options.constant
        self.layers = context.record.layers
        self.entries: list[dict[str, Any]] = []
        self.left_prior: dict[str, Any] | None = None

    def snapshot(self, view: SnapshotView) -> None:
        if not view.usable or not self.applies:
            return
        prior, a, h = self.prior, view.a, view.h
        self.left_prior = {"step": view.step, **left_prior(concat([a[n] for n in view.names]), prior=prior)}
        self.entries.append(
            split(
                per_layer(lambda a, h: movement(a, h, prior=prior), {n: (a[n], h[n]) for n in view.names}, self.layers),
                view.step,
                reference=view.field,
            )
        )


def compute(context: Context) -> dict[str, Any]:
    observer = context.observers["movement"]
    out = {**series(observer.entries), "left_prior": observer.left_prior}
    if not observer.applies:
        name = (estimator_of(context.record.manifest) or {}).get("name") or "this optimizer"
        out["not_applicable"] = (
            f"movement is measured from 0.1, arTuRO's initial a; {name}'s estimate starts elsewhere, so its "
            "distance from 0.1 says nothing (its scale against h is in Agreement, c*)"
        )
    return out


def _movement(out: Findings, metrics: Mapping[str, Any]) -> None:
    final = _get(metrics, "movement", "final")
    if not final:
        return
    overall = final["overall"]
    share, median = overall["never_left_share"], overall["median_relative_move"]
    prior = overall.get("prior", 0.1)
    a_range = f"[{_num(overall['a_q01'])}, {_num(overall['a_q99'])}]"
    span = f"a's 1-99% range is {a_range}"
    scale = overall.get("scale_relative_move")
    spread = overall.get("log_spread_ratio")
    if _is_number(share) and share >= 0.1:
        out.add(
            "movement",
            "warning" if share >= 0.5 else "info",
            f"{_pct(share)} of the coordinates of a never left the prior {prior:g} by step {final['step']} "
            f"(moved by less than 1e-3 |h|); the median move |a-{prior:g}|/|h| is {_num(median)} and {span}.",
        )
    elif _is_number(spread) and spread < 0.1:
        left = movement_verdicts(metrics)[0].outcome == "yes"
        out.add(
            "movement",
            "warning",
            f"{'a moved off its prior but its spread stays small' if left else 'a stayed near its prior'} "
            f"{prior:g}: at step {final['step']} its 1-99% range spans "
            f"{_num(overall['spread_decades_a'])} decades ({a_range}) while |h| "
            f"spans {_num(overall['spread_decades_h'])} decades; single coordinates moved (median |a-{prior:g}|/|h| "
            f"{_num(median)}), but a does not follow h's range.",
        )
    elif _is_number(scale) and scale < 0.1:
        out.add(
            "movement",
            "warning",
            f"a barely moved on the scale of h: the median |a-{prior:g}| is {_num(scale)} times the median |h| "
            f"at step {final['step']}; {span} while h's is [{_num(overall.get('h_q01'))}, "
            f"{_num(overall.get('h_q99'))}].",
        )
    elif movement_verdicts(metrics)[0].outcome != "yes":
        out.add(
            "movement",
            "info",
            f"a moved by a median |a-{prior:g}|/|h| of {_num(median)} at step {final['step']} "
            f"({_pct(share)} of coordinates still at the prior); {span}.",
        )
    else:
        out.add(
            "movement",
            "info",
            f"a has left its prior {prior:g}: the median move |a-{prior:g}|/|h| is {_num(median)} at step "
            f"{final['step']} ({_pct(share)} of coordinates still at the prior); {span}.",
        )


def movement_section(metrics: Mapping[str, Any]) -> list[Block]:
    """How far a has left its prior 0.1, relative to |h|, per layer at the final snapshot."""
    blocks: list[Block] = [Heading(2, (text("Movement"),))]
    if get(metrics, "movement", "not_applicable"):
        return blocks + [_not_computed(f"not applicable: {get(metrics, 'movement', 'not_applicable')}.")]
    final = get(metrics, "movement", "final")
    if not final:
        return blocks + [_not_computed(_no_reference_reason(metrics))]
    overall = final["overall"]
    prior = overall.get("prior", 0.1)
    scale = overall.get("scale_relative_move")
    blocks.append(
        Paragraph(
            f"How far a has moved from its initial value {num(prior)} at the final snapshot (step {final['step']}), "
            f"measured against the size of what it should track: the median over coordinates of |a - {num(prior)}| / |h| "
            f"(1 means a moved by about the size of h; dominated by the many tiny |h|), the move on the scale of the "
            f"typical curvature, median |a - {num(prior)}| / median |h|, the share of coordinates that never left the "
            f"prior (moved by less than 1e-3 |h|), and the 1%-99% ranges of a and h. Over all coordinates: median move "
            f"{num(overall['median_relative_move'])}"
            + (f", move on the scale of h {num(scale)}" if "scale_relative_move" in overall else "")
            + f", {pct(overall['never_left_share'])} never left the prior, a in [{num(overall['a_q01'])}, "
            f"{num(overall['a_q99'])}]"
            + (
                f" while h is in [{num(overall.get('h_q01'))}, {num(overall.get('h_q99'))}]"
                if "h_q01" in overall
                else ""
            )
            + "."
        )
    )
    rows = []
    for name, entry in [("all coordinates", overall), *(final.get("layers") or {}).items()]:
        rows.append(
            (
                name,
                num(entry.get("median_relative_move")),
                num(entry.get("scale_relative_move")),
                pct(entry.get("never_left_share")),
                f"[{num(entry.get('a_q01'))}, {num(entry.get('a_q99'))}]",
                num(entry.get("a_median")),
                f"[{num(entry.get('h_q01'))}, {num(entry.get('h_q99'))}]",
                count(entry.get("n_h_zero")),
            )
        )
    blocks.append(
        Table(
            (
                "Layer",
                f"median |a-{num(prior)}|/|h|",
                f"median |a-{num(prior)}| / median |h|",
                "never left the prior",
                "a 1%-99%",
                "a median",
                "h 1%-99%",
                "coordinates with h = 0",
            ),
            tuple(rows),
        )
    )
    return blocks


QUANTITY = Quantity(
    name="movement",
    needs=("snapshots: a (curvature), h",),
    compute=compute,
    observer=_Observer,
    findings=with_finding(_movement, movement_verdicts, "movement"),
    blocks=movement_section,
    figures=(FIGURE,),
    verdicts=movement_verdicts,
)
