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
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import jvp, vjp, vmap

from arturo_diag.curvature import ggn as _sequential
from arturo_diag.curvature._checks import check_chunk_size, check_count
from arturo_diag.curvature.errors import CurvatureError, GGNNotExactError
from arturo_diag.curvature.exact import check_ggn_exact
from arturo_diag.curvature.functional import (
    LossOfParameters,
    activation_elements,
    loss_of_parameters,
)
from arturo_diag.curvature.result import DiagonalHessian, split_like

__all__ = ["GGN_MEMORY_BYTES", "GGNDiagonal", "OutputHessian", "ggn_diagonal", "output_hessian_factor"]

#: Default bytes one batched call of products may hold, roughly.
GGN_MEMORY_BYTES = 2**29
# Calls are kept below this many bytes even when the budget allows more: on CPU, vmap-ed calls of
# 100+ MB measured 2-3x slower per product (ResNet block, train-mode BN: 10.8 s at the budget's
# 140 products per call against 5.4 s at 16); below it the batching still pays.
_FAST_CALL_BYTES = 2**26
MODES = ("auto", "layerwise", "reverse", "forward")

OutputHessianFn = Callable[[Tensor, Tensor], Tensor]


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


# --- the output Hessian's factorisation -----------------------------------------------------


class OutputHessian:
    """H_out of the loss in the outputs, block n = sum_k lambda_nk u_nk u_nk^T.

    Subclasses give the columns for a range of rows, H_out w and sum_n w_n^T H_n w_n; every
    ``w`` is shaped like the outputs, (N, *out), possibly with leading batch dimensions.
    """

    columns_per_row: int

    def columns(self, start: int, stop: int) -> tuple[Tensor, Tensor]:
        """(lambda, u) for rows start..stop-1: (m, K) and (m, K, *out)."""
        raise NotImplementedError

    def times(self, w: Tensor) -> Tensor:
        raise NotImplementedError

    def quadratic(self, w: Tensor) -> Tensor:
        """sum_n w_n^T H_n w_n over the trailing (N, *out) dimensions."""
        return (w * self.times(w)).flatten(-self.out_dims - 1).sum(-1)

    out_dims: int


class _CrossEntropyHessian(OutputHessian):
    def __init__(self, outputs: Tensor, weights: Tensor):
        # outputs (N, C, *d); weights (N, *d): the coefficient c_nt of each position's block
        self.shape = outputs.shape
        self.out_dims = outputs.dim() - 1
        self.p = torch.softmax(outputs, dim=1)
        self.weights = weights
        classes = outputs.shape[1]
        self.positions = outputs[0, 0].numel()
        self.columns_per_row = classes * self.positions

    def columns(self, start: int, stop: int) -> tuple[Tensor, Tensor]:
        m, classes, positions = stop - start, self.shape[1], self.positions
        p = self.p[start:stop].reshape(m, classes, positions)
        eye = torch.eye(classes, dtype=p.dtype, device=p.device)
        # diff[n, l, c, c'] = delta_cc' - p[n, c', l]; u[n, (c, l), c', l'] = sqrt(p_ncl) diff delta_ll'
        diff = eye[None, None] - p.permute(0, 2, 1)[:, :, None, :]
        diff = diff * p.permute(0, 2, 1).sqrt()[..., None]
        placed = torch.diag_embed(diff.permute(0, 2, 3, 1))  # (m, c, c', l, l')
        u = placed.permute(0, 1, 3, 2, 4).reshape(m, classes * positions, *self.shape[1:])
        lam = self.weights[start:stop].reshape(m, 1, positions).expand(m, classes, positions)
        return lam.reshape(m, -1), u

    def times(self, w: Tensor) -> Tensor:
        pw = self.p * w
        return self.weights.unsqueeze(1) * (pw - self.p * pw.sum(-self.out_dims, keepdim=True))

    def quadratic(self, w: Tensor) -> Tensor:
        pw = self.p * w
        per_position = (pw * w).sum(-self.out_dims) - pw.sum(-self.out_dims).square()
        return (self.weights * per_position).flatten(-self.out_dims).sum(-1)


