"""The cross-optimizer study (issue 13, item 4): one table and one figure of every variant's curvature
estimate against h, checked against the runs' own metrics.json aggregated here by hand.

A tiny study (the teacher MLP, 6 steps, an exact h every 3 steps, 2 seeds) of faithful arTuRO, Adam,
AdaHessian and SGD: the three with an estimate get a row each, SGD none. The numbers of the table and
of study.json are recomputed from each run's metrics.json (c* = the final snapshot's
``scale.rescaled.factor``, Spearman its ``estimate.spearman``, the verdicts the run's
``agreement.*``) and epochs.csv (final test accuracy) with numpy and scipy's t quantile.
"""

import json
import math
import struct

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from typer.testing import CliRunner

from arturo_diag.errors import ConfigError
from arturo_diag.numbers import sig
from arturo_diag.study import parse_variant, run_study, study_from_mapping
from arturo_diag.study.aggregate import ESTIMATE_COLUMNS
from cli.app import app

TINY = {
    "model": "mlp",
    "dataset": "teacher",
    "steps": 6,
    "batch_size": 16,
    "train_size": 64,
    "probe_size": 16,
    "every": 3,
    "reference": "exact",
}
SEEDS = [0, 1]
WITH_ESTIMATE = ["faithful", "adam", "adahessian"]
VERDICTS = {"beats_constant": "agreement.beats_constant", "scale": "agreement.scale", "shape": "agreement.shape"}


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cross")
    study = study_from_mapping({"study": {"seeds": SEEDS, "variants": [*WITH_ESTIMATE, "sgd"]}, "setups": {"t": TINY}})
    result = run_study(study, root, workers=0, render=True)
    assert [o.status for o in result.outcomes] == ["complete"] * 8
    return root


def _metrics(study_dir, variant, seed):
    return json.loads((study_dir / "runs" / "t" / variant / f"seed{seed}" / "metrics.json").read_text())


def _final_accuracy(study_dir, variant, seed):
    epochs = pd.read_csv(study_dir / "runs" / "t" / variant / f"seed{seed}" / "epochs.csv")
    return float(epochs.sort_values("step").test_accuracy.iloc[-1])


def _by_hand(study_dir, variant):
    """c*, Spearman, accuracy per seed and the verdicts' (yes, assessed) from the runs' own files."""
    scale, spearman, accuracy, verdicts = [], [], [], {k: [0, 0] for k in VERDICTS}
    for seed in SEEDS:
        metrics = _metrics(study_dir, variant, seed)
        final = metrics["agreement"]["final"]
        assert final["step"] == metrics["run"]["snapshot_steps"][-1] == 6  # assessed at the last snapshot
        scale.append(final["overall"]["scale"]["rescaled"]["factor"])
        spearman.append(final["overall"]["estimate"]["spearman"])
        accuracy.append(_final_accuracy(study_dir, variant, seed))
        outcomes = {v["id"]: v["outcome"] for v in metrics["verdicts"]}
        for key, vid in VERDICTS.items():
            if outcomes[vid] in ("yes", "no"):
                verdicts[key][0] += outcomes[vid] == "yes"
                verdicts[key][1] += 1
    return np.array(scale), np.array(spearman), np.array(accuracy), verdicts


def _t_interval(x):
    half = stats.t.ppf(0.975, len(x) - 1) * np.std(x, ddof=1) / np.sqrt(len(x))
    return np.mean(x), np.mean(x) - half, np.mean(x) + half


def _entries(study_dir):
    data = json.loads((study_dir / "study.json").read_text())
    return {e["variant"]: e for e in data["results"]["t"]["summary"]}


