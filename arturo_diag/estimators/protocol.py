"""The curvature-estimate protocol: what an optimizer claims about the curvature, per parameter.

An optimizer that keeps an online diagonal curvature estimate (arTuRO's ``a``, IVON's ``hess``,
Adam's ``v``, AdaHessian's and Sophia's Hessian EMAs) is read through a :class:`CurvatureAdapter`
into one :class:`CurvatureEstimate`: a tensor per parameter name, optionally the variance the
method claims for it, what quantity it estimates (``target``) and how it is scaled (``scale``),
so that a report compares like with like (Adam's ``v`` against the empirical Fisher diagonal,
not against ``diag H``, and says so).

Adapters are found by :func:`adapter_for`; a user's own adapter is added with
:func:`register_adapter` and is tried before the built-in ones::

    class MyAdapter:
        name = "my-optimizer"
        def matches(self, optimizer):
            return isinstance(optimizer, MyOptimizer)
        def estimate(self, optimizer, named_parameters):
            est = {n: optimizer.state[p]["h"].detach().clone()
                   for n, p in named_parameters if "h" in optimizer.state[p]}
            return CurvatureEstimate(estimate=est, target="hessian_diagonal",
                                     scale="EMA of Hutchinson samples", optimizer=self.name)

    register_adapter(MyAdapter())
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from torch import Tensor
from torch.optim import Optimizer

__all__ = [
    "TARGETS",
    "CurvatureEstimate",
    "CurvatureAdapter",
    "EstimatorError",
    "register_adapter",
    "unregister_adapter",
    "adapter_for",
    "registered_adapters",
    "named_state",
]

#: What an estimate estimates. ``hessian_diagonal``: diag of the Hessian of the training loss;
#: ``ggn_diagonal``: diag of the generalized Gauss-Newton matrix; ``fisher_diagonal``: diag of the
#: (model) Fisher, labels drawn from the model; ``gradient_second_moment``: E[g * g] of the
#: gradient the optimizer sees (the empirical-Fisher proxy, uncentered).
TARGETS = ("hessian_diagonal", "ggn_diagonal", "fisher_diagonal", "gradient_second_moment")


class EstimatorError(ValueError):
    """A curvature estimate could not be read (no adapter, bad shape, missing hook)."""


@dataclass(frozen=True)
class CurvatureEstimate:
    """An optimizer's diagonal curvature estimate at one step, keyed by parameter name.

    Attributes:
        estimate: per parameter name, a tensor shaped like the parameter (a detached copy: later
            steps do not change it).
        target: one of :data:`TARGETS`: what the estimate estimates.
        scale: the scale convention in words (e.g. "E[g_batch^2] of batch-mean gradients, not the
            per-sample Fisher", "RMS over time of |Hutchinson sample|").
        optimizer: the adapter's name (``"arturo"``, ``"adam"``, ...).
        variance: per name, the variance the method itself claims for ``estimate`` (arTuRO's
            ``P_aa``), or None where the method claims none.
        step: the optimizer's step count when read (None if it keeps none).
        extras: further per-parameter quantities, each ``{kind: {name: tensor}}`` (e.g. IVON's
            posterior variance of the weights, Adam's first moment, Sophia's debiased EMA).
        missing: names given that have no estimate (not in the optimizer, or no state yet).
    """

    estimate: dict[str, Tensor]
    target: str
    scale: str
    optimizer: str
    variance: dict[str, Tensor] | None = None
    step: int | None = None
    extras: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    missing: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise EstimatorError(f"target: got {self.target!r}; allowed: {', '.join(TARGETS)}")
        for kind, table in [("variance", self.variance or {})] + list(self.extras.items()):
            for name, value in table.items():
                if name not in self.estimate:
                    raise EstimatorError(f"{kind}: {name!r} has no estimate")
                if tuple(value.shape) != tuple(self.estimate[name].shape):
                    raise EstimatorError(
                        f"{kind}: {name!r} is shaped {tuple(value.shape)}, "
                        f"the estimate {tuple(self.estimate[name].shape)}"
                    )


@runtime_checkable
class CurvatureAdapter(Protocol):
    """Reads one kind of optimizer's curvature estimate (see the module docstring for an example)."""

    name: str

    def matches(self, optimizer: Optimizer) -> bool:
        """True if this adapter can read ``optimizer``."""
        ...

    def estimate(self, optimizer: Optimizer, named_parameters: Iterable[tuple[str, Tensor]]) -> CurvatureEstimate:
        """The estimate for the parameters in ``named_parameters`` (e.g. ``model.named_parameters()``)."""
        ...


_USER: list[Any] = []  # registered by users, newest first
_BUILTIN: list[Any] = []  # the package's own, in registration order


def register_adapter(adapter: CurvatureAdapter, *, builtin: bool = False) -> CurvatureAdapter:
    """Add ``adapter``; user adapters are tried before the built-in ones, the newest first.

    An adapter registered under a name already present replaces it. Returns the adapter.
    """
    if not isinstance(adapter, CurvatureAdapter) or not isinstance(getattr(adapter, "name", None), str):
        raise EstimatorError(f"adapter: {adapter!r} lacks a str `name` or `matches`/`estimate` methods")
    unregister_adapter(adapter.name, builtin=builtin)
    if builtin:
        _BUILTIN.append(adapter)
    else:
        _USER.insert(0, adapter)
    return adapter


def unregister_adapter(name: str, *, builtin: bool = False) -> None:
    """Remove the adapter named ``name`` (no-op if absent)."""
    table = _BUILTIN if builtin else _USER
    table[:] = [a for a in table if a.name != name]


def registered_adapters() -> list[CurvatureAdapter]:
    """All adapters in the order :func:`adapter_for` tries them."""
    return list(_USER) + list(_BUILTIN)


def adapter_for(optimizer: Optimizer) -> CurvatureAdapter:
    """The first registered adapter whose ``matches(optimizer)`` is true."""
    for adapter in registered_adapters():
        if adapter.matches(optimizer):
            return adapter
    names = ", ".join(a.name for a in registered_adapters())
    raise EstimatorError(
        f"optimizer: no curvature adapter matches {type(optimizer).__name__}; "
        f"registered: {names} (add one with register_adapter)"
    )


def named_state(
    optimizer: Optimizer, named_parameters: Iterable[tuple[str, Tensor]], keys: tuple[str, ...]
) -> tuple[dict[str, Mapping[str, Any]], tuple[str, ...]]:
    """Per name, the optimizer's state of that parameter if it holds all ``keys``; and the rest."""
    found: dict[str, Mapping[str, Any]] = {}
    missing: list[str] = []
    for name, p in named_parameters:
        state = optimizer.state.get(p) if isinstance(p, Tensor) else None
        if state is not None and all(k in state for k in keys):
            found[name] = state
        else:
            missing.append(name)
    return found, tuple(missing)
