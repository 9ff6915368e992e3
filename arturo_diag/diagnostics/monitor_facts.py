"""What a :class:`~arturo_diag.diagnostics.monitor.Monitor` records about the run itself, from the
start (``record.json``, ``docs/record.md``): the model's class, the loss by name, what h is the
Hessian of (the model's mode, the batch), every param group's lr, and the module type of every
layer, with the layer names of a bare ``nn.Sequential`` ("7") made readable ("7 (Linear)"); and,
at its end, where a diverged run first went NaN/inf.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from arturo_diag.curvature.instruments import INSTRUMENTS
from arturo_diag.curvature.references import REFERENCE_BATCHES, REFERENCE_METHODS, REFERENCE_MODES, loss_name
from arturo_diag.diagnostics.record_format import layer_of

__all__ = [
    "check_arguments",
    "check_choice",
    "divergence_info",
    "group_settings",
    "layer_labels",
    "layer_types",
    "run_facts",
]


def check_arguments(*, instruments: Any, reference: Any, every: Any, probe_batch: Any, reference_batch: Any) -> None:
    """The Monitor's arguments that are checked before anything is built (ValueError naming the argument)."""
    if isinstance(instruments, str) or any(i not in INSTRUMENTS for i in instruments):
        raise ValueError(f"instruments: got {instruments!r}; allowed: names among {', '.join(INSTRUMENTS)}")
    if reference not in tuple(REFERENCE_METHODS):
        raise ValueError(f"reference: got {reference!r}; allowed: {', '.join(REFERENCE_METHODS)}")
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every: got {every!r}; allowed: an integer >= 1")
    if probe_batch is None and reference_batch != "minibatch":
        raise ValueError("probe_batch: got None; allowed: (inputs, targets), unless reference_batch='minibatch'")


def group_settings(group: dict[str, Any]) -> dict[str, Any]:
    """A param group's hyperparameters as plain values (one-element tensors as floats), without its
    parameters and without state kept in the group (IVON's ``hess``, ``momentum``: tensors of many
    elements, not settings)."""
    return {
        k: (float(v) if isinstance(v, Tensor) else v)
        for k, v in group.items()
        if k not in ("params", "param_names") and not (isinstance(v, Tensor) and v.numel() != 1)
    }


def check_choice(what: str, value: Any, choices: Sequence[str]) -> None:
    if not isinstance(value, str) or value not in tuple(choices):
        raise ValueError(f"{what}: got {value!r}; allowed: {', '.join(choices)}")


def layer_types(model: nn.Module, names: Sequence[str]) -> dict[str, str]:
    """Layer (module path) -> the class name of that module, for the layers of ``names``."""
    modules = dict(model.named_modules())
    types: dict[str, str] = {}
    for name in names:
        layer = layer_of(name)
        module = modules.get(layer) if layer != name else model  # a top-level parameter: the model's
        if module is not None:
            types.setdefault(layer, type(module).__name__)
    return types


def layer_labels(types: dict[str, str], names: Sequence[str]) -> dict[str, str]:
    """Parameter name -> its layer's name in the report: the module path, with the module's type
    appended where the path is a bare index (every part a number: ``"7"`` -> ``"7 (Linear)"``)."""
    labels = {}
    for name in names:
        layer = layer_of(name)
        bare = layer != name and all(part.isdigit() for part in layer.split("."))
        labels[name] = f"{layer} ({types[layer]})" if bare and layer in types else layer
    return labels


def _lr(value: Any) -> float | None:
    if isinstance(value, Tensor):
        return float(value)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def run_facts(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[..., Any],
    *,
    mode: str,
    batch: str,
    loss: str | None,
    types: dict[str, str],
) -> dict[str, Any]:
    """The ``record.json`` keys known when the run starts."""
    check_choice("reference_mode", mode, tuple(REFERENCE_MODES))
    check_choice("reference_batch", batch, tuple(REFERENCE_BATCHES))
    return {
        "model_class": type(model).__name__,
        "loss": loss if loss else loss_name(loss_fn),
        "reference_mode": mode,
        "reference_batch": batch,
        "param_groups": [
            {"lr": _lr(group.get("lr")), "n_tensors": len(group["params"])} for group in optimizer.param_groups
        ],
        "layer_types": types,
    }


_QUANTITY_WORDS = {
    "loss": "loss",
    "gradient": "gradient",
    "weight": "weight",
    "eta": "eta",
    "curvature": "curvature a",
    "intercept": "intercept b",
    "filter_cov_bb": "filter covariance P_bb",
    "filter_cov_ba": "filter covariance P_ba",
    "filter_cov_aa": "filter covariance P_aa",
    "precision": "precision pi",
}


def divergence_info(step: int, quantity: str, name: str | None, layer: str | None, tensor: Tensor) -> dict[str, Any]:
    """``record.json``'s ``"divergence"``: the first non-finite ``quantity`` of ``step`` (of the
    parameter ``name`` in ``layer``, or a scalar: the loss, eta), see :class:`arturo_diag.errors.Diverged`."""
    bad = ~torch.isfinite(tensor)
    count, nan = int(bad.sum()), int(torch.isnan(tensor).sum())
    words = f"non-finite {_QUANTITY_WORDS.get(quantity, quantity)} at step {step}"
    if name is None:  # a scalar: the loss or eta
        message = f"{words} ({'NaN' if nan else float(tensor.reshape(-1)[0])})"
    else:
        what = "NaN" if nan == count else ("inf" if nan == 0 else f"NaN or inf ({nan} NaN)")
        message = f"{words} in layer {layer} ({name}: {count} of {tensor.numel()} coordinates {what})"
    return {
        "step": step,
        "quantity": quantity,
        "parameter": name,
        "layer": layer if name is not None else None,
        "count": count,
        "numel": int(tensor.numel()),
        "kind": "nan" if nan else "inf",
        "message": message,
    }
