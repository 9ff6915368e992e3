"""The optimizers a run can train with, each declared once: :data:`OPTIMIZERS`, name -> :class:`OptimizerSpec`.

A spec says how to build the optimizer from a resolved :class:`~arturo_diag.training.config.RunConfig`,
how one training step goes for it (some need the gradients' graph, sampled weights or a second
loss), whether it keeps a curvature estimate (then a run takes reference snapshots and the Monitor
reads the estimate through :func:`arturo_diag.estimators.adapter_for`), and its hyperparameters
with where each value comes from. ``--optimizer``'s choices and help, the config's checks of the
``optimizer`` field and of the fields only some optimizers read, the resolution of unset fields and
the training loop all read this registry.

The optimizer's own hyperparameters (betas, eps, ``hess_init``, ``hessian_interval``, ...) are its
paper's or package's defaults (:data:`arturo_diag.estimators.defaults.DEFAULTS`); a run's ``lr``
and ``weight_decay`` override the two of them when given, and ``lr_gamma`` (unset: 0.1) schedules
``lr`` at ``lr_milestones`` as for every optimizer but arTuRO. arTuRO, SGD, Adam and AdamW build
exactly as before this registry (same numbers bit for bit).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor, nn

from arturo_diag.errors import ConfigError
from arturo_diag.estimators import AdaHessian, SophiaG, SophiaH, gnb_closure
from arturo_diag.estimators.defaults import DEFAULTS
from arturo_diag.optim import Arturo
from arturo_diag.optim.presets import LR_GAMMA, PRESET_NAMES, PRESETS

__all__ = [
    "OPTIMIZERS",
    "OptimizerSpec",
    "ARTURO_KEYS",
    "LossFn",
    "TrainStep",
    "optimizer_fields",
    "register_optimizer",
    "standard_step",
    "unregister_optimizer",
]

#: ``loss_fn(logits, targets)``, a mean loss (cross-entropy in the loop).
LossFn = Callable[[Tensor, Tensor], Tensor]
#: ``train_step(model, optimizer, loss_fn, x, y)``: zero the gradients, one forward and backward and
#: one optimizer step, the way that optimizer needs them; returns the step's loss (detached).
TrainStep = Callable[[nn.Module, torch.optim.Optimizer, LossFn, Tensor, Tensor], Tensor]

#: arTuRO's fields of a RunConfig that its preset fills in (``lr`` is the KL bound eps).
ARTURO_KEYS = (
    "lr",
    "reg_weight",
    "prior_prec",
    "var_init",
    "nu",
    "dynamic_model_noise",
    "measurement_noise",
    "start_filter_cov",
    "eta_tol",
    "weight_decay",
)

#: the step decay of every optimizer but arTuRO when ``lr_gamma`` is unset (lr x 0.1 at each milestone)
_STEP_DECAY = 0.1
_STEP_DECAY_SOURCE = "this project's baselines: lr x 0.1 at each of lr_milestones (epochs 6 and 9 by default)"


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimizer a run can train with.

    Attributes:
        name: the value of ``RunConfig.optimizer`` / ``--optimizer``.
        help: one line for ``--help``.
        build: ``build(config, model, num_train) -> optimizer`` from a resolved config
            (``num_train``: the training set's size; IVON's ``ess``; None where unknown).
        train_step: one training step (:data:`TrainStep`).
        has_estimate: it keeps a curvature estimate: a run takes reference snapshots (unless
            ``reference`` is none) and the Monitor reads the estimate with ``adapter_for``.
        hyperparameters: name -> ``{"value": ..., "source": ...}``, what the optimizer is built
            with when the config leaves ``lr`` and ``weight_decay`` unset.
        fields: RunConfig fields that only some optimizers read and this one does (``momentum``
            for SGD, arTuRO's filter settings, ...); a config giving one of them to another
            optimizer is refused as having no effect.
        resolve: the changes that fill the config's unset optimizer fields (what a record stores).
    """

    name: str
    help: str
    build: Callable[[Any, nn.Module, int | None], torch.optim.Optimizer]
    train_step: TrainStep
    has_estimate: bool
    hyperparameters: Mapping[str, Mapping[str, Any]]
    fields: tuple[str, ...] = ()
    resolve: Callable[[Any], dict[str, Any]] | None = None

    def resolved_changes(self, config: Any) -> dict[str, Any]:
        """The field changes that fill in ``config``'s unset ``lr``, ``weight_decay`` and ``lr_gamma``."""
        if self.resolve is not None:
            return self.resolve(config)
        return {
            "lr": config.lr if config.lr is not None else self.hyperparameters["lr"]["value"],
            "weight_decay": (
                config.weight_decay
                if config.weight_decay is not None
                else self.hyperparameters["weight_decay"]["value"]
            ),
            "lr_gamma": config.lr_gamma if config.lr_gamma is not None else _STEP_DECAY,
        }


