"""Gradient noise per snapshot and layer, set beside the filter's measurement noise r.

Reads the ``noise`` instrument's arrays (:mod:`arturo_diag.curvature.instruments`): per coordinate
``grad_mean`` (the mean per-sample gradient gbar of the snapshot's batch) and ``grad_var`` (the
variance of the minibatch gradient, per-sample variance (ddof 1) / B). Per snapshot and layer:

- ``variance_median``: the median over coordinates of the variance of one TRAINING minibatch
  gradient, ``grad_var`` * B / B_train (B the snapshot batch's size, B_train the run's
  ``batch_size``; unscaled when either is unknown), the quantity r stands for;
- ``mean_gsnr``: Cockpit's mean GSNR, mean over coordinates of gbar^2 / (v + 1e-5), with v the
  ddof-0 per-sample variance = ``grad_var`` * (B - 1) (needs B: the probe size, or the minibatch
  size with ``reference_batch = "minibatch"``, from config.toml; None without it);
- ``r_over_median``: r / ``variance_median``, r = the optimizer's ``measurement_noise`` (record.json),
  the noise the filter assumes for one minibatch gradient.

Beside them, from the ``innovation`` instrument's arrays (the filter's own residuals at the
snapshot's step, :mod:`arturo_diag.curvature.innovation`: ``innovation`` d = g - (a theta + b)
and ``innovation_var`` s, the variance the filter predicts for d, r included):

- ``innovation_sq_median``: the median over coordinates of d^2, the size of the residuals the
  filter actually saw (noise of the training minibatch gradient plus the error of its linear model);
- ``innovation_var_median``: the median of s;
- ``normalised_innovation_median`` and ``normalised_innovation_mean``: the median and mean of
  d^2 / s. When the filter's noise model is right, d ~ N(0, s), d^2 / s is chi-squared with one
  degree of freedom: mean 1, median 0.455 (``chi2_median``). Far below: the filter assumes more
  noise than its residuals show; far above: it is overconfident.

Each is None where the snapshot lacks that instrument's arrays (a snapshot is listed when it has
either); the verdict reads only the gradient noise, at the last snapshot that has it.

``metrics["noise"]`` = ``{measurement_noise, batch_size, factor, chi2_median, verdict, snapshots:
[{step, overall, layers: {layer: {n, variance_median, mean_gsnr, r_over_median,
innovation_sq_median, innovation_var_median, normalised_innovation_median,
normalised_innovation_mean}}}], final, skipped}``; ``verdict`` = ``{step, n, n_resampled, median,
estimate, ci_low, ci_high}`` (or None); ``skipped``: why the noise instrument could not run
(``record.json``'s ``instruments_skipped``: batch norm on batch statistics), or None.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from arturo_diag.curvature.innovation import CHI2_1_MEDIAN
from arturo_diag.curvature.noise import COCKPIT_GSNR_EPSILON
from arturo_diag.quantities._blocks import _not_computed
from arturo_diag.quantities._estimator import is_arturo, not_arturo_reason, optimizer_name
from arturo_diag.quantities._words import _get, _is_number, _num
from arturo_diag.quantities.base import Context, Findings, Quantity, SnapshotView, series
from arturo_diag.quantities.verdicts import Verdict, bootstrap_ci, fixed_subset, interval_words, not_applicable
from arturo_diag.report.document import Block, Heading, Paragraph, Table, text
from arturo_diag.report.figures.noise import FIGURE
from arturo_diag.report.format import num

__all__ = ["FACTOR", "QUANTITY", "RULE", "noise_verdicts"]

FACTOR = 3.0  # r is calibrated when r / median variance lies within [1/3, 3]
#: a layer's innovation summaries (the innovation instrument's), None without its arrays
INNOVATION_KEYS = ("innovation_sq_median", "innovation_var_median", "normalised_innovation_median",
                   "normalised_innovation_mean")  # fmt: skip
RULE = (
    "estimate: r (measurement_noise) / the median over coordinates of the variance of one training "
    "minibatch gradient (per-sample variance / B_train, B_train the run's batch_size) at the final snapshot; 95 % percentile bootstrap over the coordinates (200 "
    "resamples, seed 0; above 20 000 coordinates over a fixed random subset); yes (calibrated) if the "
    f"interval lies within [1/{FACTOR:g}, {FACTOR:g}], no if it lies entirely outside it, else inconclusive; "
    "not applicable without r or without the noise instrument's arrays at the final snapshot"
)


def _median(values: np.ndarray) -> float | None:
    return float(np.median(values)) if values.size else None


class _Observer:
    """Every snapshot with the instrument's arrays: per layer the median variance and the mean GSNR."""

    def __init__(self, context: Context) -> None:
        self.r = _measurement_noise(context)
        self.batch = _batch_size(context)
        # r is the noise of one TRAINING minibatch gradient: the snapshot batch's minibatch variance
        # (per-sample variance / B) is rescaled to the training batch (per-sample variance / B_train)
        train = (context.record.config.get("run") or {}).get("batch_size")
        self.train_batch = int(train) if isinstance(train, int) and not isinstance(train, bool) and train > 0 else None
        self.rescale = self.batch / self.train_batch if self.batch and self.train_batch else 1.0
        self.layers = context.record.layers
        self.entries: list[dict[str, Any]] = []
        self.final: np.ndarray | None = None
        self.final_step: int | None = None  # the last snapshot with the gradient noise (the verdict's)

    def snapshot(self, view: SnapshotView) -> None:
        fields = view.snapshot
        held = {n: (_flat(f["grad_var"]), _flat(f["grad_mean"])) for n, f in fields.items()
                if "grad_var" in f and "grad_mean" in f}  # fmt: skip
        seen = {n: (_flat(f["innovation"]), _flat(f["innovation_var"])) for n, f in fields.items()
                if "innovation" in f and "innovation_var" in f}  # fmt: skip
        if not held and not seen:
            return
        groups: dict[str, list[str]] = {}
        for name in (n for n in fields if n in held or n in seen):
            groups.setdefault(self.layers.get(name, name), []).append(name)
        layers = {layer: self._group(names, held, seen) for layer, names in groups.items()}
        if held:
            self.final = np.concatenate([v for v, _ in held.values()]) * self.rescale
            self.final_step = view.step
        overall = self._group([n for names in groups.values() for n in names], held, seen)
        self.entries.append({"step": view.step, "overall": overall, "layers": layers})

    def _group(self, names: list[str], held: Mapping[str, Any], seen: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"n": 0, "variance_median": None, "mean_gsnr": None, "r_over_median": None}
        noise = [held[n] for n in names if n in held]
        if noise:
            var = np.concatenate([v for v, _ in noise])
            mean = np.concatenate([m for _, m in noise])
            raw = _median(var)
            median = raw * self.rescale if raw is not None else None  # of a training minibatch's gradient
            gsnr = None
            if self.batch is not None and self.batch >= 2 and var.size:
                gsnr = float(np.mean(mean**2 / (var * (self.batch - 1) + COCKPIT_GSNR_EPSILON)))
            ratio = self.r / median if self.r is not None and median else None
            out = {"n": int(var.size), "variance_median": median, "mean_gsnr": gsnr, "r_over_median": ratio}
        out.update(_innovations([seen[n] for n in names if n in seen]))
        if not noise:
            out["n"] = int(sum(d.size for d, _ in (seen[n] for n in names if n in seen)))
        return out


