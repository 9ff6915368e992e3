"""The copies the Monitor takes before a snapshot's step, for the step instruments.

A step instrument (``Instrument.needs_step``: ``innovation``, ``alpha``) looks at the optimizer
step a snapshot follows, so it needs what the step overwrites: the weights theta_t before it and
arTuRO's filter state before its update. At the end of the :meth:`Monitor.step` that precedes a
snapshot step for which such an instrument is due, :func:`before_step` clones them (one copy of
the weights, five of the filter state for arTuRO, freed after the snapshot); at the snapshot,
:meth:`BeforeStep.state` adds the step's gradients (``p.grad``, unchanged by ``optimizer.step()``)
and its param groups' settings (read then: what the step used unless a scheduler stepped in
between) into a :class:`~arturo_diag.curvature.references.StepState`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from arturo_diag.curvature.instruments import INSTRUMENTS
from arturo_diag.curvature.references import StepState

__all__ = ["FILTER_KEYS", "BeforeStep", "before_step", "needs_step"]

#: arTuRO's filter state per parameter (its optimizer state keys, ``optim/_buckets.py`` FILTER_KEYS)
FILTER_KEYS = ("intercept", "curvature", "filter_cov_bb", "filter_cov_ba", "filter_cov_aa")
_SETTINGS = ("weight_decay", "dynamic_model_noise", "measurement_noise")


def needs_step(instruments: Iterable[str], index: int, last: bool) -> bool:
    """Whether a step instrument among ``instruments`` is due at the snapshot numbered ``index``."""
    return any(INSTRUMENTS[n].needs_step and INSTRUMENTS[n].due(index, last) for n in instruments)


@dataclass(frozen=True)
class BeforeStep:
    """The copies taken before step ``step``: the weights and (arTuRO) the filter state, by name."""

    step: int
    weights: dict[str, Tensor]
    filters: dict[str, dict[str, Tensor]]

    def state(
        self, step: int, named: Sequence[tuple[str, Tensor]], optimizer: torch.optim.Optimizer
    ) -> StepState | None:
        """The :class:`StepState` of step ``step`` (None if these copies belong to another step)."""
        if step != self.step:
            return None
        grads = {name: p.grad.detach().clone() for name, p in named if p.grad is not None}
        settings = {}
        if self.filters:
            group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
            for name, p in named:
                group = group_of[id(p)]
                settings[name] = {"lr": float(group["lr"]), **{k: float(group[k]) for k in _SETTINGS}}
        return StepState(step, self.weights, self.filters, grads, settings)


def before_step(
    step: int, named: Sequence[tuple[str, Tensor]], optimizer: torch.optim.Optimizer, is_arturo: bool
) -> BeforeStep:
    """Clone the weights and, for arTuRO, each parameter's filter state (if it has one yet) now,
    before step ``step``."""
    weights = {name: p.detach().clone() for name, p in named}
    filters: dict[str, dict[str, Tensor]] = {}
    if is_arturo:
        for name, p in named:
            state = optimizer.state.get(p, {})
            if all(key in state for key in FILTER_KEYS):
                filters[name] = {key: state[key].detach().clone() for key in FILTER_KEYS}
    return BeforeStep(step, weights, filters)