class _ScaledIdentityHessian(OutputHessian):
    def __init__(self, outputs: Tensor, scale: float):
        self.shape = outputs.shape
        self.out_dims = outputs.dim() - 1
        self.scale = scale
        self.columns_per_row = outputs[0].numel()
        self.dtype, self.device = outputs.dtype, outputs.device

    def columns(self, start: int, stop: int) -> tuple[Tensor, Tensor]:
        m, width = stop - start, self.columns_per_row
        eye = torch.eye(width, dtype=self.dtype, device=self.device)
        u = eye.expand(m, width, width).reshape(m, width, *self.shape[1:])
        return torch.full((m, width), self.scale, dtype=self.dtype, device=self.device), u

    def times(self, w: Tensor) -> Tensor:
        return self.scale * w

    def quadratic(self, w: Tensor) -> Tensor:
        return self.scale * w.square().flatten(-self.out_dims - 1).sum(-1)


class _DenseHessian(OutputHessian):
    def __init__(self, outputs: Tensor, blocks: Tensor):
        n, width = outputs.shape[0], outputs[0].numel()
        self.shape = outputs.shape
        self.out_dims = outputs.dim() - 1
        self.blocks = 0.5 * (blocks + blocks.transpose(1, 2))
        self.eigenvalues, vectors = torch.linalg.eigh(self.blocks)
        self.vectors = vectors.transpose(1, 2).reshape(n, width, *outputs.shape[1:])  # rows u_k
        self.columns_per_row = width

    def columns(self, start: int, stop: int) -> tuple[Tensor, Tensor]:
        return self.eigenvalues[start:stop], self.vectors[start:stop]

    def times(self, w: Tensor) -> Tensor:
        flat = w.flatten(-self.out_dims)  # (..., N, D)
        return (self.blocks @ flat.unsqueeze(-1)).squeeze(-1).reshape(w.shape)


def output_hessian_factor(
    loss_fn: Callable, outputs: Tensor, targets: Tensor, output_hessian: OutputHessianFn | None
) -> OutputHessian:
    """The factored H_out of ``loss_fn`` at ``outputs`` (module docstring), or raise."""
    if output_hessian is not None:
        blocks = output_hessian(outputs, targets)
        n, width = outputs.shape[0], outputs[0].numel()
        if not isinstance(blocks, Tensor) or tuple(blocks.shape) != (n, width, width):
            got = tuple(blocks.shape) if isinstance(blocks, Tensor) else type(blocks).__name__
            raise CurvatureError(
                f"output_hessian must return the per-row blocks d^2 L / dF_n^2 of shape {(n, width, width)}; got {got}"
            )
        return _DenseHessian(outputs, blocks.to(outputs.dtype))
    spec = _loss_spec(loss_fn)
    if spec is None:
        raise CurvatureError(
            f"ggn_diagonal cannot factor the output Hessian of {loss_fn!r}: it knows "
            "nn.CrossEntropyLoss, F.cross_entropy, nn.MSELoss and F.mse_loss; for any other loss "
            "pass output_hessian=(outputs, targets) -> (N, D, D) blocks of d^2 L / dF_n^2"
        )
    kind, options = spec
    if kind == "mse":
        if outputs.shape != targets.shape:
            raise CurvatureError(
                f"mse: outputs of shape {tuple(outputs.shape)} and targets of shape "
                f"{tuple(targets.shape)} differ (the loss would broadcast)"
            )
        if options["reduction"] not in ("mean", "sum"):
            raise CurvatureError(f"mse: reduction must be 'mean' or 'sum'; got {options['reduction']!r}")
        scale = 2.0 / outputs.numel() if options["reduction"] == "mean" else 2.0
        return _ScaledIdentityHessian(outputs, scale)
    return _CrossEntropyHessian(outputs, _cross_entropy_weights(outputs, targets, options))


