"""The probe loss as a pure function of the trainable parameters.

Every curvature estimator in this package differentiates the same function

    L(theta) = loss_fn(model(inputs; theta), targets),

where ``theta`` is the tuple of the model's parameters that require grad (in the order of
``model.named_parameters()``), ``loss_fn`` is expected to be a mean over the probe batch, and
everything else the model holds (frozen parameters, buffers) enters as a constant through
:func:`torch.func.functional_call`.

Mode: by default the loss is evaluated with every module in eval mode (dropout off, batch norm
on its running statistics), so that L is a deterministic function of theta. The model's own
mode flags are restored after every evaluation. With ``train=True`` the modules run in train
mode, except that batch norm does not update its running statistics (buffers are never
written), and active dropout is refused because the Hessian of a random function is undefined.

Reference: the arTuRO optimizer whose curvature this diagnoses, arXiv 2310.20574.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.func import functional_call

from arturo_diag.curvature.errors import CurvatureError

__all__ = [
    "LossOfParameters",
    "ParameterLoss",
    "activation_elements",
    "evaluation_mode",
    "loss_of_parameters",
]

_BATCH_NORM = (nn.modules.batchnorm._BatchNorm,)


@contextlib.contextmanager
def evaluation_mode(model: nn.Module, train: bool = False) -> Iterator[None]:
    """Put every module of ``model`` in ``train`` mode for the block, then restore each flag.

    Each module's own ``training`` flag is saved and restored (not just the root's), so a model
    whose submodules were in mixed modes comes back exactly as it was. In train mode batch norm
    layers temporarily stop tracking running statistics: they normalise with the batch's
    statistics, as in training, but never write their buffers.
    """
    saved = [(m, m.training) for m in model.modules()]
    saved_tracking = []
    try:
        for m, _ in saved:
            m.training = train
            if train and isinstance(m, _BATCH_NORM) and m.track_running_stats:
                saved_tracking.append(m)
                m.track_running_stats = False
        yield
    finally:
        for m in saved_tracking:
            m.track_running_stats = True
        for m, flag in saved:
            m.training = flag


class ParameterLoss:
    """``theta -> loss_fn(model(inputs; theta), targets)``: a scalar function of a parameter tuple.

    Call it with a tuple of tensors shaped like :attr:`params` of the owning
    :class:`LossOfParameters`. It is pure as far as torch.func is concerned: it can be wrapped
    in ``grad``, ``jvp`` and ``vmap``.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Tensor, Tensor], Tensor],
        inputs: Tensor,
        targets: Tensor,
        names: tuple[str, ...],
        constants: dict[str, Tensor],
        train: bool,
    ):
        self.model = model
        self.loss_fn = loss_fn
        self.inputs = inputs
        self.targets = targets
        self.names = names
        self.constants = constants
        self.train = train

    def outputs(self, params: tuple[Tensor, ...], inputs: Tensor) -> Tensor:
        """The model's outputs on ``inputs`` with trainable parameters ``params``."""
        state = dict(zip(self.names, params))
        state.update(self.constants)
        with evaluation_mode(self.model, self.train):
            return functional_call(self.model, state, (inputs,))

    def __call__(self, params: tuple[Tensor, ...]) -> Tensor:
        loss = self.loss_fn(self.outputs(params, self.inputs), self.targets)
        if not isinstance(loss, Tensor) or loss.dim() != 0:
            shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
            raise CurvatureError(
                f"loss_fn must return a scalar tensor (the mean loss over the probe batch); got {shape}"
            )
        return loss


class LossOfParameters(NamedTuple):
    """``(names, params, loss)``: what every estimator differentiates.

    names: the trainable parameters' names, in ``model.named_parameters()`` order.
    params: detached aliases of those parameters (no copy), the point the Hessian is taken at.
    loss: the scalar function ``params -> L`` (a :class:`ParameterLoss`).
    """

    names: tuple[str, ...]
    params: tuple[Tensor, ...]
    loss: ParameterLoss