def _innovations(parts: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float | None]:
    """Medians of d^2 and s, median and mean of d^2 / s (None each without the innovation's arrays)."""
    if not parts:
        return dict.fromkeys(INNOVATION_KEYS)
    d = np.concatenate([d for d, _ in parts])
    s = np.concatenate([s for _, s in parts])
    normalised = d**2 / s
    return {"innovation_sq_median": float(np.median(d**2)), "innovation_var_median": float(np.median(s)),
            "normalised_innovation_median": float(np.median(normalised)),
            "normalised_innovation_mean": float(np.mean(normalised))}  # fmt: skip


def _flat(values: Any) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).reshape(-1)


def _measurement_noise(context: Context) -> float | None:
    value = (context.record.manifest.get("optimizer") or {}).get("measurement_noise")
    return float(value) if _is_number(value) and value > 0 else None


def _batch_size(context: Context) -> int | None:
    diagnostics = context.record.config.get("diagnostics") or {}
    key = ("batch_size", "run") if diagnostics.get("reference_batch") == "minibatch" else ("probe_size", "diagnostics")
    value = (context.record.config.get(key[1]) or {}).get(key[0])
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _interval(r: float | None, variance: np.ndarray | None, step: int | None) -> dict[str, Any] | None:
    if r is None or variance is None or not variance.size or not np.median(variance) > 0:
        return None
    n = int(variance.size)
    keep = fixed_subset(n)
    sub = variance if keep is None else variance[keep]
    median = float(np.median(variance))
    # bootstrapped as median / r (always finite) and inverted: a resample whose median variance is 0
    # (half the coordinates without gradient noise, e.g. dead units) leaves the ratio unbounded above
    low_m, high_m = bootstrap_ci(lambda idx: float(np.median(sub[idx])) / r, int(sub.size))
    unbounded = _is_number(low_m) and low_m <= 0
    high = math.nan if unbounded or not _is_number(low_m) else 1.0 / low_m
    low = 1.0 / high_m if _is_number(high_m) and high_m > 0 else math.nan
    return {"step": step, "n": n, "n_resampled": int(sub.size), "median": median, "estimate": r / median,
            "ci_low": low, "ci_high": high, "unbounded": unbounded}  # fmt: skip


