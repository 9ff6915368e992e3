"""Lag: does a track h of k snapshots ago better than the current h?

``metrics["lag"]``: ``summarize_lag(...)`` (:mod:`arturo_diag.diagnostics.lag`): metric, window,
n_snapshots, max_lag, snapshot_interval, interval_regular, identifiable, best_k, best_lag_steps,
reason, test, curves {spearman, relative_error: {k, mean, n, range, noise, argbest, identifiable,
best_k, test}}. Unless the lag test (best k against k = 0, with a block-bootstrap interval over
snapshots and a margin) says yes, the text says "No identifiable lag" with the interval; the
verdict ``lag.identified`` (:mod:`arturo_diag.quantities.topic_verdicts`).

Lag does not assume arTuRO's filter: it compares the stored estimate with h of earlier snapshots,
and every method with a running average (Adam's and AdaHessian's EMAs, IVON's hess, Sophia's h_t)
can lag as the filter can, so it is computed alike for every optimizer's estimate.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from arturo_diag.diagnostics.lag import LAG_MARGIN, MIN_LAG_SNAPSHOTS, LagAccumulator, summarize_lag
from arturo_diag.quantities._blocks import _SECTION_WORDS, _no_reference_reason, _not_computed
from arturo_diag.quantities._ranks import snapshot_ranks
from arturo_diag.quantities.base import (
    Context,
    Findings,
    Quantity,
    SnapshotView,
    concat,
)
from arturo_diag.quantities.topic_verdicts import lag_verdicts
from arturo_diag.report.document import Block, Heading, Paragraph, Table, strong, text
from arturo_diag.report.figures.lag import FIGURE
from arturo_diag.report.format import NA, count, get, is_number, num, plural

__all__ = ["QUANTITY"]


class _Observer:
    """The lag table over the usable snapshots; a snapshot whose parameters with an estimate differ from
    the previous one's (an adapter listed some as ``missing`` earlier: no state yet) starts it anew,
    since a_t and h_{t-k} must be the same coordinates (arTuRO's parameters never change)."""

    def __init__(self, context: Context) -> None:
        self.max_lag = context.options.max_lag
        self.layers = context.record.layers
        self.lag = LagAccumulator(self.max_lag)
        self.names: list[str] | None = None

    def snapshot(self, view: SnapshotView) -> None:
        if view.usable:
            if self.names is not None and view.names != self.names:
                self.lag = LagAccumulator(self.max_lag)
            self.names = list(view.names)
            layers = self.layers
            a, h = snapshot_ranks(view, "a", layers), snapshot_ranks(view, "h", layers)
            if a.names == list(view.a) and h.names == list(view.h):  # the same concatenation, ranked once
                self.lag.add(view.step, a.values, h.values, a_ranks=a.overall, h_ranks=h.overall)
            else:
                self.lag.add(view.step, concat(list(view.a.values())), concat(list(view.h.values())))


def compute(context: Context) -> dict[str, Any]:
    table = context.observers["lag"].lag.table()
    return summarize_lag(table, max_lag=context.options.max_lag, metric=context.options.lag_metric)


def _lag(out: Findings, metrics: Mapping[str, Any]) -> None:
    lag = metrics.get("lag")
    if not lag:
        return
    (verdict,) = lag_verdicts(metrics)
    reason = str(lag.get("reason") or "")
    if verdict.outcome == "yes":
        out.add("lag", "info", verdict.text + ".")
    elif lag.get("max_lag", 0) >= 1:
        out.add("lag", "info", (reason[:1].upper() + reason[1:] if reason else "No identifiable lag") + ".")
    else:
        out.add("lag", "info", f"Lag {reason or 'not assessed'}.")


def lag_section(metrics: Mapping[str, Any]) -> list[Block]:
    """The lag curve (agreement of a_t with h_(t-k) against k) with its noise, and the verdict."""
    blocks: list[Block] = [Heading(2, (text("Lag"),))]
    lag = metrics.get("lag") or {}
    curves = lag.get("curves") or {}
    reason = str(lag.get("reason") or "not assessed")
    if not curves:
        if not get(metrics, "agreement", "final"):
            return blocks + [_not_computed(_no_reference_reason(metrics))]
        return blocks + [_not_computed(f"lag {reason}.")]
    sentence = reason[0].upper() + reason[1:] + "."
    blocks.append(
        Paragraph(
            "Agreement of a_t with the reference of k snapshots earlier, h_(t-k), averaged over the same snapshots t "
            f"for every k ({lag.get('window')} window). The best k >= 1 is the lag only when its gain over k = 0, "
            "snapshot by snapshot, has a 95 % block-bootstrap interval (over the snapshots of the common window) "
            f"above the margin (Spearman {LAG_MARGIN['spearman'][0]:g}; relative error "
            f"{LAG_MARGIN['relative_error'][0]:.0%} of its k = 0 value), with at least {MIN_LAG_SNAPSHOTS} "
            "snapshots in that window; otherwise there is no identifiable lag. The range and the "
            "snapshot-to-snapshot noise only describe the curve. "
            f"The lag is decided by {_SECTION_WORDS.get(lag.get('metric'), str(lag.get('metric')))}."
        )
    )
    if lag.get("identifiable"):
        best_k = lag.get("best_k")
        verdict = f"Lag: {plural(best_k, 'snapshot')} ({num(lag.get('best_lag_steps'))} steps)."
        blocks.append(Paragraph((strong(verdict), text(" " + sentence))))
    else:
        blocks.append(Paragraph((strong(sentence),)))
    spearman, relative = curves.get("spearman") or {}, curves.get("relative_error") or {}
    ks = spearman.get("k") or relative.get("k") or []
    interval = lag.get("snapshot_interval") if lag.get("interval_regular") else None
    rows = []
    for i, k in enumerate(ks):
        rows.append(
            (
                str(k),
                num(k * interval) if is_number(interval) else NA,
                num(get(spearman, "mean", i)),
                num(get(relative, "mean", i)),
                count(get(spearman, "n", i)),
            )
        )
    rows.append(("range", "", num(spearman.get("range")), num(relative.get("range")), ""))
    rows.append(("snapshot noise", "", num(spearman.get("noise")), num(relative.get("noise")), ""))
    blocks.append(
        Table(("k (snapshots)", "steps back", "Spearman", "relative error", "snapshots averaged"), tuple(rows))
    )
    return blocks


QUANTITY = Quantity(
    name="lag",
    needs=("snapshots: a (curvature), h",),
    compute=compute,
    observer=_Observer,
    findings=_lag,
    blocks=lag_section,
    figures=(FIGURE,),
    verdicts=lag_verdicts,
)
