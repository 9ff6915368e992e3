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
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from arturo_diag.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["RunConfig", "load_config", "config_to_toml", "SECTIONS", "ARTURO_KEYS", "OPTIMIZERS"]

ARTURO_KEYS = ("lr", "reg_weight", "prior_prec", "var_init", "nu", "dynamic_model_noise",
               "measurement_noise", "start_filter_cov", "eta_tol", "weight_decay")
OPTIMIZERS = ("arturo", "sgd", "adam", "adamw")
REFERENCES = ("exact", "hutchinson", "both", "none")
EXACT_METHODS = ("auto", "ggn", "hvp")
ORACLES = ("none", "exact", "hutchinson")
DTYPES = ("float32", "float64")
PRESET_NAMES = ("fmnist_cnn", "fmnist_resnet18", "cifar10_cnn", "cifar100_cnn", "cifar10_resnet34", "cifar100_resnet34")


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

    def replace(self, **changes: Any) -> "RunConfig":
        return dataclasses.replace(self, **changes)

    def resolved(self) -> "RunConfig":
        """The config with every optimizer field filled in from the preset (what a record stores)."""
        if self.optimizer != "arturo":
            return self.replace(lr=self.lr if self.lr is not None else _BASELINE_LR[self.optimizer],
                                weight_decay=self.weight_decay if self.weight_decay is not None else 0.0,
                                lr_gamma=self.lr_gamma if self.lr_gamma is not None else 0.1)
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


# Largest finite value of each dtype (numpy's finfo = torch's for these two).
_FLOAT_MAX = {"float32": 3.4028234663852886e38, "float64": 1.7976931348623157e308}

# Baseline learning rates when none is given (study configs name the published ones).
_BASELINE_LR = {"sgd": 0.01, "adam": 1e-3, "adamw": 1e-3}

#: TOML section of every field.
SECTIONS: dict[str, tuple[str, ...]] = {
    "run": ("model", "dataset", "data_dir", "epochs", "steps", "batch_size", "train_size", "seed",
            "device", "dtype", "out"),
    "optimizer": ("optimizer", "preset", *ARTURO_KEYS, "kl", "dual", "fixed_eta", "guard", "oracle",
                  "oracle_every", "momentum"),
    "schedule": ("lr_milestones", "lr_gamma"),
    "diagnostics": ("every", "reference", "exact_method", "samples", "probe_size", "collapse_fraction"),
}


def _read_preset(name: str) -> dict[str, Any]:
    from arturo_diag.optim.arturo import _preset_dirs  # the optimizer owns the preset files

    for directory in _preset_dirs():
        path = directory / f"{name}.toml"
        if path.is_file():
            with path.open("rb") as f:
                return tomllib.load(f)
    raise ConfigError("preset", name, "one of " + ", ".join(PRESET_NAMES))


def _validate(c: RunConfig) -> None:
    from arturo_diag.training.data import DATASETS
    from arturo_diag.training.models import MODELS

    def one_of(name: str, allowed: tuple[str, ...] | list[str]) -> None:
        if getattr(c, name) not in allowed:
            raise ConfigError(name, getattr(c, name), "one of " + ", ".join(allowed))

    def integer(name: str, minimum: int, optional: bool = False) -> None:
        value = getattr(c, name)
        if optional and value is None:
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(name, value, f"an integer >= {minimum}" + (" or unset" if optional else ""))

    def number(name: str, minimum: float, strict: bool = False, optional: bool = True) -> None:
        value = getattr(c, name)
        if value is None and optional:
            return
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
              and (value > minimum if strict else value >= minimum))
        if not ok:
            raise ConfigError(name, value, f"a finite number {'>' if strict else '>='} {minimum}")

    one_of("model", sorted(MODELS))
    one_of("dataset", DATASETS)
    one_of("optimizer", OPTIMIZERS)
    one_of("preset", PRESET_NAMES)
    one_of("kl", ("decoupled", "coupled"))
    one_of("dual", ("bisection", "exact"))
    one_of("reference", REFERENCES)
    one_of("exact_method", EXACT_METHODS)
    one_of("oracle", ORACLES)
    one_of("dtype", DTYPES)
    integer("epochs", 1)
    integer("steps", 1, optional=True)
    integer("batch_size", 1)
    integer("train_size", 1, optional=True)
    integer("seed", 0)
    integer("every", 1)
    integer("samples", 2)
    integer("probe_size", 1)
    integer("oracle_every", 1)
    for name in ("lr", "reg_weight", "prior_prec", "nu", "dynamic_model_noise", "weight_decay", "fixed_eta"):
        number(name, 0.0)
    for name in ("var_init", "measurement_noise", "start_filter_cov", "eta_tol", "lr_gamma"):
        number(name, 0.0, strict=True)
    if c.var_init is not None and 1.0 / c.var_init > _FLOAT_MAX[c.dtype]:  # pi = 1/var_init must be finite
        raise ConfigError("var_init", c.var_init, f"a number >= {1.0 / _FLOAT_MAX[c.dtype]:.3g} with dtype "
                          f"{c.dtype} (the initial precision 1/var_init must be finite)")
    number("momentum", 0.0, optional=False)
    number("collapse_fraction", 0.0, strict=True, optional=False)
    if not isinstance(c.guard, bool):
        raise ConfigError("guard", c.guard, "true or false")
    if not isinstance(c.out, str) or not c.out:
        raise ConfigError("out", c.out, "a directory path")
    if not (c.device == "cpu" or c.device == "cuda" or c.device.startswith("cuda:")):
        raise ConfigError("device", c.device, "cpu, cuda or cuda:N")
    milestones = c.lr_milestones
    if not isinstance(milestones, tuple) or not all(isinstance(m, int) and not isinstance(m, bool) and m >= 1
                                                    for m in milestones) or list(milestones) != sorted(set(milestones)):
        raise ConfigError("lr_milestones", list(milestones) if isinstance(milestones, tuple) else milestones,
                          "increasing whole epochs >= 1")
    if c.oracle != "none" and c.optimizer != "arturo":
        raise ConfigError("oracle", c.oracle, "none unless optimizer is arturo")


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
    if "lr_milestones" in changes and isinstance(changes["lr_milestones"], list):
        changes["lr_milestones"] = tuple(changes["lr_milestones"])
    return dataclasses.replace(base or RunConfig(), **changes)


def read_toml(path: str | Path, what: str = "TOML file") -> dict[str, Any]:
    """Parse a TOML file; a missing, unreadable or malformed one is a ConfigError naming it."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError("config", str(path), f"an existing {what}") from None
    except IsADirectoryError:
        raise ConfigError("config", str(path), f"a {what}, not a directory") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError("config", str(path), f"valid TOML ({error})") from None
    except OSError as error:
        raise ConfigError("config", str(path), f"a readable file ({error.strerror})") from None


def load_config(path: str | Path, base: RunConfig | None = None) -> RunConfig:
    """Read a TOML config file; errors name the file and the field."""
    return config_from_mapping(read_toml(path), base, source=str(path))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def config_to_toml(config: RunConfig) -> str:
    """TOML text of a config; unset fields are written as comments so the file stays loadable."""
    lines = ["# arturo-diag run configuration (resolved)"]
    for section, names in SECTIONS.items():
        lines.append(f"\n[{section}]")
        for name in names:
            value = getattr(config, name)
            lines.append(f"# {name} = (unset)" if value is None else f"{name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"
