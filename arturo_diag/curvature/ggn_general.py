"""The exact diagonal of the generalised Gauss-Newton matrix for any model torch.func can trace.

Math: for the probe loss L(theta) = loss_fn(F(theta), y), F(theta) = model(x; theta) the outputs of
the whole probe batch (N rows; theta = the trainable parameters, see
:mod:`arturo_diag.curvature.functional`), the GGN is

    G = J^T H_out J,      J = dF/dtheta  ((N*D) x P),   H_out = d^2 L / dF^2  ((N*D) x (N*D)),

normalised exactly as the loss is (a mean over the batch gives the 1/N inside H_out). The Hessian
is H = G + sum_j (dL/dF_j) d^2 F_j / dtheta^2; where every output is linear in each single weight
the second term has a zero diagonal and diag(G) = diag(H) (:func:`check_ggn_exact` decides that).

For the losses handled here H_out is block diagonal over the rows n (L is a sum of per-row terms),
and each block is factored as H_n = sum_k lambda_nk u_nk u_nk^T:

- cross-entropy on class indices, logits (N, C) or (N, C, d1, ...) (torch's layout): per row and
  position t the block is c_nt (diag p - p p^T), p = softmax over the classes, factored by the C
  columns u = sqrt(p_c) (e_c - p) at position t, lambda = c_nt. c_nt = w_t / sum(w) for reduction
  "mean" (w_t = class weight of the target, 0 where it is ``ignore_index``; label smoothing eps
  makes w_t = (1 - eps) w[y_t] + eps mean(w)), w_t for "sum";
- MSE: lambda = 2 / (N * D) ("mean"; D = outputs per row) or 2 ("sum"), u = the D unit vectors;
- any other loss: ``output_hessian(outputs, targets) -> (N, D, D)``, the blocks d^2 L / dF_n^2 of
  the loss as given (normalisation included), factored by ``torch.linalg.eigh`` (lambda = the
  eigenvalues, of any sign: an indefinite H_out gives a GGN that is not positive semi-definite).

Then diag(G)_i = sum_n sum_k lambda_nk ([J^T (e_n (x) u_nk)]_i)^2, computed one of three ways:

- layerwise (fastest; "auto" takes it where it applies): rows independent, plain mean
  cross-entropy on (N, C) logits or mean MSE, and every trainable parameter the weight or bias of
  a Linear, Conv1d/Conv2d or eval-mode BatchNorm layer used once, with any activations, branches
  or concatenations between them: the closed form of :mod:`arturo_diag.curvature.ggn` (one
  backward pass of the batch per factor column through the real graph, then per-layer squares);

- reverse (vector-Jacobian products; the default when it takes fewer products): when the rows are
  independent (eval mode), J^T (e_n (x) u) = J_n^T u is a VJP of the one-row function x_n -> f, and
  all N * K of them are ``vmap``-ed over rows and, inside, over the factor columns. When the rows
  are coupled (batch norm normalising with batch statistics, i.e. train mode or no running
  statistics), row n's outputs depend on every row, so J_n is a block of the Jacobian of the WHOLE
  batch function: each product is a VJP of the whole-batch function with the cotangent u_nk in row
  n and zeros elsewhere (N * K VJPs of the batch, ``vmap``-ed in chunks). That is the GGN of the
  loss as a function of theta with the batch statistics differentiated through, the same function
  whose Hessian ``exact_diagonal(..., train=True)`` takes.
- forward (Jacobian-vector products): for each parameter i, w = J e_i is one JVP of the whole-batch
  function, and diag(G)_i = sum_n w_n^T H_n w_n; P JVPs in chunks of one-hot tangents. Exact with
  or without coupling; chosen when P JVPs cost less than the VJPs the reverse mode needs (a
  whole-batch VJP counted as two JVPs, as measured).

Whether the rows are coupled is decided from the model (batch norm using batch statistics) and
checked numerically (the batch's outputs against row-by-row outputs); ``coupled=`` overrides.
Memory: each ``vmap`` call is sized so that its products and cotangents stay within
``memory_budget`` bytes, roughly, and within 64 MiB, which measured faster on CPU. Reference: arXiv 2310.20574 (arTuRO), whose
curvature estimate this diagnoses; the closed-form Sequential path is :mod:`arturo_diag.curvature.ggn`.

Code: the factors of H_out per loss are in :mod:`arturo_diag.curvature.ggn_output_hessian`, the
coupling decision and the Jacobian products in :mod:`arturo_diag.curvature.ggn_products`; this
module is the public face (:func:`ggn_diagonal`) and re-exports the factors' public names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

from arturo_diag.curvature._checks import check_chunk_size, check_count
from arturo_diag.curvature.errors import CurvatureError, GGNNotExactError
from arturo_diag.curvature.exact import check_ggn_exact
from arturo_diag.curvature.functional import loss_of_parameters
from arturo_diag.curvature.ggn_output_hessian import OutputHessian, OutputHessianFn, output_hessian_factor
from arturo_diag.curvature.ggn_products import _GGNRun
from arturo_diag.curvature.result import DiagonalHessian, split_like

__all__ = [
    "GGN_MEMORY_BYTES",
    "GGNDiagonal",
    "OutputHessian",
    "OutputHessianFn",
    "ggn_diagonal",
    "output_hessian_factor",
]

#: Default bytes one batched call of products may hold, roughly.
GGN_MEMORY_BYTES = 2**29
MODES = ("auto", "layerwise", "reverse", "forward")


@dataclass(frozen=True, eq=False, repr=False)
class GGNDiagonal(DiagonalHessian):
    """A :class:`DiagonalHessian` of the GGN, saying whether it is also the Hessian diagonal.

    is_hessian: True when :func:`check_ggn_exact` proves diag(H) = diag(G) for this model and loss
        (then this is the exact Hessian diagonal); False: it is the GGN diagonal only, and ``note``
        says why.
    coupled: the rows were treated as coupled (whole-batch Jacobian).
    mode: "layerwise", "reverse" or "forward" (how the Jacobian products were taken).
    """

    is_hessian: bool = False
    coupled: bool = False
    mode: str = "reverse"


def ggn_diagonal(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    inputs: Tensor,
    targets: Tensor,
    *,
    output_hessian: OutputHessianFn | None = None,
    train: bool = False,
    coupled: bool | None = None,
    mode: str = "auto",
    chunk_size: int | None = None,
    memory_budget: int = GGN_MEMORY_BYTES,
) -> GGNDiagonal:
    """The exact diagonal of the GGN J^T H_out J of the probe loss, per parameter.

    Args:
        model, loss_fn, inputs, targets, train: as in :func:`arturo_diag.curvature.exact_diagonal`
            (eval mode by default; integer inputs, e.g. token ids, are passed through as they are).
        output_hessian: for a loss other than cross-entropy / MSE: ``(outputs, targets) ->
            (N, D, D)``, the blocks d^2 L / dF_n^2 of the loss as given (module docstring).
        coupled: treat the rows as coupled through the batch (None: decide, see module docstring;
            False on a model whose rows are coupled gives row-by-row Jacobians, not this GGN).
        mode: "layerwise", "reverse", "forward" or "auto" ("layerwise" where it applies, else the
            one of the other two needing fewer products).
        chunk_size: products (VJPs or JVPs) per ``vmap`` call (default: from ``memory_budget``).
        memory_budget: bytes one call may hold, roughly.

    Returns:
        A :class:`GGNDiagonal` with ``method`` "ggn_general" and ``is_hessian`` as proved.

    Raises:
        CurvatureError: bad input (see :func:`loss_of_parameters`), a loss it cannot factor (and no
            ``output_hessian``), outputs and targets that do not fit the loss, bad options.
    """
    if mode not in MODES:
        raise CurvatureError(f"mode: got {mode!r}; allowed: {', '.join(MODES)}")
    check_chunk_size(chunk_size)
    check_count("memory_budget", memory_budget)
    problem = loss_of_parameters(model, loss_fn, inputs, targets, train=train)
    run = _GGNRun(problem, loss_fn, output_hessian, coupled)
    values, used = _ggn_values(run, loss_fn, output_hessian, mode, chunk_size, memory_budget)
    is_hessian, reason = _is_hessian(model, loss_fn, train, output_hessian)
    if is_hessian:
        note = f"the Hessian diagonal: {reason}"
    else:
        note = f"the GGN diagonal, not the Hessian's ({reason})"
    if run.coupled:
        note += "; rows coupled through the batch: the whole-batch Jacobian was used"
    return GGNDiagonal(
        split_like(values, problem.names, problem.params),
        "ggn_general",
        note=note,
        is_hessian=is_hessian,
        coupled=run.coupled,
        mode=used,
    )


def _ggn_values(
    run: _GGNRun, loss_fn, output_hessian, mode: str, chunk_size: int | None, budget: int
) -> tuple[Tensor, str]:
    """The flat diag(G) and the mode that produced it ("auto": layerwise where it applies)."""
    kind = run.layerwise_kind(loss_fn, output_hessian) if mode in ("auto", "layerwise") else None
    if kind is not None:
        try:
            return run.layerwise(kind, chunk_size), "layerwise"
        except GGNNotExactError as refusal:  # e.g. a layer that runs twice
            if mode == "layerwise":
                raise CurvatureError(f"mode 'layerwise' does not apply: {refusal}") from refusal
    elif mode == "layerwise":
        raise CurvatureError(
            "mode 'layerwise' does not apply: it needs independent rows, a plain mean "
            "cross-entropy on (N, C) logits or mean MSE, and every trainable parameter the weight "
            "or bias of a Linear, Conv1d/Conv2d or BatchNorm layer used once"
        )
    return run.diagonal(mode, chunk_size, budget)


def _is_hessian(model, loss_fn, train: bool, output_hessian) -> tuple[bool, str]:
    if output_hessian is not None:
        return False, "loss given with its own output Hessian: not proved"
    try:
        kind = check_ggn_exact(model, loss_fn, train=train)
    except GGNNotExactError as refusal:
        return False, str(refusal)
    return True, f"every output is linear in each weight and the loss is {kind}"
