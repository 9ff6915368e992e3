"""Gradient noise of the probe loss from per-sample gradients (torch.func ``vmap`` over ``grad``).

Math: for the probe batch (x_n, y_n), n = 1..N, let l_n(theta) = ``loss_fn(model(x_n; theta), y_n)``
be the loss of ONE sample and g_n = grad l_n its gradient. Per coordinate i:

    mean gradient            gbar_i = (1/N) sum_n g_n,i
    per-sample variance      s2_i   = (1/(N-1)) sum_n (g_n,i - gbar_i)^2      (unbiased, ddof 1)
    minibatch variance       m2_i   = s2_i / N

m2_i estimates the variance of the mean gradient of a batch of N samples drawn from the same
distribution (with replacement): the noise a stochastic minibatch gradient carries. arTuRO's filter
assumes that noise to be its measurement noise ``r`` (ARTURO.md, step 2; arXiv 2310.20574), which
is what this is meant to be set beside.

Per-sample losses: ``loss_fn`` is called on ONE sample at a time (``model(x_n[None])`` and
``y_n[None]``, a batch of 1) under ``vmap``, so for a loss that is a mean over its batch
(``nn.CrossEntropyLoss()``, ``nn.MSELoss()``, or any callable with that reduction) l_n is the
sample's own loss and gbar is the gradient of the probe loss L = (1/N) sum_n l_n. The model runs
in eval mode by default, as every curvature function here (see
:func:`arturo_diag.curvature.functional.evaluation_mode`). Batch norm that normalises with batch
statistics (train mode, or no running statistics) couples the samples, so per-sample gradients
do not exist: it is refused.

Gradient signal-to-noise ratio, Cockpit's ``MeanGSNR`` (Schneider, Dangel and Hennig, "Cockpit: A
Practical Debugging Tool for the Training of Deep Neural Networks", NeurIPS 2021; after Liu et al.,
"Understanding Why Neural Networks Generalize Well Through GSNR of Parameters", ICLR 2020):

    GSNR_i = gbar_i^2 / (v_i + epsilon),   v_i = (1/N) sum_n (g_n,i - gbar_i)^2   (ddof 0),
    mean GSNR = (1/P) sum_i GSNR_i  over all P coordinates (or a layer's),

with Cockpit's stabiliser epsilon = 1e-5 by default. Cockpit computes v_i from BackPACK's
``SumGradSquared`` as ``N * sum_n (g_n/N)^2 - gbar^2``, which is this ddof-0 variance. Note that
epsilon is absolute: where v_i is far below 1e-5 it, not the noise, sets the ratio; pass
``epsilon=0`` for the plain ratio (coordinates with v_i = 0 then give inf, or nan where gbar_i
is 0 too, and are left out of the means; their number is in ``zero_variance``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import grad, vmap

from arturo_diag.curvature._checks import check_chunk_size
from arturo_diag.curvature.errors import CurvatureError
from arturo_diag.curvature.functional import (
    ParameterLoss,
    activation_elements,
    loss_of_parameters,
)
from arturo_diag.curvature.hvp import HVP_CHUNK_BYTES
from arturo_diag.curvature.result import split_like

__all__ = ["COCKPIT_GSNR_EPSILON", "GradientNoise", "gradient_noise", "layer_name"]

#: Cockpit's default stabiliser of the GSNR denominator (``MeanGSNR(epsilon=1e-5)``).
COCKPIT_GSNR_EPSILON = 1e-5

_BATCH_NORM = (nn.modules.batchnorm._BatchNorm,)


def layer_name(name: str) -> str:
    """The layer of a parameter: its module path (``"net.0.weight" -> "net.0"``).

    The same rule as :func:`arturo_diag.diagnostics.record.layer_of` (this package cannot import
    diagnostics); a top-level parameter is its own layer.
    """
    head, sep, _ = name.rpartition(".")
    return head if sep and head else name


@dataclass(frozen=True, eq=False)
class GradientNoise:
    """Per-sample gradient statistics of the probe batch; every tensor follows the parameters.

    mean: name -> gbar, the mean per-sample gradient (= grad L for a mean-reduced loss).
    variance: name -> s2, the unbiased (ddof 1) per-sample variance per coordinate.
    minibatch_variance: name -> s2 / N, the variance of the batch-mean gradient.
    gsnr: name -> per-coordinate GSNR, Cockpit's gbar^2 / (ddof-0 variance + epsilon).
    summary: "overall", then each layer (module path, in parameter order) -> plain numbers
        (float64 statistics of the tensors above):
        ``coordinates``, ``mean_gsnr`` (Cockpit's mean GSNR over the group's finite entries),
        ``zero_variance`` (coordinates whose per-sample variance is exactly 0),
        ``variance_median``, ``minibatch_variance_median``, ``minibatch_variance_mean``,
        ``minibatch_variance_sum`` (= E||g_batch - gbar||^2 over the group, the noise's squared
        norm) and ``mean_norm`` (||gbar|| over the group).
    batch_size: N; epsilon: the GSNR stabiliser used.
    """

    mean: dict[str, Tensor]
    variance: dict[str, Tensor]
    minibatch_variance: dict[str, Tensor]
    gsnr: dict[str, Tensor]
    summary: dict[str, dict[str, float]]
    batch_size: int
    epsilon: float

    @property
    def mean_gsnr(self) -> float:
        """Cockpit's mean GSNR over all coordinates, as a float."""
        return float(self.summary["overall"]["mean_gsnr"])

    def flat(self, field: str) -> Tensor:
        """One of the per-coordinate fields as a single vector, parameters in order."""
        values: Mapping[str, Tensor] = getattr(self, field)
        return torch.cat([v.reshape(-1) for v in values.values()])

    def layers(self) -> Iterator[str]:
        """The layer names of :attr:`summary` (without "overall")."""
        return (k for k in self.summary if k != "overall")


