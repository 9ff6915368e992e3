"""Study configs: variant names, TOML validation (errors name the field), grid expansion, overrides."""

from pathlib import Path

import pytest
import tomllib

from arturo_diag.errors import ConfigError
from arturo_diag.study import (
    Variant,
    default_study,
    expand_grid,
    load_baselines,
    load_study,
    parse_seeds,
    parse_variant,
    parse_variants,
    study_from_mapping,
    study_to_toml,
    with_overrides,
)
from arturo_diag.study.variants import ARTURO_VARIANTS, BASELINE_OPTIMIZERS

REPO = Path(__file__).resolve().parents[2]
TINY = {"model": "mlp", "dataset": "teacher", "steps": 4, "batch_size": 16, "train_size": 32, "reference": "none"}


@pytest.mark.parametrize(
    "name, kind, value, canonical",
    [
        ("faithful", "faithful", None, "faithful"),
        ("fixed-eta:0.5", "fixed-eta", 0.5, "fixed-eta:0.5"),
        ("fixed-eta:1", "fixed-eta", 1.0, "fixed-eta:1.0"),
        ("fixed_eta:2e-1", "fixed-eta", 0.2, "fixed-eta:0.2"),
        ("oracle-exact", "oracle-exact", None, "oracle-exact"),
        ("oracle-hutchinson:5", "oracle-hutchinson", 5, "oracle-hutchinson:5"),
        ("Adam", "adam", None, "adam"),
    ],
)
def test_parse_variant_names(name, kind, value, canonical):
    variant = parse_variant(name)
    assert (variant.kind, variant.value, variant.name) == (kind, value, canonical)
    assert ":" not in variant.slug


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("bogus", "faithful, fixed-eta:VALUE"),
        ("fixed-eta", "with a value"),
        ("fixed-eta:x", "finite number"),
        ("fixed-eta:-1", "finite number"),
        ("fixed-eta:nan", "finite number"),
        ("coupled-kl:3", "without a value"),
        ("oracle-exact:0", "EVERY >= 1"),
        ("", "faithful"),
    ],
)
def test_parse_variant_rejects(name, fragment):
    with pytest.raises(ConfigError) as info:
        parse_variant(name)
    assert info.value.field == "variants" and fragment in str(info.value)


def test_every_builtin_variant_maps_onto_runconfig_fields():
    baselines = load_baselines().values
    expected = {
        "faithful": {},
        "fixed-eta:0.5": {"fixed_eta": 0.5},
        "coupled-kl": {"kl": "coupled"},
        "no-drift": {"dynamic_model_noise": 0.0},
        "oracle-exact": {"oracle": "exact"},
        "oracle-exact:3": {"oracle": "exact", "oracle_every": 3},
        "oracle-hutchinson": {"oracle": "hutchinson"},
        "exact-dual": {"dual": "exact"},
        "guarded": {"guard": True},
        "sgd": {"optimizer": "sgd", **baselines["sgd"]},
        "adam": {"optimizer": "adam", **baselines["adam"]},
        "adamw": {"optimizer": "adamw", **baselines["adamw"]},
    }
    for name, changes in expected.items():
        assert parse_variant(name).changes(baselines) == changes, name
    assert {parse_variant(n).kind for n in expected} == set(ARTURO_VARIANTS + BASELINE_OPTIMIZERS)


def test_grid_is_setups_x_variants_x_seeds_with_one_directory_each(tmp_path):
    data = {
        "study": {"seeds": [3, 1], "variants": ["faithful", "fixed-eta", "sgd"], "fixed_eta": [0.5, 1.0]},
        "setups": {"a": dict(TINY), "b": {**TINY, "batch_size": 8}},
    }
    s = study_from_mapping(data)
    assert [v.name for v in s.variants] == ["faithful", "fixed-eta:0.5", "fixed-eta:1.0", "sgd"]
    specs = expand_grid(s, tmp_path)
    assert len(specs) == 2 * 4 * 2
    assert len({spec.config.out for spec in specs}) == len(specs)
    assert {spec.key for spec in specs} == {
        (a, v.name, seed) for a in ("a", "b") for v in s.variants for seed in (3, 1)
    }
    first = specs[0]
    assert first.relative_dir == "runs/a/faithful/seed3" and first.config.out == str(tmp_path / first.relative_dir)
    fixed = next(spec for spec in specs if spec.variant.name == "fixed-eta:1.0" and spec.setup == "b")
    assert (
        fixed.config.fixed_eta == 1.0
        and fixed.config.batch_size == 8
        and fixed.relative_dir.startswith("runs/b/fixed-eta=1.0/")
    )
    sgd = next(spec for spec in specs if spec.variant.name == "sgd")
    assert sgd.config.optimizer == "sgd" and sgd.config.lr == load_baselines().values["sgd"]["lr"]


