"""The variants of an ablation study: which part of arTuRO is changed, as RunConfig field changes.

A variant never adds optimizer code: it names a switch that :class:`~arturo_diag.training.config.RunConfig`
already has (ARTURO.md, "Ablations this project must support"). Every variant kind is declared once,
in :data:`VARIANT_SPECS`: its name, its ``--help`` line, its RunConfig changes (a table, or a
function of its ``:VALUE``), the phrase the findings use, and the value it takes. ``Variant.changes``,
``Variant.describe``, :func:`parse_variant` and ``ablate --variants`` read that declaration; a new
variant is one :class:`VariantKind` there (docs/studies.md lists them for users).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from arturo_diag.errors import ConfigError

__all__ = [
    "Variant",
    "VariantKind",
    "Argument",
    "VARIANT_SPECS",
    "parse_variant",
    "VARIANT_KINDS",
    "ARTURO_VARIANTS",
    "BASELINE_OPTIMIZERS",
    "ESTIMATOR_OPTIMIZERS",
    "FAMILIES",
    "experiments_dirs",
]

_Value = float | int | None


@dataclass(frozen=True)
class Argument:
    """The ``:VALUE`` a variant kind takes (``fixed-eta:1.0``, ``oracle-exact:5``)."""

    name: str  # as --help writes it: "VALUE", "EVERY"
    convert: Callable[[str], _Value]  # the value of the text after ":", None if it is not an allowed one
    expected: str  # the error's "allowed" for a bad value ("{kind}" is replaced by the kind's name)
    required: bool = False
    missing: str = ""  # the error's "allowed" when a required value is left out


@dataclass(frozen=True)
class VariantKind:
    """One kind of variant: how it is written, what it changes, and how ``--help`` and the findings say it.

    ``changes`` is the table of RunConfig field changes, or a function of the variant's value (None
    when an optional argument is left out) that returns it. ``description`` is the phrase of the
    findings, a template: ``{value}`` is the variant's value, ``{period}`` "every step" / "every K
    steps" with K the value or the setup's ``oracle_every``. A ``"baseline"`` kind trains
    ``changes["optimizer"]`` with the hyperparameters ``baseline_fields`` of the baseline table; an
    ``"estimator"`` kind trains another optimizer that keeps a curvature estimate (IVON, AdaHessian,
    Sophia-H/G) with its paper's or package's defaults (:data:`arturo_diag.estimators.defaults.DEFAULTS`),
    its optional ``:LR`` replacing the learning rate.
    """

    name: str  # as written in a study: "fixed-eta"
    help: str  # one line for --help: what it changes
    changes: Mapping[str, Any] | Callable[[_Value], Mapping[str, Any]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    description: str = ""  # the findings' phrase (default: the help line)
    family: str = "arturo"  # one of FAMILIES: "arturo", "baseline", "estimator"
    argument: Argument | None = None  # the ":VALUE" it takes, if any
    baseline_fields: tuple[str, ...] = ()  # fields a baseline table may set for it

    @property
    def syntax(self) -> str:
        """How it is written, as --help and the errors show it: ``fixed-eta:VALUE``, ``oracle-exact[:EVERY]``."""
        if self.argument is None:
            return self.name
        return f"{self.name}:{self.argument.name}" if self.argument.required else f"{self.name}[:{self.argument.name}]"


def _finite_at_least_0(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def _whole_at_least_1(text: str) -> int | None:
    try:
        value = int(text)
    except ValueError:
        return None
    return value if value >= 1 else None


def _positive(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


def _oracle(method: str) -> Callable[[_Value], dict[str, Any]]:
    def changes(every: _Value) -> dict[str, Any]:
        return {"oracle": method} if every is None else {"oracle": method, "oracle_every": int(every)}

    return changes


_ETA = Argument(
    "VALUE",
    _finite_at_least_0,
    "{kind}:VALUE with a finite number VALUE >= 0",
    required=True,
    missing="fixed-eta with a value, e.g. fixed-eta:1.0 (or a bare fixed-eta with [study] fixed_eta = [...])",
)
_EVERY = Argument("EVERY", _whole_at_least_1, "{kind}:EVERY with a whole number of steps EVERY >= 1")
_LR = Argument("LR", _positive, "{kind}:LR with a finite learning rate LR > 0")
_ORACLE_PHRASE = "replacing a by {how} minibatch diagonal Hessian {{period}}"
_BASELINES = "(experiments/baselines.toml)"

#: Every variant kind, declared once, in the order a study lists them by default (the CLI's help, the
#: accepted names, the RunConfig changes and the findings' phrases are built from it).
VARIANT_SPECS: Mapping[str, VariantKind] = MappingProxyType(
    {
        spec.name: spec
        for spec in (
            VariantKind("faithful", "the published rule", changes={}, description="the published rule"),
            VariantKind(
                "fixed-eta",
                "eta fixed at VALUE, trust region off",
                changes=lambda value: {"fixed_eta": float(value)},
                description="fixing eta at {value} (trust region off, no dual solve)",
                argument=_ETA,
            ),
            VariantKind(
                "coupled-kl",
                "one constraint on the full KL",
                changes={"kl": "coupled"},
                description="the coupled KL constraint",
            ),
            VariantKind(
                "no-drift",
                "the filter's drift q = 0",
                changes={"dynamic_model_noise": 0.0},
                description="removing the filter's drift (q = 0)",
            ),
            VariantKind(
                "oracle-exact",
                "a <- the exact minibatch diagonal Hessian",
                changes=_oracle("exact"),
                description=_ORACLE_PHRASE.format(how="the exact"),
                argument=_EVERY,
            ),
            VariantKind(
                "oracle-hutchinson",
                "a <- a Hutchinson estimate of it",
                changes=_oracle("hutchinson"),
                description=_ORACLE_PHRASE.format(how="a Hutchinson estimate of the"),
                argument=_EVERY,
            ),
            VariantKind(
                "exact-dual",
                "the dual solved exactly instead of the coarse bisection",
                changes={"dual": "exact"},
                description="solving the dual exactly",
            ),
            VariantKind(
                "guarded",
                "precision and denominators kept positive",
                changes={"guard": True},
                description="the positivity guard",
            ),
            VariantKind(
                "sgd",
                f"SGD with momentum {_BASELINES}",
                changes={"optimizer": "sgd"},
                description="SGD with momentum",
                family="baseline",
                baseline_fields=("lr", "momentum", "weight_decay", "lr_gamma"),
            ),
            VariantKind(
                "adam",
                f"Adam {_BASELINES}",
                changes={"optimizer": "adam"},
                description="Adam",
                family="baseline",
                baseline_fields=("lr", "beta1", "beta2", "weight_decay", "lr_gamma"),
            ),
            VariantKind(
                "adamw",
                f"AdamW {_BASELINES}",
                changes={"optimizer": "adamw"},
                description="AdamW",
                family="baseline",
                baseline_fields=("lr", "beta1", "beta2", "weight_decay", "lr_gamma"),
            ),
            VariantKind(
                "ivon",
                "IVON (ivon-opt) and its Hessian estimate hess at the package's defaults (LR: its lr)",
                changes={"optimizer": "ivon"},
                description="IVON",
                family="estimator",
                argument=_LR,
            ),
            VariantKind(
                "adahessian",
                "AdaHessian and its Hutchinson estimate at the original code's defaults (LR: its lr)",
                changes={"optimizer": "adahessian"},
                description="AdaHessian",
                family="estimator",
                argument=_LR,
            ),
            VariantKind(
                "sophia-h",
                "Sophia-H and its Hutchinson EMA at the paper's defaults (LR: its lr)",
                changes={"optimizer": "sophia-h"},
                description="Sophia-H",
                family="estimator",
                argument=_LR,
            ),
            VariantKind(
                "sophia-g",
                "Sophia-G and its Gauss-Newton-Bartlett EMA at the paper's defaults (LR: its lr)",
                changes={"optimizer": "sophia-g"},
                description="Sophia-G",
                family="estimator",
                argument=_LR,
            ),
        )
    }
)

#: The variant families: arTuRO's own switches, the tuned baselines, other optimizers with a curvature estimate.
FAMILIES = ("arturo", "baseline", "estimator")


def _kinds(family: str) -> tuple[str, ...]:
    """The declared kinds of one family, read when called (a kind registered later counts)."""
    return tuple(kind for kind, spec in VARIANT_SPECS.items() if spec.family == family)


#: Kinds that change arTuRO, the baselines, and the other optimizers with a curvature estimate (in the
#: order a study lists them by default), as declared at import.
ARTURO_VARIANTS = _kinds("arturo")
BASELINE_OPTIMIZERS = _kinds("baseline")
ESTIMATOR_OPTIMIZERS = _kinds("estimator")
VARIANT_KINDS = ARTURO_VARIANTS + BASELINE_OPTIMIZERS + ESTIMATOR_OPTIMIZERS


def _allowed_names() -> str:
    return ", ".join(spec.syntax for spec in VARIANT_SPECS.values())


@dataclass(frozen=True)
class Variant:
    """One cell of the variant axis: ``kind`` plus its value (``fixed-eta:1.0`` -> kind ``fixed-eta``, 1.0)."""

    kind: str
    value: float | int | None = None

    @property
    def spec(self) -> VariantKind:
        """Its declaration in :data:`VARIANT_SPECS`."""
        try:
            return VARIANT_SPECS[self.kind]
        except KeyError:
            raise ConfigError("variants", self.kind, _allowed_names()) from None

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
        """``"arturo"`` for arTuRO variants, ``"baseline"`` for SGD/Adam/AdamW, ``"estimator"`` for the
        other optimizers with a curvature estimate (IVON, AdaHessian, Sophia-H/G)."""
        return self.spec.family

    @property
    def optimizer(self) -> str:
        """The optimizer its runs train with (``RunConfig.optimizer``): arTuRO unless it changes that."""
        spec = self.spec
        changes = spec.changes(self.value) if callable(spec.changes) else spec.changes
        return str(changes.get("optimizer", "arturo"))

    @property
    def has_estimate(self) -> bool:
        """Its runs keep a curvature estimate that the snapshots store (every optimizer of the registry
        but SGD: :attr:`arturo_diag.training.optimizers.OptimizerSpec.has_estimate`)."""
        from arturo_diag.training.optimizers import OPTIMIZERS

        spec = OPTIMIZERS.get(self.optimizer)
        return bool(spec is not None and spec.has_estimate)

    def changes(self, baselines: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
        """The RunConfig field changes of this variant (baselines: optimizer -> hyperparameters)."""
        spec = self.spec
        changes = dict(spec.changes(self.value) if callable(spec.changes) else spec.changes)
        if spec.family == "baseline":
            values = dict((baselines or {}).get(self.kind, {}))
            values.pop("source", None)
            changes.update(values)
        if spec.family == "estimator" and self.value is not None:
            changes["lr"] = float(self.value)
        return changes

    def describe(self, every: int | None = None) -> str:
        """A phrase for findings: what this variant changes (``every``: the setup's ``oracle_every``)."""
        spec = self.spec
        k = self.value if self.value is not None else every
        period = "every step" if k in (None, 1) else f"every {k} steps"
        value = "" if self.value is None else _format_value(self.value)
        phrase = (spec.description or spec.help).format(value=value, period=period)
        if spec.family == "estimator":
            phrase += " at its defaults" if self.value is None else f" at lr {value} (its other settings its defaults)"
        return phrase


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
    spec = VARIANT_SPECS.get(kind)
    if spec is None:
        raise ConfigError(source, name, _allowed_names())
    argument = spec.argument
    if argument is None:
        if sep:
            takers = [s.name for s in VARIANT_SPECS.values() if s.argument is not None]
            only = ", ".join(takers[:-1]) + " and " + takers[-1] if len(takers) > 1 else "".join(takers)
            raise ConfigError(source, name, f"{kind} without a value (only {only} take one)")
        return Variant(kind)
    if not sep:
        if argument.required:
            raise ConfigError(source, name, argument.missing or f"{spec.syntax} with a value")
        return Variant(kind)
    value = argument.convert(text)
    if value is None:
        raise ConfigError(source, name, argument.expected.format(kind=kind))
    return Variant(kind, value)


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