def gradient_noise(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    inputs: Tensor,
    targets: Tensor,
    *,
    epsilon: float = COCKPIT_GSNR_EPSILON,
    train: bool = False,
    chunk_size: int | None = None,
) -> GradientNoise:
    """Mean, per-sample variance and minibatch variance of the gradient, and Cockpit's GSNR.

    Math: see the module docstring; g_n = grad of ``loss_fn(model(x_n[None]), y_n[None])``.

    Args:
        model, loss_fn, inputs, targets, train: as in
            :func:`arturo_diag.curvature.exact_diagonal`; ``loss_fn`` is called on batches of
            one sample, so it must be a mean (or any per-sample-consistent reduction).
        epsilon: the GSNR stabiliser (Cockpit's 1e-5 by default; >= 0).
        chunk_size: samples per ``vmap`` call (default: as many as keep about 1 GiB, see
            :data:`arturo_diag.curvature.hvp.HVP_CHUNK_BYTES`). The chunks' statistics are merged
            exactly (Chan et al.'s pairwise update), so the result does not depend on it beyond
            rounding.

    Raises:
        CurvatureError: bad input (see :func:`loss_of_parameters`), fewer than 2 samples, batch
            norm using batch statistics, a loss that is not a scalar per sample, bad epsilon or
            chunk size.
    """
    check_chunk_size(chunk_size)
    if not isinstance(epsilon, (int, float)) or isinstance(epsilon, bool) or not epsilon >= 0:
        raise CurvatureError(f"epsilon: got {epsilon!r}; allowed: a number >= 0")
    _refuse_coupled_samples(model, train)
    names, params, loss = loss_of_parameters(model, loss_fn, inputs, targets, train=train)
    count = loss.inputs.shape[0]
    if count < 2:
        raise CurvatureError(f"gradient noise needs at least 2 samples; the probe batch has {count}")
    chunk = min(chunk_size or _default_chunk(loss, params), count)
    mean, m2 = _per_sample_moments(loss, params, count, chunk)
    variance = m2 / (count - 1)
    minibatch = variance / count
    population = m2 / count
    gsnr = mean.pow(2) / (population + epsilon)
    summary = _summaries(names, params, mean, variance, gsnr, count, float(epsilon))
    return GradientNoise(
        mean=split_like(mean, names, params),
        variance=split_like(variance, names, params),
        minibatch_variance=split_like(minibatch, names, params),
        gsnr=split_like(gsnr, names, params),
        summary=summary,
        batch_size=count,
        epsilon=float(epsilon),
    )


def coupled_batch_norm(model: nn.Module, train: bool) -> list[str]:
    """The batch-norm modules that normalise with batch statistics in this mode (``train``, or no
    running statistics): they couple the samples, so per-sample gradients do not exist."""
    if not isinstance(model, nn.Module):
        return []
    return [
        name or "<root>"
        for name, m in model.named_modules()
        if isinstance(m, _BATCH_NORM) and (train or not m.track_running_stats or m.running_mean is None)
    ]


def _refuse_coupled_samples(model: nn.Module, train: bool) -> None:
    """Batch norm that normalises with batch statistics: per-sample gradients do not exist."""
    coupled = coupled_batch_norm(model, train)
    if coupled:
        raise CurvatureError(
            "batch norm normalising with batch statistics couples the samples, so per-sample "
            f"gradients are undefined (at {coupled}); use train=False with running statistics"
        )


