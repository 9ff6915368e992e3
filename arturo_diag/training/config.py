"""The configuration of one run: a frozen dataclass, loaded from TOML, validated on load.

Every field is one CLI option of ``arturo-diag compare`` (``--batch-size`` is ``batch_size``).
In a TOML file the fields are grouped in sections for reading (``[run]``, ``[optimizer]``,
``[schedule]``, ``[diagnostics]``); a field in the wrong section or an unknown field is an error
that names it. Optimizer fields left unset (None) take the chosen preset's value; the resolved
config, every field filled in, is what a run record stores.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

from arturo_diag._toml import toml_value, tomllib
from arturo_diag.curvature.methods import EXACT_METHODS, ORACLES, REFERENCE_METHODS
from arturo_diag.errors import ConfigError
from arturo_diag.optim.arturo import DUAL_CHOICES, KL_CHOICES
from arturo_diag.optim.presets import LR_GAMMA, PRESET_NAMES, PRESETS

__all__ = [
    "RunConfig",
    "load_config",
    "config_to_toml",
    "SECTIONS",
    "ARTURO_KEYS",
    "OPTIMIZERS",
    "DTYPES",
    "LIMITS",
    "unused_fields",
    "check_used",
]

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
#: The run's word lists, each declared once: name -> one line for ``--help``. The reference methods
#: belong to :mod:`arturo_diag.curvature.methods`, ``kl``/``dual`` to the optimizer, the datasets to
#: :data:`~arturo_diag.training.datasets.DATASET_SPECS`, the models to ``training.models.MODELS``,
#: the presets to :mod:`arturo_diag.optim.presets`; the two below belong to the run itself.
OPTIMIZERS: Mapping[str, str] = MappingProxyType(
    {
        "arturo": "arTuRO, with snapshots",
        "sgd": "SGD with momentum, trains without snapshots",
        "adam": "Adam, trains without snapshots",
        "adamw": "AdamW, trains without snapshots",
    }
)
DTYPES: Mapping[str, str] = MappingProxyType(
    {"float32": "single precision", "float64": "double precision (slower; for checks)"}
)


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
    # [schedule]
    lr_milestones: tuple[int, ...] = (8,)  # epochs at which the KL bound (lr) is multiplied by gamma
    lr_gamma: float | None = None  # None: the preset's (0.006)
    # [diagnostics]
    every: int = 20  # snapshots cost ~15 ms each on the default: every 20 keeps diagnostics near 30 %
    reference: str = "exact"
    exact_method: str = "auto"
    samples: int = 64
    probe_size: int = 128
    collapse_fraction: float = 0.01

    def __post_init__(self) -> None:
        _validate(self)

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)

    def resolved(self) -> RunConfig:
        """The config with every optimizer field filled in from the preset (what a record stores)."""
        if self.optimizer != "arturo":
            return self.replace(
                lr=self.lr if self.lr is not None else _BASELINE_LR[self.optimizer],
                weight_decay=self.weight_decay if self.weight_decay is not None else 0.0,
                lr_gamma=self.lr_gamma if self.lr_gamma is not None else 0.1,
            )
        preset = _read_preset(self.preset)
        changes = {key: preset["optimizer"][key] for key in ARTURO_KEYS if getattr(self, key) is None}
        if self.lr_gamma is None:
            changes["lr_gamma"] = preset.get("schedule", {}).get("lr_gamma", 0.006)
        return self.replace(**changes)

    def arturo_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :class:`arturo_diag.optim.Arturo` (call on a resolved config)."""
        kwargs = {key: getattr(self, key) for key in ARTURO_KEYS}
        kwargs.update(kl=self.kl, dual=self.dual, fixed_eta=self.fixed_eta, guard=self.guard)
        return kwargs


