"""The description of a study: variants x seeds x setups, from TOML, validated on load.

A study file::

    [study]
    name = "default"
    description = "..."                  # optional, shown at the top of the report
    seeds = [0, 1, 2]
    variants = ["faithful", "fixed-eta", "coupled-kl", "sgd"]
    fixed_eta = [0.5, 1.0]               # the values a bare "fixed-eta" expands to

    [baselines.sgd]                      # optional: overrides of experiments/baselines.toml
    lr = 0.05

    [setups.digits]                      # any RunConfig field, flat or in [run]/[optimizer]/...
    model = "small_cnn"
    dataset = "digits"
    epochs = 8

The fields a variant sets (``optimizer``, ``kl``, ``dual``, ``fixed_eta``, ``guard``, ``oracle``)
and those the grid sets (``seed``, ``out``) may not appear in a setup. Every error is a
:class:`~arturo_diag.errors.ConfigError` naming the file, the field and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from arturo_diag._toml import toml_value
from arturo_diag.errors import ConfigError
from arturo_diag.study.baselines import Baselines, baselines_for
from arturo_diag.study.variants import Variant, experiments_dirs, parse_variant
from arturo_diag.training.config import RunConfig, config_from_mapping, read_toml

__all__ = [
    "Setup",
    "StudyConfig",
    "RunSpec",
    "study_from_mapping",
    "load_study",
    "default_study",
    "study_to_toml",
    "with_overrides",
    "expand_grid",
    "parse_seeds",
    "parse_variants",
    "VARIANT_FIELDS",
    "GRID_FIELDS",
    "STUDY_KEYS",
]

#: RunConfig fields that the variants set (a setup may not).
VARIANT_FIELDS = ("optimizer", "kl", "dual", "fixed_eta", "guard", "oracle")
#: RunConfig fields that the grid sets.
GRID_FIELDS = ("seed", "out")
STUDY_KEYS = ("name", "description", "seeds", "variants", "fixed_eta")
_SETUP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_RUN_FIELDS = tuple(f.name for f in fields(RunConfig))


@dataclass(frozen=True)
class Setup:
    """One problem of a study (model, data, protocol), and the baselines' hyperparameters on it."""

    name: str
    config: RunConfig  # seed and out are placeholders; the grid sets them
    baselines: Baselines


@dataclass(frozen=True)
class StudyConfig:
    name: str
    seeds: tuple[int, ...]
    variants: tuple[Variant, ...]
    setups: tuple[Setup, ...]
    description: str = ""

    def setup(self, name: str) -> Setup:
        for setup in self.setups:
            if setup.name == name:
                return setup
        raise KeyError(name)


@dataclass(frozen=True)
class RunSpec:
    """One cell of the grid: its config (``out`` is the run directory) and where it sits."""

    setup: str
    variant: Variant
    seed: int
    config: RunConfig
    relative_dir: str  # run directory relative to the study directory

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.setup, self.variant.name, self.seed)

    @property
    def label(self) -> str:
        return f"{self.setup}/{self.variant.name}/seed{self.seed}"


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_seeds(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not value or not all(_whole(s) and s >= 0 for s in value):
        raise ConfigError(where, value, "a non-empty list of whole numbers >= 0")
    if len(set(value)) != len(value):
        raise ConfigError(where, list(value), "distinct seeds")
    return tuple(int(s) for s in value)


def _check_variants(names: Any, fixed_eta: Any, where: str) -> tuple[Variant, ...]:
    if not isinstance(names, (list, tuple)) or not names:
        raise ConfigError(where, names, "a non-empty list of variant names")
    values: list[float] | None = None
    if fixed_eta is not None:
        ok = (
            isinstance(fixed_eta, list)
            and fixed_eta
            and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
                for v in fixed_eta
            )
        )
        if not ok:
            raise ConfigError(
                f"{where.rsplit(' ', 1)[0]} fixed_eta", fixed_eta, "a non-empty list of finite numbers >= 0"
            )
        values = [float(v) for v in fixed_eta]
    variants: list[Variant] = []
    for name in names:
        if isinstance(name, str) and name.strip().lower().replace("_", "-") == "fixed-eta" and values is not None:
            variants.extend(Variant("fixed-eta", v) for v in values)
        else:
            variants.append(parse_variant(name, source=where))
    seen: set[str] = set()
    for variant in variants:
        if variant.name in seen:
            raise ConfigError(where, variant.name, "each variant once")
        seen.add(variant.name)
    return tuple(variants)


def _printable(key: str) -> str:
    """A TOML key as written in an error message: quoted if it holds a newline or another control
    character (the message stays one line)."""
    return key if key.isprintable() else repr(key)


