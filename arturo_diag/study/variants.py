"""The variants of an ablation study: which part of arTuRO is changed, as RunConfig field changes.

A variant never adds optimizer code: it names a switch that :class:`~arturo_diag.training.config.RunConfig`
already has (ARTURO.md, "Ablations this project must support"):

=====================  =================================================================
name                   RunConfig changes
=====================  =================================================================
``faithful``           none (the published rule, the setup's preset)
``fixed-eta:V``        ``fixed_eta=V``: trust region off, eta = V every step, no dual solve
``coupled-kl``         ``kl="coupled"``: one constraint on the full KL
``no-drift``           ``dynamic_model_noise=0.0``: q = 0, plain recursive least squares
``oracle-exact[:K]``   ``oracle="exact"``: a <- exact minibatch diagonal Hessian every K steps
``oracle-hutchinson``  ``oracle="hutchinson"``: the same with a Hutchinson estimate (``[:K]`` too)
``exact-dual``         ``dual="exact"``: solve K(eta) = eps to 1e-6 instead of the coarse bisection
``guarded``            ``guard=True``: keep precision and denominators positive
``sgd``/``adam``/      ``optimizer=...`` with the baseline hyperparameters of
``adamw``              ``experiments/baselines.toml`` (see :class:`Baselines`)
=====================  =================================================================

``K`` of the oracle variants defaults to the setup's ``oracle_every``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from arturo_diag._toml import tomllib
from arturo_diag.errors import ConfigError

__all__ = [
    "Variant",
    "VariantKind",
    "VARIANT_SPECS",
    "Baselines",
    "parse_variant",
    "VARIANT_KINDS",
    "ARTURO_VARIANTS",
    "BASELINE_OPTIMIZERS",
    "load_baselines",
    "experiments_dirs",
]


@dataclass(frozen=True)
class VariantKind:
    """One kind of variant, as ``--help``, errors and the docs show it."""

    syntax: str  # how it is written, e.g. "fixed-eta:VALUE"
    help: str  # one line: what it changes
    family: str = "arturo"  # "arturo" or "baseline"


#: Every variant kind, declared once, in the order a study lists them by default (the CLI's help and
#: the accepted names are built from it). A new kind: one line here and its branch in
#: :meth:`Variant.changes` and :meth:`Variant.describe`.
VARIANT_SPECS: Mapping[str, VariantKind] = MappingProxyType(
    {
        "faithful": VariantKind("faithful", "the published rule"),
        "fixed-eta": VariantKind("fixed-eta:VALUE", "eta fixed at VALUE, trust region off"),
        "coupled-kl": VariantKind("coupled-kl", "one constraint on the full KL"),
        "no-drift": VariantKind("no-drift", "the filter's drift q = 0"),
        "oracle-exact": VariantKind("oracle-exact[:EVERY]", "a <- the exact minibatch diagonal Hessian"),
        "oracle-hutchinson": VariantKind("oracle-hutchinson[:EVERY]", "a <- a Hutchinson estimate of it"),
        "exact-dual": VariantKind("exact-dual", "the dual solved exactly instead of the coarse bisection"),
        "guarded": VariantKind("guarded", "precision and denominators kept positive"),
        "sgd": VariantKind("sgd", "SGD with momentum (experiments/baselines.toml)", "baseline"),
        "adam": VariantKind("adam", "Adam (experiments/baselines.toml)", "baseline"),
        "adamw": VariantKind("adamw", "AdamW (experiments/baselines.toml)", "baseline"),
    }
)
#: Kinds that change arTuRO (in the order a study lists them by default).
ARTURO_VARIANTS = tuple(kind for kind, spec in VARIANT_SPECS.items() if spec.family == "arturo")
BASELINE_OPTIMIZERS = tuple(kind for kind, spec in VARIANT_SPECS.items() if spec.family == "baseline")
VARIANT_KINDS = ARTURO_VARIANTS + BASELINE_OPTIMIZERS

# Fields a baseline table may set, per optimizer.
_BASELINE_FIELDS = {
    "sgd": ("lr", "momentum", "weight_decay", "lr_gamma"),
    "adam": ("lr", "weight_decay", "lr_gamma"),
    "adamw": ("lr", "weight_decay", "lr_gamma"),
}


def _allowed_names() -> str:
    return ", ".join(spec.syntax for spec in VARIANT_SPECS.values())


@dataclass(frozen=True)
class Variant:
    """One cell of the variant axis: ``kind`` plus its value (``fixed-eta:1.0`` -> kind ``fixed-eta``, 1.0)."""

    kind: str
    value: float | int | None = None

    @property
    def name(self) -> str:
        if self.value is None:
            return self.kind
        return f"{self.kind}:{_format_value(self.value)}"

    @property
    def slug(self) -> str:
        """The variant's directory name (no ``:``, which some file systems refuse)."""
        return self.name.replace(":", "=")

    @property
    def family(self) -> str:
        """``"arturo"`` for arTuRO variants, ``"baseline"`` for SGD/Adam/AdamW."""
        return "baseline" if self.kind in BASELINE_OPTIMIZERS else "arturo"

    def changes(self, baselines: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
        """The RunConfig field changes of this variant (baselines: optimizer -> hyperparameters)."""
        kind = self.kind
        if kind == "faithful":
            return {}
        if kind == "fixed-eta":
            return {"fixed_eta": float(self.value)}
        if kind == "coupled-kl":
            return {"kl": "coupled"}
        if kind == "no-drift":
            return {"dynamic_model_noise": 0.0}
        if kind in ("oracle-exact", "oracle-hutchinson"):
            changes: dict[str, Any] = {"oracle": kind.split("-", 1)[1]}
            if self.value is not None:
                changes["oracle_every"] = int(self.value)
            return changes
        if kind == "exact-dual":
            return {"dual": "exact"}
        if kind == "guarded":
            return {"guard": True}
        values = dict((baselines or {}).get(kind, {}))
        values.pop("source", None)
        return {"optimizer": kind, **values}

    def describe(self, every: int | None = None) -> str:
        """A phrase for findings: what this variant changes."""
        kind = self.kind
        if kind == "faithful":
            return "the published rule"
        if kind == "fixed-eta":
            return f"fixing eta at {_format_value(self.value)} (trust region off, no dual solve)"
        if kind == "coupled-kl":
            return "the coupled KL constraint"
        if kind == "no-drift":
            return "removing the filter's drift (q = 0)"
        if kind in ("oracle-exact", "oracle-hutchinson"):
            k = self.value if self.value is not None else every
            how = "the exact" if kind == "oracle-exact" else "a Hutchinson estimate of the"
            period = "every step" if k in (None, 1) else f"every {k} steps"
            return f"replacing a by {how} minibatch diagonal Hessian {period}"
        if kind == "exact-dual":
            return "solving the dual exactly"
        if kind == "guarded":
            return "the positivity guard"
        return {"sgd": "SGD with momentum", "adam": "Adam", "adamw": "AdamW"}[kind]


def _format_value(value: float | int | None) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return repr(float(value))


def parse_variant(name: Any, *, source: str = "variants") -> Variant:
    """A variant from its name (``"faithful"``, ``"fixed-eta:0.5"``, ``"oracle-exact:5"``, ``"adam"``).

    Raises:
        ConfigError: unknown name, a missing or bad value, or a value where none is allowed.
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(source, name, _allowed_names())
    kind, sep, text = name.strip().partition(":")
    kind = kind.strip().lower().replace("_", "-")
    if kind not in VARIANT_KINDS:
        raise ConfigError(source, name, _allowed_names())
    if kind == "fixed-eta":
        if not sep:
            raise ConfigError(
                source,
                name,
                "fixed-eta with a value, e.g. fixed-eta:1.0 (or a bare fixed-eta with [study] fixed_eta = [...])",
            )
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(source, name, "fixed-eta:VALUE with a finite number VALUE >= 0") from None
        if not math.isfinite(value) or value < 0:
            raise ConfigError(source, name, "fixed-eta:VALUE with a finite number VALUE >= 0")
        return Variant(kind, value)
    if kind in ("oracle-exact", "oracle-hutchinson") and sep:
        try:
            every = int(text)
        except ValueError:
            every = 0
        if every < 1:
            raise ConfigError(source, name, f"{kind}:EVERY with a whole number of steps EVERY >= 1")
        return Variant(kind, every)
    if sep:
        raise ConfigError(source, name, f"{kind} without a value (only fixed-eta and the oracle variants take one)")
    return Variant(kind)


def experiments_dirs() -> list[Path]:
    """Where ``experiments/`` lives: the source checkout's, or the copy a wheel bundles."""
    here = Path(__file__).resolve()
    return [here.parents[2] / "experiments", here.parents[1] / "_experiments"]


def _find_experiment_file(relative: str) -> Path:
    for directory in experiments_dirs():
        path = directory / relative
        if path.is_file():
            return path
    raise ConfigError("experiments", relative, "a file in " + " or ".join(str(d) for d in experiments_dirs()))


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
        values = {opt: dict(self.values.get(opt, {})) for opt in BASELINE_OPTIMIZERS}
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
        if key not in BASELINE_OPTIMIZERS:
            raise ConfigError(f"{where}: {key}", value, "source, " + ", ".join(BASELINE_OPTIMIZERS))
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: {key}", value, "a table of " + ", ".join(_BASELINE_FIELDS[key]))
        fields_ = {}
        for name, item in value.items():
            if name not in _BASELINE_FIELDS[key]:
                raise ConfigError(f"{where}: [{key}] {name}", item, ", ".join(_BASELINE_FIELDS[key]))
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


def load_baselines(path: str | Path | None = None) -> Baselines:
    """The baseline hyperparameters of ``experiments/baselines.toml`` (or ``path``)."""
    path = Path(path) if path is not None else _find_experiment_file("baselines.toml")
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConfigError("baselines", str(path), f"a readable TOML file ({error})") from None
    checked = check_baseline_table(data, where=str(path))
    if "source" not in checked:
        raise ConfigError(f"{path}: source", None, "a string naming where the values come from")
    return Baselines({opt: checked.get(opt, {}) for opt in BASELINE_OPTIMIZERS}, checked["source"])