def _loss_spec(loss_fn: Callable) -> tuple[str, dict] | None:
    if loss_fn is F.cross_entropy:
        return "cross_entropy", {"reduction": "mean", "weight": None, "ignore_index": -100,
                                 "label_smoothing": 0.0}  # fmt: skip
    if loss_fn is F.mse_loss:
        return "mse", {"reduction": "mean"}
    if type(loss_fn) is nn.CrossEntropyLoss:
        return "cross_entropy", {
            "reduction": loss_fn.reduction,
            "weight": loss_fn.weight,
            "ignore_index": loss_fn.ignore_index,
            "label_smoothing": loss_fn.label_smoothing,
        }
    if type(loss_fn) is nn.MSELoss:
        return "mse", {"reduction": loss_fn.reduction}
    return None


def _cross_entropy_weights(outputs: Tensor, targets: Tensor, options: dict) -> Tensor:
    if outputs.dim() < 2:
        raise CurvatureError(f"cross-entropy needs logits of shape (N, C, ...); got {tuple(outputs.shape)}")
    if targets.is_floating_point() or targets.shape != outputs.shape[:1] + outputs.shape[2:]:
        raise CurvatureError(
            "cross-entropy ggn_diagonal needs integer class-index targets of shape "
            f"{tuple(outputs.shape[:1] + outputs.shape[2:])}; got {targets.dtype} of shape "
            f"{tuple(targets.shape)} (probability targets: pass output_hessian)"
        )
    if options["reduction"] not in ("mean", "sum"):
        raise CurvatureError(f"cross-entropy: reduction must be 'mean' or 'sum'; got {options['reduction']!r}")
    classes = outputs.shape[1]
    keep = targets != options["ignore_index"]
    index = torch.where(keep, targets, torch.zeros_like(targets))
    if bool(keep.any()) and (int(index[keep].min()) < 0 or int(index[keep].max()) >= classes):
        raise CurvatureError(
            f"targets must be class indices in [0, {classes}); got values in "
            f"[{int(index[keep].min())}, {int(index[keep].max())}]"
        )
    weight = options["weight"]
    weight = torch.ones(classes, dtype=outputs.dtype, device=outputs.device) if weight is None else weight.to(outputs)
    target_weight = weight[index] * keep
    eps = float(options["label_smoothing"])
    # d^2/dz^2 of -(1 - eps) w_y log p_y - (eps / C) sum_c w_c log p_c is
    # ((1 - eps) w_y + eps mean(w)) (diag p - p p^T); "mean" divides by sum of w_y (kept rows)
    block = ((1 - eps) * weight[index] + eps * weight.mean()) * keep
    if options["reduction"] == "mean":
        block = block / target_weight.sum()
    return block


# --- the products ---------------------------------------------------------------------------