#: Upper bounds of the integer fields, stated in the error: beyond them a run would not end in any
#: reasonable time or memory (10**7 steps take about 3 hours at 1 ms per step, the small CNN on
#: digits; a month for a CIFAR ResNet-34 on a CPU; the paper's longest protocol is ~24,000 steps).
LIMITS = {
    "epochs": 10**5,
    "steps": 10**7,
    "batch_size": 10**6,
    "train_size": 10**7,
    "every": 10**7,
    "samples": 10**5,
    "probe_size": 10**5,
    "oracle_every": 10**7,
}
#: At most this many steps in one run, epochs x batches per epoch included (checked once the data is known).
MAX_TOTAL_STEPS = LIMITS["steps"]

# Largest finite value of each dtype (numpy's finfo = torch's for these two).
_FLOAT_MAX = {"float32": 3.4028234663852886e38, "float64": 1.7976931348623157e308}

# Baseline learning rates when none is given (study configs name the published ones).
_BASELINE_LR = {"sgd": 0.01, "adam": 1e-3, "adamw": 1e-3}

#: TOML section of every field.
SECTIONS: dict[str, tuple[str, ...]] = {
    "run": (
        "model",
        "dataset",
        "data_dir",
        "epochs",
        "steps",
        "batch_size",
        "train_size",
        "seed",
        "device",
        "dtype",
        "out",
    ),
    "optimizer": (
        "optimizer",
        "preset",
        *ARTURO_KEYS,
        "kl",
        "dual",
        "fixed_eta",
        "guard",
        "oracle",
        "oracle_every",
        "momentum",
    ),
    "schedule": ("lr_milestones", "lr_gamma"),
    "diagnostics": ("every", "reference", "exact_method", "samples", "probe_size", "collapse_fraction"),
}


def _read_preset(name: str) -> dict[str, Any]:
    """A published preset in the shape of its TOML file (``[optimizer]``, ``[schedule]``).

    The optimizer declares the presets once (:mod:`arturo_diag.optim.presets`); the files in
    ``experiments/presets/`` are checked copies of it.
    """
    if name not in PRESETS:
        raise ConfigError("preset", name, "one of " + ", ".join(PRESET_NAMES))
    return {"optimizer": dict(PRESETS[name]), "schedule": {"lr_gamma": LR_GAMMA[name]}}


