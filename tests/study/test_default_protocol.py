"""One protocol for `compare` and `ablate` (issue 11 item 8): the default study's faithful seed-0
run is the default compare run, field for field."""

import dataclasses

from arturo_diag.study import default_study
from arturo_diag.study.config import expand_grid
from cli.compare import build_config

# read only when oracle != "none" (the oracle variants): the default study sets it for them
ORACLE_ONLY = ("oracle_every",)
# what a run measures, not how it trains: a study leaves out the spectrum, which the study does not read
# (tests/training/test_instruments_leave_training_alone.py: every instrument leaves the run unchanged)
MEASURE_ONLY = ("instruments",)


def _faithful_seed0(tmp_path):
    specs = [s for s in expand_grid(default_study(), tmp_path) if s.variant.name == "faithful" and s.seed == 0]
    assert len(specs) == 1
    return specs[0].config


def test_default_compare_and_default_study_faithful_seed0_are_one_run_config(tmp_path):
    compare = build_config(None, {"out": "runs/compare"}).resolved()
    study = _faithful_seed0(tmp_path).resolved()
    assert study.oracle == compare.oracle == "none"
    differing = {
        f.name: (getattr(compare, f.name), getattr(study, f.name))
        for f in dataclasses.fields(compare)
        if getattr(compare, f.name) != getattr(study, f.name)
    }
    assert set(differing) <= {"out", *ORACLE_ONLY, *MEASURE_ONLY}, differing
    assert set(compare.instruments) - set(study.instruments) == {"spectrum"}
    assert "out" in differing  # the comparison is not vacuous: out does differ


def test_the_shared_protocol_is_the_papers_scaled_by_a_tenth(tmp_path):
    # ARTURO.md: Fashion-MNIST 120 epochs, milestones 60 and 90 -> 12 epochs, 6 and 9
    for config in (build_config(None, {}), _faithful_seed0(tmp_path)):
        assert (config.epochs, config.lr_milestones) == (12, (6, 9))
        assert (config.every, config.batch_size, config.probe_size, config.samples) == (10, 64, 128, 64)
        assert config.steps is None and config.preset == "fmnist_cnn" and config.seed == 0
