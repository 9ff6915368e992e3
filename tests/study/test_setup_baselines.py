"""Baselines per setup (issue 11 item 7): the authors' tuned SGD/Adam/AdamW settings for the
paper's setups, as ARTURO.md lists them (typed here from its table, and parsed from the file
when it is present), Adam without weight decay as the authors ran it; the digits setup keeps the
validation grid's values."""

import re
from pathlib import Path

import pytest
import torch

from arturo_diag.study import load_study
from arturo_diag.study.baselines import baselines_for, load_baselines, load_setup_baselines
from arturo_diag.study.config import expand_grid
from arturo_diag.training.loop import build_optimizer

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
ARTURO_MD = Path(__file__).resolve().parents[3] / "shared" / "ARTURO.md"

# ARTURO.md, "Baselines (the authors' tuned settings)": SGD (lr, momentum, wd), Adam (lr, b1, b2),
# AdamW (lr, b1, b2, wd)
AUTHORS = {
    "fmnist_cnn": (
        (0.07104941, 0.86572992, 2.2470763e-4),
        (0.00101244, 0.94525612, 0.99034175),
        (0.00100420, 0.92224727, 0.99994462, 1.4236954e-4),
    ),
    "fmnist_resnet18": (
        (0.13703144, 0.85408672, 1.9628778e-3),
        (0.04511472, 0.90789473, 0.99999883),
        (0.01874381, 0.86274830, 0.99999865, 3.9621664e-5),
    ),
    "cifar10_cnn": (
        (0.01783363, 0.94676218, 1.6322979e-4),
        (0.00112882, 0.85115733, 0.99893953),
        (0.00112882, 0.85115733, 0.99893953, 1.0896508e-3),
    ),
    "cifar10_resnet34": (
        (0.05647955, 0.86648748, 1.6973383e-3),
        (0.00665172, 0.89031296, 0.99938671),
        (0.00665172, 0.89031296, 0.99938671, 4.4661895e-4),
    ),
    "cifar100_resnet34": (
        (0.06799374, 0.86736954, 1.7998911e-3),
        (0.00161224, 0.86458236, 0.99995295),
        (0.00124511, 0.85864264, 0.99880194, 1.8037507e-3),
    ),
}
AUTHORS["cifar100_cnn"] = AUTHORS["cifar10_cnn"]  # one row "cifar10_cnn, cifar100_cnn"
PAIRS = {
    "fmnist_cnn": ("fashion_mnist", "fashion_cnn"),
    "fmnist_resnet18": ("fashion_mnist", "resnet18"),
    "cifar10_cnn": ("cifar10", "cifar_cnn"),
    "cifar100_cnn": ("cifar100", "cifar_cnn"),
    "cifar10_resnet34": ("cifar10", "resnet34"),
    "cifar100_resnet34": ("cifar100", "resnet34"),
}


def _expected(name):
    sgd, adam, adamw = AUTHORS[name]
    return {
        "sgd": {"lr": sgd[0], "momentum": sgd[1], "weight_decay": sgd[2], "lr_gamma": 0.1},
        "adam": {"lr": adam[0], "beta1": adam[1], "beta2": adam[2], "weight_decay": 0.0, "lr_gamma": 0.1},
        "adamw": {"lr": adamw[0], "beta1": adamw[1], "beta2": adamw[2], "weight_decay": adamw[3], "lr_gamma": 0.1},
    }


@pytest.mark.skipif(not ARTURO_MD.is_file(), reason="../shared/ARTURO.md is not beside the checkout")
def test_the_typed_values_are_arturo_mds_table():
    text = ARTURO_MD.read_text()
    after = text[text.index("Baselines (the authors' tuned settings") :].split("\n\n")[1]  # the table
    rows = [r for r in after.splitlines() if re.match(r"\| [a-z]", r) and not r.startswith("| setup")]
    parsed = {}
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        v = [float(c) for c in cells[1:]]
        for name in cells[0].split(", "):
            parsed[name] = ((v[0], v[1], v[2]), (v[3], v[4], v[5]), (v[6], v[7], v[8], v[9]))
    assert parsed == AUTHORS


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_the_loader_returns_the_authors_values(name):
    dataset, model = PAIRS[name]
    tables = load_setup_baselines()
    assert tables[name][:2] == (dataset, model)
    baselines = baselines_for(dataset, model)
    assert {k: dict(v) for k, v in baselines.values.items()} == _expected(name)
    assert baselines.source.startswith("the authors' tuned settings")
    assert "WITHOUT weight decay" in baselines.source and "ALRhub/arturo" in baselines.source


