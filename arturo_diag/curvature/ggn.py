"""The diagonal of the generalised Gauss-Newton matrix, from the loss Hessian's factorisation.

Math: for L(theta) = (1/N) sum_n l(f(x_n; theta), y_n) (N = probe batch size, f = ``model``,
l = ``loss_fn`` per sample), factor the loss Hessian in the outputs, per sample:
d^2 l / df^2 (f_n) = scale * S_n S_n^T. Then

    diag(G)_i = scale * sum_n sum_c ( [J_n^T s_n,c]_i )^2,       J_n = df(x_n)/dtheta,

  cross-entropy (mean): scale = 1/N, S = diag(sqrt p) - p sqrt(p)^T, p = softmax(f_n), so the
  column s_c = sqrt(p_c) (e_c - p) (C columns; S S^T = diag(p) - p p^T);
  MSE (mean over N*D entries): scale = 2/(N D), S = I (the D unit vectors).

The per-sample Jacobian products J_n^T s_n,c are taken in one of two ways, with equal results:

- layerwise (fast; used when every trainable parameter is the weight or bias of a Linear,
  Conv1d/Conv2d (groups 1, numeric zero padding) or BatchNorm layer): one forward pass records
  each such layer's input a and output z; then one backward pass per factor column c gives
  g = dz for all samples at once (the batch keeps samples apart), and each layer's squared
  per-sample products follow in closed form: for z_n = W U_n (U_n the unfolded input, K x L;
  L = 1 for a Linear layer on (N, I) inputs) the product is g U_n^T, squared and summed either
  directly (batched matmul) or through the Gram form sum_{l,l'} U_il U_il' sum_c g_ol g_ol'
  (cheaper when L <= the number of columns; for L = 1 it is sum_n (sum_c g_no^2) a_ni^2);
  batch norm in eval mode is z = w * xhat + b per channel.
- generic (any model the check admits): ``vmap`` over samples of ``vjp`` of f(x_n), the pullback
  ``vmap``-ed over the factor columns; every product J_n^T s_n,c is materialised, squared, summed.

Only meaningful as the Hessian diagonal where diag(H) = diag(G) (see
:func:`arturo_diag.curvature.exact.check_ggn_exact`). Reference: arXiv 2310.20574 (arTuRO).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import vjp, vmap

from arturo_diag.curvature.errors import CurvatureError, GGNNotExactError
from arturo_diag.curvature.functional import (
    LossOfParameters,
    activation_elements,
    evaluation_mode,
)

__all__ = ["ggn_diagonal"]

# Numbers held by one chunk of "generic" products (chunk * columns * P) and by one sub-batch of
# a layer's per-sample weight products (samples * weight size).
_GENERIC_CHUNK_ELEMENTS = 2**25
_CONV_BLOCK_ELEMENTS = 2**24
# Numbers held by one pass of the layerwise path: activations and output gradients.
_LAYERWISE_CHUNK_ELEMENTS = 2**26

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def ggn_diagonal(
    problem: LossOfParameters,
    kind: str,
    chunk_size: int | None = None,
    *,
    layerwise: bool = True,
) -> dict[str, Tensor]:
    """diag(GGN) of the probe loss, name -> tensor shaped like the parameter.

    Math: diag(G)_i = scale * sum_n sum_c ([J_n^T s_n,c]_i)^2 (module docstring); ``kind`` is
    "cross_entropy" or "mse", as returned by ``check_ggn_exact``.

    Args:
        problem: from :func:`arturo_diag.curvature.functional.loss_of_parameters`.
        kind: the identified loss.
        chunk_size: samples per pass (default: as many as fit a fixed memory budget).
        layerwise: use the layerwise path where the model allows it (else always generic).

    Raises:
        GGNNotExactError: outputs or targets do not fit the loss's factorisation; a layer with
            parameters is called more than once in one forward pass.
    """
    names, params, loss = problem
    inputs, targets = loss.inputs, loss.targets
    with torch.no_grad():
        first = loss.outputs(params, inputs[:1])
    _check_outputs(kind, first, targets)
    width = first[0].numel()
    columns = first.shape[1] if kind == "cross_entropy" else width
    n_samples = inputs.shape[0]
    scale = 1.0 / n_samples if kind == "cross_entropy" else 2.0 / (n_samples * width)
    layers = _layers_of(loss.model, names) if layerwise else None
    with evaluation_mode(loss.model, loss.train):
        if layers is None:
            total = sum(p.numel() for p in params)
            chunk = chunk_size or max(1, _GENERIC_CHUNK_ELEMENTS // (columns * total))
            sums = _generic(problem, kind, columns, min(chunk, n_samples))
        else:
            chunk = chunk_size or _layerwise_chunk(problem, layers, columns)
            sums = _layerwise(problem, kind, layers, min(chunk, n_samples))
    return {name: sums[name].mul_(scale) for name in names}


def _check_outputs(kind: str, outputs: Tensor, targets: Tensor) -> None:
    if kind == "cross_entropy":
        if outputs.dim() != 2:
            raise GGNNotExactError(
                "cross-entropy ggn needs logits of shape (N, C); got outputs of shape "
                f"{tuple(outputs.shape[1:])} per sample"
            )
        if targets.dim() != 1 or targets.is_floating_point():
            raise GGNNotExactError(
                "cross-entropy ggn needs integer class-index targets of shape (N,); got "
                f"{targets.dtype} of shape {tuple(targets.shape)}"
            )
        classes = outputs.shape[1]
        if targets.min() < 0 or targets.max() >= classes:
            raise CurvatureError(
                f"targets must be class indices in [0, {classes}); got values in "
                f"[{int(targets.min())}, {int(targets.max())}]"
            )
    elif outputs.shape[1:] != targets.shape[1:]:
        raise GGNNotExactError(
            f"mse: outputs of shape {tuple(outputs.shape[1:])} per sample and targets of "
            f"shape {tuple(targets.shape[1:])} per sample differ (the loss would broadcast)"
        )


def _factor_columns(kind: str, outputs: Tensor) -> Tensor:
    """Rows c of the result are the factor columns s_c, for a batch: shape (columns, N, *out)."""
    if kind == "cross_entropy":
        p = torch.softmax(outputs, dim=-1)
        root = p.sqrt()
        # [c, n, k] = sqrt(p_nc) * (delta_ck - p_nk)
        cols = -root.T[:, :, None] * p[None, :, :]
        cols += torch.diag_embed(root).permute(1, 0, 2)
        return cols
    n, width = outputs.shape[0], outputs[0].numel()
    eye = torch.eye(width, dtype=outputs.dtype, device=outputs.device)
    return eye[:, None, :].expand(width, n, width).reshape(width, *outputs.shape)


# --- generic path ---------------------------------------------------------------------------


def _generic(problem: LossOfParameters, kind: str, columns: int, chunk: int) -> dict[str, Tensor]:
    names, params, loss = problem

    def squared_products(x: Tensor) -> tuple[Tensor, ...]:
        def output_of(p: tuple[Tensor, ...]) -> Tensor:
            return loss.outputs(p, x.unsqueeze(0))

        output, pullback = vjp(output_of, params)
        cols = _factor_columns(kind, output)  # (columns, 1, *out)
        (products,) = vmap(pullback)(cols)
        return tuple((j * j).sum(0) for j in products)

    per_sample = vmap(squared_products)
    sums = [torch.zeros_like(p) for p in params]
    inputs = loss.inputs
    for start in range(0, inputs.shape[0], chunk):
        for acc, part in zip(sums, per_sample(inputs[start : start + chunk])):
            acc += part.sum(0)
    return dict(zip(names, sums))


# --- layerwise path -------------------------------------------------------------------------


def _layers_of(model: nn.Module, names: tuple[str, ...]) -> dict[str, nn.Module] | None:
    """module name -> module for the layers owning the trainable parameters, or None if some
    trainable parameter is not the weight or bias of a layer the layerwise path handles."""
    modules = dict(model.named_modules())
    layers: dict[str, nn.Module] = {}
    for name in names:
        owner, _, attr = name.rpartition(".")
        module = modules.get(owner)
        if module is None or attr not in ("weight", "bias") or not _layerwise_supports(module):
            return None
        layers[owner] = module
    return layers


def _layerwise_supports(module: nn.Module) -> bool:
    if type(module) is nn.Linear or type(module) in _BATCH_NORMS:
        return True
    if type(module) in (nn.Conv1d, nn.Conv2d):
        return module.groups == 1 and module.padding_mode == "zeros" and not isinstance(module.padding, str)
    return False


def _layerwise_chunk(problem: LossOfParameters, layers: dict[str, nn.Module], columns: int) -> int:
    """Samples per pass such that the recorded activations, and the layers' output gradients for
    every factor column, stay within the budget."""
    names, params, loss = problem
    sizes = activation_elements(loss, params)
    activations = sum(sizes.values())
    gradients = columns * sum(sizes.get(id(m), 0) for m in layers.values())
    return max(1, _LAYERWISE_CHUNK_ELEMENTS // max(1, 2 * activations + gradients))


def _layerwise(problem: LossOfParameters, kind: str, layers: dict[str, nn.Module], chunk: int) -> dict[str, Tensor]:
    names, params, loss = problem
    sums = {name: torch.zeros_like(p) for name, p in zip(names, params)}
    order = list(layers)
    for start in range(0, loss.inputs.shape[0], chunk):
        outputs, records = _recorded_forward(loss, params, layers, loss.inputs[start : start + chunk])
        cols = _factor_columns(kind, outputs.detach())
        # One backward pass per factor column, the graph kept in between: on CPU this measured
        # twice as fast as one pass vmap-ed over the columns (is_grads_batched).
        per_column: list[list[Tensor]] = [[] for _ in order]
        for c, col in enumerate(cols):
            grads = torch.autograd.grad(
                outputs,
                [records[n][1] for n in order],
                grad_outputs=col,
                retain_graph=c + 1 < len(cols),
                allow_unused=True,
                materialize_grads=True,
            )
            for store, g in zip(per_column, grads):
                store.append(g)
        del outputs
        for i, name in enumerate(order):
            # All columns of a layer at once: few large operations instead of many small ones.
            stacked = torch.stack(per_column[i])  # (C, N, *z.shape[1:])
            per_column[i] = []
            squares = _squared_products(layers[name], records[name][0], stacked)
            del stacked
            for attr, value in squares.items():
                key = f"{name}.{attr}" if name else attr
                if key in sums:
                    sums[key] += value
        del records
    return sums


def _recorded_forward(
    loss, params: tuple[Tensor, ...], layers: dict[str, nn.Module], x: Tensor
) -> tuple[Tensor, dict[str, tuple[Tensor, Tensor]]]:
    """Outputs on ``x`` and, per layer, (its input, its output as a leaf of the graph)."""
    calls: dict[str, list[tuple[Tensor, Tensor]]] = {name: [] for name in layers}

    def record(name: str):
        def hook(_module: nn.Module, args: tuple, output: Tensor) -> Tensor:
            out = output if output.requires_grad else output.detach().requires_grad_()
            calls[name].append((args[0].detach(), out))
            # A copy goes on, so that in-place operations downstream leave ``out`` intact.
            return out.clone()

        return hook

    hooks = [m.register_forward_hook(record(n)) for n, m in layers.items()]
    try:
        with torch.enable_grad():
            outputs = loss.outputs(params, x)
    finally:
        for h in hooks:
            h.remove()
    for name, seen in calls.items():
        if len(seen) != 1:
            raise GGNNotExactError(
                f"layer {name or '<root>'} ran {len(seen)} times in one forward pass; ggn needs "
                "each weight used exactly once"
            )
    return outputs, {name: seen[0] for name, seen in calls.items()}


def _squared_products(module: nn.Module, a: Tensor, g: Tensor) -> dict[str, Tensor]:
    """sum over columns c and samples n of the squared per-sample gradients of s_c . z_n.

    a: the layer's input (N, ...); g: dz for every factor column, (C, N, *z.shape[1:]).
    """
    if type(module) in _BATCH_NORMS:
        return _batch_norm_squares(module, a, g)
    return _weight_squares(module, a, g)


def _weight_squares(module: nn.Module, a: Tensor, g: Tensor) -> dict[str, Tensor]:
    """For a Linear or convolution layer, whose output per sample is z = W U (+ b) with U the
    (unfolded) input, K x L. Per column the per-sample weight gradient is g U^T (g = dz, O x L);
    its squares are summed in one of two ways, with the same result:
      direct: form g U^T for every (sample, column) (batched matmuls), square, sum;
      gram:   sum_c (g U^T)_ok^2 = sum_{l,l'} U_kl U_kl' M_oll' with M = sum_c g g^T (O x L x L
              per sample), finished by one matrix product over (n, l, l'). Cheaper when L <= the
              number of columns; for a Linear layer on (N, I) inputs L = 1 and it is
              sum_n (sum_c g_no^2) a_nk^2.
    """
    unfolded = _unfold(module, a)  # (N, K, L)
    n, k, length = unfolded.shape
    columns = g.shape[0]
    rows = _as_rows(module, g.reshape(columns * n, *g.shape[2:])).reshape(columns, n, -1, length)
    o = rows.shape[2]  # rows: (C, N, O, L)
    out: dict[str, Tensor] = {}
    if module.bias is not None:
        b = rows.sum(-1)
        out["bias"] = (b * b).sum((0, 1))
    if length == 1:
        out["weight"] = (rows * rows).sum(0).reshape(n, o).T @ unfolded.reshape(n, k).square()
    elif length <= columns:
        by_unit = rows.permute(1, 2, 3, 0).reshape(n * o, length, columns)
        m = torch.bmm(by_unit, by_unit.transpose(1, 2)).reshape(n, o, length * length)
        pairs = (unfolded[:, :, :, None] * unfolded[:, :, None, :]).reshape(n, k, length * length)
        out["weight"] = m.permute(1, 0, 2).reshape(o, -1) @ pairs.permute(0, 2, 1).reshape(-1, k)
    else:
        by_sample = rows.permute(1, 0, 2, 3).reshape(n, columns * o, length)  # (N, C*O, L)
        patches = unfolded.transpose(1, 2)  # (N, L, K)
        weight = torch.zeros(1, o * k, dtype=g.dtype, device=g.device)
        block = max(1, _CONV_BLOCK_ELEMENTS // (columns * o * k))
        for start in range(0, n, block):
            products = torch.bmm(by_sample[start : start + block], patches[start : start + block])
            squares = products.square_().view(-1, o * k)  # (m*C, O*K)
            ones = squares.new_ones(1, squares.shape[0])
            weight.addmm_(ones, squares)
        out["weight"] = weight
    out["weight"] = out["weight"].reshape(module.weight.shape)
    return out


def _unfold(module: nn.Module, a: Tensor) -> Tensor:
    """The layer's input as (N, K, L): z_n = W U_n for the flattened weight W (O x K)."""
    if type(module) is nn.Linear:
        return a.reshape(a.shape[0], -1, a.shape[-1]).transpose(1, 2)
    if type(module) is nn.Conv1d:  # as a 2-d convolution of height 1
        return _im2col(
            a.unsqueeze(2),
            (1, *module.kernel_size),
            (1, *module.dilation),
            (0, *module.padding),
            (1, *module.stride),
        )
    return _im2col(a, module.kernel_size, module.dilation, module.padding, module.stride)


def _im2col(a: Tensor, kernel, dilation, padding, stride) -> Tensor:
    """``F.unfold`` by a strided view and one copy: (N, C, H, W) -> (N, C*kh*kw, Ho*Wo).

    Same layout as ``F.unfold``, which on CPU was measured at times 100x slower (aten::im2col).
    """
    (kh, kw), (dh, dw), (ph, pw), (sh, sw) = kernel, dilation, padding, stride
    if ph or pw:
        a = F.pad(a, (pw, pw, ph, ph))
    a = a.contiguous()
    n, c, h, w = a.shape
    ho = (h - dh * (kh - 1) - 1) // sh + 1
    wo = (w - dw * (kw - 1) - 1) // sw + 1
    sn, sc, s_h, s_w = a.stride()
    patches = a.as_strided((n, c, kh, kw, ho, wo), (sn, sc, dh * s_h, dw * s_w, sh * s_h, sw * s_w))
    return patches.reshape(n, c * kh * kw, ho * wo)


def _as_rows(module: nn.Module, g: Tensor) -> Tensor:
    """dz as (N, O, L), matching :func:`_unfold`."""
    if type(module) is nn.Linear:
        return g.reshape(g.shape[0], -1, g.shape[-1]).transpose(1, 2)
    return g.reshape(g.shape[0], g.shape[1], -1)


def _batch_norm_squares(module: nn.Module, a: Tensor, g: Tensor) -> dict[str, Tensor]:
    """Batch norm in eval mode is z = w * xhat + b per channel, with
    xhat = (a - running_mean) / sqrt(running_var + eps): dz/dw = xhat, dz/db = 1."""
    shape = (1, -1) + (1,) * (a.dim() - 2)
    mean, var = module.running_mean.view(shape), module.running_var.view(shape)
    xhat = ((a - mean) / (var + module.eps).sqrt()).reshape(a.shape[0], a.shape[1], -1)
    g = g.reshape(g.shape[0], g.shape[1], g.shape[2], -1)  # (C, N, channels, S)
    out: dict[str, Tensor] = {}
    if module.weight is not None:
        w = (g * xhat).sum(-1)
        out["weight"] = (w * w).sum((0, 1))
    if module.bias is not None:
        b = g.sum(-1)
        out["bias"] = (b * b).sum((0, 1))
    return out
