"""The published presets are declared once (``optim/presets.py``); everything else agrees with it.

The TOML files in ``experiments/presets/`` are copies checked here, the run config resolves its
``preset`` field from the same table, and ``optim`` reads no file of the project's layout.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
import torch

from arturo_diag.optim import PRESET_NAMES, PRESETS, Arturo, load_preset
from arturo_diag.optim.presets import LR_GAMMA

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
PRESET_DIR = ROOT / "experiments" / "presets"
OPTIM_DIR = ROOT / "arturo_diag" / "optim"

# ARTURO.md, "Published settings", typed again here: a second hand against a slip in the table.
PUBLISHED = {
    "fmnist_cnn": (0.08567456, 0.05865662, 0.01739296, 2.81679116, 1.5404e-6),
    "fmnist_resnet18": (0.08567456, 0.05865662, 0.01739296, 2.81679116, 1.5404e-6),
    "cifar10_cnn": (0.00278750, 0.29678596, 0.00245526, 1.21975001, 0.0),
    "cifar100_cnn": (0.00278750, 0.29678596, 0.00245526, 1.21975001, 0.0),
    "cifar10_resnet34": (0.00713292, 1.59735443, 0.08938099, 9.32844002, 7.0291e-4),
    "cifar100_resnet34": (0.00723373, 1.67676999, 0.00977875, 4.82203163, 0.0),
}


def test_the_table_is_arturo_md():
    assert PRESET_NAMES == tuple(PUBLISHED)
    for name, (eps, rho, q, r, wd) in PUBLISHED.items():
        assert dict(PRESETS[name]) == {
            "lr": eps,
            "reg_weight": rho,
            "prior_prec": 0.0015,
            "var_init": 0.01,
            "nu": 1.3,
            "dynamic_model_noise": q,
            "measurement_noise": r,
            "start_filter_cov": 5e-5,
            "eta_tol": 0.5,
            "weight_decay": wd,
        }, name
        assert LR_GAMMA[name] == 0.006


def test_toml_files_are_copies_of_the_table():
    assert sorted(p.stem for p in PRESET_DIR.glob("*.toml")) == sorted(PRESET_NAMES)
    for name in PRESET_NAMES:
        with (PRESET_DIR / f"{name}.toml").open("rb") as f:
            data = tomllib.load(f)
        assert data == {"optimizer": dict(PRESETS[name]), "schedule": {"lr_gamma": LR_GAMMA[name]}}, name


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_run_config_resolves_from_the_table(name):
    from arturo_diag.training.config import RunConfig

    resolved = RunConfig(preset=name).resolved()
    assert resolved.arturo_kwargs() == dict(
        PRESETS[name], kl="decoupled", dual="bisection", fixed_eta=None, guard=False
    )
    assert resolved.lr_gamma == LR_GAMMA[name]


def test_from_preset_uses_the_table_and_overrides_win():
    p = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = Arturo.from_preset("cifar10_resnet34", [p], weight_decay=0.0, kl="coupled")
    group = opt.param_groups[0]
    for key, value in PRESETS["cifar10_resnet34"].items():
        assert group[key] == (0.0 if key == "weight_decay" else value), key
    assert group["kl"] == "coupled"


def test_load_preset_returns_a_copy_and_the_table_is_read_only():
    kwargs = load_preset("fmnist_cnn")
    kwargs["lr"] = 1.0
    assert PRESETS["fmnist_cnn"]["lr"] == 0.08567456
    with pytest.raises(TypeError):
        PRESETS["fmnist_cnn"]["lr"] = 1.0  # type: ignore[index]


def test_unknown_preset_names_it_and_the_allowed_ones():
    with pytest.raises(ValueError) as info:
        load_preset("imagenet_vit")
    assert str(info.value) == (
        "preset: got 'imagenet_vit'; allowed: fmnist_cnn, fmnist_resnet18, cifar10_cnn, "
        "cifar100_cnn, cifar10_resnet34, cifar100_resnet34"
    )


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_optim_imports_nothing_of_the_project_and_no_file_access():
    """DESIGN.md: optim is a torch optimizer anyone can copy out (relative imports only, no files)."""
    allowed = {
        "__future__",
        "collections",
        "inspect",
        "math",
        "os",
        "sys",
        "types",
        "typing",
        "numpy",
        "torch",
        "numba",
    }
    files = sorted(OPTIM_DIR.glob("*.py"))
    assert len(files) >= 4
    for path in files:
        assert _imports(path) <= allowed, (path.name, _imports(path) - allowed)
        source = path.read_text()
        for word in ("open(", "Path", "__file__", "tomllib"):
            assert word not in source, (path.name, word)