def _per_sample_moments(
    loss: ParameterLoss, params: tuple[Tensor, ...], count: int, chunk: int
) -> tuple[Tensor, Tensor]:
    """Mean and sum of squared deviations of the per-sample gradients (flat), ``chunk`` samples per
    ``vmap`` call, the chunks merged exactly."""
    per_sample = vmap(grad(_SampleLoss(loss)), in_dims=(None, 0, 0))
    n_seen = 0
    mean = m2 = None
    for start in range(0, count, chunk):
        x = loss.inputs[start : start + chunk]
        y = loss.targets[start : start + chunk]
        grads = per_sample(params, x, y)
        n_block = grads[0].shape[0]
        # per parameter (no (chunk, P) copy of the gradients); torch.var_mean over dim 0 was
        # measured several times slower on CPU than this mean and sum of squared deviations
        means = [g.mean(0) for g in grads]
        block_m2 = torch.cat([(g - m).pow_(2).sum(0).reshape(-1) for g, m in zip(grads, means)])
        block_mean = torch.cat([m.reshape(-1) for m in means])
        del grads, means
        if mean is None:
            mean, m2 = block_mean, block_m2
        else:
            # Chan, Golub and LeVeque's pairwise merge of (count, mean, sum of squared deviations)
            delta = block_mean - mean
            total = n_seen + n_block
            mean = mean + delta * (n_block / total)
            m2 = m2 + block_m2 + delta.pow(2) * (n_seen * n_block / total)
        n_seen += n_block
    return mean, m2


class _SampleLoss:
    """``(params, x_n, y_n) -> l_n``: the loss of one sample, as a batch of one."""

    def __init__(self, loss: ParameterLoss):
        self.loss = loss

    def __call__(self, params: tuple[Tensor, ...], x: Tensor, y: Tensor) -> Tensor:
        value = self.loss.loss_fn(self.loss.outputs(params, x.unsqueeze(0)), y.unsqueeze(0))
        if not isinstance(value, Tensor) or value.dim() != 0:
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise CurvatureError(
                f"loss_fn must return a scalar tensor for a batch of one sample (a mean over the batch); got {shape}"
            )
        return value


def _default_chunk(loss: ParameterLoss, params: tuple[Tensor, ...]) -> int:
    # per sample: its activations and their cotangents (about 3x), plus its gradient row (twice:
    # the vmap output and the concatenated block)
    itemsize = params[0].element_size()
    activations = 3 * sum(activation_elements(loss, params).values()) * itemsize
    row = 2 * sum(p.numel() for p in params) * itemsize
    return max(1, HVP_CHUNK_BYTES // max(1, activations + row))


def _group_summary(
    mean: np.ndarray, variance: np.ndarray, gsnr: np.ndarray, count: int, epsilon: float
) -> dict[str, float]:
    # with epsilon > 0 every GSNR is finite; with 0, 0/0 and x/0 are left out
    finite = gsnr if epsilon > 0 else gsnr[np.isfinite(gsnr)]
    median = float(np.median(variance))
    return {
        "coordinates": int(mean.size),
        "mean_gsnr": float(finite.mean()) if finite.size else math.nan,
        "zero_variance": int(np.count_nonzero(variance == 0)),
        "variance_median": median,
        "minibatch_variance_median": median / count,
        "minibatch_variance_mean": float(variance.mean()) / count,
        "minibatch_variance_sum": float(variance.sum()) / count,
        "mean_norm": float(np.linalg.norm(mean)),
    }


def _summaries(names, params, mean, variance, gsnr, count, epsilon) -> dict[str, dict[str, float]]:
    # numpy float64 on the host: a few dozen reductions of P numbers, where torch's per-op
    # dispatch cost about a gradient of the small CNN
    mean, variance, gsnr = (v.detach().to(torch.float64).cpu().numpy() for v in (mean, variance, gsnr))
    result = {"overall": _group_summary(mean, variance, gsnr, count, epsilon)}
    groups: dict[str, list[slice]] = {}
    offset = 0
    for name, p in zip(names, params):
        groups.setdefault(layer_name(name), []).append(slice(offset, offset + p.numel()))
        offset += p.numel()
    for layer, parts in groups.items():
        picked = [np.concatenate([v[s] for s in parts]) for v in (mean, variance, gsnr)]
        result[layer] = _group_summary(*picked, count, epsilon)
    return result