# ---------------------------------------------------------------------------------------- train steps
def standard_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: LossFn, x: Tensor, y: Tensor) -> Tensor:
    """``zero_grad; loss = loss_fn(model(x), y); loss.backward(); optimizer.step()`` (arTuRO, SGD, Adam, AdamW)."""
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    loss.backward()
    optimizer.step()
    return loss.detach()


def _gradients_with_graph(model: nn.Module, loss: Tensor) -> None:
    """``p.grad`` = d loss / d p with its graph (as ``loss.backward(create_graph=True)`` gives, without
    the parameter <-> gradient reference cycle torch warns of): the Hessian-vector products of
    AdaHessian and Sophia-H differentiate it once more."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    for p, g in zip(params, grads):
        if g is not None:
            p.grad = g


def _release_graph(model: nn.Module) -> None:
    """Keep the gradients' values, drop their graph (it holds the whole forward pass until the next step)."""
    for p in model.parameters():
        if p.grad is not None and p.grad.grad_fn is not None:
            p.grad = p.grad.detach()


def adahessian_step(model: nn.Module, optimizer: Any, loss_fn: LossFn, x: Tensor, y: Tensor) -> Tensor:
    """Gradients with their graph every step (AdaHessian's Hutchinson probe z * Hz needs it), then ``step()``."""
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    _gradients_with_graph(model, loss)
    optimizer.step()
    _release_graph(model)
    return loss.detach()


def sophia_h_step(model: nn.Module, optimizer: Any, loss_fn: LossFn, x: Tensor, y: Tensor) -> Tensor:
    """Gradients with their graph on the steps whose ``step()`` takes a Hutchinson sample
    (``optimizer.hessian_due``: every ``hessian_interval``-th step, the first included), a plain
    backward on the others."""
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    if optimizer.hessian_due:
        _gradients_with_graph(model, loss)
    else:
        loss.backward()
    optimizer.step()
    _release_graph(model)
    return loss.detach()


def sophia_g_step(model: nn.Module, optimizer: Any, loss_fn: LossFn, x: Tensor, y: Tensor) -> Tensor:
    """A plain backward, then ``step(hessian_closure=gnb_closure(model, x))`` on the steps where the
    Gauss-Newton-Bartlett estimate is due (labels sampled from the model's own softmax on the same
    inputs, drawn from ``optimizer.generator``; one more forward and backward, Algorithm 2). The
    closure's forward runs in train mode, as the official code's does: a BatchNorm model's running
    statistics see the batch twice on those steps (the built-in small CNN and MLP have none)."""
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    loss.backward()
    closure = gnb_closure(model, x, generator=optimizer.generator) if optimizer.hessian_due else None
    optimizer.step(hessian_closure=closure)
    return loss.detach()


def ivon_step(model: nn.Module, optimizer: Any, loss_fn: LossFn, x: Tensor, y: Tensor) -> Tensor:
    """IVON's loop (ivon-opt README): for each of ``mc_samples`` weight samples
    ``with optimizer.sampled_params(train=True): zero_grad; loss = loss_fn(model(x), y); loss.backward()``,
    then ``optimizer.step()``. The returned loss is the mean over the samples, at the sampled
    weights (not at the mean, which the epoch's evaluation uses)."""
    losses = []
    for _ in range(optimizer.mc_samples):
        with optimizer.sampled_params(train=True):
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
        losses.append(loss.detach())
    optimizer.step()
    return losses[0] if len(losses) == 1 else torch.stack(losses).mean()


# ---------------------------------------------------------------------------------------- builders
def _probe_generator(config: Any) -> torch.Generator:
    """The stream of an optimizer's own random probes (Hutchinson z, Sophia-G's sampled labels):
    seeded by the run's seed, apart from the batch order's and the augmentation's streams."""
    generator = torch.Generator(device=torch.device(config.device))
    generator.manual_seed((config.seed * 1_000_003 + 17) % 2**63)
    return generator


def _own(name: str, *keys: str) -> dict[str, Any]:
    """The optimizer's own defaults (``DEFAULTS[name]``) for ``keys``."""
    return {key: DEFAULTS[name][key]["value"] for key in keys}


def _build_arturo(config: Any, model: nn.Module, num_train: int | None) -> torch.optim.Optimizer:
    return Arturo(list(model.parameters()), **config.arturo_kwargs())


def _build_sgd(config: Any, model: nn.Module, num_train: int | None) -> torch.optim.Optimizer:
    params = list(model.parameters())
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def _build_adam(config: Any, model: nn.Module, num_train: int | None) -> torch.optim.Optimizer:
    params = list(model.parameters())
    return torch.optim.Adam(params, lr=config.lr, betas=(config.beta1, config.beta2), weight_decay=config.weight_decay)


