"""The configuration of one run: a frozen dataclass, loaded from TOML, validated on load.

Every field is one CLI option of ``arturo-diag compare`` (``--batch-size`` is ``batch_size``).
In a TOML file the fields are grouped in sections for reading (``[run]``, ``[optimizer]``,
``[schedule]``, ``[diagnostics]``); a field in the wrong section or an unknown field is an error
that names it. Optimizer fields left unset (None) take the chosen preset's value (arTuRO) or the
optimizer's default (:data:`~arturo_diag.training.optimizers.OPTIMIZERS`, with their sources); the
resolved config, every field filled in, is what a run record stores.

The field checks and word lists are in :mod:`._config_checks`, the TOML reading and writing in
:mod:`._config_toml`; their public names are imported from here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from arturo_diag.errors import ConfigError
from arturo_diag.training._config_checks import (
    DTYPES,
    LIMITS,
    MAX_TOTAL_STEPS,
    check_used,
    unused_fields,
    validate,
)
from arturo_diag.training._config_toml import SECTIONS, config_to_toml, read_toml
from arturo_diag.training.optimizers import ARTURO_KEYS, OPTIMIZERS

__all__ = [
    "RunConfig",
    "load_config",
    "config_to_toml",
    "SECTIONS",
    "ARTURO_KEYS",
    "OPTIMIZERS",
    "DTYPES",
    "LIMITS",
    "MAX_TOTAL_STEPS",
    "unused_fields",
    "check_used",
    "config_from_mapping",
    "read_toml",
]


@dataclass(frozen=True)
class RunConfig:
    """One training run with snapshots (``arturo-diag compare``), or one cell of a study."""

    # [run]
    model: str = "small_cnn"
    dataset: str = "digits"
    data_dir: str | None = None
    epochs: int = 12
    steps: int | None = None  # if set, the run stops after this many steps (overrides epochs)
    batch_size: int = 64
    train_size: int | None = None  # keep only the first N training examples (quick runs)
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    out: str = "runs/compare"
    # [optimizer]
    optimizer: str = "arturo"
    preset: str = "fmnist_cnn"
    lr: float | None = None
    reg_weight: float | None = None
    prior_prec: float | None = None
    var_init: float | None = None
    nu: float | None = None
    dynamic_model_noise: float | None = None
    measurement_noise: float | None = None
    start_filter_cov: float | None = None
    eta_tol: float | None = None
    weight_decay: float | None = None
    kl: str = "decoupled"
    dual: str = "bisection"
    fixed_eta: float | None = None
    guard: bool = False
    oracle: str = "none"  # replace a by the reference curvature of the minibatch (ablation)
    oracle_every: int = 1
    momentum: float = 0.9  # SGD baseline only
    beta1: float = 0.9  # Adam/AdamW baselines only (torch's default betas)
    beta2: float = 0.999  # Adam/AdamW baselines only
    # [schedule]
    # The default protocol (shared by `compare` and the default study, experiments/studies/default.toml):
    # the paper's Fashion-MNIST protocol scaled by 1/10, 12 epochs with the drops at 6 and 9 (its 60, 90).
    lr_milestones: tuple[int, ...] = (6, 9)  # epochs at which the KL bound (lr) is multiplied by gamma
    lr_gamma: float | None = None  # None: the preset's (0.006) for arturo, 0.1 for the others (training/optimizers.py)
    # [diagnostics]
    every: int = 10  # snapshots cost ~15 ms each on the default: 27 snapshots, diagnostics about half the time
    reference: str = "exact"
    reference_mode: str = "eval"  # the model's mode for h: eval (running statistics) or train (batch statistics)
    reference_batch: str = "probe"  # h on the fixed probe batch, or on the step's minibatch
    # run at snapshots beside h (curvature/instruments.py)
    instruments: tuple[str, ...] = ("noise", "spectrum", "innovation", "alpha")
    exact_method: str = "auto"
    samples: int = 64
    probe_size: int = 128
    collapse_fraction: float = 0.01
    # snapshot size (issue 15): the arrays' dtype, coordinates kept per tensor (0: all), TensorBoard events
    snapshot_dtype: str = "auto"
    subsample: int = 0
    tensorboard: bool = False

    def __post_init__(self) -> None:
        validate(self)

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)

    def resolved(self) -> RunConfig:
        """The config with every optimizer field filled in (what a record stores): arTuRO's from the
        preset, another optimizer's ``lr``/``weight_decay``/``lr_gamma`` from its spec in
        :data:`~arturo_diag.training.optimizers.OPTIMIZERS`."""
        return self.replace(**OPTIMIZERS[self.optimizer].resolved_changes(self))

    def arturo_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :class:`arturo_diag.optim.Arturo` (call on a resolved config)."""
        kwargs = {key: getattr(self, key) for key in ARTURO_KEYS}
        kwargs.update(kl=self.kl, dual=self.dual, fixed_eta=self.fixed_eta, guard=self.guard)
        return kwargs


_FIELD_NAMES = tuple(f.name for f in fields(RunConfig))


def config_from_mapping(data: Mapping[str, Any], base: RunConfig | None = None, *, source: str = "config") -> RunConfig:
    """Build a config from TOML-shaped data (sections, or flat keys), on top of ``base``.

    Unknown sections and keys, and keys in the wrong section, raise :class:`ConfigError` naming them.
    """
    changes: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            if key not in SECTIONS:
                raise ConfigError(f"{source}: [{key}]", key, "sections " + ", ".join(f"[{s}]" for s in SECTIONS))
            for name, item in value.items():
                if name not in SECTIONS[key]:
                    where = next((s for s, names in SECTIONS.items() if name in names), None)
                    hint = f"it belongs in [{where}]" if where else "known keys: " + ", ".join(SECTIONS[key])
                    raise ConfigError(f"{source}: [{key}] {name}", item, hint)
                changes[name] = item
        elif key in _FIELD_NAMES:
            changes[key] = value
        else:
            raise ConfigError(f"{source}: {key}", value, "a known field or section")
    for name in ("lr_milestones", "instruments"):  # TOML arrays are lists
        if name in changes and isinstance(changes[name], list):
            changes[name] = tuple(changes[name])
    base = base or RunConfig()
    _default_dataset(changes, base)
    try:
        return dataclasses.replace(base, **changes)
    except ConfigError as error:  # a bad value of a file: name the file (and the setup) too
        if source == "option" or error.field not in changes:
            raise
        raise ConfigError(f"{source}: {error.field}", error.value, error.allowed) from None


def _default_dataset(changes: dict[str, Any], base: RunConfig) -> None:
    """A model named without a dataset, whose base's dataset it cannot read, runs on the default
    dataset of its kind of input (``model = "transformer"`` alone: ``chars``; an image model on top
    of a ``chars`` base: ``digits``). A dataset named with it is kept (an incompatible one is refused)."""
    from arturo_diag.training.datasets import DATASET_SPECS
    from arturo_diag.training.models import DEFAULT_DATASETS, MODELS, model_inputs

    model = changes.get("model")
    if "dataset" in changes or not isinstance(model, str) or model not in MODELS:
        return
    spec = DATASET_SPECS.get(base.dataset)
    if spec is not None and spec.inputs != model_inputs(model):
        changes["dataset"] = DEFAULT_DATASETS[model_inputs(model)]


def load_config(path: str | Path, base: RunConfig | None = None) -> RunConfig:
    """Read a TOML config file; errors name the file and the field."""
    return config_from_mapping(read_toml(path), base, source=str(path))
