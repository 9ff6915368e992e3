"""Ranks of a snapshot's arrays, computed once per snapshot and shared by the quantities that need them.

Spearman's correlation ranks its inputs; agreement (over all coordinates and per layer, against
h and the previous h) and lag (a_t against h of earlier snapshots) rank the same ``a`` and ``h``
of a snapshot. :func:`snapshot_ranks` sorts each of them once per snapshot (over all coordinates,
the parameters in the view's order) and derives every layer's ranks from that one sort
(:func:`~arturo_diag.diagnostics.agreement.group_ranks`); the numbers are those of
``scipy.stats.rankdata`` on the same concatenated arrays, so every result is unchanged.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

import numpy as np

from arturo_diag.diagnostics.agreement import group_ranks, ranks_from_order, sort_order
from arturo_diag.diagnostics.record import layer_of
from arturo_diag.quantities.base import SnapshotView, concat

__all__ = ["SnapshotRanks", "layer_groups", "snapshot_ranks"]


def layer_groups(names: Sequence[str], layers: Mapping[str, str]) -> dict[str, list[str]]:
    """Layer -> its parameters, in the order of ``per_layer`` (the layers in order of their first parameter)."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(layers.get(name) or layer_of(name), []).append(name)
    return groups


class SnapshotRanks:
    """The ranks of one array of a snapshot (``concat`` of its parameters in ``names`` order), over all
    coordinates (:attr:`overall`) and within each layer (:meth:`layer`), computed on first use.

    Observers running in parallel threads may ask for them at once: the first computes them (under
    the instance's lock), the others wait for its result instead of sorting again.
    """

    def __init__(self, arrays: Mapping[str, np.ndarray], names: Sequence[str], layers: Mapping[str, str]) -> None:
        self.names = list(names)
        self.sizes = {n: int(np.size(arrays[n])) for n in self.names}
        self.values = concat([arrays[n] for n in self.names])
        self.groups = layer_groups(self.names, layers)
        self._order: np.ndarray | None = None
        self._overall: np.ndarray | None = None
        self._layers: dict[str, np.ndarray] | None = None
        self._lock = threading.RLock()

    @property
    def order(self) -> np.ndarray:
        with self._lock:
            if self._order is None:
                self._order = sort_order(self.values)
            return self._order

    @property
    def overall(self) -> np.ndarray:
        with self._lock:
            if self._overall is None:
                self._overall = ranks_from_order(self.values, self.order)
            return self._overall

    def layer(self, layer: str) -> np.ndarray:
        """The ranks of the layer's coordinates among themselves (its parameters concatenated in order)."""
        with self._lock:
            if self._layers is None:
                self._layers = self._layer_ranks()
            return self._layers[layer]

    def _layer_ranks(self) -> dict[str, np.ndarray]:
        if len(self.groups) == 1:
            (layer,) = self.groups
            return {layer: self.overall}
        index = {layer: i for i, layer in enumerate(self.groups)}
        labels_by_name = {n: index[layer] for layer, members in self.groups.items() for n in members}
        bounds, start = {}, 0
        for name in self.names:
            size = self.sizes[name]
            bounds[name] = (start, start + size)
            start += size
        dtype = np.uint8 if len(self.groups) <= 2**8 else np.uint16 if len(self.groups) <= 2**16 else np.int64
        labels = np.empty(self.values.size, dtype=dtype)
        for name in self.names:
            lo, hi = bounds[name]
            labels[lo:hi] = labels_by_name[name]
        within = group_ranks(self.values, self.order, labels)
        out = {}
        for layer, members in self.groups.items():
            parts = [within[bounds[n][0] : bounds[n][1]] for n in members]
            out[layer] = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return out


def snapshot_ranks(view: SnapshotView, which: str, layers: Mapping[str, str]) -> SnapshotRanks:
    """The ranks of the view's ``a``, ``h`` or ``h_prev`` (``which``), over ``view.names``, made once per view.

    ``h_prev`` reuses the previous view's ranks of ``h`` when it was made over the same parameters.
    """
    cache = view.cache
    with _CACHE_LOCK:  # made once per view, whichever observer's thread asks first
        return _cached_ranks(view, cache, which, layers)


_CACHE_LOCK = threading.Lock()


def _cached_ranks(view: SnapshotView, cache: dict, which: str, layers: Mapping[str, str]) -> SnapshotRanks:
    if which not in cache:
        previous = cache.get("previous")
        if which == "h_prev" and previous is not None and "h" in previous and previous["h"].names == list(view.names):
            cache[which] = previous["h"]
        else:
            arrays = {"a": view.a, "h": view.h, "h_prev": view.h_prev}[which]
            cache[which] = SnapshotRanks(arrays, view.names, layers)
    return cache[which]