def _build_adamw(config: Any, model: nn.Module, num_train: int | None) -> torch.optim.Optimizer:
    params = list(model.parameters())
    return torch.optim.AdamW(params, lr=config.lr, betas=(config.beta1, config.beta2), weight_decay=config.weight_decay)


def _build_ivon(config: Any, model: nn.Module, num_train: int | None) -> torch.optim.Optimizer:
    try:
        import ivon
    except ImportError:
        raise ConfigError(
            "optimizer", "ivon", "another optimizer, or install ivon-opt (pip install 'arturo-diag[ivon]')"
        ) from None
    if num_train is None:
        raise ValueError("ivon: num_train (the training set's size, IVON's ess) is needed to build it")
    own = _own("ivon", "hess_init", "beta1", "beta2", "mc_samples", "hess_approx")
    return ivon.IVON(
        list(model.parameters()), lr=config.lr, ess=float(num_train), weight_decay=config.weight_decay, **own
    )


def _build_adahessian(config: Any, model: nn.Module, num_train: int | None) -> torch.optim.Optimizer:
    own = _own("adahessian", "betas", "eps", "hessian_power", "spatial_average")
    return AdaHessian(
        list(model.parameters()),
        lr=config.lr,
        weight_decay=config.weight_decay,
        generator=_probe_generator(config),
        **own,
    )


def _build_sophia_h(config: Any, model: nn.Module, num_train: int | None) -> torch.optim.Optimizer:
    own = _own("sophia-h", "betas", "gamma", "eps", "hessian_interval", "probe")
    return SophiaH(
        list(model.parameters()),
        lr=config.lr,
        weight_decay=config.weight_decay,
        generator=_probe_generator(config),
        **own,
    )


def _build_sophia_g(config: Any, model: nn.Module, num_train: int | None) -> torch.optim.Optimizer:
    own = _own("sophia-g", "betas", "gamma", "eps", "hessian_interval")
    optimizer = SophiaG(list(model.parameters()), lr=config.lr, weight_decay=config.weight_decay, **own)
    optimizer.generator = _probe_generator(config)  # draws the GNB's sampled labels (sophia_g_step)
    return optimizer


# ---------------------------------------------------------------------------------------- arTuRO's resolution
def _read_preset(name: str) -> dict[str, Any]:
    """A published preset in the shape of its TOML file (``[optimizer]``, ``[schedule]``).

    The optimizer declares the presets once (:mod:`arturo_diag.optim.presets`); the files in
    ``experiments/presets/`` are checked copies of it.
    """
    if name not in PRESETS:
        raise ConfigError("preset", name, "one of " + ", ".join(PRESET_NAMES))
    return {"optimizer": dict(PRESETS[name]), "schedule": {"lr_gamma": LR_GAMMA[name]}}


def _resolve_arturo(config: Any) -> dict[str, Any]:
    """Every unset arTuRO field from the config's preset, and the preset's lr_gamma."""
    preset = _read_preset(config.preset)
    changes = {key: preset["optimizer"][key] for key in ARTURO_KEYS if getattr(config, key) is None}
    if config.lr_gamma is None:
        changes["lr_gamma"] = preset.get("schedule", {}).get("lr_gamma", 0.006)
    return changes