def compute(context: Context) -> dict[str, Any]:
    observer = context.observers["noise"]
    entries = observer.entries
    return {
        "measurement_noise": observer.r,
        "batch_size": observer.batch,
        "train_batch_size": observer.train_batch,
        "factor": FACTOR,
        "chi2_median": CHI2_1_MEDIAN,
        "verdict": _interval(observer.r, observer.final, observer.final_step),
        "skipped": (context.record.manifest.get("instruments_skipped") or {}).get("noise"),
        **series(entries),
    }


def decide_within(estimate: float, low: float, high: float, factor: float) -> str:
    """``yes`` if [low, high] lies within [1/factor, factor], ``no`` if entirely outside, else inconclusive."""
    if not all(_is_number(v) for v in (estimate, low, high)):
        return "not_applicable"
    if 1.0 / factor <= low and high <= factor:
        return "yes"
    if high < 1.0 / factor or low > factor:
        return "no"
    return "inconclusive"


def noise_verdicts(metrics: Mapping[str, Any]) -> list[Verdict]:
    """``noise.r_calibrated``: is the filter's r the measured minibatch-gradient noise (:data:`RULE`)."""
    noise = metrics.get("noise") or {}
    vid = "noise.r_calibrated"
    if not any(_get(e, "overall", "variance_median") is not None for e in noise.get("snapshots") or []):
        why = "No snapshot holds the gradient-noise instrument's arrays (grad_var), so r is not checked."
        return [not_applicable(vid, RULE, why)]
    found = noise.get("verdict")
    if not found:
        if not is_arturo(metrics) and noise.get("measurement_noise") is None:
            return [not_applicable(vid, RULE, not_arturo_reason(metrics, "a measurement noise r (its filter's)") + ".")]
        why = (
            "r (measurement_noise) is not recorded"
            if noise.get("measurement_noise") is None
            else "the median variance is 0"
        )
        return [not_applicable(vid, RULE, f"r not checked against the measured noise: {why}.")]
    estimate, low, high = found["estimate"], found["ci_low"], found["ci_high"]
    if found.get("unbounded"):  # [low, infinity): no if even its lower end is above the band
        outcome = "no" if _is_number(low) and low > FACTOR else "inconclusive"
        interval = f"{estimate:.3g} (95 % CI [{low:.3g}, unbounded): the median variance is 0 in some resamples)"
    else:
        outcome = decide_within(estimate, low, high, FACTOR)
        interval = interval_words(estimate, low, high)
    words = f"r / median minibatch-gradient variance = {interval} at the final snapshot (step {found['step']})"
    band = f"[1/{FACTOR:g}, {FACTOR:g}]"
    says = {
        "yes": f"The filter's r matches the measured gradient noise: {words}, within {band}.",
        "no": f"The filter's r does not match the measured gradient noise: {words}, outside {band}.",
        "inconclusive": f"r against the measured gradient noise inconclusive: {words}; the interval overlaps {band}'s edge.",
    }.get(outcome, f"r not checked against the measured noise: {words}.")
    return [Verdict(vid, outcome, estimate, low, high, RULE, says)]