def test_one_summary_entry_and_table_row_per_variant_with_an_estimate(study_dir):
    entries = _entries(study_dir)
    assert [v for v, e in entries.items() if "estimate" in e] == WITH_ESTIMATE  # not sgd
    markdown = (study_dir / "study.md").read_text()
    section = markdown.split("### Curvature estimates across optimizers")[1].split("\n\n")[1]
    rows = [line.split(" | ")[0].strip("| ") for line in section.splitlines()[2:]]
    assert rows == WITH_ESTIMATE
    targets = {v: entries[v]["estimate"]["target"] for v in WITH_ESTIMATE}
    assert targets == {
        "faithful": "hessian_diagonal",
        "adam": "gradient_second_moment",
        "adahessian": "hessian_diagonal",
    }
    assert "| adam | adam | E[g^2] |" in section and "| adahessian | adahessian | Hessian diagonal |" in section


@pytest.mark.parametrize("variant", WITH_ESTIMATE)
def test_the_numbers_are_the_runs_metrics_aggregated_over_seeds(study_dir, variant):
    scale, spearman, accuracy, verdicts = _by_hand(study_dir, variant)
    estimate = _entries(study_dir)[variant]["estimate"]
    for name, values in (("scale_factor", scale), ("spearman", spearman), ("test_accuracy", accuracy)):
        mean, low, high = _t_interval(values)
        got = estimate[name]
        assert got["n"] == len(SEEDS)
        assert (got["mean"], got["ci_low"], got["ci_high"]) == pytest.approx((mean, low, high), rel=1e-12), name
    assert {k: [v["yes"], v["assessed"]] for k, v in estimate["verdicts"].items()} == {
        "beats_constant": verdicts["beats_constant"],
        "scale_verdict": verdicts["scale"],
        "shape_verdict": verdicts["shape"],
    }
    # the table's cells: c* and Spearman as mean ± half-width, the verdict counts, accuracy in %
    markdown = (study_dir / "study.md").read_text()
    section = markdown.split("### Curvature estimates across optimizers")[1]
    row = next(line for line in section.splitlines() if line.startswith(f"| {variant} |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3] == f"{sig(np.mean(scale), 3)} ± {sig(_t_interval(scale)[2] - np.mean(scale), 2)}"
    assert cells[4] == f"{sig(np.mean(spearman), 2)} ± {sig(_t_interval(spearman)[2] - np.mean(spearman), 2)}"
    counts = [f"{yes}/{n}" if n else "n/a" for yes, n in (verdicts[k] for k in VERDICTS)]
    assert cells[5:8] == counts
    assert cells[8].startswith(f"{100 * np.mean(accuracy):.2f} ± ")


def test_runs_csv_carries_the_estimate_columns_for_every_run_with_an_estimate_only(study_dir):
    runs = pd.read_csv(study_dir / "runs.csv")
    with_estimate = runs[runs.variant.isin(WITH_ESTIMATE)]
    assert with_estimate.scale_factor.notna().all() and with_estimate.agreement_spearman.notna().all()
    sgd = runs[runs.variant == "sgd"]
    assert sgd.scale_factor.isna().all() and sgd.agreement_spearman.isna().all() and sgd.beats_constant.isna().all()
    # columns that mean something only for arTuRO stay arTuRO's
    assert runs[runs.variant == "faithful"].eta_median.notna().all()
    assert runs[runs.variant.isin(["adam", "adahessian"])].eta_median.isna().all()
    for row in with_estimate.itertuples():
        metrics = _metrics(study_dir, row.variant, row.seed)
        assert row.estimator == metrics["run"]["estimator"]["name"]
        assert row.scale_factor == pytest.approx(
            metrics["agreement"]["final"]["overall"]["scale"]["rescaled"]["factor"], rel=1e-12
        )


def test_estimates_csv_is_every_snapshot_of_every_run_with_an_estimate(study_dir):
    table = pd.read_csv(study_dir / "estimates.csv")
    assert list(table.columns) == list(ESTIMATE_COLUMNS)
    expected = []
    for variant in WITH_ESTIMATE:
        for seed in SEEDS:
            for entry in _metrics(study_dir, variant, seed)["agreement"]["snapshots"]:
                overall = entry["overall"]
                expected.append(
                    (
                        variant,
                        seed,
                        entry["step"],
                        overall["scale"]["rescaled"]["factor"],
                        overall["estimate"]["spearman"],
                    )
                )
    got = list(table[["variant", "seed", "step", "scale_factor", "spearman"]].itertuples(index=False, name=None))
    assert [g[:3] for g in got] == [e[:3] for e in expected] and len(got) == 2 * len(SEEDS) * len(WITH_ESTIMATE)
    np.testing.assert_allclose([g[3:] for g in got], [e[3:] for e in expected], rtol=1e-12)


def test_the_figure_is_written_and_embedded(study_dir):
    png = (study_dir / "figures" / "t_estimates.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert width > 2 * height > 0  # three panels side by side
    markdown = (study_dir / "study.md").read_text()
    table_at = markdown.index("### Curvature estimates across optimizers")
    assert markdown.index("](figures/t_estimates.png)") > table_at  # right after its table
    assert markdown.count("figures/t_estimates.png") == 1


def test_an_unknown_variant_is_refused_with_one_line(tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["ablate", "--variants", "faithful,ivon,magic", "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "variants: got 'magic'" in result.output and "sophia-h[:LR]" in result.output
    assert result.output.count("\n") <= 2  # one line, no traceback
    assert not out.exists()


def test_the_estimator_variants_train_their_optimizer_with_an_optional_learning_rate():
    assert parse_variant("sophia-h").changes() == {"optimizer": "sophia-h"}
    assert parse_variant("sophia-h:0.01").changes() == {"optimizer": "sophia-h", "lr": 0.01}
    assert parse_variant("ivon").has_estimate and parse_variant("adam").has_estimate
    assert parse_variant("faithful").has_estimate and not parse_variant("sgd").has_estimate
    with pytest.raises(ConfigError) as error:
        parse_variant("sophia-g:0")
    assert "LR > 0" in error.value.allowed
    assert math.isfinite(parse_variant("adahessian:0.1").value)


def test_the_findings_say_each_estimates_scale_and_shape_before_the_study_wide_caveats(study_dir):
    data = json.loads((study_dir / "study.json").read_text())
    findings = data["findings"]
    (words,) = [f["text"] for f in findings if f["text"].startswith("Each optimizer's curvature estimate")]
    for variant in WITH_ESTIMATE:
        scale, spearman, _, _ = _by_hand(study_dir, variant)
        assert f"{variant} ({variant if variant != 'faithful' else 'arturo'}, estimates " in words
        assert f"c* {sig(np.mean(scale), 3)} (a ~" in words and f"Spearman {sig(np.mean(spearman), 2)};" in words
    assert "sgd (" not in words
    topics = [f["topic"] for f in findings]
    first_caveat = min(i for i, t in enumerate(topics) if t in ("baselines", "statistics") and i > 0)
    assert topics.index("curvature") < first_caveat
    assert all(t in ("baselines", "statistics") for t in topics[first_caveat:])


def test_the_example_study_file_is_every_optimizer_with_an_estimate_on_the_default_protocol(tmp_path):
    from pathlib import Path

    from arturo_diag.study import default_study, expand_grid, load_study
    from arturo_diag.training.optimizers import OPTIMIZERS

    study = load_study(Path(__file__).resolve().parents[2] / "experiments" / "studies" / "cross_optimizer.toml")
    optimizers = [v.optimizer for v in study.variants]
    assert sorted(optimizers) == sorted(name for name, spec in OPTIMIZERS.items() if spec.has_estimate)
    assert all(v.has_estimate for v in study.variants) and study.seeds == (0, 1, 2)
    (setup,) = study.setups
    (default,) = default_study().setups
    assert setup.config.replace(oracle_every=default.config.oracle_every) == default.config
    assert len(expand_grid(study, tmp_path)) == 21
