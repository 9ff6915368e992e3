"""TensorBoard event files of a run, written live by the Monitor (issue 15): ``Monitor(tensorboard=True)``.

:class:`TensorBoardSink` is a :class:`~arturo_diag.diagnostics.monitor.MonitorSink`: it gets every
``steps.csv`` row and every snapshot as the Monitor records them and writes them as TensorBoard
scalars and histograms (``docs/tensorboard.md`` lists every tag; view with
``tensorboard --logdir RUN_DIR/tensorboard``). It needs the ``tensorboard`` package (the
``tensorboard`` extra), imported when a sink is made.

The snapshot numbers are the report's (``metrics.json``'s ``agreement`` and ``calibration``):
the same definitions (:func:`~arturo_diag.diagnostics.agreement.agreement`,
:func:`~arturo_diag.diagnostics.scale.scale_and_shape`'s factor ``c*``,
:func:`~arturo_diag.diagnostics.calibration.calibration`; Spearman is
:func:`~arturo_diag.diagnostics.agreement.spearman` itself) on the same coordinates: the parameters
whose snapshot holds ``curvature`` (the estimate a), against the reference the analysis compares
(the first registered reference every such parameter has: ``h_exact``, else ``h_ggn``, ``h_cv``,
``h_hutchinson``); a
snapshot the analysis calls unusable (a or h NaN/inf, or h 0 everywhere) gets no agreement numbers
here either. To look at every coordinate once, not once per layer and again for all of them, the
norms and inner products are each parameter's dot products, summed per group (``math.fsum``):
equal to the report's up to float64 rounding, far below the float32 TensorBoard stores. Two are
cheaper than the report's, and differ from it only on big groups of coordinates (a layer, or all):

- Spearman's rank correlation is taken on at most ``spearman_sample`` (200 000) coordinates of the
  group, drawn uniformly without replacement with a fixed seed (the same ones at every snapshot);
  on a group of at most that many it is the report's number exactly;
- the histograms of ``log10(a/h)`` are of at most ``histogram_sample`` (1 000 000) coordinates of
  the group drawn the same way (then those with a > 0 and h > 0).

The draws use a :class:`numpy.random.Generator` of their own: neither torch's nor numpy's global
random state is touched, so a run with the sink is bit-identical to one without. On a snapshot of
11.7M coordinates the sink takes about a second of CPU (docs/tensorboard.md, "Cost").
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from arturo_diag.curvature.references import REFERENCE_ESTIMATORS
from arturo_diag.diagnostics.agreement import spearman
from arturo_diag.diagnostics.record import layer_of
from arturo_diag.errors import ConfigError

__all__ = ["ALL", "STEP_TAGS", "TensorBoardSink", "tag_of"]

#: the label of the group of all coordinates (the report's "overall")
ALL = "all"
#: steps.csv column -> its tag; a missing or non-finite value is not written
STEP_TAGS: Mapping[str, str] = {
    "loss": "train/loss",
    "eta": "trust_region/eta",
    "kl_ratio": "trust_region/kl_ratio",
    "kl_bound": "trust_region/kl_bound",
    "iterations": "trust_region/iterations",
    "precision_q01": "precision/q01",
    "precision_q50": "precision/q50",
    "precision_q99": "precision/q99",
}
#: the snapshot fields a claimed variance of a is read from, in order of preference (as the report)
VARIANCE_FIELDS = ("filter_cov_aa", "curvature_var")
_SPEARMAN_SAMPLE = 200_000
_HISTOGRAM_SAMPLE = 1_000_000
_HISTOGRAM_BINS = 100
_SEED = 0
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]+")
_EXTRA = 'the tensorboard extra: pip install -e ".[tensorboard]"'


def tag_of(label: str) -> str:
    """A layer label (or a scalar's name) as one TensorBoard tag component: every run of characters
    other than letters, digits, ``_``, ``.`` and ``-`` becomes ``_`` (``"7 (Linear)"`` -> ``"7_Linear"``)."""
    return _UNSAFE.sub("_", str(label)).strip("_") or "_"


def _number(value: Any) -> float | None:
    """``value`` as a finite float, None if it is not a number (None, a string) or not finite."""
    if isinstance(value, (bool, np.bool_)):
        return float(value)
    if not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _summary_writer() -> type:
    try:
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package
    except ImportError as error:
        raise ConfigError("tensorboard", True, f"{_EXTRA} (importing it failed: {error})") from None
    return SummaryWriter


def _flat(x: Any) -> np.ndarray:
    return np.asarray(x, dtype=np.float64).reshape(-1)


def _common_field(arrays: Mapping[str, Mapping[str, Any]], names: Sequence[str], fields: Sequence[str]) -> str | None:
    return next((f for f in fields if all(f in arrays[name] for name in names)), None)


class TensorBoardSink:
    """Writes a Monitor's steps and snapshots as TensorBoard events into ``log_dir``.

    Args:
        log_dir: the directory of the event files (the Monitor's: ``RUN_DIR/tensorboard``).
        layers: parameter name -> layer label (the record's ``layers``); a parameter not in it is
            grouped by :func:`~arturo_diag.diagnostics.record.layer_of`.
        spearman_sample: Spearman's rank correlation of a group of more coordinates is taken on this
            many of them (fixed seeded draw).
        histogram_sample: the log-ratio histogram of a group of more coordinates is of this many.
        seed: the seed of those draws (a numpy Generator of the sink's own).

    Raises:
        ConfigError: the ``tensorboard`` package is not installed (field ``tensorboard``).
    """

    def __init__(
        self,
        log_dir: str | os.PathLike[str],
        *,
        layers: Mapping[str, str] | None = None,
        spearman_sample: int = _SPEARMAN_SAMPLE,
        histogram_sample: int = _HISTOGRAM_SAMPLE,
        seed: int = _SEED,
    ) -> None:
        writer_class = _summary_writer()
        self.log_dir = Path(log_dir)
        self.layers = dict(layers or {})
        self.spearman_sample = int(spearman_sample)
        self.histogram_sample = int(histogram_sample)
        self.seed = int(seed)
        self._indices: dict[tuple[int, int], np.ndarray] = {}  # (coordinates, sample) -> the draw
        self._tags: dict[str | None, str] = {None: ALL}  # layer label (None: all) -> its tag component
        self._writer = writer_class(log_dir=str(self.log_dir))
        self._closed = False

    # ------------------------------------------------------------------ MonitorSink
    def step(self, row: Mapping[str, Any]) -> None:
        """Write a ``steps.csv`` row's loss, trust-region and precision numbers at its ``step``."""
        step = int(row["step"])
        for column, tag in STEP_TAGS.items():
            value = _number(row.get(column))
            if value is not None:
                self._writer.add_scalar(tag, value, step)

    def snapshot(self, step: int, scalars: Mapping[str, Any], arrays: Mapping[str, Mapping[str, Any]]) -> None:
        """Write a snapshot's numeric scalars (``snapshot/<name>``) and, for all coordinates and per
        layer, the agreement of a with h, its calibration and the log-ratio histogram."""
        step = int(step)
        for name, value in scalars.items():
            number = _number(value)
            if number is not None:
                self._writer.add_scalar(f"snapshot/{tag_of(name)}", number, step)
        names = [name for name, fields in arrays.items() if "curvature" in fields]
        reference = _common_field(arrays, names, [e.field for e in REFERENCE_ESTIMATORS.values()]) if names else None
        if reference is None:
            return
        variance = _common_field(arrays, names, VARIANCE_FIELDS)
        parts = {
            name: _Part(
                _flat(arrays[name]["curvature"]),
                _flat(arrays[name][reference]),
                _flat(arrays[name][variance]) if variance else None,
            )
            for name in names
        }
        if not _usable(parts.values()):
            return
        groups: dict[str | None, list[str]] = {None: names}  # None: all coordinates, in the record's order
        for name in names:
            groups.setdefault(self.layers.get(name) or layer_of(name), []).append(name)
        for label, members in groups.items():
            self._group(self._tag(label), step, [parts[name] for name in members])

    def _group(self, tag: str, step: int, parts: Sequence[_Part]) -> None:
        """One group's numbers from its parameters' (sums of their dot products and counts)."""
        aa, hh, ah, dd = (math.fsum(getattr(part, key) for part in parts) for key in ("aa", "hh", "ah", "dd"))
        norm_a, norm_h = math.sqrt(aa), math.sqrt(hh)
        size = sum(part.a.size for part in parts)
        if size > self.spearman_sample:
            index = self._draw(size, self.spearman_sample)
            rho = spearman(_gather([p.a for p in parts], index), _gather([p.h for p in parts], index))
        else:
            rho = spearman(_gather([p.a for p in parts]), _gather([p.h for p in parts]))
        values = {
            f"agreement/{tag}/relative_error": math.sqrt(dd) / norm_h if norm_h > 0 else math.nan,
            f"agreement/{tag}/spearman": rho,
            f"scale/{tag}/c_star": ah / aa if aa > 0 else math.nan,
            f"shape/{tag}/cosine": ah / (norm_a * norm_h) if norm_a > 0 and norm_h > 0 else math.nan,
        }
        if parts[0].z is not None:
            n = sum(part.z.size for part in parts)
            if n:
                values[f"calibration/{tag}/coverage_2se"] = sum(part.covered for part in parts) / n
                z = parts[0].z if len(parts) == 1 else np.concatenate([p.z for p in parts])  # owned: reordered
                values[f"calibration/{tag}/median_z"] = _median_in_place(z)
        for name, value in values.items():
            if math.isfinite(value):
                self._writer.add_scalar(name, value, step)
        index = self._draw(size, self.histogram_sample) if size > self.histogram_sample else None
        a, h = _gather([p.a for p in parts], index), _gather([p.h for p in parts], index)
        positive = (a > 0) & (h > 0)
        if positive.any():
            log_ratio = np.log10(a[positive]) - np.log10(h[positive])
            self._writer.add_histogram(f"log_ratio/{tag}", log_ratio, step, bins=_HISTOGRAM_BINS)

    def close(self) -> None:
        """Flush the event files and close them (a second call does nothing)."""
        if self._closed:
            return
        self._closed = True
        self._writer.flush()
        self._writer.close()

    # ------------------------------------------------------------------ helpers
    def _draw(self, size: int, sample: int) -> np.ndarray:
        """``sample`` of ``range(size)``, sorted, the same at every snapshot (own seeded Generator)."""
        key = (size, sample)
        if key not in self._indices:
            generator = np.random.default_rng(self.seed)
            self._indices[key] = np.sort(generator.choice(size, size=sample, replace=False))
        return self._indices[key]

    def _tag(self, label: str | None) -> str:
        """The tag component of a layer label, made unique (a second label that reads the same, or
        a layer called "all", gets ``_2``, ``_3``, ...)."""
        if label not in self._tags:
            base, taken, k = tag_of(label), set(self._tags.values()), 2
            tag = base
            while tag in taken:
                tag, k = f"{base}_{k}", k + 1
            self._tags[label] = tag
        return self._tags[label]


def _usable(parts: Iterable[_Part]) -> bool:
    """As the analysis: a and h finite everywhere and h not 0 everywhere. (A finite ``x.x`` means
    every x is finite; only an overflowing or non-finite one is checked coordinate by coordinate.)"""
    parts = list(parts)
    finite = all(
        math.isfinite(square) or np.isfinite(x).all() for p in parts for x, square in ((p.a, p.aa), (p.h, p.hh))
    )
    return finite and any(p.hh > 0 or np.any(p.h != 0) for p in parts)


def _median_in_place(x: np.ndarray) -> float:
    """``np.median(x)`` (the same number: the middle one, or the mean of the middle two), partitioning
    ``x`` itself instead of a copy; ``x`` is reordered."""
    half = x.size // 2
    if x.size % 2:
        x.partition(half)
        return float(x[half])
    x.partition((half - 1, half))
    return float((x[half - 1] + x[half]) / 2)


def _gather(parts: Sequence[np.ndarray], index: np.ndarray | None = None) -> np.ndarray:
    """The concatenation of ``parts`` (at the sorted positions ``index`` of it), without building
    the whole concatenation when ``index`` is given."""
    if index is None:
        return parts[0] if len(parts) == 1 else np.concatenate(parts)
    out, offset = [], 0
    bounds = np.searchsorted(index, np.cumsum([part.size for part in parts]))
    start = 0
    for part, stop in zip(parts, bounds):
        out.append(part[index[start:stop] - offset])
        offset += part.size
        start = stop
    return out[0] if len(out) == 1 else np.concatenate(out)


class _Part:
    """One parameter's share of a group's numbers: the dot products of a and h, and, with a
    variance P_aa, the z = |a-h|/sqrt(P_aa) and the count with |a-h| <= 2 sqrt(P_aa) of its
    coordinates where P_aa is finite and > 0 (as
    :func:`~arturo_diag.diagnostics.calibration.calibration`)."""

    __slots__ = ("a", "h", "aa", "hh", "ah", "dd", "z", "covered")

    def __init__(self, a: np.ndarray, h: np.ndarray, p_aa: np.ndarray | None) -> None:
        self.a, self.h = a, h
        error = a - h
        # float(np.linalg.norm(x)) is sqrt(x.dot(x)) for a flat real x: the report's norms
        self.aa, self.hh, self.ah, self.dd = (float(np.dot(x, y)) for x, y in ((a, a), (h, h), (a, h), (error, error)))
        self.z: np.ndarray | None = None
        self.covered = 0
        if p_aa is None:
            return
        if not (p_aa.size and p_aa.min() > 0 and np.isfinite(p_aa.max())):  # the fast path: every P_aa usable
            keep = np.isfinite(p_aa) & (p_aa > 0)
            error, p_aa = error[keep], p_aa[keep]
        np.abs(error, out=error)
        std = np.sqrt(p_aa)
        self.z = error / std
        std *= 2.0
        self.covered = int(np.count_nonzero(error <= std))