def test_other_setups_take_the_digits_grid_values():
    assert baselines_for("digits", "small_cnn") == load_baselines()
    assert baselines_for("fashion_mnist", "small_cnn") == load_baselines()  # not a paper setup
    assert "validation" in load_baselines().source and "test" in load_baselines().source


STUDIES = ["fmnist_cnn", "fmnist_resnet18", "cifar10_cnn", "cifar100_cnn", "cifar10_resnet34", "cifar100_resnet34"]


@pytest.mark.parametrize("name", STUDIES)
def test_paper_studies_run_the_authors_baselines(name, tmp_path):
    study = load_study(EXPERIMENTS / "studies" / f"{name}.toml")
    (setup,) = study.setups
    assert (setup.config.dataset, setup.config.model) == PAIRS[name]
    specs = {s.variant.name: s.config for s in expand_grid(study, tmp_path) if s.seed == 0}
    sgd, adam, adamw = AUTHORS[name]
    assert (specs["sgd"].lr, specs["sgd"].momentum, specs["sgd"].weight_decay) == sgd
    assert (specs["adam"].lr, specs["adam"].beta1, specs["adam"].beta2, specs["adam"].weight_decay) == (*adam, 0.0)
    assert (specs["adamw"].lr, specs["adamw"].beta1, specs["adamw"].beta2, specs["adamw"].weight_decay) == adamw
    assert all(specs[o].lr_gamma == 0.1 for o in ("sgd", "adam", "adamw"))
    epochs, milestones = (120, (60, 90)) if name.startswith("fmnist") else (160, (80, 120))  # ARTURO.md protocol
    assert (setup.config.epochs, setup.config.lr_milestones, setup.config.batch_size) == (epochs, milestones, 255)


def test_the_torch_optimizers_get_the_values(tmp_path):
    study = load_study(EXPERIMENTS / "studies" / "cifar10_resnet34.toml")
    specs = {s.variant.name: s.config for s in expand_grid(study, tmp_path) if s.seed == 0}
    model = torch.nn.Linear(2, 2)
    adam = build_optimizer(specs["adam"].resolved(), model)
    assert type(adam) is torch.optim.Adam
    group = adam.param_groups[0]
    assert (group["lr"], group["betas"], group["weight_decay"]) == (0.00665172, (0.89031296, 0.99938671), 0.0)
    sgd = build_optimizer(specs["sgd"].resolved(), model).param_groups[0]
    assert (sgd["momentum"], sgd["weight_decay"], sgd["nesterov"], sgd["dampening"]) == (
        0.86648748,
        1.6973383e-3,
        False,
        0,
    )
    adamw = build_optimizer(specs["adamw"].resolved(), model)
    assert type(adamw) is torch.optim.AdamW and adamw.param_groups[0]["weight_decay"] == 4.4661895e-4


def test_the_digits_values_are_the_grids_recorded_choice():
    text = (EXPERIMENTS / "digits_baselines_grid.md").read_text()
    chosen = dict(re.findall(r"^- (sgd|adam|adamw): (.*)$", text, flags=re.M))
    assert set(chosen) == {"sgd", "adam", "adamw"}
    values = load_baselines().values
    for opt, line in chosen.items():
        recorded = {k: float(v) for k, v in re.findall(r"(\w+) = ([0-9.e-]+)", line)}
        assert recorded == dict(values[opt]), opt
    assert "tune_digits_baselines.py" in text and "never read" in text