def test_default_study_is_every_variant_and_the_three_baselines_over_three_seeds(tmp_path):
    s = default_study()
    assert s.seeds == (0, 1, 2)
    kinds = [v.kind for v in s.variants]
    assert set(kinds) == set(ARTURO_VARIANTS + BASELINE_OPTIMIZERS)
    assert len(expand_grid(s, tmp_path)) == 33
    (setup,) = s.setups
    assert setup.config.dataset in ("digits", "teacher")  # built in: nothing to download


@pytest.mark.parametrize(
    "data, field, fragment",
    [
        ({"study": {"variants": ["faithful"]}}, "[study] seeds", "non-empty list"),
        ({"study": {"seeds": [0]}}, "[study] variants", "variant names"),
        ({"study": {"seeds": [], "variants": ["faithful"]}}, "[study] seeds", "non-empty"),
        ({"study": {"seeds": [0, -1], "variants": ["faithful"]}}, "[study] seeds", ">= 0"),
        ({"study": {"seeds": [0, 0], "variants": ["faithful"]}}, "[study] seeds", "distinct"),
        ({"study": {"seeds": [0], "variants": ["faithful", "faithful"]}}, "[study] variants", "each variant once"),
        ({"study": {"seeds": [0], "variants": ["faithful", "sgdd"]}}, "[study] variants", "fixed-eta:VALUE"),
        ({"study": {"seeds": [0], "variants": ["fixed-eta"], "fixed_eta": [-1]}}, "[study] fixed_eta", ">= 0"),
        ({"study": {"seeds": [0], "variants": ["faithful"], "epochs": 3}}, "[study] epochs", "keys name"),
        ({"study": {"seeds": [0], "variants": ["faithful"]}, "runs": {}}, "runs", "sections"),
        (
            {"study": {"seeds": [0], "variants": ["faithful"]}, "setups": {"x": {"optimizer": "adam"}}},
            "[setups.x] optimizer",
            "variants set it",
        ),
        (
            {"study": {"seeds": [0], "variants": ["faithful"]}, "setups": {"x": {"run": {"seed": 3}}}},
            "[setups.x] seed",
            "study sets it",
        ),
        ({"study": {"seeds": [0], "variants": ["faithful"]}, "setups": {"x": {"epochs": 0}}}, "epochs", "integer >= 1"),
        (
            {"study": {"seeds": [0], "variants": ["faithful"]}, "setups": {"x": {"modle": "mlp"}}},
            "[setups.x]: modle",
            "known field",
        ),
        (
            {"study": {"seeds": [0], "variants": ["faithful"]}, "setups": {"x": {"run": {"every": 3}}}},
            "[run] every",
            "belongs in [diagnostics]",
        ),
        (
            {"study": {"seeds": [0], "variants": ["faithful"]}, "setups": {"x/y": {}}},
            "[setups.x/y]",
            "names a directory",
        ),
        (
            {"study": {"seeds": [0], "variants": ["sgd"]}, "baselines": {"sgd": {"lr": -1}}},
            "[baselines]: [sgd] lr",
            "> 0",
        ),
        (
            {"study": {"seeds": [0], "variants": ["sgd"]}, "baselines": {"adam": {"momentum": 0.9}}},
            "[adam] momentum",
            "lr, beta1, beta2, weight_decay",
        ),
        ({"study": {"seeds": [0], "variants": ["sgd"]}, "baselines": {"rmsprop": {}}}, "rmsprop", "sgd, adam, adamw"),
    ],
)
def test_study_validation_names_the_field(data, field, fragment):
    with pytest.raises(ConfigError) as info:
        study_from_mapping(data, source="s.toml")
    assert field in info.value.field, info.value
    assert fragment in str(info.value)