# ---------------------------------------------------------------------------------------- the registry
def _with_sources(name: str, **changes: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """``DEFAULTS[name]`` (value and source of each hyperparameter) with ``changes`` on top, plus lr_gamma."""
    table = {key: MappingProxyType(dict(entry)) for key, entry in DEFAULTS.get(name, {}).items()}
    table.update({key: MappingProxyType(dict(entry)) for key, entry in changes.items()})
    table.setdefault("lr_gamma", MappingProxyType({"value": _STEP_DECAY, "source": _STEP_DECAY_SOURCE}))
    return table


_ARTURO_FIELDS = (
    "preset",
    *(k for k in ARTURO_KEYS if k not in ("lr", "weight_decay")),
    "kl",
    "dual",
    "fixed_eta",
    "guard",
    "oracle",
    "oracle_every",
)
_BEFORE = "this project's default before the optimizer registry (kept: same numbers)"
_TORCH = "torch.optim default"
_IVON_README = "ivon-opt 0.1.3 README's usage example (IVON(model.parameters(), lr=0.1, ess=len(train_dataset)))"

_K_H, _K_G = (DEFAULTS[name]["hessian_interval"]["value"] for name in ("sophia-h", "sophia-g"))

_SPECS = (
    OptimizerSpec(
        "arturo",
        "arTuRO, with snapshots",
        _build_arturo,
        standard_step,
        True,
        {
            "preset": {"value": "fmnist_cnn", "source": "RunConfig.preset; values: arturo_diag.optim.presets"},
            "lr_gamma": {"value": 0.006, "source": "the preset's LR_GAMMA (the paper's MultiStepLR factor)"},
        },
        fields=_ARTURO_FIELDS,
        resolve=_resolve_arturo,
    ),
    OptimizerSpec(
        "sgd",
        "SGD with momentum, trains without snapshots (no curvature estimate)",
        _build_sgd,
        standard_step,
        False,
        {
            "lr": {"value": 0.01, "source": _BEFORE + "; study configs name the published ones"},
            "momentum": {"value": 0.9, "source": "RunConfig.momentum"},
            "weight_decay": {"value": 0.0, "source": _TORCH},
            "lr_gamma": {"value": _STEP_DECAY, "source": _STEP_DECAY_SOURCE},
        },
        fields=("momentum",),
    ),
    OptimizerSpec(
        "adam",
        "Adam, with snapshots of its second moment v-hat",
        _build_adam,
        standard_step,
        True,
        _with_sources("adam", betas={"value": (0.9, 0.999), "source": _TORCH + " (RunConfig.beta1, beta2)"}),
        fields=("beta1", "beta2"),
    ),
    OptimizerSpec(
        "adamw",
        "AdamW, with snapshots of its second moment v-hat",
        _build_adamw,
        standard_step,
        True,
        _with_sources(
            "adamw",
            betas={"value": (0.9, 0.999), "source": _TORCH + " (RunConfig.beta1, beta2)"},
            weight_decay={"value": 0.0, "source": _BEFORE + "; torch's AdamW default is 1e-2"},
        ),
        fields=("beta1", "beta2"),
    ),
    OptimizerSpec(
        "ivon",
        "IVON (package ivon-opt), with snapshots of its Hessian estimate hess",
        _build_ivon,
        ivon_step,
        True,
        _with_sources(
            "ivon",
            lr={"value": 0.1, "source": _IVON_README},
            ess={
                "value": "the training set's size",
                "source": "IVON paper, arXiv 2402.17641 (ess = N); " + _IVON_README,
            },
        ),
    ),
    OptimizerSpec(
        "adahessian",
        "AdaHessian, a Hutchinson probe every step, with snapshots of its RMS of them",
        _build_adahessian,
        adahessian_step,
        True,
        _with_sources("adahessian"),
    ),
    OptimizerSpec(
        "sophia-h",
        f"Sophia-H, a Hutchinson probe every {_K_H} steps, with snapshots of its EMA h",
        _build_sophia_h,
        sophia_h_step,
        True,
        _with_sources("sophia-h"),
    ),
    OptimizerSpec(
        "sophia-g",
        f"Sophia-G, a Gauss-Newton-Bartlett sample every {_K_G} steps, with snapshots of its EMA h",
        _build_sophia_g,
        sophia_g_step,
        True,
        _with_sources("sophia-g"),
    ),
)

_REGISTRY: dict[str, OptimizerSpec] = {spec.name: spec for spec in _SPECS}
#: name -> spec, in the order ``--help`` lists them (the first is the default). A read-only view: a
#: new optimizer is one more entry of ``_SPECS``, or, from one's own code, :func:`register_optimizer`.
OPTIMIZERS: Mapping[str, OptimizerSpec] = MappingProxyType(_REGISTRY)


def register_optimizer(spec: OptimizerSpec) -> OptimizerSpec:
    """Add one's own optimizer to the registry: ``RunConfig(optimizer=spec.name)`` and
    :func:`arturo_diag.training.loop.run` then train with it (snapshots when ``has_estimate``; the
    Monitor reads the estimate through a :func:`arturo_diag.estimators.register_adapter` adapter).
    Register before ``cli`` is imported for it to appear in ``--optimizer``. Refuses a name taken."""
    if not isinstance(spec, OptimizerSpec):
        raise TypeError(f"register_optimizer: got {type(spec).__name__}; allowed: an OptimizerSpec")
    if spec.name in _REGISTRY:
        raise ValueError(f"register_optimizer: {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def unregister_optimizer(name: str) -> None:
    """Remove an optimizer :func:`register_optimizer` added (the built-in ones stay)."""
    if name in {spec.name for spec in _SPECS}:
        raise ValueError(f"unregister_optimizer: {name!r} is built in")
    _REGISTRY.pop(name, None)


def optimizer_fields() -> dict[str, tuple[str, ...]]:
    """Each RunConfig field that only some optimizers read -> the optimizers that read it."""
    users: dict[str, list[str]] = {}
    for spec in OPTIMIZERS.values():
        for field in spec.fields:
            users.setdefault(field, []).append(spec.name)
    return {field: tuple(names) for field, names in users.items()}