#: A study's runs take the default instruments but the spectrum, which nothing of the study reads and
#: which would double the default study's time; a setup's ``instruments`` field asks for it.
STUDY_INSTRUMENTS = tuple(name for name in RunConfig().instruments if name != "spectrum")


def _check_setup(
    name: str, data: Any, base_baselines: Baselines | None, study_overrides: Any, where: str, source: str
) -> Setup:
    if not _SETUP_NAME.fullmatch(name):
        raise ConfigError(
            f"{where}",
            name,
            "a setup name of letters, digits, '_', '.', '-', starting with a letter or digit (it names a directory)",
        )
    if not isinstance(data, Mapping):
        raise ConfigError(where, data, "a table of RunConfig fields")
    data = dict(data)
    overrides = data.pop("baselines", None)
    for key, value in data.items():
        names = value.keys() if isinstance(value, Mapping) else [key]
        for field_name in names:
            if field_name in VARIANT_FIELDS:
                raise ConfigError(
                    f"{where} {field_name}",
                    value[field_name] if isinstance(value, Mapping) else value,
                    "unset: the variants set it (use the variants list)",
                )
            if field_name in GRID_FIELDS:
                raise ConfigError(
                    f"{where} {field_name}",
                    value[field_name] if isinstance(value, Mapping) else value,
                    "unset: the study sets it ([study] seeds; the run directories)",
                )
    config = config_from_mapping(data, RunConfig(instruments=STUDY_INSTRUMENTS), source=where)
    # per setup: the authors' tuned values for its (dataset, model) where published, else the digits grid's
    base = base_baselines if base_baselines is not None else baselines_for(config.dataset, config.model)
    base = base.merged(study_overrides, where=f"{source}: [baselines]")
    baselines = base.merged(overrides, where=f"{where}.baselines")
    return Setup(name, config, baselines)


def study_from_mapping(
    data: Mapping[str, Any], *, source: str = "study", default_name: str = "study", baselines: Baselines | None = None
) -> StudyConfig:
    """A study from TOML-shaped data; errors name ``source`` and the field."""
    if not isinstance(data, Mapping):
        raise ConfigError(source, data, "a TOML table")
    for key in data:
        if key not in ("study", "setups", "baselines"):
            raise ConfigError(f"{source}: {key}", data[key], "sections [study], [setups.NAME], [baselines]")
    study = data.get("study", {})
    if not isinstance(study, Mapping):
        raise ConfigError(f"{source}: study", study, "a [study] table")
    for key in study:
        if key not in STUDY_KEYS:
            raise ConfigError(f"{source}: [study] {key}", study[key], "keys " + ", ".join(STUDY_KEYS))
    name = study.get("name", default_name)
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{source}: [study] name", name, "a non-empty string")
    if not _SETUP_NAME.fullmatch(name.strip()):
        # it names the default study directory runs/ablate/NAME: no '/', no '..', nothing hidden
        raise ConfigError(
            f"{source}: [study] name",
            name,
            "a study name of letters, digits, '_', '.', '-', starting "
            "with a letter or digit (it names a directory; without [study] name the file's name is used)",
        )
    description = study.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"{source}: [study] description", description, "a string")
    if "seeds" not in study:
        raise ConfigError(f"{source}: [study] seeds", None, "a non-empty list of whole numbers >= 0, e.g. [0, 1, 2]")
    if "variants" not in study:
        raise ConfigError(
            f"{source}: [study] variants", None, 'a non-empty list of variant names, e.g. ["faithful", "adam"]'
        )
    seeds = _check_seeds(study["seeds"], f"{source}: [study] seeds")
    variants = _check_variants(study["variants"], study.get("fixed_eta"), f"{source}: [study] variants")
    study_overrides = data.get("baselines")
    if study_overrides:  # checked once up front, so an error names the study's table before any setup
        Baselines().merged(study_overrides, where=f"{source}: [baselines]")
    setups_data = data.get("setups", {"default": {}})
    if not isinstance(setups_data, Mapping) or not setups_data:
        raise ConfigError(f"{source}: setups", setups_data, "one or more [setups.NAME] tables")
    setups = tuple(
        _check_setup(str(key), value, baselines, study_overrides, f"{source}: [setups.{_printable(str(key))}]", source)
        for key, value in setups_data.items()
    )
    return StudyConfig(name.strip(), seeds, variants, setups, description)


def load_study(path: str | Path) -> StudyConfig:
    """Read a study file (TOML); errors name the file and the field."""
    path = Path(path)
    return study_from_mapping(read_toml(path, "study TOML file"), source=str(path), default_name=path.stem)