def _validate(c: RunConfig) -> None:
    from arturo_diag.training.datasets import DATASETS
    from arturo_diag.training.models import MODELS

    def one_of(name: str, declared: Iterable[str]) -> None:
        allowed = tuple(declared)  # a tuple: an unhashable value (a TOML list) is refused, not a TypeError
        if getattr(c, name) not in allowed:
            raise ConfigError(name, getattr(c, name), "one of " + ", ".join(allowed))

    def integer(name: str, minimum: int, optional: bool = False) -> None:
        value = getattr(c, name)
        if optional and value is None:
            return
        maximum = LIMITS.get(name)
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or value < minimum
            or (maximum is not None and value > maximum)
        ):
            allowed = f"an integer >= {minimum}" + (f" and <= {maximum:,}" if maximum is not None else "")
            raise ConfigError(name, value, allowed + (" or unset" if optional else ""))

    def number(name: str, minimum: float, strict: bool = False, optional: bool = True) -> None:
        value = getattr(c, name)
        if value is None and optional:
            return
        ok = (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(value)
            and (value > minimum if strict else value >= minimum)
        )
        if not ok:
            raise ConfigError(name, value, f"a finite number {'>' if strict else '>='} {minimum}")

    one_of("model", sorted(MODELS))
    one_of("dataset", DATASETS)
    one_of("optimizer", OPTIMIZERS)
    one_of("preset", PRESET_NAMES)
    one_of("kl", KL_CHOICES)
    one_of("dual", DUAL_CHOICES)
    one_of("reference", REFERENCE_METHODS)
    one_of("exact_method", EXACT_METHODS)
    one_of("oracle", ORACLES)
    one_of("dtype", DTYPES)
    integer("epochs", 1)
    integer("steps", 1, optional=True)
    integer("batch_size", 1)
    integer("train_size", 1, optional=True)
    integer("seed", 0)
    if c.seed >= 2**63:
        raise ConfigError("seed", c.seed, "an integer in [0, 2**63)")
    integer("every", 1)
    integer("samples", 2)
    integer("probe_size", 1)
    integer("oracle_every", 1)
    for name in ("lr", "reg_weight", "prior_prec", "nu", "dynamic_model_noise", "weight_decay", "fixed_eta"):
        number(name, 0.0)
    for name in ("var_init", "measurement_noise", "start_filter_cov", "eta_tol", "lr_gamma"):
        number(name, 0.0, strict=True)
    if c.var_init is not None and 1.0 / c.var_init > _FLOAT_MAX[c.dtype]:  # pi = 1/var_init must be finite
        raise ConfigError(
            "var_init",
            c.var_init,
            f"a number >= {1.0 / _FLOAT_MAX[c.dtype]:.3g} with dtype "
            f"{c.dtype} (the initial precision 1/var_init must be finite)",
        )
    number("momentum", 0.0, optional=False)
    number("collapse_fraction", 0.0, strict=True, optional=False)
    if not isinstance(c.guard, bool):
        raise ConfigError("guard", c.guard, "true or false")
    if not isinstance(c.out, str) or not c.out:
        raise ConfigError("out", c.out, "a directory path")
    if not isinstance(c.device, str) or not re.fullmatch(r"cpu|cuda(:[0-9]{1,4})?", c.device):
        raise ConfigError("device", c.device, "cpu, cuda or cuda:N (N a device number)")
    if c.data_dir is not None and (not isinstance(c.data_dir, str) or not c.data_dir):
        raise ConfigError("data_dir", c.data_dir, "a directory path (a string) or unset")
    milestones = c.lr_milestones
    if (
        not isinstance(milestones, tuple)
        or not all(isinstance(m, int) and not isinstance(m, bool) and m >= 1 for m in milestones)
        or list(milestones) != sorted(set(milestones))
    ):
        raise ConfigError(
            "lr_milestones",
            list(milestones) if isinstance(milestones, tuple) else milestones,
            "increasing whole epochs >= 1",
        )
    if c.oracle != "none" and c.optimizer != "arturo":
        raise ConfigError("oracle", c.oracle, "none unless optimizer is arturo")


_FIELD_NAMES = tuple(f.name for f in fields(RunConfig))
_DEFAULTS = {f.name: f.default for f in fields(RunConfig)}
# arTuRO's own fields: a baseline optimizer (SGD, Adam, AdamW) never reads them.
_ARTURO_ONLY = (
    "preset",
    *(k for k in ARTURO_KEYS if k not in ("lr", "weight_decay")),
    "kl",
    "dual",
    "fixed_eta",
    "guard",
    "oracle_every",
)


