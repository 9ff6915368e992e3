"""The one TOML writer: what the configs and studies write parses back to the same values."""

import dataclasses
import math

import pytest

from arturo_diag._toml import toml_value, tomllib
from arturo_diag.study.config import default_study, study_from_mapping, study_to_toml
from arturo_diag.training.config import RunConfig, config_from_mapping, config_to_toml

STRINGS = [
    "plain",
    'say "hi"',
    "back\\slash",
    "C:\\runs\\new",
    "two\nlines",
    "tab\there",
    "cr\rlf",
    "bell\x07",
    "nul\x00",
    "del\x7f",
    "unicode: η ≤ 1e-3, ünï, 日本, 🙂",
    "",
    "'single'",
    '\\"',
    "\u2028",
]
FLOATS = [0.0, -0.0, 1.0, 1e-300, 5e-324, 1.7976931348623157e308, 0.1, 1 / 3, -2.5e-08, 1e16, 123456789.125]
INTS = [0, 1, -1, 2**53 + 1, 10**18]


def _round_trip(value):
    return tomllib.loads(f"x = {toml_value(value)}")["x"]


@pytest.mark.parametrize("value", STRINGS)
def test_strings_round_trip(value):
    assert _round_trip(value) == value


@pytest.mark.parametrize("value", FLOATS)
def test_floats_round_trip_exactly(value):
    back = _round_trip(value)
    assert isinstance(back, float) and back == value and math.copysign(1, back) == math.copysign(1, value)


@pytest.mark.parametrize("value", INTS)
def test_ints_round_trip_as_ints(value):
    back = _round_trip(value)
    assert isinstance(back, int) and back == value


def test_non_finite_floats_are_written_as_toml_nan_and_inf():
    assert [toml_value(v) for v in (math.nan, math.inf, -math.inf)] == ["nan", "inf", "-inf"]
    assert math.isnan(_round_trip(math.nan)) and _round_trip(math.inf) == math.inf
    assert _round_trip(-math.inf) == -math.inf


def test_bools_and_lists():
    assert (toml_value(True), toml_value(False)) == ("true", "false")
    value = [1, 2.5, 'a"b', True, [0, 1e-300]]
    assert _round_trip(value) == value
    assert _round_trip((0, 1, 2)) == [0, 1, 2]


def test_none_has_no_literal():
    with pytest.raises(TypeError, match="None"):
        toml_value(None)


def test_numpy_scalars_are_written_as_plain_numbers():
    np = pytest.importorskip("numpy")
    assert toml_value(np.float64(0.25)) == "0.25"


def test_a_resolved_config_round_trips():
    config = RunConfig().resolved()
    assert config_from_mapping(tomllib.loads(config_to_toml(config))) == config


def test_a_config_with_an_awkward_path_round_trips():
    config = RunConfig().resolved().replace(out='runs/a "quoted" dir\\with\\backslashes/ü\nline two\ttab')
    assert config_from_mapping(tomllib.loads(config_to_toml(config))) == config


@pytest.mark.parametrize("description", STRINGS[:-1])
def test_a_study_description_round_trips(description):
    study = default_study()
    study = dataclasses.replace(study, description=description)
    again = study_from_mapping(tomllib.loads(study_to_toml(study)))
    assert again.description == description
    assert study_to_toml(again) == study_to_toml(study)