def default_study() -> StudyConfig:
    """The embedded default study (``experiments/studies/default.toml``): built-in data, every
    arTuRO variant and the three baselines, 3 seeds; a few minutes on 2 cores."""
    for directory in experiments_dirs():
        path = directory / "studies" / "default.toml"
        if path.is_file():
            return load_study(path)
    raise ConfigError("config", "experiments/studies/default.toml", "the embedded default study file (missing)")


def parse_seeds(text: str | Iterable[int]) -> tuple[int, ...]:
    """``"0,1,2"`` -> (0, 1, 2); ``ConfigError`` on ``seeds`` otherwise."""
    if isinstance(text, str):
        parts = [p.strip() for p in text.split(",") if p.strip()]
        try:
            values = [int(p) for p in parts]
        except ValueError:
            raise ConfigError("seeds", text, "comma-separated whole numbers >= 0, e.g. 0,1,2") from None
    else:
        values = list(text)
    return _check_seeds(values, "seeds")


def parse_variants(text: str | Iterable[str]) -> tuple[Variant, ...]:
    """``"faithful,fixed-eta:1.0,adam"`` -> variants; ``ConfigError`` on ``variants`` otherwise."""
    names = [p.strip() for p in text.split(",") if p.strip()] if isinstance(text, str) else list(text)
    return _check_variants(names, None, "variants")


def with_overrides(
    study: StudyConfig,
    *,
    variants: Iterable[Variant] | None = None,
    seeds: Iterable[int] | None = None,
    epochs: int | None = None,
    max_steps: int | None = None,
    data_dir: str | None = None,
) -> StudyConfig:
    """The study with the command line's choices: variants and seeds replaced, every setup's epochs
    set, its steps capped at ``max_steps``, its data read from ``data_dir``."""
    changes: dict[str, Any] = {}
    if epochs is not None:
        changes["epochs"] = epochs
    if data_dir is not None:
        changes["data_dir"] = str(data_dir)
    setups = []
    for setup in study.setups:
        local = dict(changes)
        if max_steps is not None:
            if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
                raise ConfigError("max_steps", max_steps, "an integer >= 1")
            current = setup.config.steps
            local["steps"] = max_steps if current is None else min(current, max_steps)
        config = config_from_mapping(local, setup.config, source="option") if local else setup.config
        setups.append(dataclasses.replace(setup, config=config))
    return dataclasses.replace(
        study,
        variants=tuple(variants) if variants is not None else study.variants,
        seeds=_check_seeds(list(seeds), "seeds") if seeds is not None else study.seeds,
        setups=tuple(setups),
    )


def expand_grid(study: StudyConfig, study_dir: str | Path) -> list[RunSpec]:
    """Every run of the study, in the order setup, variant, seed; each config validated.

    Run directories: ``STUDY_DIR/runs/{setup}/{variant}/seed{N}`` (``:`` in a variant's name
    becomes ``=``).
    """
    study_dir = Path(study_dir)
    specs = []
    for setup in study.setups:
        for variant in study.variants:
            changes = variant.changes(setup.baselines.values)
            for seed in study.seeds:
                relative = f"runs/{setup.name}/{variant.slug}/seed{seed}"
                try:
                    config = setup.config.replace(**changes, seed=seed, out=str(study_dir / relative))
                except ConfigError as error:
                    raise ConfigError(
                        f"[setups.{setup.name}] with variant {variant.name}: {error.field}", error.value, error.allowed
                    ) from None
                specs.append(RunSpec(setup.name, variant, seed, config, relative))
    return specs


# --------------------------------------------------------------------------------------------- TOML
def study_to_toml(study: StudyConfig) -> str:
    """TOML text of a study, every setup field and baseline value spelled out; ``load_study`` of it
    gives the same study (written into each study directory as ``study.toml``)."""
    lines = [
        "# arturo-diag study (written by arturo-diag ablate; re-run with --config this file)",
        "",
        "[study]",
        f"name = {toml_value(study.name)}",
    ]
    if study.description:
        lines.append(f"description = {toml_value(study.description)}")
    lines.append(f"seeds = {toml_value(list(study.seeds))}")
    lines.append(f"variants = {toml_value([v.name for v in study.variants])}")
    for setup in study.setups:
        lines += ["", f"[setups.{setup.name}]"]
        for name in _RUN_FIELDS:
            if name in VARIANT_FIELDS or name in GRID_FIELDS:
                continue
            value = getattr(setup.config, name)
            if value is not None:
                lines.append(f"{name} = {toml_value(value)}")
        lines += ["", f"[setups.{setup.name}.baselines]", f"source = {toml_value(setup.baselines.source)}"]
        for opt, values in setup.baselines.values.items():
            lines.append(f"[setups.{setup.name}.baselines.{opt}]")
            lines += [f"{k} = {toml_value(float(v))}" for k, v in values.items()]
    return "\n".join(lines) + "\n"
