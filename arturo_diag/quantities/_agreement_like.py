"""Like with like: an estimate of E[g_B^2] (target ``gradient_second_moment``) against the measured one.

Adam's v-hat (and IVON's ``gradsq`` hess) estimates E[g_B^2], the second moment of the gradient of
the training minibatch's mean loss, not diag H; agreement with h says how well it stands in for
the Hessian, this says how well it estimates what it estimates. Per coordinate, from the noise
instrument's arrays (:mod:`arturo_diag.curvature.noise`: ``grad_mean`` gbar, the mean per-sample
gradient of the snapshot's batch of B samples, and ``grad_var`` = s^2 / B, s^2 the per-sample
variance with ddof 1):

    E[g_B^2] = (E g)^2 + Var(g_1) / B_train  ~  m = gbar^2 + grad_var * B / B_train

(B_train the run's ``batch_size``; B the probe size, or the minibatch size with ``reference_batch
= "minibatch"``, as in :mod:`arturo_diag.quantities.noise`; unknown either: the factor is taken as
1, ``rescale_known`` False). Compared as the estimate with h is:
``agreement_scaled(estimate, m)`` per layer (relative error, cosine, Spearman, ..., and ``scale``
with the optimal factor c* = <v, m> / <v, v>, 1 for an estimate on the right scale).

``metrics["agreement"]["like_for_like"]`` = ``{target, measured, batch_size, train_batch_size,
rescale, rescale_known, snapshots, final, reason}`` (``reason``: why no snapshot could be
compared, else None), or None for another target.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from arturo_diag.diagnostics.agreement import per_layer
from arturo_diag.diagnostics.scale import agreement_scaled
from arturo_diag.quantities.base import Context, SnapshotView, series, split
from arturo_diag.report.document import Block, Paragraph, Table
from arturo_diag.report.format import get, num

__all__ = ["LIKE_TARGET", "LikeForLike", "like_for_like_blocks", "measured_second_moment"]

LIKE_TARGET = "gradient_second_moment"


def measured_second_moment(grad_mean: Any, grad_var: Any, rescale: float) -> np.ndarray:
    """``grad_mean^2 + grad_var * rescale``: E[g_B^2] of a training minibatch, per coordinate."""
    mean = np.asarray(grad_mean, dtype=np.float64)
    return mean * mean + np.asarray(grad_var, dtype=np.float64) * rescale


def _whole(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


class LikeForLike:
    """Collects, per snapshot with the noise arrays for every parameter with an estimate, the agreement
    of the estimate with the measured E[g_B^2]."""

    def __init__(self, context: Context) -> None:
        from arturo_diag.quantities.noise import _batch_size  # the snapshot batch's size, as noise reads it

        config = context.record.config
        self.batch = _batch_size(context)
        self.train_batch = _whole((config.get("run") or {}).get("batch_size"))
        self.known = bool(self.batch and self.train_batch)
        self.rescale = self.batch / self.train_batch if self.known else 1.0
        self.layers = context.record.layers
        self.entries: list[dict[str, Any]] = []
        self.seen = 0  # snapshots with an estimate

    def snapshot(self, view: SnapshotView) -> None:
        if not view.names or not all(np.isfinite(view.a[n]).all() for n in view.names):
            return
        self.seen += 1
        fields = view.snapshot
        if not all("grad_mean" in fields[n] and "grad_var" in fields[n] for n in view.names):
            return
        pairs = {
            n: (view.a[n], measured_second_moment(fields[n]["grad_mean"], fields[n]["grad_var"], self.rescale))
            for n in view.names
        }
        self.entries.append(split(per_layer(agreement_scaled, pairs, self.layers), view.step, reference=LIKE_TARGET))

    def result(self) -> dict[str, Any]:
        reason = None
        if not self.entries:
            reason = (
                "no snapshot holds the noise instrument's grad_mean and grad_var for every parameter with an "
                "estimate (run it: instruments noise)"
                if self.seen
                else "no snapshot holds the estimate"
            )
        return {
            "target": LIKE_TARGET,
            "measured": "grad_mean^2 + grad_var * B / B_train",
            "batch_size": self.batch,
            "train_batch_size": self.train_batch,
            "rescale": self.rescale,
            "rescale_known": self.known,
            **series(self.entries),
            "reason": reason,
        }


def like_for_like_blocks(block: Mapping[str, Any], who: str) -> list[Block]:
    """The like-for-like comparison's paragraph and per-layer table (nothing for another target)."""
    like = block.get("like_for_like")
    if not like:
        return []
    final = like.get("final")
    if not final:
        return [Paragraph(f"Like with like ({who} against the measured E[g_B^2]): not computed: {like.get('reason')}.")]
    overall = final["overall"]
    factor = "B / B_train = " + (
        f"{like['batch_size']} / {like['train_batch_size']}"
        if like.get("rescale_known")
        else "1 (batch sizes not recorded)"
    )
    words = (
        f"Like with like: {who} estimates E[g_B^2], the second moment of the minibatch gradient, not the Hessian "
        f"diagonal; the comparison above is with h (how well it stands in for the curvature), this one with what it "
        f"estimates, measured at step {final['step']} from the noise instrument as E[g_B^2] = grad_mean^2 + grad_var * "
        f"B / B_train ({factor}). Over all coordinates: scale c* = {num(get(overall, 'scale', 'rescaled', 'factor'))} "
        f"(1 if on the right scale), Spearman {num(overall.get('spearman'))}, relative error "
        f"{num(overall.get('relative_error'))}, cosine {num(overall.get('cosine'))}; against h the same estimate "
        f"has c* {num(get(block, 'final', 'overall', 'scale', 'rescaled', 'factor'))} and Spearman "
        f"{num(get(block, 'final', 'overall', 'estimate', 'spearman'))}."
    )
    rows = tuple(
        (
            name,
            num(get(entry, "scale", "rescaled", "factor")),
            num(entry.get("spearman")),
            num(entry.get("relative_error")),
            num(entry.get("cosine")),
        )
        for name, entry in [("all coordinates", overall), *(final.get("layers") or {}).items()]
    )
    return [
        Paragraph(words),
        Table(
            ("Layer", "c* against E[g_B^2]", "Spearman", "rel. error", "cosine"),
            rows,
            caption=f"The estimate against the measured E[g_B^2] (like with like) at step {final['step']}.",
        ),
    ]
