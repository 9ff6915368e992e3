"""One owner per vocabulary (issue 10, item 3): each word list is declared once, the CLI's help and
the config's validation are built from that declaration.

A new variant appears in ``ablate --help`` without editing ``cli/``: the help is computed when
``cli/ablate.py`` is imported, so the test patches the declaration and re-imports ``cli.ablate`` and
``cli.app`` (and re-imports them again afterwards, so later tests see the real declaration).
"""

from __future__ import annotations

import importlib
import re
from types import MappingProxyType

import pytest
from typer.testing import CliRunner

from arturo_diag.curvature import CurvatureError, exact_diagonal
from arturo_diag.curvature.methods import EXACT_METHODS, ORACLES
from arturo_diag.curvature.references import REFERENCE_METHODS
from arturo_diag.errors import ConfigError
from arturo_diag.optim.arturo import DUAL_CHOICES, KL_CHOICES
from arturo_diag.optim.presets import PRESET_NAMES
from arturo_diag.study import variants
from arturo_diag.training.config import DTYPES, OPTIMIZERS, RunConfig
from arturo_diag.training.datasets import DATASET_SPECS
from arturo_diag.training.models import DEFAULT_DATASETS, MODELS, model_inputs

WIDE = {"COLUMNS": "200"}

COMPARE_OPTIONS = {
    "--model": tuple(MODELS),
    "--dataset": tuple(DATASET_SPECS),
    "--reference": tuple(REFERENCE_METHODS),
    "--exact-method": tuple(EXACT_METHODS),
    "--preset": PRESET_NAMES,
    "--optimizer": tuple(OPTIMIZERS),
    "--kl": tuple(KL_CHOICES),
    "--dual": tuple(DUAL_CHOICES),
    "--oracle": tuple(ORACLES),
    "--dtype": tuple(DTYPES),
}
CONFIG_FIELDS = {
    "model": tuple(MODELS),
    "dataset": tuple(DATASET_SPECS),
    "reference": tuple(REFERENCE_METHODS),
    "exact_method": tuple(EXACT_METHODS),
    "preset": PRESET_NAMES,
    "optimizer": tuple(OPTIMIZERS),
    "kl": tuple(KL_CHOICES),
    "dual": tuple(DUAL_CHOICES),
    "oracle": tuple(ORACLES),
    "dtype": tuple(DTYPES),
}


def _option_help(output: str, option: str) -> str:
    """The help text of one option in typer's rich table: its row and the continuation rows below."""
    rows = [line.strip("│ ").rstrip("│ ") for line in output.splitlines()]
    start = next(i for i, row in enumerate(rows) if re.match(re.escape(option) + r"\s", row))
    text = [rows[start]]
    for row in rows[start + 1 :]:
        if row.startswith("--") or not row or row.startswith("╰"):
            break
        text.append(row)
    return " ".join(" ".join(text).split())


def _help(*command: str) -> str:
    from cli.app import app

    result = CliRunner().invoke(app, [*command, "--help"], env=WIDE)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("option", sorted(COMPARE_OPTIONS))
def test_every_declared_choice_is_in_compare_help(option):
    text = _option_help(_help("compare"), option)
    missing = [
        name for name in COMPARE_OPTIONS[option] if not re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text)
    ]
    assert missing == [], f"{option}: {text}"


def test_every_declared_variant_is_in_ablate_help():
    text = _option_help(_help("ablate"), "--variants")
    for spec in variants.VARIANT_SPECS.values():
        assert f"{spec.syntax}: {spec.help}" in text


def test_a_new_variant_appears_in_ablate_help_without_editing_cli(monkeypatch):
    toy = variants.VariantKind("toy-switch", "a toy variant registered by the test")
    import cli.ablate
    import cli.app

    try:
        with monkeypatch.context() as patch:
            patch.setattr(variants, "VARIANT_SPECS", MappingProxyType({**variants.VARIANT_SPECS, "toy-switch": toy}))
            importlib.reload(cli.ablate)
            importlib.reload(cli.app)
            text = _option_help(_help("ablate"), "--variants")
        assert "toy-switch: a toy variant registered by the test" in text
    finally:
        importlib.reload(cli.ablate)
        importlib.reload(cli.app)
    assert "toy-switch" not in _option_help(_help("ablate"), "--variants")


def _partner(field, name):
    """A token model needs a token dataset and a token dataset a token model (the transformer, chars)."""
    if field == "model" and model_inputs(name) != "image":
        return {"dataset": DEFAULT_DATASETS[model_inputs(name)]}
    if field == "dataset" and DATASET_SPECS[name].inputs != "image":
        return {"model": next(m for m in MODELS if model_inputs(m) == DATASET_SPECS[name].inputs)}
    return {}


@pytest.mark.parametrize("field", sorted(CONFIG_FIELDS))
def test_config_accepts_exactly_the_declared_names(field):
    declared = CONFIG_FIELDS[field]
    for name in declared:
        assert getattr(RunConfig(**{field: name}, **_partner(field, name)), field) == name
    with pytest.raises(ConfigError) as error:
        RunConfig(**{field: "not-a-declared-name"})
    assert str(error.value) == f"{field}: got 'not-a-declared-name'; allowed: one of " + ", ".join(
        sorted(declared) if field == "model" else declared
    )


def test_exact_diagonal_accepts_exactly_the_declared_exact_methods():
    torch = pytest.importorskip("torch")
    model = torch.nn.Linear(3, 2).double()
    inputs = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([0, 1, 1, 0])
    loss = torch.nn.CrossEntropyLoss()
    for name in EXACT_METHODS:
        result = exact_diagonal(model, loss, inputs, targets, method=name)
        assert result.method == ("ggn" if name == "auto" else name)
    with pytest.raises(CurvatureError) as error:
        exact_diagonal(model, loss, inputs, targets, method="not-a-declared-name")
    assert str(error.value) == "method: got 'not-a-declared-name'; allowed: " + ", ".join(EXACT_METHODS)