class _GGNRun:
    def __init__(self, problem: LossOfParameters, loss_fn, output_hessian, coupled):
        self.problem = problem
        self.names, self.params, self.loss = problem
        self.inputs = self.loss.inputs
        with torch.no_grad():
            outputs = self.loss.outputs(self.params, self.inputs)
        if not isinstance(outputs, Tensor) or outputs.dim() == 0 or outputs.shape[0] != self.inputs.shape[0]:
            raise CurvatureError("the model must return one tensor with a row per input row")
        self.outputs = outputs
        self.hessian = output_hessian_factor(loss_fn, outputs, self.loss.targets, output_hessian)
        self.coupled = self._coupled() if coupled is None else bool(coupled)

    def layerwise_kind(self, loss_fn, output_hessian) -> str | None:
        """The loss kind for :mod:`arturo_diag.curvature.ggn`'s layerwise path, or None where it
        does not apply (coupled rows, a loss it does not factor, parameters outside its layers,
        tied parameters)."""
        if self.coupled or output_hessian is not None:
            return None
        spec = _loss_spec(loss_fn)
        if spec is None or spec[1]["reduction"] != "mean":
            return None
        kind, options = spec
        targets = self.loss.targets
        if kind == "cross_entropy" and (
            self.outputs.dim() != 2 or options["weight"] is not None or bool((targets == options["ignore_index"]).any())
        ):
            return None  # label smoothing leaves the output Hessian as it is
        model = self.loss.model
        if len({id(p) for p in model.parameters()}) != len(list(model.named_parameters(remove_duplicate=False))):
            return None
        if _sequential._layers_of(model, self.names) is None:
            return None
        return kind

    def layerwise(self, kind: str, chunk_size: int | None) -> Tensor:
        """The layerwise closed form of :mod:`arturo_diag.curvature.ggn` (any activations between
        the layers: the backward passes go through the real graph)."""
        rows = None if chunk_size is None else max(1, chunk_size // self.hessian.columns_per_row)
        values = _sequential.ggn_diagonal(self.problem, kind, rows)
        return torch.cat([values[n].reshape(-1) for n in self.names])

    def batch_outputs(self, params: tuple[Tensor, ...]) -> Tensor:
        return self.loss.outputs(params, self.inputs)

    def _coupled(self) -> bool:
        """Rows depend on each other: a batch norm normalising with batch statistics, or row-by-row
        outputs that differ from the batch's (or that cannot be computed)."""
        for module in self.loss.model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and (
                self.loss.train or not module.track_running_stats or module.running_mean is None
            ):
                return True
        if self.inputs.shape[0] == 1:
            return False
        try:
            with torch.no_grad():
                rows = vmap(lambda x: self.loss.outputs(self.params, x.unsqueeze(0)).squeeze(0))(self.inputs)
        except Exception:  # noqa: BLE001 - a model that cannot run row by row is treated as coupled
            return True
        tol = 1e-10 if self.outputs.dtype == torch.float64 else 1e-4
        scale = float(self.outputs.abs().max()) + 1.0
        return not bool(((rows - self.outputs).abs() <= tol * scale).all())

    def diagonal(self, mode: str, chunk_size: int | None, budget: int) -> tuple[Tensor, str]:
        n = self.inputs.shape[0]
        total = sum(p.numel() for p in self.params)
        vjps = n * self.hessian.columns_per_row
        # cost in whole-batch passes: independent rows cost K (all N rows at once), coupled N * K;
        # a whole-batch VJP measured about 2x a JVP (ResNet block, train-mode BN, CPU: 1,280 VJPs
        # 6.9 s, 1,362 JVPs 3.5 s)
        reverse_cost = 2 * vjps if self.coupled else self.hessian.columns_per_row
        if mode == "auto":
            mode = "reverse" if reverse_cost <= total else "forward"
        activations = sum(activation_elements(self.loss, self.params).values())
        itemsize = self.params[0].element_size()
        budget = min(budget, _FAST_CALL_BYTES)
        width = self.outputs[0].numel()
        if mode == "forward":
            per = total + 2 * activations * n + 2 * width * n
            chunk = chunk_size or max(1, budget // (itemsize * per))
            return self._forward(min(chunk, total)), mode
        if self.coupled:
            per = total + 2 * activations * n + width * n
            chunk = chunk_size or max(1, (budget - itemsize * activations * n) // (itemsize * per))
            return self._reverse_coupled(min(chunk, vjps)), mode
        per = total + 2 * activations + 2 * width
        chunk = chunk_size or max(1, budget // (itemsize * per))
        return self._reverse_rows(min(chunk, vjps)), mode

    def _flat(self, parts: tuple[Tensor, ...], lead: int) -> Tensor:
        return torch.cat([t.reshape(*t.shape[:lead], -1) for t in parts], dim=-1)

    def _reverse_rows(self, chunk: int) -> Tensor:
        """Independent rows: vmap over rows of (vjp of the one-row function, vmap over columns)."""
        params, loss = self.params, self.loss
        k_all = self.hessian.columns_per_row
        rows_per_call = max(1, chunk // k_all)
        cols_per_call = min(k_all, chunk)

        def squares(x: Tensor, lam: Tensor, u: Tensor) -> Tensor:
            _, pullback = vjp(lambda p: loss.outputs(p, x.unsqueeze(0)), params)
            (products,) = vmap(pullback)(u.unsqueeze(1))
            flat = self._flat(products, 1)  # (k, P)
            return lam @ flat.square()

        per_rows = vmap(squares)
        total = torch.zeros(sum(p.numel() for p in params), dtype=params[0].dtype, device=params[0].device)
        n = self.inputs.shape[0]
        for start in range(0, n, rows_per_call):
            stop = min(n, start + rows_per_call)
            lam, u = self.hessian.columns(start, stop)
            for k0 in range(0, k_all, cols_per_call):
                k1 = min(k_all, k0 + cols_per_call)
                total += per_rows(self.inputs[start:stop], lam[:, k0:k1], u[:, k0:k1]).sum(0)
        return total

    def _reverse_coupled(self, chunk: int) -> Tensor:
        """Coupled rows: VJPs of the whole-batch function, cotangent u_nk in row n only."""
        _, pullback = vjp(self.batch_outputs, self.params)
        like = self.outputs
        n, k_all = like.shape[0], self.hessian.columns_per_row
        total = torch.zeros(sum(p.numel() for p in self.params), dtype=like.dtype, device=like.device)
        lam_all, u_all = self.hessian.columns(0, n)  # (N, K), (N, K, *out)
        lam_all, u_all = lam_all.reshape(-1), u_all.reshape(n * k_all, *like.shape[1:])
        rows = torch.arange(n, device=like.device).repeat_interleave(k_all)
        for start in range(0, n * k_all, chunk):
            stop = min(n * k_all, start + chunk)
            cot = torch.zeros(stop - start, *like.shape, dtype=like.dtype, device=like.device)
            cot[torch.arange(stop - start, device=like.device), rows[start:stop]] = u_all[start:stop]
            (products,) = vmap(pullback)(cot)
            total += lam_all[start:stop] @ self._flat(products, 1).square()
        return total

    def _forward(self, chunk: int) -> Tensor:
        """P JVPs of the whole-batch function with one-hot tangents: diag_i = (J e_i)^T H_out (J e_i)."""
        params = self.params
        like = params[0]
        sizes = [p.numel() for p in params]
        total = sum(sizes)
        diagonal = torch.empty(total, dtype=like.dtype, device=like.device)

        def column(tangent: tuple[Tensor, ...]) -> Tensor:
            return jvp(self.batch_outputs, (params,), (tangent,))[1]

        batched = vmap(column)
        for start in range(0, total, chunk):
            stop = min(total, start + chunk)
            count = stop - start
            eye = torch.zeros(count, total, dtype=like.dtype, device=like.device)
            eye[torch.arange(count), torch.arange(start, stop)] = 1
            tangents = tuple(
                part.reshape(count, *p.shape).contiguous() for part, p in zip(eye.split(sizes, dim=1), params)
            )
            diagonal[start:stop] = self.hessian.quadratic(batched(tangents))
        return diagonal

    def ggn_times(self, vectors: tuple[Tensor, ...], batched: bool = True) -> tuple[Tensor, ...]:
        """G v for a batch of tangents (B, *param): J^T H_out (J v), a JVP then a VJP of the batch.

        ``batched``: vmap over the B vectors, else one at a time (as the HVPs of a large model)."""
        _, pullback = vjp(self.batch_outputs, self.params)

        def one(t: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
            w = jvp(self.batch_outputs, (self.params,), (t,))[1]
            return pullback(self.hessian.times(w))[0]

        if batched:
            return vmap(one)(vectors)
        rows = [one(tuple(v[b] for v in vectors)) for b in range(vectors[0].shape[0])]
        return tuple(torch.stack(parts) for parts in zip(*rows))


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