def unused_fields(config: RunConfig) -> list[tuple[str, Any, str]]:
    """Fields of an unresolved config set to something other than their default that the run would
    ignore, as ``(field, value, when it applies)``; e.g. ``fixed_eta`` with ``optimizer = "sgd"``.

    Only values that really have no effect are listed (``every`` and ``probe_size`` only schedule
    snapshots and are left alone). ``arturo-diag compare`` refuses the first; a study's setups are
    shared by all its variants, so the grid does not call this.
    """
    unused: list[tuple[str, Any, str]] = []

    def given(name: str) -> bool:
        return getattr(config, name) != _DEFAULTS[name]

    if config.optimizer != "sgd" and given("momentum"):
        unused.append(("momentum", config.momentum, "unset unless optimizer is sgd (it would be ignored)"))
    if config.optimizer != "arturo":
        for name in _ARTURO_ONLY:
            if given(name):
                unused.append(
                    (
                        name,
                        getattr(config, name),
                        f"unset with optimizer {config.optimizer} (an arturo option; it would be ignored)",
                    )
                )
        if config.reference in ("hutchinson", "both"):
            unused.append(
                (
                    "reference",
                    config.reference,
                    f"none with optimizer {config.optimizer} (baselines train without reference snapshots)",
                )
            )
        for name in ("exact_method", "samples"):
            if given(name):
                unused.append(
                    (
                        name,
                        getattr(config, name),
                        f"unset with optimizer {config.optimizer} (baselines take no reference snapshots)",
                    )
                )
        return unused
    if config.oracle == "none" and given("oracle_every"):
        unused.append(("oracle_every", config.oracle_every, "unset unless oracle is exact or hutchinson"))
    if config.fixed_eta is not None:
        for name in ("dual", "eta_tol"):
            if given(name):
                unused.append((name, getattr(config, name), "unset with fixed_eta (no dual solve: eta is fixed)"))
    elif config.dual == "exact" and given("eta_tol"):
        unused.append(("eta_tol", config.eta_tol, "unset with dual exact (eta_tol is the bisection's tolerance)"))
    if given("samples") and config.reference not in ("hutchinson", "both") and config.oracle != "hutchinson":
        unused.append(("samples", config.samples, "unset unless reference or oracle is hutchinson (or both)"))
    if given("exact_method") and config.reference not in ("exact", "both") and config.oracle != "exact":
        unused.append(("exact_method", config.exact_method, "unset unless reference or oracle is exact (or both)"))
    return unused


def check_used(config: RunConfig) -> None:
    """Raise :class:`ConfigError` for the first of :func:`unused_fields` (an option that would be ignored)."""
    for name, value, allowed in unused_fields(config):
        raise ConfigError(name, value, allowed)


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
    if "lr_milestones" in changes and isinstance(changes["lr_milestones"], list):
        changes["lr_milestones"] = tuple(changes["lr_milestones"])
    try:
        return dataclasses.replace(base or RunConfig(), **changes)
    except ConfigError as error:  # a bad value of a file: name the file (and the setup) too
        if source == "option" or error.field not in changes:
            raise
        raise ConfigError(f"{source}: {error.field}", error.value, error.allowed) from None


_MAX_TOML_BYTES = 16 * 2**20


def read_toml(path: str | Path, what: str = "TOML file") -> dict[str, Any]:
    """Parse a TOML file; a missing, unreadable or malformed one is a ConfigError naming it."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = f.read(_MAX_TOML_BYTES + 1)  # bounded: /dev/zero or a huge file is refused, not read
    except FileNotFoundError:
        raise ConfigError("config", str(path), f"an existing {what}") from None
    except IsADirectoryError:
        raise ConfigError("config", str(path), f"a {what}, not a directory") from None
    except OSError as error:
        raise ConfigError("config", str(path), f"a readable file ({error.strerror})") from None
    if len(data) > _MAX_TOML_BYTES:
        raise ConfigError("config", str(path), f"a {what} of at most {_MAX_TOML_BYTES // 2**20} MiB")
    try:
        text = data.decode("utf-8-sig")  # a leading UTF-8 byte-order mark (Windows editors) is accepted
    except UnicodeDecodeError as error:
        raise ConfigError(
            "config",
            str(path),
            f"a {what} in UTF-8 (byte 0x{data[error.start]:02x} at offset "
            f"{error.start} is not UTF-8: binary or another encoding)",
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError("config", str(path), f"valid TOML ({error})") from None


def load_config(path: str | Path, base: RunConfig | None = None) -> RunConfig:
    """Read a TOML config file; errors name the file and the field."""
    return config_from_mapping(read_toml(path), base, source=str(path))


def config_to_toml(config: RunConfig) -> str:
    """TOML text of a config; unset fields are written as comments so the file stays loadable."""
    lines = ["# arturo-diag run configuration (resolved)"]
    for section, names in SECTIONS.items():
        lines.append(f"\n[{section}]")
        for name in names:
            value = getattr(config, name)
            lines.append(f"# {name} = (unset)" if value is None else f"{name} = {toml_value(value)}")
    return "\n".join(lines) + "\n"