def test_a_bad_setup_value_names_the_setup_and_the_field():
    with pytest.raises(ConfigError) as info:
        study_from_mapping(
            {"study": {"seeds": [0], "variants": ["faithful"]}, "setups": {"x": {**TINY, "oracle_every": 0}}},
            source="s.toml",
        )
    assert info.value.field == "s.toml: [setups.x]: oracle_every" and "integer >= 1" in str(info.value)


def test_load_study_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="an existing study TOML file"):
        load_study(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[study\nseeds = [0]\n")
    with pytest.raises(ConfigError, match="valid TOML"):
        load_study(bad)
    good = tmp_path / "mine.toml"
    good.write_text('[study]\nseeds = [0]\nvariants = ["faithful"]\n[setups.t]\nmodel = "mlp"\ndataset = "teacher"\n')
    assert load_study(good).name == "mine"  # the file's stem when [study] has no name


def test_study_toml_round_trips(tmp_path):
    data = {
        "study": {
            "name": "rt",
            "description": 'quote " and \\ back',
            "seeds": [2, 0],
            "variants": ["faithful", "fixed-eta", "oracle-exact:3", "sgd", "adamw"],
            "fixed_eta": [0.25],
        },
        "baselines": {"sgd": {"lr": 0.05}, "source": "tuned by hand for this test"},
        "setups": {
            "a": {
                "run": {k: v for k, v in TINY.items() if k != "reference"},
                "diagnostics": {"reference": "none"},
                "schedule": {"lr_milestones": [2, 3]},
            },
            "b": {**TINY, "lr": 0.01, "baselines": {"adamw": {"weight_decay": 0.5}}},
        },
    }
    s = study_from_mapping(data)
    text = study_to_toml(s)
    again = study_from_mapping(tomllib.loads(text))
    assert again == s
    assert again.setup("a").baselines.values["sgd"]["lr"] == 0.05
    assert again.setup("b").baselines.values["adamw"]["weight_decay"] == 0.5
    assert (
        again.setup("a").baselines.values["adamw"]["weight_decay"] == load_baselines().values["adamw"]["weight_decay"]
    )
    assert study_to_toml(default_study()) == study_to_toml(
        study_from_mapping(tomllib.loads(study_to_toml(default_study())))
    )


def test_overrides_from_the_command_line(tmp_path):
    s = study_from_mapping(
        {
            "study": {"seeds": [0], "variants": ["faithful"]},
            "setups": {"a": {k: v for k, v in TINY.items() if k != "steps"}, "b": dict(TINY)},
        }
    )
    o = with_overrides(
        s,
        variants=parse_variants("faithful,fixed-eta:1.0,adam"),
        seeds=parse_seeds("4, 5"),
        epochs=2,
        max_steps=3,
        data_dir="/data",
    )
    assert [v.name for v in o.variants] == ["faithful", "fixed-eta:1.0", "adam"] and o.seeds == (4, 5)
    a, b = o.setup("a").config, o.setup("b").config
    assert (a.epochs, a.steps, a.data_dir) == (2, 3, "/data")
    assert b.steps == 3  # capped: min(4, 3)
    assert with_overrides(s, max_steps=10).setup("b").config.steps == 4  # a cap never lengthens a run
    assert with_overrides(s) == s
    with pytest.raises(ConfigError, match="max_steps"):
        with_overrides(s, max_steps=0)
    with pytest.raises(ConfigError) as info:
        with_overrides(s, epochs=0)
    assert info.value.field.endswith("epochs")


@pytest.mark.parametrize("text, field", [("0,x", "seeds"), ("", "seeds"), ("1,1", "seeds"), ("-2", "seeds")])
def test_parse_seeds_rejects(text, field):
    with pytest.raises(ConfigError) as info:
        parse_seeds(text)
    assert info.value.field == field


def test_baselines_file_names_its_source_the_digits_validation_grid():
    # issue 11: the top-level (digits) values come from a grid on a validation split, and say so
    baselines = load_baselines(REPO / "experiments" / "baselines.toml")
    assert set(baselines.values) == {"sgd", "adam", "adamw"}
    assert "validation split" in baselines.source and "never the test set" in baselines.source
    assert baselines.values["sgd"]["momentum"] == 0.9
    assert baselines == load_baselines()  # the file the library reads is this one


def test_variant_value_types():
    assert Variant("fixed-eta", 1.0).name == "fixed-eta:1.0"
    assert Variant("oracle-exact", 5).name == "oracle-exact:5"