def _short(value: float) -> str:
    """One significant digit, exponents without padding: 5e5, 30, 0.2."""
    return f"{value:.1g}".replace("e+0", "e").replace("e+", "e").replace("e-0", "e-")


def _findings(out: Findings, metrics: Mapping[str, Any]) -> None:
    skipped = (metrics.get("noise") or {}).get("skipped")
    if skipped:
        out.add("noise", "info", f"The gradient noise was not measured: {skipped}.")
    _r_finding(out, metrics)
    _innovation_finding(out, metrics.get("noise") or {})


def _r_finding(out: Findings, metrics: Mapping[str, Any]) -> None:
    noise = metrics.get("noise") or {}
    found = noise.get("verdict")
    r = noise.get("measurement_noise")
    if not found or r is None:
        return
    ratio, median = found["estimate"], found["median"]
    if ratio >= 1:
        size = f"~{_short(ratio)}x"
        trust = "the filter trusts each gradient far less than its noise warrants"
    else:
        size = f"~1/{_short(1 / ratio)} of"
        trust = "the filter trusts each gradient more than its noise warrants"
    (verdict,) = noise_verdicts(metrics)
    if verdict.outcome == "yes":
        trust = "within the calibrated band"
    severity = "warning" if verdict.outcome == "no" else "info"
    out.add(
        "noise",
        severity,
        f"r = {_num(r)} is {size} the measured minibatch-gradient variance (median {median:.2g}, step "
        f"{found['step']}): {trust}; the measured noise suggests r ~ {median:.2g}. {verdict.text}",
    )


def _last_innovations(noise: Mapping[str, Any]) -> dict[str, Any] | None:
    """The last snapshot entry with the innovation's summaries (None if none has them)."""
    held = [e for e in noise.get("snapshots") or [] if _is_number(_get(e, "overall", "innovation_sq_median"))]
    return held[-1] if held else None


def _innovation_finding(out: Findings, noise: Mapping[str, Any]) -> None:
    """r, the measured minibatch-gradient variance and the filter's innovations, side by side."""
    entry = _last_innovations(noise)
    if entry is None:
        return
    overall = entry["overall"]
    variance = overall.get("variance_median")  # the same snapshot's, None without the noise instrument
    measured = f"the measured minibatch-gradient variance median {_num(variance)}" if _is_number(variance) else (
        "no measured minibatch-gradient variance at that snapshot (the noise instrument)")  # fmt: skip
    chi2 = float(noise.get("chi2_median") or CHI2_1_MEDIAN)
    median = overall["normalised_innovation_median"]
    if not _is_number(median):
        words = "d^2/s is undefined (s = 0 somewhere)"
    elif median > FACTOR * chi2:
        words = (
            "the residuals are larger than the filter expects: it is overconfident (r or q too small, or g "
            "not linear in theta)"
        )
    elif median < chi2 / FACTOR:
        words = "the residuals are smaller than the filter expects: it assumes more noise than they show"
    else:
        words = "the residuals are of the size the filter expects"
    out.add(
        "noise",
        "info",
        f"Innovations at step {entry['step']}: r = {_num(noise.get('measurement_noise'))}, {measured}, and the "
        f"filter's own residuals d = g - (a theta + b): median d^2 {_num(overall['innovation_sq_median'])} against "
        f"its predicted variance s (median {_num(overall['innovation_var_median'])}); d^2/s median "
        f"{_num(median)}, mean {_num(overall['normalised_innovation_mean'])} (a right noise model gives median "
        f"{chi2:.3f}, mean 1): {words}.",
    )


