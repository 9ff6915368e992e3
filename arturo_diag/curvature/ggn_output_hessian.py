"""The output Hessian H_out = d^2 L / dF^2 of the probe loss, factored per row as
H_n = sum_k lambda_nk u_nk u_nk^T: cross-entropy and MSE in closed form, any other loss from the
blocks its ``output_hessian`` gives (math: :mod:`arturo_diag.curvature.ggn_general`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from arturo_diag.curvature.errors import CurvatureError

__all__ = ["OutputHessian", "OutputHessianFn", "output_hessian_factor"]

OutputHessianFn = Callable[[Tensor, Tensor], Tensor]


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
