"""The hyperparameters of the baseline variants (``sgd``, ``adam``, ``adamw``), per setup, from
``experiments/baselines.toml``: the authors' tuned settings for the paper's setups (ARTURO.md,
"The paper's experiments"), keyed by their (dataset, model), and the top-level tables for every
other setup (the built-in digits: chosen on a validation split by
``experiments/tune_digits_baselines.py``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arturo_diag._toml import tomllib
from arturo_diag.errors import ConfigError
from arturo_diag.study.variants import VARIANT_SPECS, _find_experiment_file, _kinds

__all__ = ["Baselines", "check_baseline_table", "load_baselines", "load_setup_baselines", "baselines_for"]


@dataclass(frozen=True)
class Baselines:
    """Hyperparameters of the baseline variants: optimizer -> {field: value}, and where they come from."""

    values: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    source: str = ""

    def merged(self, overrides: Mapping[str, Any] | None, *, where: str) -> Baselines:
        """These values with a TOML table of overrides (``{sgd: {lr: ...}, source: "..."}``) on top."""
        if not overrides:
            return self
        checked = check_baseline_table(overrides, where=where)
        values = {opt: dict(self.values.get(opt, {})) for opt in _kinds("baseline")}
        for opt, table in checked.items():
            if opt != "source":
                values[opt].update(table)
        source = checked.get("source") or (self.source + f" Overridden in {where}.")
        return Baselines(values, source)


def check_baseline_table(table: Mapping[str, Any], *, where: str) -> dict[str, Any]:
    """Validate ``{source?, sgd?: {...}, adam?: {...}, adamw?: {...}}``; errors name the key."""
    if not isinstance(table, Mapping):
        raise ConfigError(where, table, "a table of [sgd], [adam], [adamw] and a source string")
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key == "source":
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"{where}: source", value, "a non-empty string naming where the values come from")
            out["source"] = value
            continue
        if key not in _kinds("baseline"):
            raise ConfigError(f"{where}: {key}", value, "source, " + ", ".join(_kinds("baseline")))
        allowed = VARIANT_SPECS[key].baseline_fields
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: {key}", value, "a table of " + ", ".join(allowed))
        fields_ = {}
        for name, item in value.items():
            if name not in allowed:
                raise ConfigError(f"{where}: [{key}] {name}", item, ", ".join(allowed))
            ok = isinstance(item, (int, float)) and not isinstance(item, bool) and math.isfinite(item) and item >= 0
            if not ok or (name in ("lr", "lr_gamma") and item <= 0):
                raise ConfigError(
                    f"{where}: [{key}] {name}",
                    item,
                    "a finite number " + ("> 0" if name in ("lr", "lr_gamma") else ">= 0"),
                )
            fields_[name] = float(item)
        out[key] = fields_
    return out


def _read_baselines_file(path: str | Path | None) -> tuple[Path, dict[str, Any]]:
    path = Path(path) if path is not None else _find_experiment_file("baselines.toml")
    try:
        with path.open("rb") as f:
            return path, tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConfigError("baselines", str(path), f"a readable TOML file ({error})") from None


def _baselines_of(table: Mapping[str, Any], where: str) -> Baselines:
    checked = check_baseline_table(table, where=where)
    if "source" not in checked:
        raise ConfigError(f"{where}: source", None, "a string naming where the values come from")
    return Baselines({opt: checked.get(opt, {}) for opt in _kinds("baseline")}, checked["source"])


def load_baselines(path: str | Path | None = None) -> Baselines:
    """The top-level baseline hyperparameters of ``experiments/baselines.toml`` (or ``path``): those of
    a setup that is none of the paper's (the built-in digits: chosen on a validation split)."""
    path, data = _read_baselines_file(path)
    data = {k: v for k, v in data.items() if k != "setups"}
    return _baselines_of(data, str(path))


def load_setup_baselines(path: str | Path | None = None) -> dict[str, tuple[str, str, Baselines]]:
    """The per-setup tables of ``experiments/baselines.toml``: name -> (dataset, model, baselines);
    the authors' tuned settings for the paper's setups (ARTURO.md, "The paper's experiments")."""
    path, data = _read_baselines_file(path)
    setups = data.get("setups", {})
    if not isinstance(setups, Mapping):
        raise ConfigError(f"{path}: setups", setups, "[setups.NAME] tables")
    out: dict[str, tuple[str, str, Baselines]] = {}
    for name, table in setups.items():
        where = f"{path}: [setups.{name}]"
        if not isinstance(table, Mapping):
            raise ConfigError(where, table, "a table with dataset, model, source, [sgd], [adam], [adamw]")
        table = dict(table)
        keys = (table.pop("dataset", None), table.pop("model", None))
        if not all(isinstance(k, str) and k for k in keys):
            raise ConfigError(f"{where} dataset/model", keys, "the dataset and model names the values are for")
        out[str(name)] = (keys[0], keys[1], _baselines_of(table, where))
    return out


def baselines_for(dataset: str, model: str, path: str | Path | None = None) -> Baselines:
    """The baselines of a setup training ``model`` on ``dataset``: the authors' tuned settings where
    ``experiments/baselines.toml`` has them for that pair, else its top-level (digits) tables."""
    for setup_dataset, setup_model, baselines in load_setup_baselines(path).values():
        if (setup_dataset, setup_model) == (dataset, model):
            return baselines
    return load_baselines(path)
