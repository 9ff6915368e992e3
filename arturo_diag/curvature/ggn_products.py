"""The Jacobian products of :func:`arturo_diag.curvature.ggn_general.ggn_diagonal`: whether the
rows are coupled through the batch (batch norm with batch statistics, i.e. train mode), and
diag(J^T H_out J) by VJPs of one row (independent rows), by VJPs of the whole batch (coupled
rows), by JVPs, or by the layerwise closed form (math: :mod:`arturo_diag.curvature.ggn_general`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import jvp, vjp, vmap

from arturo_diag.curvature import ggn as _sequential
from arturo_diag.curvature.errors import CurvatureError
from arturo_diag.curvature.functional import LossOfParameters, activation_elements
from arturo_diag.curvature.ggn_output_hessian import _loss_spec, output_hessian_factor

# Calls are kept below this many bytes even when the budget allows more: on CPU, vmap-ed calls of
# 100+ MB measured 2-3x slower per product (ResNet block, train-mode BN: 10.8 s at the budget's
# 140 products per call against 5.4 s at 16); below it the batching still pays.
_FAST_CALL_BYTES = 2**26


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
