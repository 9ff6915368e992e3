"""The exact diagonal of the probe loss's Hessian: one-hot HVPs ("hvp") or the GGN ("ggn").

Math: for the probe loss L(theta) = (1/N) sum_n l(f(x_n; theta), y_n) (see
:mod:`arturo_diag.curvature.functional`; theta = the model's trainable parameters, x = ``inputs``,
y = ``targets``, l = ``loss_fn`` per sample, N = the probe batch size),

    h_i = d^2 L / d theta_i^2,   i = 1..P.

This h is the reference that arTuRO's filtered curvature ``a`` (ARTURO.md, state table and step 2;
arXiv 2310.20574) is compared with.

"hvp" works for any twice-differentiable model: h_i = e_i^T (H e_i), with the Hessian-vector
products of ``chunk_size`` one-hot vectors at a time sharing one gradient graph (see
:mod:`arturo_diag.curvature.hvp`: ``vmap``-ed for small models, looped for large ones). Memory is O(chunk_size * P); the P x P Hessian is never built.
Time is P / chunk_size batched HVPs: fine for small models, far too slow for 10^5 parameters.

"ggn" is exact only where diag(H) = diag(G), G the generalised Gauss-Newton matrix. Writing
H = J^T H_l J + sum_k (dl/df_k) d^2 f_k / d theta^2 (J = df/dtheta), the second term's diagonal
vanishes when every network output is linear in each single weight: true a.e. for networks
built from Linear/Conv layers, ReLU-like activations, max/avg pooling, flatten, dropout and
batch norm in eval mode, with no weight used twice. diag(G) itself comes from the loss
Hessian's factorisation and per-sample Jacobian products, see :mod:`arturo_diag.curvature.ggn`.
"ggn" refuses (:class:`GGNNotExactError`) any model or loss it cannot prove qualifies; "auto"
then falls back to "hvp".
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from arturo_diag.curvature._checks import check_chunk_size
from arturo_diag.curvature.errors import CurvatureError, GGNNotExactError
from arturo_diag.curvature.functional import LossOfParameters, loss_of_parameters
from arturo_diag.curvature.ggn import ggn_diagonal
from arturo_diag.curvature.hvp import batched_hvp, hvp_plan
from arturo_diag.curvature.methods import EXACT_METHODS
from arturo_diag.curvature.result import DiagonalHessian, split_like

__all__ = ["METHODS", "PIECEWISE_LINEAR_OPT_IN", "check_ggn_exact", "exact_diagonal"]

#: The methods :func:`exact_diagonal` accepts: the names declared in ``methods.EXACT_METHODS``.
METHODS = tuple(EXACT_METHODS)

#: Class attribute by which a custom module declares that its own ``forward`` is, in every single
#: weight, piecewise linear (uses each of its parameters once, linearly, and otherwise only
#: whitelisted operations such as ReLU, pooling, reshapes and additions). Its child modules are
#: still checked one by one.
PIECEWISE_LINEAR_OPT_IN = "arturo_diag_piecewise_linear"

# Exact types only: a subclass may override forward with anything.
_PIECEWISE_LINEAR_LEAVES = frozenset(
    {
        nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d,
        nn.ReLU, nn.LeakyReLU, nn.ReLU6,
        nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d,
        nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
        nn.Flatten, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
    }
)  # fmt: skip
_BATCH_NORMS = frozenset({nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d})
# Containers whose forward is plain composition, or that have no forward at all.
_CONTAINERS = frozenset({nn.Sequential, nn.ModuleList, nn.ModuleDict})


def exact_diagonal(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    inputs: Tensor,
    targets: Tensor,
    method: str = "auto",
    *,
    train: bool = False,
    chunk_size: int | None = None,
) -> DiagonalHessian:
    """The exact diagonal of the Hessian of the probe loss, per parameter.

    Math: h_i = d^2 L / d theta_i^2 with L(theta) = ``loss_fn(model(inputs; theta), targets)``,
    theta = the parameters of ``model`` that require grad.

    Args:
        model: any ``nn.Module``; the result follows its parameters' device and dtype.
        loss_fn: ``(outputs, targets) -> scalar``, a mean over the probe batch.
        inputs, targets: the probe batch; rows are samples.
        method: "hvp" (any differentiable model), "ggn" (fast; only for models where
            diag(H) = diag(GGN), see the module docstring) or "auto" ("ggn" where it provably
            applies, otherwise "hvp").
        train: evaluate the model in train mode (default: eval mode; the model's own mode is
            restored afterwards).
        chunk_size: "hvp": one-hot vectors per batched call (default: as many as fit about
            1 GiB, see :func:`arturo_diag.curvature.hvp.hvp_plan`); memory grows linearly in it. "ggn": samples per vmap call (default: as many as keep chunk * columns * P under
            2**25 numbers).

    Returns:
        A :class:`DiagonalHessian` whose ``method`` says which method produced it ("hvp" or
        "ggn") and whose ``note`` says why "auto" fell back to "hvp", if it did.

    Raises:
        CurvatureError: bad input (see :func:`loss_of_parameters`), unknown method, bad chunk size.
        GGNNotExactError: ``method="ggn"`` on a model or loss it cannot prove qualifies.
    """
    if method not in METHODS:
        raise CurvatureError(f"method: got {method!r}; allowed: {', '.join(METHODS)}")
    check_chunk_size(chunk_size)
    problem = loss_of_parameters(model, loss_fn, inputs, targets, train=train)
    note = None
    if method in ("ggn", "auto"):
        try:
            kind = check_ggn_exact(model, loss_fn, train=train)
            values = ggn_diagonal(problem, kind, chunk_size)
            return DiagonalHessian(values, "ggn")
        except GGNNotExactError as refusal:
            if method == "ggn":
                raise
            note = f"ggn refused: {refusal}"
    total = sum(p.numel() for p in problem.params)
    plan = hvp_plan(problem.loss, problem.params, total)
    values = _hvp_diagonal(problem, chunk_size or plan.chunk, plan.batched)
    return DiagonalHessian(values, "hvp", note=note)


def check_ggn_exact(model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], train: bool = False) -> str:
    """Prove that diag(H) = diag(GGN) for ``model`` with ``loss_fn``, or raise.

    Every module of ``model`` must be a whitelisted piecewise-linear layer (exact type), batch
    norm in eval mode with running statistics, a pure container (Sequential, ModuleList,
    ModuleDict), or of a class that declares ``arturo_diag_piecewise_linear = True``. No module
    with parameters and no parameter may be used twice. The loss must be mean cross-entropy on
    class indices (``nn.CrossEntropyLoss()`` without weights or label smoothing, or
    ``torch.nn.functional.cross_entropy``) or mean MSE (``nn.MSELoss()`` or
    ``torch.nn.functional.mse_loss``).

    Returns:
        "cross_entropy" or "mse".

    Raises:
        GGNNotExactError: naming the first module or the loss that does not qualify.
    """
    kind = _loss_kind(loss_fn)
    seen: dict[int, str] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        where = name or "<root>"
        kind_of = type(module)
        if id(module) in seen and any(True for _ in module.parameters(recurse=False)):
            raise GGNNotExactError(
                f"module {where} is the same object as {seen[id(module)]}: a weight used twice is "
                "not linear in that weight"
            )
        seen.setdefault(id(module), where)
        if kind_of in _PIECEWISE_LINEAR_LEAVES or kind_of in _CONTAINERS:
            continue
        if kind_of in _BATCH_NORMS:
            if train:
                raise GGNNotExactError(
                    f"batch norm {where} in train mode normalises with batch statistics, which is "
                    "not linear in each weight; use train=False or method='hvp'"
                )
            if not module.track_running_stats or module.running_mean is None:
                raise GGNNotExactError(
                    f"batch norm {where} has no running statistics, so even in eval mode it "
                    "normalises with batch statistics"
                )
            continue
        if getattr(kind_of, PIECEWISE_LINEAR_OPT_IN, False) is True:
            continue
        raise GGNNotExactError(
            f"module {where} ({kind_of.__name__}) is not known to be piecewise linear in each "
            f"weight; allowed: {_allowed_names()}, batch norm in eval mode, or a class declaring "
            f"{PIECEWISE_LINEAR_OPT_IN} = True"
        )
    names = [n for n, _ in model.named_parameters(remove_duplicate=False)]
    unique = {id(p) for p in model.parameters()}
    if len(unique) != len(names):
        raise GGNNotExactError(
            "the model ties parameters (one tensor under several names); a weight used twice is "
            "not linear in that weight"
        )
    return kind


def _allowed_names() -> str:
    return ", ".join(sorted(t.__name__ for t in _PIECEWISE_LINEAR_LEAVES | _CONTAINERS))


def _loss_kind(loss_fn: Callable) -> str:
    if loss_fn is F.cross_entropy:
        return "cross_entropy"
    if loss_fn is F.mse_loss:
        return "mse"
    if type(loss_fn) is nn.CrossEntropyLoss:
        if loss_fn.reduction != "mean" or loss_fn.label_smoothing != 0 or loss_fn.weight is not None:
            raise GGNNotExactError(
                "ggn supports nn.CrossEntropyLoss only with reduction='mean', no class weights "
                f"and no label smoothing; got reduction={loss_fn.reduction!r}, "
                f"weight={'set' if loss_fn.weight is not None else None}, "
                f"label_smoothing={loss_fn.label_smoothing}"
            )
        return "cross_entropy"
    if type(loss_fn) is nn.MSELoss:
        if loss_fn.reduction != "mean":
            raise GGNNotExactError(f"ggn supports nn.MSELoss only with reduction='mean'; got {loss_fn.reduction!r}")
        return "mse"
    raise GGNNotExactError(
        f"ggn cannot identify the loss {loss_fn!r}; it supports nn.CrossEntropyLoss(), "
        "torch.nn.functional.cross_entropy, nn.MSELoss() and torch.nn.functional.mse_loss"
    )


def _hvp_diagonal(problem: LossOfParameters, chunk_size: int, batched: bool = True) -> dict[str, Tensor]:
    names, params, loss = problem
    sizes = [p.numel() for p in params]
    total = sum(sizes)
    hessian_times = batched_hvp(loss, params, batched)
    like = params[0]
    diagonal = torch.empty(total, dtype=like.dtype, device=like.device)
    for start in range(0, total, chunk_size):
        stop = min(start + chunk_size, total)
        count = stop - start
        # e_start .. e_{stop-1}, cut per parameter; each piece contiguous, count x P in all.
        tangents, hits, offset = [], [], 0
        for p, size in zip(params, sizes):
            piece = torch.zeros(count, size, dtype=like.dtype, device=like.device)
            lo, hi = max(start, offset), min(stop, offset + size)
            if lo < hi:
                idx = torch.arange(lo, hi, device=like.device)
                piece[idx - start, idx - offset] = 1
                hits.append((len(tangents), idx, offset))
            tangents.append(piece.view(count, *p.shape))
            offset += size
        products = hessian_times(tuple(tangents))
        del tangents
        for which, idx, offset in hits:
            flat = products[which].reshape(count, -1)
            diagonal[idx] = flat[idx - start, idx - offset]
        del products
    return split_like(diagonal, names, params)
