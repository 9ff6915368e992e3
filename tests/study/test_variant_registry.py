"""A new study variant is one entry in ``VARIANT_SPECS`` (issue 10, item 3).

The test registers a toy variant by patching only the registry and checks that everything else
follows: parsing (value and errors), ``Variant.changes`` / ``describe``, the study grid's
RunConfigs, and ``ablate --variants`` (its help, and its parsing on the command line). The help is
computed when ``cli/ablate.py`` is imported, so ``cli.ablate`` and ``cli.app`` are re-imported with
the patched registry and again afterwards (as in tests/test_vocabulary.py).
"""

from __future__ import annotations

import importlib
from types import MappingProxyType

import pytest
from typer.testing import CliRunner

from arturo_diag.errors import ConfigError
from arturo_diag.study import expand_grid, parse_variant, parse_variants, study_from_mapping, variants
from arturo_diag.study.variants import Argument, VariantKind

TINY = {"model": "mlp", "dataset": "teacher", "steps": 4, "batch_size": 16, "train_size": 32, "reference": "none"}


def _at_most_1(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if 0 <= value <= 1 else None


TOY = VariantKind(
    "toy-drift",
    "the filter's drift q set to Q, with the positivity guard",
    changes=lambda q: {"dynamic_model_noise": float(q), "guard": True},
    description="a drift of {value} with the guard",
    argument=Argument("Q", _at_most_1, "{kind}:Q with a number 0 <= Q <= 1", required=True),
)


@pytest.fixture
def toy_registered(monkeypatch):
    monkeypatch.setattr(variants, "VARIANT_SPECS", MappingProxyType({**variants.VARIANT_SPECS, TOY.name: TOY}))


def _ablate_help() -> str:
    import cli.ablate
    import cli.app

    importlib.reload(cli.ablate)
    importlib.reload(cli.app)
    result = CliRunner().invoke(cli.app.app, ["ablate", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return " ".join(result.output.replace("│", " ").split())


def test_a_registered_variant_parses_and_yields_its_runconfig_changes(toy_registered):
    toy = parse_variant("Toy_Drift:0.25")
    assert (toy.kind, toy.value, toy.name, toy.slug, toy.family) == (
        "toy-drift",
        0.25,
        "toy-drift:0.25",
        "toy-drift=0.25",
        "arturo",
    )
    assert toy.changes() == {"dynamic_model_noise": 0.25, "guard": True}
    assert toy.describe() == "a drift of 0.25 with the guard"
    assert [v.name for v in parse_variants("faithful,toy-drift:0.5")] == ["faithful", "toy-drift:0.5"]
    for name, allowed in (
        ("toy-drift:2", "toy-drift:Q with a number 0 <= Q <= 1"),
        ("toy-drift", "toy-drift:Q with a value"),
        ("bogus", "guarded, sgd, adam, adamw, ivon[:LR], adahessian[:LR], sophia-h[:LR], sophia-g[:LR], toy-drift:Q"),
        (
            "faithful:1",
            "only fixed-eta, oracle-exact, oracle-hutchinson, ivon, adahessian, sophia-h, sophia-g and toy-drift "
            "take one)",
        ),
    ):
        with pytest.raises(ConfigError) as error:
            parse_variant(name)
        assert error.value.allowed.endswith(allowed), (name, error.value.allowed)

    study = study_from_mapping(
        {"study": {"seeds": [0], "variants": ["faithful", "toy-drift:0.25"]}, "setups": {"t": TINY}}
    )
    faithful, changed = expand_grid(study, "/nonexistent/study")
    assert changed.relative_dir == "runs/t/toy-drift=0.25/seed0"
    assert (changed.config.dynamic_model_noise, changed.config.guard) == (0.25, True)
    assert faithful.config.replace(dynamic_model_noise=0.25, guard=True, out=changed.config.out) == changed.config


def test_a_registered_variant_is_in_ablate_help_and_its_command_line(monkeypatch):
    try:
        with monkeypatch.context() as patch:
            patch.setattr(variants, "VARIANT_SPECS", MappingProxyType({**variants.VARIANT_SPECS, TOY.name: TOY}))
            text = _ablate_help()
            bad = CliRunner().invoke(importlib.import_module("cli.app").app, ["ablate", "--variants", "toy-drift:7"])
        assert (
            "sophia-g[:LR]: Sophia-G and its Gauss-Newton-Bartlett EMA at the paper's defaults (LR: its lr); "
            "toy-drift:Q: the filter's drift q set to Q, with the positivity guard." in text
        )
        assert bad.exit_code == 2 and "variants: got 'toy-drift:7'; allowed: toy-drift:Q with a number" in bad.output
    finally:
        text = _ablate_help()
    assert "toy-drift" not in text