def _rows(final: Mapping[str, Any], innovations: bool) -> list[tuple[str, ...]]:
    groups = [("all coordinates", final["overall"]), *final.get("layers", {}).items()]
    rows = []
    for layer, g in groups:
        row = (layer, str(g["n"]), num(g["variance_median"]), num(g["r_over_median"]), num(g["mean_gsnr"]))
        if innovations:
            row += tuple(num(g.get(key)) for key in INNOVATION_KEYS[:3])
        rows.append(row)
    return rows


def noise_section(metrics: Mapping[str, Any]) -> list[Block]:
    """The final snapshot's gradient noise per layer beside r, and the verdict."""
    blocks: list[Block] = [Heading(2, (text("Gradient noise"),))]
    noise = metrics.get("noise") or {}
    final = noise.get("final")
    if not final:
        why = (
            f"the gradient-noise instrument could not run: {noise['skipped']}."
            if noise.get("skipped")
            else "no snapshot holds the gradient-noise instrument's arrays (--instruments noise)."
        )
        return blocks + [_not_computed(why)]
    blocks.append(
        Paragraph(
            "The variance of the minibatch gradient per coordinate (per-sample variance / B, from per-sample "
            "gradients of the snapshot's batch) beside the filter's measurement noise r, its assumed noise of "
            "one minibatch gradient, and Cockpit's mean gradient signal-to-noise ratio (GSNR)."
            if is_arturo(metrics)
            else "The variance of the minibatch gradient per coordinate (per-sample variance / B, from per-sample "
            "gradients of the snapshot's batch) and Cockpit's mean gradient signal-to-noise ratio (GSNR); r, the "
            f"measurement noise of arTuRO's filter, does not exist for {optimizer_name(metrics)}."
        )
    )
    caption = (
        f"At the final snapshot (step {final['step']}; r = {num(noise.get('measurement_noise'))}, "
        f"B = {noise.get('batch_size') if noise.get('batch_size') is not None else 'unknown'})."
    )
    header: tuple[str, ...] = ("layer", "coordinates", "median variance", "r / median", "mean GSNR")
    innovations = any(_is_number(_get(final, "overall", key)) for key in INNOVATION_KEYS)
    if innovations:
        header += ("median d^2", "median s", "median d^2/s")
        chi2 = float(noise.get("chi2_median") or CHI2_1_MEDIAN)
        caption += (
            f" d = g - (a theta + b) is the filter's innovation at that step and s its predicted variance (r "
            f"included); median d^2/s is {chi2:.3f} when its noise model is right (chi-squared, 1 degree of freedom)."
        )
    blocks.append(Table(header, tuple(_rows(final, innovations)), caption=caption))
    blocks += [Paragraph(v.text) for v in noise_verdicts(metrics)]
    return blocks


QUANTITY = Quantity(
    name="noise",
    needs=("snapshots: grad_mean, grad_var (the noise instrument)", "record.json: optimizer measurement_noise"),
    compute=compute,
    observer=_Observer,
    findings=_findings,
    blocks=noise_section,
    figures=(FIGURE,),
    verdicts=noise_verdicts,
)
