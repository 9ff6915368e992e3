"""The Hessian diagonal as the exact GGN diagonal plus a Hutchinson estimate of the rest.

Math: for the probe loss L(theta) (see :mod:`arturo_diag.curvature.functional`) with Hessian H and
generalised Gauss-Newton matrix G = J^T H_out J (see :mod:`arturo_diag.curvature.ggn_general`),

    h = diag(H) = diag(G) + diag(H - G),
    h_hat = diag(G) + (1/S) sum_s z_s * ((H - G) z_s),      z_s Rademacher in {-1, +1}^P,

diag(G) exact, the residual by Hutchinson's estimator (Bekas, Kokiopoulou and Saad, Applied
Numerical Mathematics 57 (2007) 1214-1229): unbiased, with per-coordinate variance
sum_{j != i} (H - G)_ij^2 instead of plain Hutchinson's sum_{j != i} H_ij^2. G is a control variate
whose expectation is known exactly: where the GGN carries most of the Hessian's off-diagonal mass
the variance falls accordingly. H z is a Hessian-vector product (:mod:`arturo_diag.curvature.hvp`,
reverse-over-reverse sharing one gradient graph per chunk), G z = J^T (H_out (J z)) a JVP of the
batch outputs then a VJP (exact also when the rows are coupled through batch norm).

The standard error is std_s(z_s * ((H - G) z_s)) / sqrt(S) (unbiased S - 1 variance), as in
:func:`arturo_diag.curvature.hutchinson_diagonal`, whose probe stream this shares: the same
generator state gives the same probes z_s, so the two can be compared probe for probe.

Where :func:`check_ggn_exact` proves diag(H) = diag(G) (every output linear in each weight, CE or
MSE), the residual's diagonal is exactly zero; its off-diagonal need not be (a ReLU net's weights of
different layers interact), so probing it would add noise around zero. Then the result is diag(G)
with standard error 0 and no probe is drawn, unless ``force_residual=True``.
Measured (bench/curvature_general.py, 1 thread, float32): the variance falls 1.3x at equal probe
count on a 1,806-parameter GELU+BN CNN and about 1.8x on a 3,040-parameter transformer block, where
most of the off-diagonal mass is in H - G (weights of different layers), not in G. A probe costs
an HVP and a GGN-vector product, 1.7-3.7x a plain Hutchinson probe, so at equal wall time plain
Hutchinson with more probes was as accurate or better on both.

The same probes measure the variance reduction (:func:`hessian_diagonal_cv_compared`): the terms
z_s * (H z_s) are plain Hutchinson's, exactly those :func:`hutchinson_diagonal` forms from the same
generator state and S, so plain Hutchinson's SE at equal HVP count comes free (an elementwise
product per probe). The reduction R = sum_i var_plain_i / sum_i var_cv_i (per-probe sample
variances, S - 1) gets a 95 % interval from a delete-one-group jackknife over G = min(10, S // 2)
groups of consecutive probes (sizes differing by at most one, as ``numpy.array_split``): per group
only one scalar per estimator is accumulated, its within-group sum of squared deviations
A_g = sum_i sum_{s in g} (t_si - tbar_gi)^2 (no S x P memory). The jackknife is of log R_w,
R_w = sum_g A_plain,g / sum_g A_cv,g (the groups are independent, as the probes are); the interval
is R * exp(+-t_{0.975, G-1} se_jack), centred on the full-sample R; NaN with fewer than 3 groups
(S < 6). Measured coverage of the true ratio over 200 seeds on a GELU MLP
(tests/curvature/test_cv_vs_plain.py): 97-99 % at S = 8-32, 92-93 % at S = 64-128.
"Equal HVP cost" counts Hessian-vector products only: the control variate also pays the exact GGN
diagonal and one GGN-vector product per probe.
Reference: the arTuRO optimizer whose curvature this diagnoses, arXiv 2310.20574.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from arturo_diag.curvature._checks import check_chunk_size, check_generator
from arturo_diag.curvature.errors import CurvatureError
from arturo_diag.curvature.functional import ParameterLoss, loss_of_parameters
from arturo_diag.curvature.ggn_general import (
    GGN_MEMORY_BYTES,
    OutputHessianFn,
    _ggn_values,
    _GGNRun,
    _is_hessian,
)
from arturo_diag.curvature.hutchinson import rademacher_probes
from arturo_diag.curvature.hvp import batched_hvp, hvp_plan
from arturo_diag.curvature.result import DiagonalHessian, split_like

__all__ = ["ControlVariateComparison", "hessian_diagonal_cv", "hessian_diagonal_cv_compared"]

#: The most groups of probes the variance reduction's jackknife takes; fewer than MIN_GROUPS: no interval.
MAX_GROUPS = 10
MIN_GROUPS = 3


@dataclass(frozen=True)
class ControlVariateComparison:
    """The control variate and plain Hutchinson on the same S probes (equal Hessian-vector products).

    Attributes:
        estimate, stderr: what :func:`hessian_diagonal_cv` returns.
        plain_stderr: plain Hutchinson's SE from the same probes (``method`` "hutchinson-stderr"):
            the ``stderr`` :func:`hutchinson_diagonal` returns for the same generator state, S and
            chunking; None where no probe was drawn (diag(H - G) = 0 proved).
        cv_se_rms, plain_se_rms: sqrt(mean_i se_i^2) over every coordinate of every parameter.
        variance_reduction: R = sum_i var_plain_i / sum_i var_cv_i = (plain_se_rms / cv_se_rms)^2
            (inf where the residual's terms do not vary but plain Hutchinson's do).
        interval: R's 95 % interval (jackknife over ``groups`` groups of probes, module docstring);
            NaN bounds with fewer than 3 groups or where a group's variance is 0.
        groups: G, the jackknife's groups of consecutive probes (0: no interval, S < 6, or no probe).
        All scalars are NaN where no probe was drawn.
    """

    estimate: DiagonalHessian
    stderr: DiagonalHessian
    plain_stderr: DiagonalHessian | None
    cv_se_rms: float
    plain_se_rms: float
    variance_reduction: float
    interval: tuple[float, float]
    groups: int


def hessian_diagonal_cv(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    inputs: Tensor,
    targets: Tensor,
    samples: int,
    generator: torch.Generator | None,
    *,
    train: bool = False,
    chunk_size: int | None = None,
    output_hessian: OutputHessianFn | None = None,
    force_residual: bool = False,
    memory_budget: int = GGN_MEMORY_BYTES,
) -> tuple[DiagonalHessian, DiagonalHessian]:
    """diag(G) exact plus Hutchinson on diag(H - G): the estimate of diag(H) and its standard error.

    Args:
        model, loss_fn, inputs, targets, train: as in :func:`arturo_diag.curvature.exact_diagonal`.
        samples, generator: as in :func:`arturo_diag.curvature.hutchinson_diagonal` (S >= 2
            Rademacher probes, drawn one per probe in probe order: the result does not depend on
            ``chunk_size``).
        chunk_size: probes per batched call (default: as :func:`hutchinson_diagonal` sizes them).
        output_hessian, memory_budget: as in :func:`arturo_diag.curvature.ggn_diagonal`.
        force_residual: probe the residual even where diag(H - G) = 0 is proved.

    Returns:
        ``(estimate, stderr)``: :class:`DiagonalHessian` with ``method`` "ggn+hutchinson" and
        "ggn+hutchinson-stderr", ``samples`` = S (0 when no probe was needed), ``note`` saying how
        the GGN part was obtained.

    Raises:
        CurvatureError: bad input (see :func:`loss_of_parameters`), samples < 2, bad chunk size,
            a loss whose output Hessian is unknown.
    """
    result = _control_variate(
        model, loss_fn, inputs, targets, samples, generator, train=train, chunk_size=chunk_size,
        output_hessian=output_hessian, force_residual=force_residual, memory_budget=memory_budget, plain=False,
    )  # fmt: skip
    return result.estimate, result.stderr


def hessian_diagonal_cv_compared(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    inputs: Tensor,
    targets: Tensor,
    samples: int,
    generator: torch.Generator | None,
    *,
    train: bool = False,
    chunk_size: int | None = None,
    output_hessian: OutputHessianFn | None = None,
    force_residual: bool = False,
    memory_budget: int = GGN_MEMORY_BYTES,
) -> ControlVariateComparison:
    """:func:`hessian_diagonal_cv` (the same numbers, bit for bit) and plain Hutchinson on its probes.

    The S probes give both the residual's terms z * ((H - G) z) and plain Hutchinson's z * (H z):
    this returns the control variate's estimate and SE, plain Hutchinson's SE at the same S (equal
    Hessian-vector products; the control variate also pays diag(G) and a GGN-vector product per
    probe) and the variance reduction with its 95 % interval (module docstring), as a
    :class:`ControlVariateComparison`. Arguments and errors as :func:`hessian_diagonal_cv`'s.
    """
    return _control_variate(
        model, loss_fn, inputs, targets, samples, generator, train=train, chunk_size=chunk_size,
        output_hessian=output_hessian, force_residual=force_residual, memory_budget=memory_budget, plain=True,
    )  # fmt: skip


def _control_variate(
    model, loss_fn, inputs, targets, samples, generator, *, train, chunk_size, output_hessian, force_residual,
    memory_budget, plain,
) -> ControlVariateComparison:  # fmt: skip
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 2:
        raise CurvatureError(f"samples: got {samples!r}; allowed: an integer >= 2 (the standard error needs two)")
    check_chunk_size(chunk_size)
    check_generator(generator)
    problem = loss_of_parameters(model, loss_fn, inputs, targets, train=train)
    names, params, loss = problem
    run = _GGNRun(problem, loss_fn, output_hessian, None)
    ggn, mode = _ggn_values(run, loss_fn, output_hessian, "auto", None, memory_budget)
    is_hessian, reason = _is_hessian(model, loss_fn, train, output_hessian)
    nan = math.nan
    if is_hessian and not force_residual:
        note = f"diag(H - G) = 0 proved ({reason}): exact, no probe drawn"
        zero = torch.zeros_like(ggn)
        return ControlVariateComparison(
            DiagonalHessian(split_like(ggn, names, params), "ggn+hutchinson", samples=0, note=note),
            DiagonalHessian(split_like(zero, names, params), "ggn+hutchinson-stderr", samples=0, note=note),
            None, nan, nan, nan, (nan, nan), 0,
        )  # fmt: skip
    probes = _residual_probes(run, loss, params, samples, generator, chunk_size, plain=plain)
    estimate = ggn + probes.shift + probes.centred_mean
    note = (
        f"GGN part exact ({mode} mode{', rows coupled' if run.coupled else ''}); "
        f"residual diag(H - G) by {samples} Rademacher probes"
    )
    estimate_result = DiagonalHessian(split_like(estimate, names, params), "ggn+hutchinson", samples=samples, note=note)
    stderr_result = DiagonalHessian(
        split_like(probes.stderr, names, params), "ggn+hutchinson-stderr", samples=samples, note=note
    )
    if not plain:
        return ControlVariateComparison(estimate_result, stderr_result, None, nan, nan, nan, (nan, nan), 0)
    cv_ms = float(probes.stderr.double().square().mean())
    plain_ms = float(probes.plain_stderr.double().square().mean())
    return ControlVariateComparison(
        estimate_result,
        stderr_result,
        DiagonalHessian(split_like(probes.plain_stderr, names, params), "hutchinson-stderr", samples=samples),
        math.sqrt(cv_ms),
        math.sqrt(plain_ms),
        _ratio(plain_ms, cv_ms),
        _jackknife_interval(_ratio(plain_ms, cv_ms), probes.group_plain, probes.group_cv),
        len(probes.group_cv),
    )


class _Probes(NamedTuple):
    shift: Tensor
    centred_mean: Tensor
    stderr: Tensor
    plain_stderr: Tensor | None  # plain Hutchinson's, when asked
    group_plain: tuple[float, ...]  # per group A_g (within-group sum of squared deviations), when asked
    group_cv: tuple[float, ...]


def _ratio(numerator: float, denominator: float) -> float:
    if denominator > 0:
        return numerator / denominator
    return math.inf if numerator > 0 else math.nan


def _groups(samples: int) -> list[int]:
    """The probe index where each jackknife group ends: G = min(10, S // 2) groups of consecutive
    probes, the first S mod G of ceil(S / G) probes, the rest floor(S / G) (at least 2; as
    ``numpy.array_split``); none when G < 3."""
    count = min(MAX_GROUPS, samples // 2)
    if count < MIN_GROUPS:
        return []
    size, larger = divmod(samples, count)
    return [k * size + min(k, larger) for k in range(1, count + 1)]


def _jackknife_interval(ratio: float, plain: tuple[float, ...], cv: tuple[float, ...]) -> tuple[float, float]:
    """R * exp(+-t_{0.975, G-1} se) with se the delete-one-group jackknife SE of log R_w (module docstring)."""
    from scipy.stats import t as student_t

    count = len(cv)
    if count < MIN_GROUPS or not math.isfinite(ratio) or ratio <= 0:
        return (math.nan, math.nan)
    total_plain, total_cv = sum(plain), sum(cv)
    left_out = [(total_plain - p, total_cv - c) for p, c in zip(plain, cv)]
    if any(p <= 0 or c <= 0 for p, c in left_out):
        return (math.nan, math.nan)
    logs = [math.log(p / c) for p, c in left_out]
    mean = sum(logs) / count
    se = math.sqrt((count - 1) / count * sum((v - mean) ** 2 for v in logs))
    half = float(student_t.ppf(0.975, count - 1)) * se
    return (ratio * math.exp(-half), ratio * math.exp(half))


def _residual_probes(
    run: _GGNRun,
    loss: ParameterLoss,
    params: tuple[Tensor, ...],
    samples: int,
    generator: torch.Generator | None,
    chunk_size: int | None,
    *,
    plain: bool = False,
) -> _Probes:
    """Hutchinson on diag(H - G): ``shift``, ``centred_mean`` and ``stderr`` of the terms z * ((H - G) z).

    The mean of the terms is ``shift + centred_mean`` (the first chunk's mean, then the mean of the
    terms less it, so that the variance stays accurate when |h| is much larger than its spread);
    the caller adds them to diag(G) in that order. With ``plain``, also plain Hutchinson's terms
    z * (H z) of the same probes, shifted likewise (by their own first chunk's mean): their SE, as
    :func:`hutchinson_diagonal` computes it, and per jackknife group (:func:`_groups`) both
    estimators' within-group sums of squared deviations (scalars, in float64).
    """
    like = params[0]
    plan = hvp_plan(loss, params, samples)
    chunk_size = min(chunk_size or plan.chunk, samples)
    total = sum(p.numel() for p in params)
    hessian_times = batched_hvp(loss, params, plan.batched)
    arms = [_Moments(total, like, samples, _groups(samples) if plain else [])]
    if plain:
        arms.append(_Moments(total, like, samples, _groups(samples)))
    for start in range(0, samples, chunk_size):
        count = min(chunk_size, samples - start)
        tangents = rademacher_probes(count, params, generator)  # the draws of hutchinson_diagonal
        h_products = hessian_times(tangents)
        g_products = run.ggn_times(tangents, plan.batched)
        if plain:  # z * h - z * g is z * (h - g) bit for bit: z is +-1
            plain_terms = torch.cat([(z * h).reshape(count, -1) for z, h in zip(tangents, h_products)], dim=1)
            terms = plain_terms - torch.cat([(z * g).reshape(count, -1) for z, g in zip(tangents, g_products)], dim=1)
        else:
            terms = torch.cat(
                [(z * (h - g)).reshape(count, -1) for z, h, g in zip(tangents, h_products, g_products)],
                dim=1,
            )
        del tangents, h_products, g_products
        arms[0].add(terms, start)
        if plain:
            arms[1].add(plain_terms, start)
            del plain_terms
        del terms
    cv = arms[0]
    return _Probes(
        cv.shift,
        cv.centred_mean(),
        cv.stderr(),
        arms[1].stderr() if plain else None,
        tuple(arms[1].groups) if plain else (),
        tuple(cv.groups) if plain else (),
    )


class _Moments:
    """Shifted sums and sums of squares of one estimator's terms, and per jackknife group (ending at
    the probe indices ``ends``) the within-group sum of squared deviations over every coordinate."""

    def __init__(self, total: int, like: Tensor, samples: int, ends: list[int]) -> None:
        self.samples = samples
        self.shift: Tensor | None = None
        self.sum = torch.zeros(total, dtype=like.dtype, device=like.device)
        self.sq = torch.zeros(total, dtype=like.dtype, device=like.device)
        self.ends = ends
        self.groups: list[float] = []
        if ends:
            self.group_sum = torch.zeros(total, dtype=torch.float64, device=like.device)
            self.group_sq = 0.0
            self.group_start = 0

    def add(self, terms: Tensor, start: int) -> None:
        """Add the rows of probes ``start`` ... (in place: ``terms`` is shifted)."""
        if self.shift is None:
            self.shift = terms.mean(0)
        terms -= self.shift
        self.sum += terms.sum(0)
        self.sq += (terms * terms).sum(0)
        row = 0
        while self.ends and row < terms.shape[0]:
            end = self.ends[len(self.groups)]
            take = min(end - (start + row), terms.shape[0] - row)
            part = terms[row : row + take].double()
            self.group_sum += part.sum(0)
            self.group_sq += float((part * part).sum())
            row += take
            if start + row == end:
                size = end - self.group_start
                self.groups.append(self.group_sq - float(self.group_sum.square().sum()) / size)
                self.group_sum.zero_()
                self.group_sq, self.group_start = 0.0, end
                if len(self.groups) == len(self.ends):
                    break

    def centred_mean(self) -> Tensor:
        return self.sum / self.samples

    def stderr(self) -> Tensor:
        mean = self.centred_mean()
        variance = (self.sq - self.samples * mean**2).clamp_min_(0) / (self.samples - 1)
        return (variance / self.samples).sqrt_()