def loss_of_parameters(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    inputs: Tensor,
    targets: Tensor,
    train: bool = False,
) -> LossOfParameters:
    """Build the probe loss ``L(theta) = loss_fn(model(inputs; theta), targets)``.

    Math: theta = the parameters of ``model`` with ``requires_grad``; L is expected to be a mean
    over the N = ``inputs.shape[0]`` rows of the probe batch.

    Device and dtype follow the model: ``inputs`` and ``targets`` are moved to the parameters'
    device, and floating-point ones are cast to the parameters' dtype.

    Raises:
        CurvatureError: no parameter requires grad; trainable parameters of mixed dtype or
            device; inputs or targets not tensors; an empty batch; targets whose number of rows
            differs from the inputs'; ``train=True`` with active dropout.
    """
    if not isinstance(model, nn.Module):
        raise CurvatureError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise CurvatureError(f"{type(model).__name__} has no parameter that requires grad; nothing to differentiate")
    dtypes = {p.dtype for _, p in trainable}
    devices = {p.device for _, p in trainable}
    if len(dtypes) > 1 or len(devices) > 1:
        raise CurvatureError(
            "trainable parameters must share one dtype and one device; got dtypes "
            f"{sorted(map(str, dtypes))} on devices {sorted(map(str, devices))}"
        )
    (dtype,), (device,) = dtypes, devices
    if not dtype.is_floating_point:
        raise CurvatureError(f"trainable parameters must be floating point; got {dtype}")
    inputs = _as_batch("inputs", inputs, device, dtype)
    targets = _as_batch("targets", targets, device, dtype)
    if inputs.shape[0] == 0:
        raise CurvatureError("empty probe batch: inputs have 0 rows")
    if targets.shape[0] != inputs.shape[0]:
        raise CurvatureError(
            f"targets have {targets.shape[0]} rows but inputs have {inputs.shape[0]}; they must match row for row"
        )
    if train:
        active = [n for n, m in model.named_modules() if _is_active_dropout(m)]
        if active:
            raise CurvatureError(
                "train=True with active dropout makes the probe loss random, so its Hessian is "
                f"undefined (dropout at {active}); use train=False or set their p to 0"
            )
    names = tuple(n for n, _ in trainable)
    params = tuple(p.detach() for _, p in trainable)
    trainable_names = set(names)
    constants = {n: p.detach() for n, p in model.named_parameters() if n not in trainable_names}
    constants.update(dict(model.named_buffers()))
    loss = ParameterLoss(model, loss_fn, inputs, targets, names, constants, train)
    return LossOfParameters(names, params, loss)


def _as_batch(what: str, x: Any, device: torch.device, dtype: torch.dtype) -> Tensor:
    if not isinstance(x, Tensor):
        raise CurvatureError(f"{what} must be a torch.Tensor; got {type(x).__name__}")
    if x.dim() == 0:
        raise CurvatureError(f"{what} must have a batch dimension; got a 0-d tensor")
    return x.to(device=device, dtype=dtype if x.is_floating_point() else x.dtype)


def _is_active_dropout(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0


def activation_elements(loss: ParameterLoss, params: tuple[Tensor, ...]) -> dict[int, int]:
    """Numbers each leaf module outputs for ONE sample of the probe batch, keyed by ``id(module)``.

    One forward pass on the first sample, in eval mode and without grad; used to size chunks to a
    memory budget.
    """
    sizes: dict[int, int] = {}

    def record(module: nn.Module):
        def hook(_module: nn.Module, _args: tuple, output: Any) -> None:
            outputs = output if isinstance(output, (tuple, list)) else (output,)
            count = sum(o[0].numel() for o in outputs if isinstance(o, Tensor) and o.dim() > 0)
            sizes[id(module)] = sizes.get(id(module), 0) + count

        return hook

    leaves = [m for m in loss.model.modules() if not any(True for _ in m.children())]
    hooks = [m.register_forward_hook(record(m)) for m in leaves]
    state = dict(zip(loss.names, params))
    state.update(loss.constants)
    try:
        # eval mode: the sizes are the same, and batch norm accepts a single sample
        with torch.no_grad(), evaluation_mode(loss.model, False):
            functional_call(loss.model, state, (loss.inputs[:1],))
    finally:
        for h in hooks:
            h.remove()
    return sizes
