"""What each field of a :class:`~arturo_diag.training.config.RunConfig` allows (the run's word lists,
the limits) and the checks: the values on construction, and the set fields a run would ignore.

Everything public here is imported from :mod:`arturo_diag.training.config`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import fields
from types import MappingProxyType
from typing import Any

from arturo_diag.curvature.instruments import INSTRUMENTS
from arturo_diag.curvature.methods import EXACT_METHODS, ORACLES
from arturo_diag.curvature.references import REFERENCE_BATCHES, REFERENCE_METHODS, REFERENCE_MODES, reference_settings
from arturo_diag.diagnostics.snapshot_cost import SNAPSHOT_DTYPE_CHOICES
from arturo_diag.errors import ConfigError
from arturo_diag.optim.arturo import DUAL_CHOICES, KL_CHOICES
from arturo_diag.optim.presets import PRESET_NAMES
from arturo_diag.training.optimizers import OPTIMIZERS, optimizer_fields

#: The run's word lists, each declared once: name -> one line for ``--help``. The reference methods
#: belong to :mod:`arturo_diag.curvature.methods`, ``kl``/``dual`` to the optimizer, the datasets to
#: :data:`~arturo_diag.training.datasets.DATASET_SPECS`, the models to ``training.models.MODELS``,
#: the presets to :mod:`arturo_diag.optim.presets`, the optimizers (and the fields only some of them
#: read) to :data:`~arturo_diag.training.optimizers.OPTIMIZERS`; the dtypes belong to the run itself.
DTYPES: Mapping[str, str] = MappingProxyType(
    {"float32": "single precision", "float64": "double precision (slower; for checks)"}
)

#: Upper bounds of the integer fields, stated in the error: beyond them a run would not end in any
#: reasonable time or memory (10**7 steps take about 3 hours at 1 ms per step, the small CNN on
#: digits; a month for a CIFAR ResNet-34 on a CPU; the paper's longest protocol is ~31,500 steps).
LIMITS = {
    "epochs": 10**5,
    "steps": 10**7,
    "batch_size": 10**6,
    "train_size": 10**7,
    "every": 10**7,
    "samples": 10**5,
    "probe_size": 10**5,
    "subsample": 10**9,
    "oracle_every": 10**7,
}
#: At most this many steps in one run, epochs x batches per epoch included (checked once the data is known).
MAX_TOTAL_STEPS = LIMITS["steps"]

# Largest finite value of each dtype (numpy's finfo = torch's for these two).
_FLOAT_MAX = {"float32": 3.4028234663852886e38, "float64": 1.7976931348623157e308}


def validate(c: Any) -> None:
    """Check every field of the RunConfig ``c``; the first bad one raises a ConfigError naming it."""
    _check_choices(c)
    _check_numbers(c)
    _check_others(c)


def _one_of(c: Any, name: str, declared: Iterable[str]) -> None:
    allowed = tuple(declared)  # a tuple: an unhashable value (a TOML list) is refused, not a TypeError
    if getattr(c, name) not in allowed:
        raise ConfigError(name, getattr(c, name), "one of " + ", ".join(allowed))


def _integer(c: Any, name: str, minimum: int, optional: bool = False) -> None:
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


def _number(c: Any, name: str, minimum: float, strict: bool = False, optional: bool = True) -> None:
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


def _check_choices(c: Any) -> None:
    from arturo_diag.training.datasets import DATASETS
    from arturo_diag.training.models import MODELS

    _one_of(c, "model", sorted(MODELS))
    _one_of(c, "dataset", DATASETS)
    _one_of(c, "optimizer", OPTIMIZERS)
    _one_of(c, "preset", PRESET_NAMES)
    _one_of(c, "kl", KL_CHOICES)
    _one_of(c, "dual", DUAL_CHOICES)
    _one_of(c, "reference", REFERENCE_METHODS)
    _one_of(c, "reference_mode", REFERENCE_MODES)
    _one_of(c, "reference_batch", REFERENCE_BATCHES)
    _one_of(c, "exact_method", EXACT_METHODS)
    _one_of(c, "oracle", ORACLES)
    _one_of(c, "dtype", DTYPES)
    _one_of(c, "snapshot_dtype", SNAPSHOT_DTYPE_CHOICES)


def _check_numbers(c: Any) -> None:
    _integer(c, "epochs", 1)
    _integer(c, "steps", 1, optional=True)
    _integer(c, "batch_size", 1)
    _integer(c, "train_size", 1, optional=True)
    _integer(c, "seed", 0)
    if c.seed >= 2**63:
        raise ConfigError("seed", c.seed, "an integer in [0, 2**63)")
    _integer(c, "every", 1)
    _integer(c, "samples", 2)
    _integer(c, "probe_size", 1)
    _integer(c, "subsample", 0)
    _integer(c, "oracle_every", 1)
    for name in ("lr", "reg_weight", "prior_prec", "nu", "dynamic_model_noise", "weight_decay", "fixed_eta"):
        _number(c, name, 0.0)
    for name in ("var_init", "measurement_noise", "start_filter_cov", "eta_tol", "lr_gamma"):
        _number(c, name, 0.0, strict=True)
    if c.var_init is not None and 1.0 / c.var_init > _FLOAT_MAX[c.dtype]:  # pi = 1/var_init must be finite
        raise ConfigError(
            "var_init",
            c.var_init,
            f"a number >= {1.0 / _FLOAT_MAX[c.dtype]:.3g} with dtype "
            f"{c.dtype} (the initial precision 1/var_init must be finite)",
        )
    _number(c, "momentum", 0.0, optional=False)
    for name in ("beta1", "beta2"):  # torch.optim.Adam's range
        _number(c, name, 0.0, optional=False)
        if getattr(c, name) >= 1.0:
            raise ConfigError(name, getattr(c, name), "a number >= 0 and < 1")
    _number(c, "collapse_fraction", 0.0, strict=True, optional=False)


def _check_others(c: Any) -> None:
    for name in ("guard", "tensorboard"):
        if not isinstance(getattr(c, name), bool):
            raise ConfigError(name, getattr(c, name), "true or false")
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
    _check_instruments(c)
    _check_model_reads_dataset(c)
    if c.oracle != "none" and "oracle" not in OPTIMIZERS[c.optimizer].fields:
        users = " or ".join(optimizer_fields()["oracle"])
        raise ConfigError("oracle", c.oracle, f"none unless optimizer is {users}")


def _check_model_reads_dataset(c: Any) -> None:
    """A token model (the transformer) needs a token dataset (chars), an image model an image dataset."""
    from arturo_diag.training.datasets import DATASET_SPECS
    from arturo_diag.training.models import DEFAULT_DATASETS, model_inputs

    reads, holds = model_inputs(c.model), DATASET_SPECS[c.dataset].inputs
    if reads != holds:
        what = {"tokens": "token ids", "image": "images"}
        same = ", ".join(n for n, spec in DATASET_SPECS.items() if spec.inputs == reads)
        raise ConfigError(
            "dataset",
            c.dataset,
            f"a dataset of {what[reads]} for model {c.model}: {same} (dataset {c.dataset} holds {what[holds]}; "
            f"without a dataset model {c.model} runs on {DEFAULT_DATASETS[reads]})",
        )


def _check_instruments(c: Any) -> None:
    names = c.instruments
    if (
        not isinstance(names, tuple)
        or not all(isinstance(n, str) and n in INSTRUMENTS for n in names)
        or len(set(names)) != len(names)
    ):
        shown = list(names) if isinstance(names, tuple) else names
        raise ConfigError("instruments", shown, "distinct names among " + ", ".join(INSTRUMENTS) + " (or none)")


def unused_fields(config: Any) -> list[tuple[str, Any, str]]:
    """Fields of an unresolved config set to something other than their default that the run would
    ignore, as ``(field, value, when it applies)``; e.g. ``fixed_eta`` with ``optimizer = "sgd"``.

    Only values that really have no effect are listed (``every`` and ``probe_size`` only schedule
    snapshots and are left alone). ``arturo-diag compare`` refuses the first; a study's setups are
    shared by all its variants, so the grid does not call this.
    """
    defaults = {f.name: f.default for f in fields(config)}
    unused: list[tuple[str, Any, str]] = []

    def given(name: str) -> bool:
        return getattr(config, name) != defaults[name]

    spec = OPTIMIZERS[config.optimizer]
    for name, users in optimizer_fields().items():  # fields only some optimizers read
        if name not in spec.fields and given(name):
            unused.append(
                (
                    name,
                    getattr(config, name),
                    f"unset with optimizer {config.optimizer} (an option of {' or '.join(users)} only; "
                    "it would be ignored)",
                )
            )
    if not spec.has_estimate:
        if config.reference not in ("exact", "none"):  # exact: the default, not given
            unused.append(
                (
                    "reference",
                    config.reference,
                    f"none with optimizer {config.optimizer} (it keeps no curvature estimate: no reference snapshots)",
                )
            )
        for name in ("exact_method", "samples", "reference_mode", "reference_batch", "instruments"):
            if given(name):
                unused.append(
                    (
                        name,
                        getattr(config, name),
                        f"unset with optimizer {config.optimizer} (it keeps no curvature estimate: no snapshots)",
                    )
                )
        return unused
    # the checks of one optimizer's own fields apply where that field is read (given elsewhere: refused above)
    if "oracle_every" in spec.fields and config.oracle == "none" and given("oracle_every"):
        unused.append(("oracle_every", config.oracle_every, "unset unless oracle is exact or hutchinson"))
    dual_read = "fixed_eta" in spec.fields
    if dual_read and config.fixed_eta is not None:
        for name in ("dual", "eta_tol"):
            if given(name):
                unused.append((name, getattr(config, name), "unset with fixed_eta (no dual solve: eta is fixed)"))
    elif dual_read and config.dual == "exact" and given("eta_tol"):
        unused.append(("eta_tol", config.eta_tol, "unset with dual exact (eta_tol is the bisection's tolerance)"))
    read = reference_settings(config.reference) if config.reference in REFERENCE_METHODS else frozenset()
    if given("samples") and "samples" not in read and config.oracle != "hutchinson":
        readers = ", ".join(m for m in REFERENCE_METHODS if "samples" in reference_settings(m))
        unused.append(
            ("samples", config.samples, f"unset unless reference is one of {readers} or oracle is hutchinson")
        )
    if given("exact_method") and "exact_method" not in read and config.oracle != "exact":
        unused.append(("exact_method", config.exact_method, "unset unless reference or oracle is exact (or both)"))
    for name in ("reference_mode", "reference_batch", "instruments"):
        if given(name) and config.reference == "none":
            unused.append((name, getattr(config, name), "unset with reference none (no h is taken)"))
    if given("probe_size") and config.reference_batch == "minibatch":
        unused.append(("probe_size", config.probe_size, "unset with reference_batch minibatch (no probe batch)"))
    return unused


def check_used(config: Any) -> None:
    """Raise :class:`ConfigError` for the first of :func:`unused_fields` (an option that would be ignored)."""
    for name, value, allowed in unused_fields(config):
        raise ConfigError(name, value, allowed)
